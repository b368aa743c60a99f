"""`nst-server stylize` as a user runs it: a real process, real VGG19, real Ctrl-C (SIGINT)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, synthetic_painting, synthetic_photo


def write_png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray((pixels * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    return (
        write_png(tmp_path / "photo.png", synthetic_photo(96, 128)),
        write_png(tmp_path / "painting.png", synthetic_painting(96, 96)),
    )


def start(inputs: tuple[Path, Path], out: Path, iterations: int) -> subprocess.Popen:
    photo, painting = inputs
    return subprocess.Popen(
        [sys.executable, "-m", "nst_server", "stylize", str(photo), str(painting), "-o", str(out)]
        + ["--iterations", str(iterations), "--max-size", "128"],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
    )


def read_until(process: subprocess.Popen, marker: str, timeout: float = 120.0) -> str:
    """stderr up to and including the first line containing ``marker``."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    assert process.stderr is not None
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"{marker!r} never came; stderr so far:\n{''.join(seen)}")


def test_stylize_says_the_device_in_one_line_without_tensorflows_start_up_noise(inputs, tmp_path):
    out = tmp_path / "out.png"
    done = subprocess.run(
        [sys.executable, "-m", "nst_server", "stylize", *map(str, inputs), "-o", str(out)]
        + ["--iterations", "2", "--max-size", "64"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert [ln for ln in done.stderr.splitlines() if ln.startswith("device: ")] == [
        next(ln for ln in done.stderr.splitlines() if ln.startswith("device: "))
    ]
    for noise in ("oneDNN", "cuInit", "cuda drivers", "absl::InitializeLog", "cpu_feature_guard"):
        assert noise not in done.stderr, done.stderr
    assert Image.open(out).size == (128, 96)


def test_first_ctrl_c_keeps_the_picture_so_far_and_writes_it(inputs, tmp_path):
    out = tmp_path / "kept.png"
    process = start(inputs, out, iterations=2000)
    read_until(process, "] ")  # the progress bar: it is optimising ...
    read_until(process, "] ")  # ... and 5 s later (on a pipe, a line per 5 s) well under way
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=120)
    assert process.returncode == 0, rest
    assert "keeping the picture so far" in rest
    kept = next(ln for ln in rest.splitlines() if ln.startswith("kept the picture after step"))
    step = int(kept.split("step ")[1].split(" of")[0])
    assert 10 <= step < 2000
    picture = np.asarray(Image.open(out).convert("RGB"), np.float32) / 255
    assert picture.shape == (96, 128, 3)
    # The optimised picture, not the photo.
    assert np.abs(picture - synthetic_photo(96, 128)).mean() > 0.02


def test_a_second_ctrl_c_aborts_at_once_and_writes_nothing(inputs, tmp_path):
    out = tmp_path / "aborted.png"
    process = start(inputs, out, iterations=2000)
    read_until(process, "] ")
    process.send_signal(signal.SIGINT)
    read_until(process, "Ctrl-C again to abort")
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "aborted" in rest
    assert not out.exists()
