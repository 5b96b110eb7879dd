"""What this CPU can compute natively, from /proc/cpuinfo.

The reduced precisions only pay off, and some only run at all, where the CPU has instructions
for them: a backend asked for bf16 on a CPU without them would emulate it (slower than fp32, yet
labelled bf16 in the results), so the backends refuse such runs up front from these flags.
"""

import functools
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
FP16_FLAGS = ("avx512_fp16", "amx_fp16")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.lru_cache(maxsize=None)
def _cpuinfo_fields():
    """(flags, model name) of the first processor in /proc/cpuinfo; empty where there is none."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return frozenset(), None
    flags, model = frozenset(), None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        # x86 says "flags", ARM says "Features".
        if key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
        elif key == "model name" and model is None:
            model = value.strip()
        if flags and model:
            break
    return flags, model


def cpu_flags():
    """The CPU's feature flags (a set; empty where /proc/cpuinfo is missing)."""
    return set(_cpuinfo_fields()[0])


def cpu_model_name():
    """The CPU's model name from /proc/cpuinfo, else what the platform module says."""
    return _cpuinfo_fields()[1] or platform.processor() or platform.machine() or "unknown"


def is_x86():
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def native_precisions(flags=None):
    """The reduced precisions this CPU computes natively, each with the instructions behind it.

    {"bf16": "avx512_bf16", "fp16": ..., "int8": "vnni" | "avx2 (vpmaddubsw)"}; a precision
    without native support is absent. int8 on AVX2 without VNNI works but multiplies u8 x s8
    pairs into saturating int16 sums (vpmaddubsw), which is why quantize_int8 then uses 7-bit weights.
    """
    flags = cpu_flags() if flags is None else set(flags)
    native = {}
    for precision, names in (("bf16", BF16_FLAGS), ("fp16", FP16_FLAGS)):
        found = [name for name in names if name in flags]
        if found:
            native[precision] = " ".join(found)
    if any(name in flags for name in VNNI_FLAGS):
        native["int8"] = "vnni"
    elif "avx2" in flags:
        native["int8"] = "avx2 (vpmaddubsw)"
    return native
