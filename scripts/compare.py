import _segbench_path  # noqa: F401  (segbench importable without an install)
from segbench.jobs import run_step
from segbench.report import compare_runs

run_step(snakemake, lambda sm: compare_runs(list(sm.input.summaries), sm.output.csv, sm.output.md,
                                            list(sm.input.agreements)))
