# Configuration checks and file names shared by all rules.

import re

from segbench import SegbenchError
from segbench import config as segbench_config
from segbench import plan as P
from snakemake.exceptions import WorkflowError

try:
    segbench_config.validate(config)
    # The file checks run once, in the process that plans the jobs, not again in
    # every job (on a cluster each job parses this file).
    PLAN = P.Plan.from_config(config, check_files=workflow.is_main_process)
except SegbenchError as error:
    raise WorkflowError(f"segbench: {error}") from None



onstart:
    # Before any job, but not in a dry run, which may plan for a GPU machine elsewhere.
    try:
        P.Plan.check_devices(config)
    except SegbenchError as error:
        raise WorkflowError(f"segbench: {error}") from None


DATA = config["dataset"]
RUNS = list(config["runs"])
STEP_MODULES = [f"{workflow.basedir}/segbench/{m}.py" for m in ("steps", "labels", "images", "metrics")]


def gt_pngs(ids):
    return [PLAN.labels[i] for i in ids]


def run_log(step, run, index):
    return f"logs/{run}/{step}/{index:04d}.log"


def run_config(run):
    """The settings that determine a run's numbers (recorded, with their hash, in its provenance)."""
    spec = config["runs"][run]
    return {"dataset": DATA, "run": spec, "model": config["models"][spec["model"]],
            "inference": config["inference"]}
