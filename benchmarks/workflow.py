"""Workflow overhead and planning time at scale, measured with the real Snakemake.

Overhead: a synthetic VOC-layout dataset of N photos (VOC-sized, 500x375 and
375x500) is written to a temporary folder, and the whole workflow runs on it
with the bundled tiny model (resources/demo/fcn-tiny). Overhead per image is
(wall time of `snakemake --cores 2` - the forward time it summed in
results/<run>/summary.json timing.total_s) / N: everything that is not a forward
pass, i.e. Snakemake's start-up, DAG and bookkeeping, each job's Python start-up,
decoding, resizing, model loads, warm-up passes, writing predictions, metrics,
aggregation.

Scale: `snakemake --dry-run` on split files of 1,449 and 10,000 ids whose image
and label files exist but are empty (the start-up check needs them to exist; a
dry run reads nothing else), with the demo's three runs.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
DEMO_MODEL = REPO / "resources" / "demo" / "fcn-tiny"
SEED = 20240605


def _palette():
    sys.path.insert(0, str(REPO))
    from segbench.labels import voc_palette
    return voc_palette()


def write_dataset(root, n, seed=SEED):
    """N synthetic photos with palette-PNG labels in VOC layout (a few coloured shapes, a void band)."""
    rng = np.random.default_rng(seed)
    palette = _palette()
    class_rgb = np.vstack([[172, 188, 228], 32 + 0.8 * palette[1:21].astype(np.float64)])
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n):
        h, w = (375, 500) if i % 3 else (500, 375)
        labels = np.zeros((h, w), np.uint8)
        for c in rng.choice(np.arange(1, 21), size=rng.integers(1, 4), replace=False):
            y0, x0 = rng.integers(0, h - 60), rng.integers(0, w - 60)
            y1, x1 = y0 + rng.integers(40, h - y0 + 1), x0 + rng.integers(40, w - x0 + 1)
            labels[y0:y1, x0:x1] = c
        edge = np.zeros_like(labels, bool)
        edge[1:] |= labels[1:] != labels[:-1]
        edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
        photo = class_rgb[labels] + rng.normal(0, 12, (h, w, 3))
        image_id = f"synth_{i:06d}"
        Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg",
                                                                      quality=90)
        labels[edge] = 255
        label_png = Image.fromarray(labels, mode="P")
        label_png.putpalette(palette.tobytes())
        label_png.save(root / "SegmentationClass" / f"{image_id}.png")
        ids.append(image_id)
    (root / "ImageSets" / "Segmentation" / "synth.txt").write_text("\n".join(ids) + "\n")
    return ids


def write_placeholders(root, n):
    """A split of N ids whose image and label files exist and are empty (enough for a dry run)."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = [f"synth_{i:06d}" for i in range(n)]
    for image_id in ids:
        (root / "JPEGImages" / f"{image_id}.jpg").touch()
        (root / "SegmentationClass" / f"{image_id}.png").touch()
    (root / "ImageSets" / "Segmentation" / "synth.txt").write_text("\n".join(ids) + "\n")
    return ids


def write_config(workdir, runs):
    """A config.yaml in `workdir` for the synthetic split and fcn-tiny; everything else the defaults."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["dataset"].update(root="VOC", split="synth", limit=None)
    config["models"]["fcn-tiny"].update(prototxt=str(DEMO_MODEL / "deploy.prototxt"),
                                        weights=str(DEMO_MODEL / "fcn-tiny.caffemodel"))
    config["runs"] = {name: spec for name, spec in config["runs"].items() if name in runs}
    # The schema's defaults, not the demo's settings, for the job sizes.
    config.pop("batch_size", None)
    config.get("inference", {}).pop("shard_size", None)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def schema_defaults():
    """The batch_size and shard_size that a config without them gets."""
    schema = yaml.safe_load((REPO / "segbench" / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"]
    return props["batch_size"]["default"], props["inference"]["properties"]["shard_size"]["default"]


def snakemake(workdir, *args):
    start = time.perf_counter()
    result = subprocess.run([str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args],
                            capture_output=True, text=True, cwd=workdir)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
                           f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return wall, result


def job_count(output):
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "total" and parts[1].isdigit():
            return int(parts[1])
    return None


def overhead(n_images, runs, tmp, cores=2, extra=()):
    """Run the whole workflow on n_images synthetic images; return its wall time, forward time and overhead."""
    workdir = Path(tmp) / f"overhead-{n_images}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    start = time.perf_counter()
    write_dataset(workdir / "VOC", n_images)
    generate_s = time.perf_counter() - start
    config = write_config(workdir, runs)
    batch_size, shard_size = schema_defaults()
    wall, result = snakemake(workdir, "--cores", str(cores), *extra)
    forward = 0.0
    per_run = {}
    for run in config["runs"]:
        timing = json.loads((workdir / "results" / run / "summary.json").read_text())["timing"]
        forward += timing["total_s"]
        per_run[run] = {"total_s": timing["total_s"], "model_loads": timing["model_loads"],
                        "median_s": timing["median_s"]}
    jobs = job_count(result.stdout + result.stderr)
    images = n_images * len(config["runs"])
    return {"images": n_images, "runs": list(config["runs"]), "cores": cores, "jobs": jobs,
            "dataset_s": generate_s, "wall_s": wall, "forward_s": forward, "per_run": per_run,
            "overhead_s": wall - forward, "overhead_ms_per_image": 1000 * (wall - forward) / images,
            "batch_size": batch_size, "shard_size": shard_size, "workdir": str(workdir)}


def dry_run(n_images, runs, tmp, extra=()):
    """Time `snakemake --dry-run` on n_images placeholder ids."""
    workdir = Path(tmp) / f"dryrun-{n_images}-{len(runs)}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    write_placeholders(workdir / "VOC", n_images)
    write_config(workdir, runs)
    wall, result = snakemake(workdir, "--dry-run", "--cores", "2", *extra)
    return {"images": n_images, "runs": runs, "wall_s": wall, "jobs": job_count(result.stdout + result.stderr)}
