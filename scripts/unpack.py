import _segbench_path  # noqa: F401  (segbench importable without an install)
from segbench.download import unpack
from segbench.jobs import run_step

run_step(snakemake, lambda sm: unpack(sm.input.archive, sm.params.dest, sm.params.strip, sm.params.members,
                                      sm.params.add))
