"""Cluster resources of inference jobs (segbench/cluster.py), the rules that use them, and the SLURM profile."""

import os
import re
import subprocess

import pytest
import yaml

from segbench.backends import BackendError
from segbench.cluster import (GPU_MODEL_ENV, GPU_PARTITION_ENV, MIN_RUNTIME_MIN, inference_resource_callables,
                              inference_resources, weights_mb)
from workflow_helpers import REPO, make_workdir, snakemake

FCN8S_WEIGHTS_BYTES = 537_962_795  # the released PASCAL FCN-8s .caffemodel


@pytest.fixture
def fcn8s(tmp_path):
    """A model spec whose weights file has FCN-8s's size (sparse: no disk used)."""
    weights = tmp_path / "fcn8s.caffemodel"
    with open(weights, "wb") as f:
        f.truncate(FCN8S_WEIGHTS_BYTES)
    return {"prototxt": str(tmp_path / "deploy.prototxt"), "weights": str(weights)}


@pytest.fixture
def tiny(tmp_path):
    weights = tmp_path / "tiny.caffemodel"
    weights.write_bytes(b"\0" * 100_000)
    return {"prototxt": str(tmp_path / "deploy.prototxt"), "weights": str(weights)}


def test_weights_size(fcn8s, tmp_path):
    assert weights_mb(fcn8s) == pytest.approx(FCN8S_WEIGHTS_BYTES / 2**20)
    assert weights_mb({"weights": str(tmp_path / "not-there")}) == 0


def test_memory_covers_the_measured_fcn8s_peak(fcn8s):
    # Measured peak RSS at 500x500: pycaffe 4.6 GB, OpenCV DNN 2.0 GB; a job also runs Snakemake.
    caffe = inference_resources(fcn8s, "cpu", 50, backend="caffe", env={})
    opencv = inference_resources(fcn8s, "cpu", 50, backend="opencv", env={})
    assert 4.6e9 / 2**20 + 500 <= caffe["mem_mb"] <= 8 * 1024
    assert 2.0e9 / 2**20 + 500 <= opencv["mem_mb"] < caffe["mem_mb"]
    assert caffe["mem_mb"] % 256 == 0 and opencv["mem_mb"] % 256 == 0


def test_memory_grows_with_the_weights(fcn8s, tiny):
    small = inference_resources(tiny, "cpu", 50, env={})["mem_mb"]
    large = inference_resources(fcn8s, "cpu", 50, env={})["mem_mb"]
    assert 1024 <= small < 2048 < large


def test_memory_grows_with_the_shard(tiny):
    # The job holds every input of its shard: about 0.75 MB per 500x500 photo.
    small, large = (inference_resources(tiny, "cpu", n, env={})["mem_mb"] for n in (50, 1050))
    assert large - small >= 1000 * 0.75


def test_missing_weights_give_the_base_estimate(tmp_path, tiny):
    missing = inference_resources({"weights": str(tmp_path / "not-yet-downloaded")}, "cpu", 5, env={})
    assert missing == inference_resources(tiny, "cpu", 5, env={})


def test_runtime_grows_with_the_images_and_has_a_floor(fcn8s, tiny):
    assert inference_resources(tiny, "cpu", 1, env={})["runtime"] == MIN_RUNTIME_MIN
    few = inference_resources(fcn8s, "cpu", 50, env={})["runtime"]
    many = inference_resources(fcn8s, "cpu", 736, env={})["runtime"]
    assert MIN_RUNTIME_MIN <= few < many
    # 736 FCN-8s images at about 3 s each on a CPU: the request must cover that with room to spare.
    assert many >= 736 * 3 / 60 * 1.5
    assert inference_resources(fcn8s, "gpu:0", 736, env={})["runtime"] < many


