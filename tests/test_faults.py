"""Faults injected into real workflow runs (real Snakemake, real pycaffe, the bundled demo): a kill -9
of Snakemake in the middle of an inference shard, a disk that fills up, a file damaged after it was
written, two snakemake commands at once in one directory. Each fault must end in a clear message, never
in a half-written file taken as complete, and doing what the message says must give exactly the numbers
and the prediction PNGs of a run without the fault."""

import csv
import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
import types

import numpy as np
import pytest
from PIL import Image

from segbench import SegbenchError
from segbench.files import (DamagedFileError, DiskFullError, atomic_path, read_batch, read_json,
                            remove_stale_temp_files, write_batch, write_json)
from segbench.jobs import run_step
from workflow_helpers import (REPO, make_workdir, planned_rules, read_config, snakemake, start_snakemake,
                              write_config)

pytestmark = pytest.mark.slow

RUN = "fcn-tiny-caffe-cpu"
# The whole demo: 24 images, batches of 8 (3 files per step in work/), inference shards of 12 (2 jobs).
LIMIT, BATCH, SHARD = 24, 8, 12
IDS = [f"demo_{i:03d}" for i in range(LIMIT)]
TIMING_KEYS = {"timing", "provenance"}  # what two runs of one configuration may differ in
TIMING_COLUMNS = {"forward_s", "reshape_s"}


def fault_workdir(path):
    """A copy of the demo with one run (Caffe on the CPU) over all 24 images."""
    workdir = make_workdir(path, limit=LIMIT, batch_size=BATCH, shard_size=SHARD)
    config = read_config(workdir)
    config["runs"] = {RUN: config["runs"][RUN]}
    write_config(workdir, config)
    return workdir


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same configuration, run once without a fault."""
    workdir = fault_workdir(tmp_path_factory.mktemp("faults") / "reference")
    snakemake(workdir)
    return workdir


def prediction(workdir, image_id):
    return workdir / "results" / RUN / "predictions" / f"{image_id}.png"


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def results(workdir):
    """A run's numbers (every metric of summary.json, per image and per class) and its predictions."""
    out = workdir / "results" / RUN
    summary = json.loads((out / "summary.json").read_text())
    return {
        "summary": {k: v for k, v in summary.items() if k not in TIMING_KEYS},
        "per_image": [{k: v for k, v in row.items() if k not in TIMING_COLUMNS}
                      for row in read_csv(out / "per_image.csv")],
        "per_class": read_csv(out / "per_class.csv"),
        "predictions": {p.name: p.read_bytes() for p in sorted((out / "predictions").glob("*.png"))},
    }


def assert_same_results(workdir, reference):
    got, want = results(workdir), results(reference)
    assert {"pixel_accuracy", "pixel_accuracy_void_as_error", "mean_accuracy", "mean_iou", "fw_iou", "per_class",
            "confusion_matrix", "per_image_means"} <= set(want["summary"])
    assert sorted(got["predictions"]) == [f"{i}.png" for i in IDS]
    differing = [name for name in want["predictions"] if got["predictions"][name] != want["predictions"][name]]
    assert not differing, f"prediction PNGs differ from the run without a fault: {differing}"
    for key in ("summary", "per_image", "per_class"):
        assert got[key] == want[key], key


def unreadable_outputs(workdir, skip=()):
    """Files under work/ and results/ that a rerun would take as complete but that do not read back
    (an .npz with every array, a PNG decoded, a JSON or CSV parsed), and temporary files left behind."""
    bad = []
    for root in ("work", "results"):
        for path in sorted((workdir / root).rglob("*")):
            if not path.is_file() or path in skip:
                continue
            try:
                if path.name.endswith(".part"):
                    bad.append(f"{path}: temporary file left behind")
                elif path.suffix == ".npz":
                    with np.load(path) as data:
                        for name in data.files:
                            data[name]
                elif path.suffix == ".png":
                    with Image.open(path) as image:
                        image.load()
                elif path.suffix == ".json":
                    json.loads(path.read_text())
                elif path.suffix == ".csv":
                    read_csv(path)
            except Exception as error:  # noqa: BLE001 (any failure to read is the finding)
                bad.append(f"{path}: {type(error).__name__}: {error}")
    return bad


def output_of(process_result):
    return process_result.stdout + process_result.stderr


def segbench_errors(output):
    return [line for line in output.splitlines() if line.startswith("segbench error in rule")]


# --- 1. kill -9 of Snakemake and its jobs in the middle of an inference shard -------------------------

def shard_images(shard):
    return IDS[shard * SHARD:(shard + 1) * SHARD]


