import _segbench_path  # noqa: F401  (segbench importable without an install)
from segbench.jobs import run_step
from segbench.steps import pixel_agreement

run_step(snakemake, lambda sm: pixel_agreement(sm.params.ids, list(sm.input.predictions), list(sm.input.reference),
                                               sm.output[0], sm.wildcards.run, sm.params.reference))
