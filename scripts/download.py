import _segbench_path  # noqa: F401  (segbench importable without an install)
from segbench.download import fetch
from segbench.jobs import run_step

run_step(snakemake, lambda sm: fetch(sm.params.url, sm.output[0], sm.params.checksum))
