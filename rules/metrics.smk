# Per-image metrics: the confusion matrix of each image (ignore label excluded), its boundary
# counts (Boundary IoU, BF score) and its per-image values, one job and one JSON file per run and batch.

for _run in RUNS:
    for _b, _ids in enumerate(PLAN.batches):

        rule:
            name:
                f"score_{_run}_{_b:04d}"
            input:
                labels=P.label_batch(_b),
                predictions=[P.prediction_png(_run, i) for i in _ids],
            output:
                P.metrics_json(_run, _b),
            params:
                ids=_ids,
                label_pngs=gt_pngs(_ids),
                num_classes=DATA["num_classes"],
                ignore_label=DATA["ignore_label"],
                # Boundary IoU's band width and the BF score's distance tolerance: a change reruns
                # the per-image metrics and what follows, nothing before.
                boundary_iou_dilation=canonical(config["metrics"]["boundary_iou_dilation"]),
                bf_tolerance=canonical(config["metrics"]["bf_tolerance"]),
            localrule: True
            conda:
                "../envs/steps.yaml"
            log:
                run_log("metrics", _run, _b),
            script:
                "../scripts/score_images.py"
