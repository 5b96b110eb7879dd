"""Cluster resources of an inference job: memory, wall time and GPUs, for the SLURM profile.

The workflow's inference rules take their `resources:` from `inference_resources`. Only the
inference jobs go to the cluster (every other rule is a local rule), so these are the numbers
that `sbatch` sees: `mem_mb` -> --mem, `runtime` (minutes) -> -t, `gpu` -> --gpus,
`gpu_model` -> --gpus=<model>:N, `slurm_partition` -> -p, `slurm_extra` added as is.

The estimates are deliberately generous (a job killed for memory or time costs more than an
oversized request) and grow with each retry (`attempt`), so that a job that ran out of memory or
time gets more of it the next time.

Memory is estimated from the size of the weights file: it dominates for VGG-style FCNs, whose
activations at ~500x500 scale with it. Measured peak RSS at 500x500 for FCN-8s (weights 513 MiB):
pycaffe 4.6 GB, OpenCV DNN 2.0 GB. A net with small weights but large activations can need more
than this estimate; the retry with more memory, or `set-resources`, covers that.

The wall time is estimated from the number of images of the shard, with a per-image time that
also grows with the weights (FCN-8s: about 3 s per 500x500 image on 2 CPU cores, far less on a GPU).
"""

import math
import os
from pathlib import Path

from .backends import parse_device

# Snakemake inside the job (twice: the SLURM job step and the job itself), Python, numpy and the
# backend's libraries, before any model is loaded.
BASE_MEM_MB = 1024
# Peak memory per MiB of weights (weights held while parsing and in the net, plus activations).
MEM_PER_WEIGHTS_MB = {"caffe": 7.0, "opencv": 3.0}
# The job reads every input of its shard before the first pass (a 500x500 RGB photo is 0.75 MB).
INPUT_MB_PER_IMAGE = 1.0
MEM_HEADROOM = 1.2
MEM_STEP_MB = 256

# Seconds per image: fixed part plus a part per GiB of weights; a GPU is taken as 10x faster.
SECONDS_PER_IMAGE = 0.5
SECONDS_PER_IMAGE_PER_WEIGHTS_GIB = 6.0
GPU_SPEEDUP = 10.0
# Starting Snakemake and Python in the job, and loading the model (per GiB of weights).
STARTUP_SECONDS = 60.0
LOAD_SECONDS_PER_WEIGHTS_GIB = 20.0
RUNTIME_HEADROOM = 2.0
MIN_RUNTIME_MIN = 10

# Environment variables read on the machine that runs snakemake (and, with --export=ALL, in the job).
GPU_MODEL_ENV = "SEGBENCH_SLURM_GPU_MODEL"  # e.g. a100: GPU runs ask for --gpus=a100:1
GPU_PARTITION_ENV = "SEGBENCH_SLURM_GPU_PARTITION"  # e.g. gpu: GPU runs go to that partition


def weights_mb(model_spec):
    """Size of the model's weights file in MiB; 0 when it is not there (yet)."""
    try:
        return Path(model_spec["weights"]).stat().st_size / 2**20
    except OSError:
        return 0.0


def _round_up(value, step):
    return int(math.ceil(value / step) * step)


def inference_resources(model_spec, device, n_images, backend="caffe", warmup=2, exclusive=True,
                        attempt=1, env=None):
    """Resources of one inference job of `n_images` images of `model_spec` on `device`.

    Returns a dict of mem_mb, runtime (minutes) and gpu (0 or 1), with gpu_model and
    slurm_partition for GPU runs when $SEGBENCH_SLURM_GPU_MODEL / $SEGBENCH_SLURM_GPU_PARTITION are
    set, and slurm_extra "--exclusive" when `exclusive` (the config's inference.exclusive): a
    whole node per inference job, so that no other job disturbs its timings.
    Memory and runtime are multiplied by `attempt` (1 for the first try).
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if n_images < 0:
        raise ValueError(f"n_images must be >= 0, got {n_images}")
    env = os.environ if env is None else env
    kind, _ = parse_device(device)
    gpu = kind == "gpu"
    size_mb = weights_mb(model_spec)

    per_weights = MEM_PER_WEIGHTS_MB.get(backend, max(MEM_PER_WEIGHTS_MB.values()))
    needed_mb = BASE_MEM_MB + per_weights * size_mb + INPUT_MB_PER_IMAGE * n_images
    mem_mb = _round_up(needed_mb * MEM_HEADROOM, MEM_STEP_MB) * attempt

    size_gib = size_mb / 1024
    per_image = SECONDS_PER_IMAGE + SECONDS_PER_IMAGE_PER_WEIGHTS_GIB * size_gib
    if gpu:
        per_image /= GPU_SPEEDUP
    seconds = STARTUP_SECONDS + LOAD_SECONDS_PER_WEIGHTS_GIB * size_gib + (n_images + warmup) * per_image
    runtime = max(MIN_RUNTIME_MIN, math.ceil(seconds * RUNTIME_HEADROOM / 60)) * attempt

    resources = {"mem_mb": mem_mb, "runtime": runtime, "gpu": 1 if gpu else 0}
    if gpu and env.get(GPU_MODEL_ENV):
        resources["gpu_model"] = env[GPU_MODEL_ENV]
    if gpu and env.get(GPU_PARTITION_ENV):
        resources["slurm_partition"] = env[GPU_PARTITION_ENV]
    if exclusive:
        resources["slurm_extra"] = "--exclusive"
    return resources


def inference_resource_callables(model_spec, device, n_images, backend="caffe", warmup=2, exclusive=True,
                                 env=None):
    """The same as `inference_resources`, for a rule's `resources:`: memory and runtime as
    functions of Snakemake's `attempt`, so that a retried job asks for more."""
    first = inference_resources(model_spec, device, n_images, backend, warmup, exclusive, 1, env)

    def per_attempt(key):
        def resource(wildcards, attempt):
            return inference_resources(model_spec, device, n_images, backend, warmup, exclusive,
                                       attempt, env)[key]
        return resource

    return {**first, "mem_mb": per_attempt("mem_mb"), "runtime": per_attempt("runtime")}
