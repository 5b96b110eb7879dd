import _segbench_path  # noqa: F401  (segbench importable without an install)
from segbench.conversion import export_model
from segbench.jobs import run_step

run_step(snakemake, lambda sm: export_model(sm.input.prototxt, sm.input.weights, sm.output[0], sm.params.input_blob,
                                            sm.params.output_blob, sm.params.dtype))