def kill_in_a_shard(workdir):
    """Start the workflow and kill -9 its whole process tree once one inference shard is done and the
    other has written some but not all of its predictions (Snakemake runs them in either order).
    Return (the interrupted shard, the killed process group), or None if the moment was missed."""
    shard_json = [workdir / "work" / "runs" / RUN / "inference" / f"shard-{s:04d}.json" for s in (0, 1)]
    pngs = [[prediction(workdir, i) for i in shard_images(s)] for s in (0, 1)]
    process = start_snakemake(workdir)
    interrupted = None
    try:
        while process.poll() is None:
            for done, running in ((0, 1), (1, 0)):
                if (shard_json[done].exists() and not shard_json[running].exists()
                        and any(p.exists() for p in pngs[running])):
                    os.killpg(process.pid, signal.SIGKILL)
                    interrupted = running
                    break
            if interrupted is not None:
                break
            time.sleep(0.001)
    finally:
        if process.poll() is None and interrupted is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    # The job may have finished its shard between the last look and the kill.
    if interrupted is None or process.returncode != -signal.SIGKILL or shard_json[interrupted].exists():
        return None
    return interrupted, process.pid


def process_group_gone(group, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.01)
    return False


def test_kill_9_in_an_inference_shard_redoes_that_shard_only(reference, tmp_path):
    for attempt in range(4):
        workdir = fault_workdir(tmp_path / f"attempt-{attempt}")
        process_log = tmp_path / f"attempt-{attempt}.snakemake.out"
        killed = kill_in_a_shard(workdir)
        if killed:
            break
    else:
        pytest.fail("snakemake finished its inference shards each time before it could be killed in one")
    shard, group = killed
    finished_shard = 1 - shard
    assert process_group_gone(group), "a process of the killed snakemake is still running"

    # What the kill left: every file there reads back; temporary files may be left, but are never taken
    # for outputs (their names are no job's output).
    leftovers = {p for p in workdir.rglob("*.part") if p.name.startswith(".")}
    assert not unreadable_outputs(workdir, skip=leftovers), process_log.read_text()[-3000:]
    shards = workdir / "work" / "runs" / RUN / "inference"
    interrupted = {prediction(workdir, i) for i in shard_images(shard)}
    assert any(p.exists() for p in interrupted) and not all(p.exists() for p in interrupted)
    done = {p: (p.stat().st_mtime_ns, p.read_bytes())
            for root in ("work", "results") for p in (workdir / root).rglob("*")
            if p.is_file() and p not in interrupted and p not in leftovers}
    assert shards / f"shard-{finished_shard:04d}.json" in done
    assert all(prediction(workdir, i) in done for i in shard_images(finished_shard))
    # A temporary file as a job killed while writing it leaves, from long ago.
    stale = prediction(workdir, IDS[-1]).with_name(f".{IDS[-1]}.png.k1ll3d_9.part")
    stale.write_bytes(b"half a PNG")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))

    # Snakemake's lock stays behind after a kill: the same command is refused until --unlock.
    refused = snakemake(workdir, check=False)
    assert refused.returncode != 0
    assert "Directory cannot be locked" in refused.stderr and "--unlock" in refused.stderr
    snakemake(workdir, "--unlock")

    # Planned: the interrupted shard's inference job and what depends on it, and any scoring job that had
    # not started yet (one that needs the finished shard only, if Snakemake ran the other shard first).
    planned = planned_rules(workdir)
    batches = range(LIMIT // BATCH)
    depends_on_shard = {f"infer_{RUN}_{shard:04d}", "aggregate", "compare", "plot_run", "plot_runs", "all"} | {
        f"score_{RUN}_{b:04d}" for b in batches if set(IDS[b * BATCH:(b + 1) * BATCH]) & set(shard_images(shard))}
    metrics = workdir / "work" / "runs" / RUN / "metrics"
    never_started = {f"score_{RUN}_{b:04d}" for b in batches if not (metrics / f"batch-{b:04d}.json").exists()}
    assert set(planned) == depends_on_shard | never_started
    assert all(count == 1 for count in planned.values())

    # The same command again (rerun-incomplete is in the workflow profile) finishes the run.
    rerun = snakemake(workdir)
    assert f"rule infer_{RUN}_{finished_shard:04d}:" not in output_of(rerun)
    changed = [str(p) for p, (mtime, data) in done.items() if p.stat().st_mtime_ns != mtime or p.read_bytes() != data]
    assert not changed, f"finished before the kill, but written again: {changed}"
    assert_same_results(workdir, reference)
    if "remove_stale_temp_files" in (REPO / "rules" / "common.smk").read_text():  # the onstart cleanup
        assert not stale.exists()  # (one the kill itself left is under a minute old: kept)


# --- 2. the disk fills up ---------------------------------------------------------------------------------

@pytest.fixture
def small_disk():
    """small_disk(folder, free_kb): `folder` becomes an 8 MiB tmpfs with a filler file that leaves about
    `free_kb` KiB; returns the filler. Unmounted at the end of the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill up needs root (mount -t tmpfs)")
    mounted = []

    def make(folder, free_kb):
        folder.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here to fill up: {result.stderr.strip()}")
        mounted.append(folder)
        stat = os.statvfs(folder)
        filler = folder / "filler.bin"
        filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - free_kb * 1024))
        return filler

    yield make
    for folder in reversed(mounted):
        if subprocess.run(["umount", str(folder)]).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)])


def test_disk_full_during_inference_stops_with_a_clear_message(reference, tmp_path, small_disk):
    workdir = fault_workdir(tmp_path / "wd")
    # results/ on a volume with room for 10 of the 12 predictions of an inference shard.
    filler = small_disk(workdir / "results", free_kb=40)
    failed = snakemake(workdir, check=False)
    out = output_of(failed)
    assert failed.returncode != 0
    errors = segbench_errors(out)
    assert errors, out[-5000:]
    assert re.match(rf"segbench error in rule infer_{RUN}_000[01]: the disk is full \(no space left on the device\) "
                    rf"while writing results/{RUN}/predictions/demo_\d{{3}}\.png; nothing half-written was kept\. "
                    rf"Free some space, then run the same command again", errors[0]), errors
    assert "Traceback" not in out
    assert not unreadable_outputs(workdir, skip={filler})
    assert not (workdir / "results" / RUN / "summary.json").exists()

    filler.unlink()
    snakemake(workdir)
    assert_same_results(workdir, reference)


def test_disk_full_for_snakemakes_own_records_loses_nothing(reference, tmp_path, small_disk):
    """Snakemake's own .snakemake/ (job markers, metadata, its log) runs out of space mid-run: it warns
    "Failed to set marker file for job started", or stops with "Error recording metadata for finished
    job ([Errno 28] No space left on device)"; the outputs there are complete, and the same command,
    with space again, finishes the run with the right numbers."""
    workdir = fault_workdir(tmp_path / "wd")
    filler = small_disk(workdir / ".snakemake", free_kb=64)
    failed = snakemake(workdir, check=False)
    out = output_of(failed)
    assert failed.returncode != 0
    assert "No space left on device" in out, out[-5000:]
    assert not unreadable_outputs(workdir)

    filler.unlink()
    snakemake(workdir)
    assert_same_results(workdir, reference)


# --- 3. a file damaged after it was written ---------------------------------------------------------------

DAMAGED = {
    "labels-batch": "work/labels/batch-0001.npz",
    "inputs-batch": "work/inputs/native/batch-0002.npz",
    "prediction": f"results/{RUN}/predictions/demo_005.png",
    "metrics-json": f"work/runs/{RUN}/metrics/batch-0001.json",
}


@pytest.mark.parametrize("relative", DAMAGED.values(), ids=DAMAGED.keys())
def test_damaged_file_is_named_then_recomputed(reference, tmp_path, relative):
    workdir = shutil.copytree(reference, tmp_path / "wd", symlinks=True)  # keeps modification times
    path = workdir / relative
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # cut to half; its new modification time makes jobs read it again

    failed = snakemake(workdir, check=False)
    out = output_of(failed)
    assert failed.returncode != 0
    errors = segbench_errors(out)
    assert errors, out[-5000:]
    for line in errors:
        assert relative in line and "damaged" in line and "delete it and run the same command again" in line, line
    assert "Traceback" not in out
    # No number made from the damaged file: the summary is the one from before, or (when aggregation
    # was the failed job, whose outputs Snakemake removes) none.
    if (workdir / "results" / RUN / "summary.json").exists():
        assert results(workdir)["summary"] == results(reference)["summary"]

    path.unlink()  # as the message says
    # Snakemake removed the failed job's outputs (for a damaged inference input: the shard's good
    # predictions). It makes a missing file again only if it is a target or a job that needs it has
    # to run: `rule all` lists the predictions, so that they are made again although the numbers
    # computed from them are up to date.
    missing = [i for i in IDS if not prediction(workdir, i).exists()]
    if missing:
        assert planned_rules(workdir), f"{len(missing)} predictions are missing and Snakemake has nothing to do"
    snakemake(workdir)
    assert_same_results(workdir, reference)


# --- 4. two snakemake commands at once in one directory ---------------------------------------------------

def test_second_snakemake_in_the_same_directory_is_refused(reference, tmp_path):
    workdir = fault_workdir(tmp_path / "wd")
    locks = workdir / ".snakemake" / "locks"
    first = start_snakemake(workdir)
    try:
        deadline = time.monotonic() + 120
        while not any(locks.glob("*.lock")):
            assert first.poll() is None, "the first snakemake ended before it locked the directory"
            assert time.monotonic() < deadline, "the first snakemake did not lock the directory"
            time.sleep(0.005)
        second = snakemake(workdir, check=False)
        first_still_running = first.poll() is None
        first.wait(timeout=600)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    log = (tmp_path / "wd.snakemake.out").read_text()
    assert first_still_running, "the first snakemake finished before the second one looked at the lock"
    assert second.returncode != 0
    assert "Directory cannot be locked" in second.stderr, output_of(second)[-3000:]
    assert "Execute" not in output_of(second)  # it ran no job
    assert first.returncode == 0, log[-5000:]
    assert_same_results(workdir, reference)


# --- the helpers that make the faults safe ------------------------------------------------------------------

def test_remove_stale_temp_files(tmp_path):
    old = time.time() - 3600
    stale = tmp_path / "work" / "labels" / ".batch-0000.npz.abc_1234.part"
    fresh = tmp_path / "results" / "run" / "predictions" / ".demo_000.png.zz99xy00.part"
    download = tmp_path / "work" / "model.caffemodel.part"  # segbench.download resumes these: kept
    output = tmp_path / "results" / "run" / "summary.json"
    folder = tmp_path / "results" / ".plots.abcdefgh.part"  # a folder, not atomic_path's file
    for path in (stale, fresh, download, output):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    folder.mkdir()
    for path in (stale, download, output, folder):
        os.utime(path, (old, old))
    removed = remove_stale_temp_files([tmp_path / "work", tmp_path / "results", tmp_path / "missing"])
    assert removed == [str(stale)]
    assert not stale.exists() and fresh.exists() and download.exists() and output.exists() and folder.exists()
    assert remove_stale_temp_files([tmp_path / "results"], min_age_s=0) == [str(fresh)]


def test_atomic_path_on_a_full_disk_names_the_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "batch-0000.npz"
    with pytest.raises(DiskFullError) as info:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(target) in str(info.value) and "disk is full" in str(info.value)
    assert "run the same command again" in str(info.value)
    assert list(target.parent.iterdir()) == []


@pytest.mark.parametrize("damage", ["half", "garbage", "empty", "no-array"])
def test_read_batch_of_a_damaged_file_names_it(tmp_path, damage):
    path = tmp_path / "batch-0000.npz"
    write_batch(path, ["a", "b"], label=[np.zeros((30, 40), np.uint8), np.ones((30, 40), np.uint8)])
    data = path.read_bytes()
    if damage == "half":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file" * 50)
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a well-formed archive without the label arrays
        np.savez(path, ids=np.array(["a", "b"]))
    with pytest.raises(DamagedFileError) as info:
        read_batch([path], ["a", "b"], "label")
    message = str(info.value)
    assert message.startswith(f"{path}: the file is damaged") and "delete it and run the same command again" in message


def test_read_json_of_a_damaged_file_names_it(tmp_path):
    path = tmp_path / "batch-0000.json"
    write_json(path, {"images": [{"id": "a", "confusion": [[1, 2], [3, 4]]}]})
    assert read_json(path)["images"][0]["id"] == "a"
    path.write_text(path.read_text()[:20])
    with pytest.raises(DamagedFileError, match=re.escape(str(path))) as info:
        read_json(path)
    assert "delete it and run the same command again" in str(info.value)


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device", "logs/x.log"),
                                   DiskFullError("results/x.png")])
def test_run_step_on_a_full_disk_exits_with_the_message(tmp_path, capsys, error):
    job = types.SimpleNamespace(rule="score_x", log=[str(tmp_path / "job.log")], output=["results/x.png"])

    def step(sm):
        raise error

    try:
        with pytest.raises(SystemExit) as info:
            run_step(job, step)
    finally:
        for handler in logging.root.handlers[:]:
            logging.root.removeHandler(handler)
            handler.close()
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("segbench error in rule score_x: the disk is full") and "Traceback" not in err
    assert ("results/x.png" if isinstance(error, SegbenchError) else "logs/x.log") in err
    assert "run the same command again" in err


def test_job_log_on_a_full_disk_costs_no_traceback(capsys):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full (a device whose every write fails with 'No space left on device')")
    job = types.SimpleNamespace(rule="score_x", log=["/dev/full"], output=["results/x.png"])
    try:
        run_step(job, lambda sm: logging.getLogger("segbench").info("a line that cannot be written"))
    finally:
        for handler in logging.root.handlers[:]:
            logging.root.removeHandler(handler)
            try:
                handler.close()
            except OSError:  # what it still holds cannot be written either (logging.shutdown ignores this)
                pass
    assert "Logging error" not in capsys.readouterr().err
