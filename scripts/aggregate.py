import _segbench_path  # noqa: F401  (segbench importable without an install)
from segbench.jobs import run_step
from segbench.report import aggregate_run

run_step(snakemake, lambda sm: aggregate_run(
    sm.wildcards.run, sm.params.run, sm.params.model, sm.params.class_names, sm.params.ignore_label,
    list(sm.input.metrics), list(sm.input.shards),
    sm.output.summary, sm.output.per_image, sm.output.per_class, sm.params.run_config, sm.output.overlap_ids))
