import os

import _segbench_path  # noqa: F401  (segbench importable without an install)
from segbench.jobs import run_step
from segbench.steps import run_inference


def infer(sm):
    # The job may hold more cores than the backend uses (inference.exclusive keeps other jobs
    # out), so the backend's threads are the run's own, or else the job's, at most the machine's.
    threads = sm.params.threads or min(sm.threads, os.cpu_count())
    # num_classes is read at run time, not through params: it checks the model's output and does
    # not change the predictions, so changing it does not redo inference.
    run_inference(sm.params.ids, list(sm.input.inputs), list(sm.output.predictions), sm.output.shard,
                  sm.params.model, sm.params.backend, sm.params.device, sm.params.warmup, threads,
                  num_classes=sm.config["dataset"]["num_classes"], onnx=sm.input.onnx[0] if sm.input.onnx else None,
                  precision=sm.params.precision, provider=sm.params.provider)


run_step(snakemake, infer)
