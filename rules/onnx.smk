# The ONNX export of each model that onnxruntime/openvino runs use (made without pycaffe), its int8
# variants, and the check that the export computes what Caffe computes: the model's ONNX runs wait
# for that check and do not start when it fails.

ONNX_MODELS = sorted({config["runs"][_r]["model"] for _r in P.onnx_runs(config)})
try:
    PARITY_MODELS = P.parity_models(config)
except SegbenchError as error:
    raise WorkflowError(f"segbench: {error}") from None
ONNX_SETTINGS = config["onnx"]


def model_spec(wildcards):
    return config["models"][wildcards.model]


def parity_ids():
    return PLAN.ids[:ONNX_SETTINGS["parity_images"]]


if ONNX_MODELS:
    # Imported only here: every job parses this file, and most configurations have no ONNX run.
    from segbench.onnx_export import EXPORTER_VERSION

    rule export_onnx:
        input:
            prototxt=lambda w: model_spec(w)["prototxt"],
            weights=lambda w: model_spec(w)["weights"],
        output:
            P.onnx_model("{model}", "{dtype}"),
        params:
            input_blob=lambda w: model_spec(w)["input_blob"],
            output_blob=lambda w: model_spec(w)["output_blob"],
            dtype=lambda w: {"fp32": "float32", "fp16": "float16"}[w.dtype],
            # A new exporter re-exports (Snakemake does not follow the code of imported modules).
            exporter=EXPORTER_VERSION,
        wildcard_constraints:
            model="|".join(re.escape(m) for m in ONNX_MODELS),
            dtype="fp32|fp16",
        conda:
            "../envs/onnx.yaml"
        log:
            "logs/models/{model}/export-{dtype}.log",
        script:
            "../scripts/export_onnx.py"

if PARITY_MODELS:

    rule parity:
        input:
            prototxt=lambda w: model_spec(w)["prototxt"],
            weights=lambda w: model_spec(w)["weights"],
            onnx=P.onnx_model("{model}", "fp32"),
            images=lambda w: [PLAN.images[i] for i in parity_ids()],
        output:
            P.parity_json("{model}"),
        params:
            ids=lambda w: parity_ids(),
            model=lambda w: canonical(inference_settings(model_spec(w))),
            resize=lambda w: P.parity_resize(config, w.model),
            exif_orientation=DATA["exif_orientation"],
            min_agreement=ONNX_SETTINGS["min_agreement"],
            failed=lambda w: P.parity_json(w.model).replace(".json", ".failed.json"),
        wildcard_constraints:
            model="|".join(re.escape(m) for m in PARITY_MODELS),
        conda:
            "../envs/parity.yaml"
        log:
            "logs/models/{model}/parity.log",
        script:
            "../scripts/parity.py"


if PLAN.calibration:

    rule calibration_inputs:
        input:
            lambda w: PLAN.calibration[w.key][1],
        output:
            P.calibration_batch("{key}"),
        params:
            ids=lambda w: PLAN.calibration[w.key][0],
            resize=lambda w: PLAN.resize_keys[w.key],
            exif_orientation=DATA["exif_orientation"],
        localrule: True
        conda:
            "../envs/steps.yaml"
        log:
            "logs/calibration/{key}.log",
        script:
            "../scripts/prepare_inputs.py"

    rule quantize_int8:
        input:
            onnx=P.onnx_model("{model}", "fp32"),
            calibration=P.calibration_batch("{key}"),
        output:
            P.onnx_model("{model}", "int8-{key}"),
        params:
            ids=lambda w: PLAN.calibration[w.key][0],
            model=lambda w: canonical(inference_settings(model_spec(w))),
            method=config["quantization"]["method"],
        wildcard_constraints:
            model="|".join(re.escape(m) for m in ONNX_MODELS),
            key="|".join(re.escape(k) for k in PLAN.calibration),
        conda:
            "../envs/onnx.yaml"
        log:
            "logs/models/{model}/quantize-int8-{key}.log",
        script:
            "../scripts/quantize_int8.py"
