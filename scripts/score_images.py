import _segbench_path  # noqa: F401  (segbench importable without an install)
from segbench.jobs import run_step
from segbench.steps import score_images

run_step(snakemake, lambda sm: score_images(
    sm.params.ids, [sm.input.labels], list(sm.input.predictions), sm.params.label_pngs,
    sm.output[0], sm.params.num_classes, sm.params.ignore_label,
    dict(sm.params.boundary_iou_dilation), dict(sm.params.bf_tolerance)))
