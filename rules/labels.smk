# Decode ground truth: palette PNG -> label indices, one job and one file per batch of images.
# The range check reads the configuration at run time rather than through params,
# so that changing ignore_label or num_classes does not redo the decoding
# (the metrics step checks the values again with the current settings).

for _b, _ids in enumerate(PLAN.batches):

    rule:
        name:
            f"decode_labels_{_b:04d}"
        input:
            gt_pngs(_ids),
        output:
            P.label_batch(_b),
        params:
            ids=_ids,
        localrule: True
        conda:
            "../envs/steps.yaml"
        log:
            f"logs/decode_labels/{_b:04d}.log",
        script:
            "../scripts/decode_labels.py"
