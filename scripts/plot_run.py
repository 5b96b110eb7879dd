import _segbench_path  # noqa: F401  (segbench importable without an install)
from segbench import plots
from segbench.files import read_json
from segbench.jobs import run_step


def plot_run(sm):
    summary = read_json(sm.input.summary)
    rows = plots.read_per_image(sm.input.per_image)
    plots.class_scores(summary, sm.output.class_scores)
    plots.boundary_scores(summary, sm.output.boundary_scores)
    plots.confusion(summary, sm.output.confusion)
    plots.forward_times(summary, rows, sm.output.forward_times)
    plots.accuracy_by_size(summary, rows, sm.output.accuracy_by_size)
    paths = {i: (photo, truth, prediction) for i, photo, truth, prediction
             in zip(sm.params.ids, sm.params.photos, sm.params.truths, sm.input.predictions)}
    plots.worst_images(rows, paths, sm.params.worst_images, sm.output.worst_images, sm.params.exif_orientation,
                       sm.params.ignore_label)


run_step(snakemake, plot_run)