def test_gpu_only_for_gpu_devices(tiny):
    env = {GPU_MODEL_ENV: "a100", GPU_PARTITION_ENV: "gpu"}
    cpu = inference_resources(tiny, "cpu", 5, env=env)
    assert cpu["gpu"] == 0 and "gpu_model" not in cpu and "slurm_partition" not in cpu
    for device in ("gpu:0", "gpu:3"):
        gpu = inference_resources(tiny, device, 5, env=env)
        assert gpu["gpu"] == 1  # one GPU per job, whatever the index
        assert gpu["gpu_model"] == "a100" and gpu["slurm_partition"] == "gpu"
    plain = inference_resources(tiny, "gpu:0", 5, env={})
    assert plain["gpu"] == 1 and "gpu_model" not in plain and "slurm_partition" not in plain


def test_exclusive_asks_for_a_whole_node(tiny):
    assert inference_resources(tiny, "cpu", 5, exclusive=True, env={})["slurm_extra"] == "--exclusive"
    assert "slurm_extra" not in inference_resources(tiny, "cpu", 5, exclusive=False, env={})


def test_a_retry_asks_for_more(fcn8s):
    first = inference_resources(fcn8s, "cpu", 50, env={})
    third = inference_resources(fcn8s, "cpu", 50, attempt=3, env={})
    assert third["mem_mb"] == 3 * first["mem_mb"] and third["runtime"] == 3 * first["runtime"]
    assert third["gpu"] == first["gpu"]


def test_bad_arguments(tiny):
    with pytest.raises(BackendError):
        inference_resources(tiny, "cuda", 5, env={})
    with pytest.raises(ValueError):
        inference_resources(tiny, "cpu", 5, attempt=0, env={})
    with pytest.raises(ValueError):
        inference_resources(tiny, "cpu", -1, env={})


def test_callables_follow_the_attempt(fcn8s):
    resources = inference_resource_callables(fcn8s, "gpu:0", 50, backend="caffe", env={GPU_MODEL_ENV: "v100"})
    for attempt in (1, 2):
        expected = inference_resources(fcn8s, "gpu:0", 50, attempt=attempt, env={GPU_MODEL_ENV: "v100"})
        assert resources["mem_mb"](None, attempt) == expected["mem_mb"]
        assert resources["runtime"](None, attempt) == expected["runtime"]
    assert resources["gpu"] == 1 and resources["gpu_model"] == "v100"


def test_the_environment_is_read_by_default(tiny, monkeypatch):
    monkeypatch.setenv(GPU_MODEL_ENV, "h100")
    assert inference_resources(tiny, "gpu:0", 5)["gpu_model"] == "h100"


def _resources_of(dry_run_output, rule):
    block = dry_run_output.split(f"rule {rule}:", 1)[1].split("\n[", 1)[0]
    line = next(l for l in block.splitlines() if l.strip().startswith("resources:"))
    return dict(re.findall(r"(\w+)=([^,]+)", line))


@pytest.mark.slow
def test_inference_rules_carry_the_resources(tmp_path):
    """Snakemake's own plan: inference jobs get memory, runtime, GPUs and --exclusive; local rules none of it."""
    workdir = make_workdir(tmp_path / "wf", limit=4, shard_size=4)
    out = snakemake(workdir, "--dry-run").stdout
    for run in ("fcn-tiny-caffe-cpu", "fcn-tiny-opencv-cpu", "fcn-tiny-caffe-cpu-160"):
        resources = _resources_of(out, f"infer_{run}_0000")
        assert resources["inference_slot"] == "1"
        assert resources["gpu"] == "0" and resources["slurm_extra"] == "--exclusive"
        assert int(resources["mem_mb"]) >= 1024 and int(resources["runtime"]) >= MIN_RUNTIME_MIN
    assert "slurm_extra" not in _resources_of(out, "decode_labels_0000")


def test_slurm_profile():
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "profile.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["retries"] >= 1
    assert 0 < profile["slurm-init-seconds-before-status-checks"] <= 15
    assert "resources" not in profile  # the workflow profile's inference_slot limit applies (see its comment)
    default = yaml.safe_load((REPO / "profiles" / "default" / "profile.yaml").read_text())
    assert "inference_slot=1" in default["resources"]


def test_cluster_script_is_executable_and_parses():
    script = REPO / "tools" / "slurm" / "cluster.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    usage = subprocess.run([str(script)], capture_output=True, text=True)
    assert usage.returncode == 2 and "start|stop|status" in usage.stderr
