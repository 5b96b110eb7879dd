"""The workflow on a real SLURM cluster (single node, 127.0.0.1) through profiles/slurm.

The module's fixture brings the cluster up with tools/slurm/cluster.sh (installing the Debian
packages on first use, about 10-40 s) and always stops it afterwards. Every command that talks to
the cluster runs under `timeout -k`: the SLURM plugin can wait forever when sacct fails.
"""

import csv
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from workflow_helpers import REPO, SNAKEMAKE, make_workdir, read_config, snakemake, write_config

pytestmark = pytest.mark.slow

CLUSTER_SH = REPO / "tools" / "slurm" / "cluster.sh"
PROFILE = REPO / "profiles" / "slurm"
RUNS = ["fcn-tiny-caffe-cpu", "fcn-tiny-opencv-cpu", "fcn-tiny-caffe-cpu-160"]


def _cluster(action, state, limit):
    return subprocess.run(["timeout", "-k", "10", str(limit), str(CLUSTER_SH), action, str(state)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def cluster():
    """A running cluster: the environment for its clients."""
    if os.geteuid() != 0:
        pytest.skip("the test cluster runs its daemons as root")
    if not shutil.which("sbatch") and not shutil.which("apt-get"):
        pytest.skip("no SLURM and no apt-get to install it")
    # Not under pytest's tmp_path: munged wants every directory above its socket searchable.
    state = Path(tempfile.mkdtemp(prefix="segbench-slurm-", dir="/tmp"))
    state.chmod(0o755)
    try:
        started = _cluster("start", state, 300)
        if started.returncode != 0:
            pytest.fail(f"cluster.sh start failed ({started.returncode}):\n{started.stdout}\n{started.stderr}")
        yield {**os.environ, "SLURM_CONF": str(state / "etc" / "slurm.conf")}
    finally:
        stopped = _cluster("stop", state, 120)
        shutil.rmtree(state, ignore_errors=True)
        assert stopped.returncode == 0, f"cluster.sh stop failed:\n{stopped.stdout}\n{stopped.stderr}"


def run_on_slurm(workdir, env, *args, limit=240):
    """snakemake with the SLURM profile, under `timeout -k`; returns (returncode, output, SLURM run id)."""
    result = subprocess.run(
        ["timeout", "-k", "15", str(limit), str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "-d", str(workdir),
         "--cores", "2", "--profile", str(PROFILE), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=workdir, env=env,
        stdin=subprocess.DEVNULL)
    output = result.stdout
    assert result.returncode not in (124, 137), f"snakemake timed out on the cluster:\n{output[-5000:]}"
    match = re.search(r"SLURM run ID: (\S+)", output)
    assert match, f"no SLURM run ID in the output:\n{output[-5000:]}"
    return result.returncode, output, match.group(1)


def sacct_jobs(env, run_id, since):
    """The SLURM jobs of a workflow run (job name = the run id): id, name, comment, state, requested memory."""
    out = subprocess.run(
        ["timeout", "-k", "5", "30", "sacct", "-X", "-n", "-P", "--name", run_id, "-S", since,
         "-o", "JobID,JobName,Comment,State,ReqMem"],
        capture_output=True, text=True, check=True, env=env).stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    return [dict(zip(["id", "name", "comment", "state", "mem"], row)) for row in rows]


def metrics(workdir, run):
    summary = json.loads((workdir / "results" / run / "summary.json").read_text())
    return {k: v for k, v in summary.items() if k not in ("timing", "provenance")}


def predictions(workdir, run):
    folder = workdir / "results" / run / "predictions"
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_demo_on_slurm_equals_a_local_run(cluster, tmp_path):
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 60))
    local = make_workdir(tmp_path / "local", limit=8, batch_size=4, shard_size=8)
    snakemake(local)
    remote = make_workdir(tmp_path / "slurm", limit=8, batch_size=4, shard_size=8)
    # (Not at the same time as the local run: on 2 cores both get slower, and the plugin's status
    # checks back off by 10 s whenever a job is still running.)
    rc, output, run_id = run_on_slurm(remote, cluster)
    assert rc == 0, output[-5000:]

    # Only the inference jobs went to SLURM, one job per run (one shard of 8 images), and all finished.
    jobs = sacct_jobs(cluster, run_id, since)
    assert sorted(j["comment"] for j in jobs) == sorted(f"rule_infer_{run}_0000" for run in RUNS), jobs
    assert {j["state"] for j in jobs} == {"COMPLETED"}, jobs
    assert all(j["name"] == run_id and run_id.startswith("segbench_") for j in jobs)
    assert "localrule aggregate" in output and "localrule score_" in output

    for run in RUNS:
        assert metrics(remote, run) == metrics(local, run), run
        assert predictions(remote, run) == predictions(local, run), run
        assert len(predictions(remote, run)) == 8
        with open(remote / "results" / run / "per_class.csv") as f, open(local / "results" / run / "per_class.csv") as g:
            assert list(csv.reader(f)) == list(csv.reader(g))
        # The shard's provenance comes from inside the SLURM job.
        shard = json.loads((remote / "work" / "runs" / run / "inference" / "shard-0000.json").read_text())
        assert shard["provenance"]["device"] == "cpu"


def test_a_failing_inference_job_names_its_log(cluster, tmp_path):
    """A failure inside the SLURM job (the config names an output blob the net lacks, which only
    loading the net can tell) fails the workflow; the error names the rule's log, which holds the cause.
    Without the profile's retries: each retry of a failed job costs the plugin's growing status interval
    (+10 s per check), and asking more of a retry is tested in test_cluster.py."""
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 60))
    workdir = make_workdir(tmp_path / "fail", limit=4, batch_size=4, shard_size=4)
    config = read_config(workdir)
    config["runs"] = {"fcn-tiny-caffe-cpu": config["runs"]["fcn-tiny-caffe-cpu"]}
    config["models"]["fcn-tiny"]["output_blob"] = "no_such_blob"
    write_config(workdir, config)

    rc, output, run_id = run_on_slurm(workdir, cluster, "--retries", "0")
    assert rc != 0
    log = "logs/fcn-tiny-caffe-cpu/inference/0000.log"
    assert "Error in rule infer_fcn-tiny-caffe-cpu_0000" in output
    assert log in output, output[-5000:]
    assert "no output blob 'no_such_blob'" in (workdir / log).read_text()
    assert not (workdir / "work" / "runs" / "fcn-tiny-caffe-cpu" / "inference" / "shard-0000.json").exists()

    jobs = sacct_jobs(cluster, run_id, since)
    assert [(j["comment"], j["state"]) for j in jobs] == [("rule_infer_fcn-tiny-caffe-cpu_0000", "FAILED")], jobs
