"""The figures, the Snakemake report and the terminal summary."""

import csv
import re

import pytest
from PIL import Image

from workflow_helpers import snakemake

pytestmark = pytest.mark.slow

RUNS = ["fcn-tiny-caffe-cpu", "fcn-tiny-opencv-cpu", "fcn-tiny-caffe-cpu-160"]
PLOTS = ["class_scores", "boundary_scores", "confusion", "forward_times", "accuracy_by_size", "worst_images"]


def check_png(path, min_width=400, min_height=250):
    with Image.open(path) as image:
        image.verify()  # a complete, uncorrupted PNG
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_width and image.height >= min_height, (path, image.size)
        assert image.width <= 3000 and image.height <= 4000, (path, image.size)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 10, f"{path} looks blank"


def test_every_plot_is_a_sensible_png(finished):
    for run in RUNS:
        for plot in PLOTS:
            check_png(finished / "results" / run / "plots" / f"{plot}.png")
    check_png(finished / "results" / "plots" / "speed_accuracy.png")
    # six images in the gallery, three panels each: taller than wide
    with Image.open(finished / "results" / RUNS[0] / "plots" / "worst_images.png") as gallery:
        assert gallery.height > 1.5 * gallery.width


def test_report_embeds_every_figure(copy_of_finished):
    snakemake(copy_of_finished, "--report", "report.html")
    html = (copy_of_finished / "report.html").read_text()
    for run in RUNS:
        for plot in PLOTS:
            assert f"results/{run}/plots/{plot}.png" in html
    assert "results/plots/speed_accuracy.png" in html and "results/comparison.csv" in html
    assert len(re.findall(r"data:image/png;charset=utf8;filename=\w+\.png;base64,", html)) >= len(RUNS) * len(PLOTS) + 1


def test_terminal_summary_after_a_run(finished, tmp_path):
    import shutil
    workdir = shutil.copytree(finished, tmp_path / "wd", symlinks=True)
    (workdir / "results" / "comparison.csv").unlink()
    output = snakemake(workdir).stdout
    assert "segbench results" in output and "snakemake --report report.html" in output
    with open(workdir / "results" / "comparison.csv", newline="") as f:
        for row in csv.DictReader(f):
            line = next(l for l in output.splitlines() if l.startswith(row["run"] + " "))
            assert f"{float(row['mean_iou']):.3f}" in line and row["backend"] in line


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def test_report_renders_in_headless_chromium_with_images_loaded(copy_of_finished):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    snakemake(copy_of_finished, "--report", "report.html")
    shown = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page()
        for category, files in [*((run, [f"results/{run}/plots/{plot}.png" for plot in PLOTS]) for run in RUNS),
                                ("comparison", ["results/plots/speed_accuracy.png"])]:
            page.goto((copy_of_finished / "report.html").as_uri())
            page.get_by_text(category, exact=True).click()
            for name in files:
                page.locator("tr", has_text=name).locator("a[iconname=eye]").click()
                image = page.locator(f"img[src*='filename={name.rsplit('/', 1)[1]};']")
                image.wait_for(timeout=10000)
                shown[name] = page.evaluate("img => img.complete && img.naturalWidth", image.element_handle())
        browser.close()
    assert len(shown) == len(RUNS) * len(PLOTS) + 1
    assert all(width and width >= 400 for width in shown.values()), shown


def test_the_gallery_draws_the_datasets_own_ignore_label_as_void():
    import numpy as np

    from segbench.labels import voc_palette
    from segbench.plots import VOID_RGB, colourise

    labels = np.array([[0, 7, 255]], dtype=np.uint8)
    palette = voc_palette()
    # ignore_label 7: class 7's colour gives way to magenta, and 255 is an ordinary index.
    assert colourise(labels, 7).tolist() == [[palette[0].tolist(), list(VOID_RGB), palette[255].tolist()]]
    assert colourise(labels, 255).tolist() == [[palette[0].tolist(), palette[7].tolist(), list(VOID_RGB)]]
    assert colourise(labels).tolist() == [palette[labels[0]].tolist()]  # predictions: never void
