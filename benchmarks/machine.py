"""What this machine can do in fp32: its cores, clock and vector units, and numpy's sgemm rate.

Peak = cores x clock x fp32 FLOPs per cycle per core, where FLOPs per cycle is
(FMA units) x (fp32 lanes per unit) x 2 (a fused multiply-add is 2 FLOPs), read
off the vendor, family and flags in /proc/cpuinfo:

  AVX-512, Intel server cores     2 x 16 x 2 = 64
  AVX-512, AMD Zen 4 (family 19h) 2 x  8 x 2 = 32  (two 256-bit FMA pipes; a 512-bit op takes both halves)
  AVX-512, AMD Zen 5 (family 1Ah) 2 x 16 x 2 = 64
  AVX2 + FMA (Haswell+, Zen 2/3)  2 x  8 x 2 = 32
  AVX2 + FMA, Zen 1 (family 17h, model < 30h)  16
  AVX (no FMA)                    8 + 8 (separate add and mul) = 16
  SSE2                            4 + 4 = 8

The clock: /proc/cpuinfo's "cpu MHz" is the nominal (TSC) rate, and under a
hypervisor the cores may run faster (turbo) without the guest seeing it; so the
clock is also measured (a chain of dependent integer adds, one per cycle, in a
small C program built with the system's cc), and the FMA throughput itself (16
independent vector FMA chains per core). The peak used for the fractions is
cores x measured clock x table FLOPs/cycle; where no C compiler is found, the
nominal clock is used.
"""

import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cpuinfo():
    text = Path("/proc/cpuinfo").read_text()
    first = text.split("\n\n")[0]
    fields = dict(re.findall(r"^([^\t:]+?)\s*:\s*(.*)$", first, re.M))
    return {"model": fields.get("model name", "unknown"), "vendor": fields.get("vendor_id", ""),
            "family": int(fields.get("cpu family", "0")), "model_number": int(fields.get("model", "0")),
            "flags": set(fields.get("flags", "").split()), "mhz": float(fields.get("cpu MHz", "0") or 0)}


def physical_cores():
    """Cores this process may use, counting SMT siblings once."""
    cpus = sorted(os.sched_getaffinity(0))
    cores = set()
    for cpu in cpus:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        cores.add(siblings.read_text().strip() if siblings.exists() else str(cpu))
    return len(cores), len(cpus)


def flops_per_cycle(info):
    """fp32 FLOPs per cycle per core for the vector units the flags show, and the reason."""
    flags, amd = info["flags"], info["vendor"] == "AuthenticAMD"
    if "avx512f" in flags:
        if amd and info["family"] == 0x19:
            return 32, "AVX-512 on AMD Zen 4 (family 19h): 2 FMA pipes x 256 bits = 2 x 8 fp32 lanes x 2 FLOPs"
        if amd:
            return 64, "AVX-512 on AMD Zen 5 (family 1Ah): 2 FMA pipes x 512 bits = 2 x 16 lanes x 2 FLOPs"
        return 64, "AVX-512 on Intel: 2 FMA units x 512 bits = 2 x 16 fp32 lanes x 2 FLOPs"
    if "avx2" in flags and "fma" in flags:
        if amd and info["family"] == 0x17 and info["model_number"] < 0x30:
            return 16, "AVX2 + FMA on AMD Zen 1: 2 FMA pipes x 128 bits"
        return 32, "AVX2 + FMA: 2 FMA units x 256 bits = 2 x 8 fp32 lanes x 2 FLOPs"
    if "avx" in flags:
        return 16, "AVX without FMA: one 8-lane add and one 8-lane multiply per cycle"
    return 8, "SSE2: one 4-lane add and one 4-lane multiply per cycle"


def _compile_peak(info):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None
    arch = ["-mavx512f", "-mfma"] if "avx512f" in info["flags"] else ["-mavx2", "-mfma"]
    if "avx2" not in info["flags"] or "fma" not in info["flags"]:
        return None
    binary = Path(tempfile.mkdtemp(prefix="segbench-peak-")) / "peak"
    result = subprocess.run([cc, "-O2", *arch, "-o", str(binary), str(HERE / "peak.c")],
                            capture_output=True, text=True)
    return binary if result.returncode == 0 else None


def _parallel(binary, mode, n, copies):
    """Run `copies` instances at once (one per core); return each one's first printed number."""
    procs = [subprocess.Popen([str(binary), mode, str(n)], stdout=subprocess.PIPE, text=True)
             for _ in range(copies)]
    return [float(p.communicate()[0].split()[0]) for p in procs]


def describe():
    """Everything about the machine's fp32 peak, as a dict."""
    info = cpuinfo()
    cores, cpus = physical_cores()
    per_cycle, why = flops_per_cycle(info)
    out = {"cpu": info["model"], "vendor": info["vendor"], "family": info["family"],
           "model_number": info["model_number"], "cores": cores, "logical_cpus": cpus,
           "nominal_ghz": info["mhz"] / 1000, "flops_per_cycle": per_cycle, "flops_per_cycle_why": why,
           "vector": "AVX-512" if "avx512f" in info["flags"] else "AVX2" if "avx2" in info["flags"] else "other",
           "measured_ghz": None, "measured_fma_gflops": None}
    binary = _compile_peak(info)
    if binary:
        # The clock, one copy per core at once (turbo can depend on how many cores are busy).
        clocks = [min(_parallel(binary, "clock", 200_000_000, cores)) for _ in range(3)]
        out["measured_ghz"] = statistics.median(clocks) / 1e9
        fma = [sum(_parallel(binary, "fma", 100_000_000, cores)) for _ in range(3)]
        out["measured_fma_gflops"] = statistics.median(fma) / 1e9
        shutil.rmtree(binary.parent, ignore_errors=True)
    ghz = out["measured_ghz"] or out["nominal_ghz"]
    out["clock_used"] = "measured" if out["measured_ghz"] else "nominal (/proc/cpuinfo)"
    out["peak_gflops"] = cores * ghz * per_cycle
    out["nominal_peak_gflops"] = cores * out["nominal_ghz"] * per_cycle
    return out


def sgemm_gflops(n=4096, repeats=5):
    """numpy's float32 matmul (its bundled OpenBLAS, all cores) on n x n matrices: median GFLOP/s of `repeats`."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        rates.append(2 * n ** 3 / (time.perf_counter() - start) / 1e9)
    return {"n": n, "median_gflops": statistics.median(rates), "max_gflops": max(rates),
            "runs": rates, "library": _numpy_blas()}


def _numpy_blas():
    try:
        from threadpoolctl import threadpool_info
        for lib in threadpool_info():
            if lib["user_api"] == "blas" and "numpy" in lib["filepath"]:
                return f"{lib['internal_api']} {lib['version']} ({lib['architecture']}, {lib['num_threads']} threads)"
    except Exception:
        pass
    return "unknown"
