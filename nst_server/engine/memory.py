"""Free memory on the device a job runs on (what planning.py's peak_bytes is checked against)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

#: Never plan to use more than this share of what is free: the OS and other programs need room.
USABLE_SHARE = 0.8


def free_bytes(device: str) -> int | None:
    """Free memory on ``device`` ("cpu": MemAvailable; "gpu": nvidia-smi), None if unknown."""
    override = os.environ.get("NST_FREE_MEMORY_MB")  # for tests and for capping a shared box
    if override:
        return int(float(override) * 2**20)
    if device == "gpu":
        return _gpu_free_bytes()
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gpu_free_bytes() -> int | None:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
        # TensorFlow uses the first visible GPU for this engine.
        return int(out.split()[0]) * 2**20
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
