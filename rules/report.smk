# Figures for `snakemake --report report.html`, written by rules so that they are cached like
# everything else; report() files are grouped per run and in a "comparison" category.

REPORT_DIR = "../resources/report"


rule plot_run:
    input:
        summary="results/{run}/summary.json",
        per_image="results/{run}/per_image.csv",
        predictions=lambda w: [P.prediction_png(w.run, i) for i in PLAN.ids],
    output:
        class_scores=report("results/{run}/plots/class_scores.png", category="{run}",
                            caption=f"{REPORT_DIR}/class_scores.rst"),
        boundary_scores=report("results/{run}/plots/boundary_scores.png", category="{run}",
                               caption=f"{REPORT_DIR}/boundary_scores.rst"),
        confusion=report("results/{run}/plots/confusion.png", category="{run}",
                         caption=f"{REPORT_DIR}/confusion.rst"),
        forward_times=report("results/{run}/plots/forward_times.png", category="{run}",
                             caption=f"{REPORT_DIR}/forward_times.rst"),
        accuracy_by_size=report("results/{run}/plots/accuracy_by_size.png", category="{run}",
                                caption=f"{REPORT_DIR}/accuracy_by_size.rst"),
        worst_images=report("results/{run}/plots/worst_images.png", category="{run}",
                            caption=f"{REPORT_DIR}/worst_images.rst"),
    params:
        photos=[PLAN.images[i] for i in PLAN.ids],
        truths=[PLAN.labels[i] for i in PLAN.ids],
        ids=PLAN.ids,
        worst_images=config["report"]["worst_images"],
        exif_orientation=DATA["exif_orientation"],
        ignore_label=DATA["ignore_label"],  # drawn as void in the gallery's ground truth  # the gallery shows photos as the network saw them
    wildcard_constraints:
        run="|".join(re.escape(r) for r in RUNS),
    localrule: True
    conda:
        "../envs/report.yaml"
    log:
        "logs/{run}/plots.log",
    script:
        "../scripts/plot_run.py"


rule plot_runs:
    input:
        expand("results/{run}/summary.json", run=RUNS),
    output:
        report("results/plots/speed_accuracy.png", category="comparison", caption=f"{REPORT_DIR}/speed_accuracy.rst"),
    localrule: True
    conda:
        "../envs/report.yaml"
    log:
        "logs/plot_runs.log",
    script:
        "../scripts/plot_runs.py"
