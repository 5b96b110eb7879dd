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


rule compare:
    input:
        expand("results/{run}/summary.json", run=RUNS),
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
