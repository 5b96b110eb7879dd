# Resize: photos -> network inputs, per resize setting; runs with the same setting share them.

for _key, _size in PLAN.resize_keys.items():
    for _b, _ids in enumerate(PLAN.batches):

        rule:
            name:
                f"prepare_inputs_{_key}_{_b:04d}"
            input:
                [PLAN.images[i] for i in _ids],
            output:
                P.input_batch(_key, _b),
            params:
                ids=_ids,
                resize=_size,
                # A param, so that changing it redoes these inputs and what depends on them only.
                exif_orientation=DATA["exif_orientation"],
            localrule: True
            conda:
                "../envs/steps.yaml"
            log:
                f"logs/inputs/{_key}/{_b:04d}.log",
            script:
                "../scripts/prepare_inputs.py"
