"""Which device the engine runs on and in which precision; TensorFlow imported without its noise.

TensorFlow's C++ side prints start-up notices to the process's standard error before Python's
logging exists: oneDNN and CPU-instruction notices, "Could not find cuda drivers" and, on a
machine without a GPU, ``E0000 ... failed call to cuInit: ... UNKNOWN ERROR (303)``. Artists
read that as a failure. ``import_tensorflow`` imports it (and looks for GPUs, which prints the
cuInit line) with file descriptor 2 caught, drops the lines known to be noise and passes the
rest on to the log, so a real problem still shows. Nothing here imports TensorFlow at module
level: the CLI and the API import this module cheaply.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType

log = logging.getLogger(__name__)

#: C++ start-up lines that say nothing to a user (each matched anywhere in a line).
_NOISE = re.compile(
    "|".join(
        (
            r"oneDNN custom operations are on",
            r"All log messages before absl::InitializeLog\(\) is called",
            r"Could not find cuda drivers on your machine",
            r"failed call to cuInit",
            r"This TensorFlow binary is optimized to use available CPU instructions",
            r"To enable the following instructions: .* rebuild TensorFlow",
            r"Unable to register cu(DNN|FFT|BLAS) factory",
            r"computation placer already registered",
            r"TF-TRT Warning: Could not find TensorRT",
        )
    )
)

_tf: ModuleType | None = None


def import_tensorflow() -> ModuleType:
    """``tensorflow``, imported once with its C++ start-up notices filtered (see the module doc)."""
    global _tf
    if _tf is None:
        # Runtime INFO and WARNING lines from TensorFlow's C++ logging stay off as well; errors
        # (e.g. an out-of-memory) still print.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with _stderr_filtered():
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # initialises CUDA: the cuInit line
        _tf = tf
    return _tf


@contextlib.contextmanager
def _stderr_filtered() -> Iterator[None]:
    """Catch what is written to file descriptor 2 (C++ and Python alike); afterwards write back
    every line that is not known noise."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (e.g. an embedding host): nothing to filter
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [
                line
                for line in caught.read().decode("utf-8", "replace").splitlines()
                if line.strip() and not _NOISE.search(line)
            ]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def detect_device() -> str:
    """Return "gpu" when TensorFlow sees one, turning on memory growth so others keep theirs."""
    tf = import_tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # RuntimeError: already initialised (a second engine in one process), harmless.
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    return "gpu" if gpus else "cpu"


def native_bfloat16(device: str, cpu_flags: str | None = None) -> bool:
    """Whether ``device`` has bfloat16 matrix units (where mixed bfloat16 is faster, not slower).

    CPUs: the AMX-BF16 or AVX512-BF16 flags (oneDNN uses them; without them TensorFlow emulates
    bfloat16 and is slower than float32). GPUs: NVIDIA compute capability 8.0 (Ampere) or later.
    ``cpu_flags`` is the flags line of /proc/cpuinfo (read when None; tests pass their own).
    """
    if device == "gpu":
        tf = import_tensorflow()
        for gpu in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(gpu)
            if tuple(details.get("compute_capability") or (0, 0)) < (8, 0):
                return False
        return True
    if cpu_flags is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as info:
                cpu_flags = next((ln for ln in info if ln.startswith("flags")), "")
        except OSError:  # not Linux: no way to tell, float32 is the safe choice
            return False
    flags = set(cpu_flags.split(":", 1)[-1].split())
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def resolve_precision(precision: str, device: str, cpu_flags: str | None = None) -> str:
    """The Keras dtype policy a job runs with: "auto" becomes mixed_bfloat16 or float32."""
    if precision != "auto":
        return precision
    return "mixed_bfloat16" if native_bfloat16(device, cpu_flags) else "float32"


def describe(device: str, precision: str) -> str:
    """One line for the user: where the work runs and in which number format."""
    where = "GPU" if device == "gpu" else f"CPU ({os.cpu_count() or '?'} cores, no GPU found)"
    return f"device: {where}, {precision}"
