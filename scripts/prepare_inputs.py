import _segbench_path  # noqa: F401  (segbench importable without an install)
from segbench.jobs import run_step
from segbench.steps import prepare_inputs

run_step(snakemake, lambda sm: prepare_inputs(sm.params.ids, list(sm.input), sm.output[0], sm.params.resize,
                                              sm.params.exif_orientation))
