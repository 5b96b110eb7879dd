# segbench: accuracy and speed of a pretrained segmentation model on a labelled dataset.
#
#   snakemake --cores 4                       # the runs in config.yaml
#   snakemake --cores 4 --configfile my.yaml  # another configuration
#
# decode ground truth -> resize -> inference -> per-image metrics -> aggregation;
# every step writes files, so a change reruns only what depends on it.

import sys

sys.path.insert(0, workflow.basedir)  # segbench/ next to this file, also when not pip-installed

from snakemake.utils import min_version

min_version("9.0")


# A config file given on the command line replaces config.yaml rather than being merged into it
# (Snakemake's default): otherwise the demo's runs would also run on the user's data.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"



report: "resources/report/workflow.rst"


include: "rules/common.smk"
include: "rules/fetch.smk"


if PLAN is not None:

    include: "rules/labels.smk"
    include: "rules/inputs.smk"
    include: "rules/onnx.smk"
    include: "rules/inference.smk"
    include: "rules/metrics.smk"
    include: "rules/aggregate.smk"
    include: "rules/report.smk"



localrules:
    all,


rule all:
    input:
        (
            FETCH_TARGETS
            if PLAN is None
            else [
                *expand("results/{run}/summary.json", run=RUNS),
                *expand("results/{run}/per_image.csv", run=RUNS),
                *expand("results/{run}/per_class.csv", run=RUNS),
                "results/comparison.csv",
                "results/comparison.md",
                # The check that each ONNX export computes what Caffe computes.
                *[P.parity_json(model) for model in PARITY_MODELS],
                *expand("results/{run}/plots/class_scores.png", run=RUNS),
                # Predictions are results too: one deleted, or lost when a rerun of its shard failed,
                # is made again even when the numbers computed from it are up to date (Snakemake does
                # not remake a missing intermediate file otherwise). Only missing ones are listed:
                # every prediction as an input of this rule would slow planning by seconds.
                *(P.missing_predictions(RUNS, PLAN.ids) if workflow.is_main_process else []),
                "results/plots/speed_accuracy.png",
            ]
        ),
    default_target: True


onsuccess:
    if PLAN is not None and Path("results/comparison.csv").exists():
        print(terminal_summary("results/comparison.csv"))
