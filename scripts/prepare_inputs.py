from segbench.jobs import run_step
from segbench.steps import prepare_inputs

run_step(snakemake, lambda sm: prepare_inputs(list(sm.input), list(sm.output), sm.params.resize))
