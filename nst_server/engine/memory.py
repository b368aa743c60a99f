"""Memory guard: estimate what a job needs before it starts, against what the device has free.

The estimate is a per-pixel model measured on this engine (tf.function, VGG19 to block5_conv1,
float32, CPU): peak RSS grows by about 2.9 KB per pixel at 256 px and 3.6 KB at 512 px and
1024 px (activations and their gradients), plus the optimiser's state. GPUs keep activations
in device memory at about the same size. Mixed bfloat16 needs less; the guard plans for float32.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

#: Activations and gradients of VGG19 up to block5_conv1, per input pixel (measured, rounded up).
_NETWORK_BYTES_PER_PIXEL = 3_800
#: L-BFGS keeps 20 pairs of vectors of 3 values per pixel, plus a few: float32 in the engine's
#: own (the default), float64 in scipy's; planned for the larger, so either fits.
_LBFGS_BYTES_PER_PIXEL = (2 * 20 + 6) * 3 * 8
#: Adam's first and second moments, the iterate and the gradient, float64.
_ADAM_BYTES_PER_PIXEL = 4 * 3 * 8
#: Never plan to use more than this share of what is free: the OS and other programs need room.
USABLE_SHARE = 0.8


def job_bytes(pixels: int, optimizer: str) -> int:
    """Estimated peak bytes one optimisation step needs at ``pixels`` (h * w) input pixels."""
    state = _LBFGS_BYTES_PER_PIXEL if optimizer == "lbfgs" else _ADAM_BYTES_PER_PIXEL
    return pixels * (_NETWORK_BYTES_PER_PIXEL + state)


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


def largest_fitting_scale(height: int, width: int, optimizer: str, budget: int) -> float:
    """The largest factor <= 1 by which (height, width) can be scaled to fit in ``budget`` bytes."""
    need = job_bytes(height * width, optimizer)
    if need <= budget:
        return 1.0
    return (budget / need) ** 0.5
