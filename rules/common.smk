# Configuration checks and file names shared by all rules.

import os
import re
from pathlib import Path

from segbench import SegbenchError
from segbench import config as segbench_config
from segbench.config import canonical
from segbench.files import remove_stale_temp_files
from segbench.overlap import training_lists
from segbench import plan as P
from segbench.report import terminal_summary
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

try:
    segbench_config.validate(config)
except SegbenchError as error:
    raise WorkflowError(f"segbench: {error}") from None

FETCH_TARGETS = P.fetch_targets(config)
try:
    # The file checks run once, in the process that plans the jobs, not again in
    # every job (on a cluster each job parses this file).
    PLAN = P.Plan.from_config(config, check_files=workflow.is_main_process)
except SegbenchError as error:
    if not P.fetch_pending(config):
        raise WorkflowError(f"segbench: {error}") from None
    # The data or a model is still to be downloaded: only the fetch rules exist now.
    PLAN = None
    logger.warning(f"segbench: the dataset or a model is not downloaded yet ({error}).\n"
                   f"Only downloads run now; run the same command again afterwards to score.")


onstart:
    # Before any job, but not in a dry run, which may plan for a GPU machine elsewhere, nor
    # when jobs go to a cluster, whose nodes may have the GPU that this machine lacks (the
    # inference job checks again, before any GPU call).
    plugin = workflow.executor_plugin
    if plugin is None or plugin.common_settings.local_exec:
        try:
            P.Plan.check_devices(config)
        except SegbenchError as error:
            raise WorkflowError(f"segbench: {error}") from None
    # Temporary files of jobs killed while writing (segbench.files.atomic_path): never taken for
    # outputs, but they hold space. Only those untouched for a minute: another run may be writing.
    for _path in remove_stale_temp_files(["work", "results"]):
        logger.info(f"segbench: removed {_path}, left by a job killed while writing it")


DATA = config["dataset"]
RUNS = list(config["runs"])


def gt_pngs(ids):
    return [PLAN.labels[i] for i in ids]


def run_log(step, run, index):
    return f"logs/{run}/{step}/{index:04d}.log"


def inference_settings(model):
    """A model's settings that determine its predictions: what an inference job's params hold, so
    that naming the model's training set (trained_on) reruns aggregation only."""
    return {key: value for key, value in model.items() if key != "trained_on"}


def run_config(run):
    """The settings that determine a run's numbers (recorded, with their hash, in its provenance)."""
    spec = config["runs"][run]
    return {"dataset": DATA, "run": spec, "model": config["models"][spec["model"]],
            "inference": config["inference"], "metrics": config["metrics"]}


def inference_job_threads(run_spec):
    """The cores an inference job holds: with inference.exclusive, every core given to snakemake
    when jobs run on this machine (Snakemake then starts no other job beside it); else the run's."""
    local = workflow.is_main_process and workflow.nodes is None
    if config["inference"]["exclusive"] and local:
        return workflow.resource_settings.cores or os.cpu_count()
    return inference_threads(run_spec)


def inference_threads(run_spec):
    """A run's threads, or the cores given to snakemake (at most the machine's)."""
    if run_spec["threads"]:
        return run_spec["threads"]
    if os.environ.get("SLURM_CPUS_PER_TASK"):  # inside a cluster job: what SLURM allocated
        return int(os.environ["SLURM_CPUS_PER_TASK"])
    cores = workflow.resource_settings.cores  # None without --cores, e.g. for --report
    return min(cores, os.cpu_count()) if cores else os.cpu_count()
