# Inference: one job per run and shard of `inference.shard_size` images; the model
# is loaded once per job. While `inference.exclusive` is true, an inference job run on this
# machine holds every core given to snakemake, so that no other job of the workflow (another
# inference job, decoding, resizing, scoring) runs beside a timed forward pass; the backend
# uses the run's `threads`. On a cluster, jobs ask for one `inference_slot`, of which the
# workflow profile (profiles/default) allows one at a time, and a whole node (segbench/cluster.py).

import os

from segbench.backends import ONNX_BACKENDS
from segbench.cluster import inference_resource_callables

INFERENCE = config["inference"]

for _run in RUNS:
    _spec = config["runs"][_run]
    _model = config["models"][_spec["model"]]
    _key = P.resize_key(_spec["resize"])
    for _s, _ids in enumerate(PLAN.shards):

        rule:
            name:
                f"infer_{_run}_{_s:04d}"
            input:
                inputs=[P.input_batch(_key, b) for b in PLAN.batches_of(_ids)],
                prototxt=_model["prototxt"],
                weights=_model["weights"],
                # ONNX runs: the export they run, and its check against Caffe, which must pass first
                # (ancient: a check redone with other settings does not redo the inference).
                onnx=[P.onnx_model(_spec["model"], P.onnx_variant(_spec))] if _spec["backend"] in ONNX_BACKENDS else [],
                parity=[ancient(P.parity_json(_spec["model"]))]
                if _spec["backend"] in ONNX_BACKENDS and _spec["model"] in PARITY_MODELS else [],
            output:
                predictions=[P.prediction_png(_run, i) for i in _ids],
                shard=P.shard_json(_run, _s),
            params:
                ids=_ids,
                model=canonical(inference_settings(_model)),
                backend=_spec["backend"],
                device=_spec["device"],
                precision=_spec["precision"],
                provider=_spec["provider"],
                resize=_spec["resize"],
                warmup=INFERENCE["warmup"],
                threads=_spec["threads"],
            threads: inference_job_threads(_spec)
            resources:
                inference_slot=1 if INFERENCE["exclusive"] else 0,
                # On a cluster (profiles/slurm): memory and wall time from the model and the shard,
                # a GPU for gpu:N devices, a whole node when inference is exclusive (segbench/cluster.py).
                **inference_resource_callables(_model, _spec["device"], len(_ids), backend=_spec["backend"],
                                               warmup=INFERENCE["warmup"], exclusive=INFERENCE["exclusive"]),
            conda:
                f"../envs/{_spec['backend']}.yaml"
            log:
                run_log("inference", _run, _s),
            script:
                "../scripts/infer.py"
