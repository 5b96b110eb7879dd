"""Running the real workflow through Snakemake on a copy of the demo, for the end-to-end tests."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
DEMO = REPO / "resources" / "demo"


# The demo's runs of the Caffe files themselves. Most workflow tests need no more; the runs of the
# model's ONNX export (tests/test_onnx_workflow.py) add an export, a parity check and int8 calibration.
CAFFE_FILE_RUNS = ["fcn-tiny-caffe-cpu", "fcn-tiny-opencv-cpu", "fcn-tiny-caffe-cpu-160"]


def make_workdir(path, limit=12, batch_size=4, shard_size=5, runs=CAFFE_FILE_RUNS):
    """A working directory with its own copy of the demo data and model, and a config using relative
    paths, with the demo's `runs` (None: all of config.yaml's)."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copytree(DEMO / "VOC", path / "VOC")
    shutil.copytree(DEMO / "fcn-tiny", path / "model")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["dataset"].update(root="VOC", limit=limit)
    config["models"]["fcn-tiny"].update(prototxt="model/deploy.prototxt", weights="model/fcn-tiny.caffemodel")
    config["batch_size"] = batch_size
    config["inference"]["shard_size"] = shard_size
    if runs is not None:
        config["runs"] = {name: config["runs"][name] for name in runs}
    write_config(path, config)
    return path


def read_config(path):
    return yaml.safe_load((path / "config.yaml").read_text())


def write_config(path, config):
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def snakemake(workdir, *args, check=True, timeout=600):
    """Run the real snakemake on the repository's Snakefile in `workdir`; return the completed process."""
    result = subprocess.run(
        [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2", *args],
        capture_output=True, text=True, timeout=timeout, cwd=workdir)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def snakemake_command(workdir, *args):
    """The command line that snakemake() runs, for a process the test controls itself."""
    return [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2", *args]


def start_snakemake(workdir, *args):
    """Start the real snakemake in the background, in a session of its own, so that a test can
    kill its whole process tree (os.killpg(process.pid, signal.SIGKILL)); output goes to files."""
    out = open(workdir.parent / f"{workdir.name}.snakemake.out", "w")
    try:
        return subprocess.Popen(snakemake_command(workdir, *args), cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    finally:
        out.close()  # the child holds its own descriptor


def planned_rules(workdir, *args):
    """Snakemake's own dry run: {rule: how many jobs of it would run now} (one job per rule for the
    per-batch and per-shard rules, whose names carry their index)."""
    out = snakemake(workdir, "--dry-run", *args).stdout
    if "Nothing to be done" in out:
        return {}
    counts = {}
    for line in out.split("Job stats:", 1)[1].splitlines():
        match = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not match:
            continue
        if match.group(1) == "total":
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


STEP_OF_RULE = [("decode_labels_", "decode"), ("prepare_inputs_", "resize"), ("infer_", "inference"),
                ("score_", "metrics"), ("aggregate", "aggregate"), ("compare", "compare"),
                ("export_onnx", "export"), ("parity", "parity"), ("calibration_inputs", "resize"),
                ("quantize_int8", "quantize"), ("agreement", "agreement"),
                ("plot_run", "plots"), ("all", "all")]


def planned_jobs(workdir):
    """Snakemake's own dry run: how many jobs of each step it would run now."""
    out = snakemake(workdir, "--dry-run").stdout
    counts = {step: 0 for _, step in STEP_OF_RULE}
    if "Nothing to be done" in out:
        return counts
    table = out.split("Job stats:", 1)[1]
    for line in table.splitlines():
        match = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not match:
            continue
        if match.group(1) == "total":
            break
        rule, count = match.group(1), int(match.group(2))
        step = next(s for prefix, s in STEP_OF_RULE if rule.startswith(prefix))
        counts[step] += count
    return counts


def leftovers(workdir):
    """Temporary files that a failed step would leave if it wrote non-atomically."""
    return [str(p) for p in workdir.rglob("*.part")]


def batch_files(folder):
    """{batch file: the image ids it holds} for the per-batch array files in `folder`."""
    import numpy as np

    files = {}
    for path in sorted(Path(folder).glob("batch-*.npz")):
        with np.load(path) as data:
            files[path] = data["ids"].tolist()
    return files


def decoded_labels(workdir, image_id):
    """The decoded label map of one image, from whichever batch file of work/labels holds it."""
    from segbench.files import read_batch

    for path, ids in batch_files(workdir / "work" / "labels").items():
        if image_id in ids:
            return read_batch([path], [image_id], "label")[image_id][0]
    return None
