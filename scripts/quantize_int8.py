import _segbench_path  # noqa: F401  (segbench importable without an install)
from segbench.conversion import quantize_model
from segbench.jobs import run_step

run_step(snakemake, lambda sm: quantize_model(sm.input.onnx, [sm.input.calibration], sm.params.ids, sm.output[0],
                                              sm.params.model, sm.params.method))
