"""What a user needs to trust and reproduce a result: which code, files and machine produced it."""

import hashlib
import importlib.metadata
import json
import platform
import socket
import subprocess
import sys
from pathlib import Path

from . import __version__

PACKAGES = ("snakemake", "numpy", "pillow", "pandas", "opencv-python-headless", "protobuf", "threadpoolctl", "onnx", "onnxruntime", "openvino")


def sha256_file(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(value):
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_model(device):
    """The GPU's name from nvidia-smi for a 'gpu:N' device; None for the CPU or when it cannot tell."""
    if not device.startswith("gpu:"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "-i", device.split(":")[1], "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_versions():
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(directory):
    """The commit of the segbench checkout in `directory`, with '-dirty' when it has uncommitted changes."""
    try:
        commit = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(directory), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return commit.stdout.strip() + ("-dirty" if dirty else "")


def machine(device):
    """Where a job ran: recorded by the inference job itself, which may run on a cluster node."""
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "gpu_model": gpu_model(device),
        "platform": platform.platform(),
        "python_version": platform.python_version(),
        "python_executable": sys.executable,
        "packages": package_versions(),
    }


def segbench_source():
    return {"segbench_version": __version__, "segbench_commit": git_commit(Path(__file__).resolve().parents[1])}
