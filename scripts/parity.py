import _segbench_path  # noqa: F401  (segbench importable without an install)
from segbench.conversion import check_parity
from segbench.jobs import run_step

run_step(snakemake, lambda sm: check_parity(
    sm.input.prototxt, sm.input.weights, sm.input.onnx, sm.params.ids, list(sm.input.images), sm.params.model,
    sm.params.resize, sm.params.exif_orientation, sm.params.min_agreement, sm.output[0], sm.params.failed))
