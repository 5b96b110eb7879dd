import _segbench_path  # noqa: F401  (segbench importable without an install)
from segbench.jobs import run_step
from segbench.steps import run_inference

run_step(snakemake, lambda sm: run_inference(
    sm.params.ids, list(sm.input.inputs), list(sm.output.predictions), sm.output.shard,
    sm.params.model, sm.params.backend, sm.params.device, sm.params.warmup, sm.threads))
