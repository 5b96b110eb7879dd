# Cheap steps are local rules: on a cluster they run on the submitting machine
# rather than as seconds-long cluster jobs. Aggregation per run: dataset metrics from the summed confusion matrix, the means
# of the per-image values, timing statistics and provenance.


rule aggregate:
    input:
        metrics=lambda w: [P.metrics_json(w.run, b) for b in range(len(PLAN.batches))],
        shards=lambda w: [P.shard_json(w.run, s) for s in range(len(PLAN.shards))],
        prototxt=lambda w: config["models"][config["runs"][w.run]["model"]]["prototxt"],
        weights=lambda w: config["models"][config["runs"][w.run]["model"]]["weights"],
        trained_on=lambda w: training_lists(config["models"][config["runs"][w.run]["model"]].get("trained_on")),
    output:
        summary="results/{run}/summary.json",
        per_image="results/{run}/per_image.csv",
        per_class="results/{run}/per_class.csv",
        overlap_ids="results/{run}/training_overlap.txt",
    params:
        run=lambda w: canonical(config["runs"][w.run]),
        model=lambda w: canonical(config["models"][config["runs"][w.run]["model"]]),
        class_names=DATA["class_names"],
        ignore_label=DATA["ignore_label"],
        run_config=lambda w: canonical(run_config(w.run)),
    localrule: True
    conda:
        "../envs/steps.yaml"
    wildcard_constraints:
        run="|".join(re.escape(r) for r in RUNS),
    log:
        "logs/{run}/aggregate.log",
    script:
        "../scripts/aggregate.py"


REFERENCES = P.reference_runs(config)
COMPARED = [run for run in RUNS if REFERENCES[run]]


# Pixel by pixel: how many of a run's predicted classes are its reference run's (e.g. an int8 or
# ONNX run against the fp32 Caffe run of the same model).
rule agreement:
    input:
        predictions=lambda w: [P.prediction_png(w.run, i) for i in PLAN.ids],
        reference=lambda w: [P.prediction_png(REFERENCES[w.run], i) for i in PLAN.ids],
    output:
        P.agreement_json("{run}"),
    params:
        ids=PLAN.ids,
        reference=lambda w: REFERENCES[w.run],
    localrule: True
    conda:
        "../envs/steps.yaml"
    wildcard_constraints:
        run="|".join(re.escape(r) for r in COMPARED) or "$^",
    log:
        "logs/{run}/agreement.log",
    script:
        "../scripts/agreement.py"


rule compare:
    input:
        summaries=expand("results/{run}/summary.json", run=RUNS),
        agreements=[P.agreement_json(run) for run in COMPARED],
    output:
        csv=report("results/comparison.csv", category="comparison", caption="../resources/report/comparison.rst"),
        md="results/comparison.md",
    localrule: True
    conda:
        "../envs/steps.yaml"
    log:
        "logs/compare.log",
    script:
        "../scripts/compare.py"
