import _segbench_path  # noqa: F401  (segbench importable without an install)
from segbench import plots
from segbench.files import read_json
from segbench.jobs import run_step

run_step(snakemake, lambda sm: plots.runs_overview([read_json(p) for p in sm.input], sm.output[0]))
