"""fingerprint: what the benchmark's numbers depend on - CPU, its vector/matrix flags, cores, memory, OS, libraries.

    python -m stages.fingerprint metrics/fingerprint.json

DVC runs this stage on every `dvc repro` (always_changed) and compares its output: the same
machine writes the same bytes, so the benchmark is reused; other hardware or other library
versions write a different file, so every variant is measured again, together, on this machine.
Only stable facts go in (no clock speed, no free memory, no host name).
"""

import argparse
import hashlib
import json
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from stages.lib import errors
from stages.lib.outputs import write_json

# CPU flags that change which kernels ONNX Runtime and oneDNN can use (x86 names from /proc/cpuinfo).
FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "sve",
)
LIBRARIES = ("torch", "onnxruntime", "onnxruntime-gpu", "timm", "numpy", "onnx")


def cpuinfo(text):
    """Model name, vendor/family/model ids and the FLAGS present, from the first /proc/cpuinfo block."""
    first = {}
    for line in text.split("\n\n")[0].splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            first[key.strip()] = value.strip()
    flags = set((first.get("flags") or first.get("Features") or "").split())
    return {
        "cpu": first.get("model name") or platform.processor() or platform.machine(),
        "cpu_id": "/".join(first.get(k, "?") for k in ("vendor_id", "cpu family", "model", "stepping")),
        "cpu_flags": [f for f in FLAGS if f in flags],
        "hypervisor": "hypervisor" in flags,
    }


def memory_gib():
    for line in Path("/proc/meminfo").read_text().splitlines() if Path("/proc/meminfo").exists() else []:
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20)  # whole GiB: the kernel's figure moves by a few MiB
    return None


def gpus():
    """GPU names the driver reports (empty without an NVIDIA driver)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def package_versions():
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def fingerprint():
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fp = {
        **cpuinfo(info),
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": memory_gib(),
        "gpus": gpus(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "libraries": package_versions(),
    }
    fp["id"] = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:12]
    return fp


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="fingerprint JSON")
    args = parser.parse_args()
    fp = fingerprint()
    write_json(args.out, fp)
    print(
        f"machine {fp['id']}: {fp['cpu']} ({fp['cpu_id']}), {fp['usable_cpus']} CPUs, {fp['memory_gib']} GiB, "
        f"flags {' '.join(fp['cpu_flags'])}; {fp['libraries']}"
    )


if __name__ == "__main__":
    errors.run(main, "fingerprint")
