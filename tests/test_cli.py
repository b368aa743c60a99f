"""`nst-server` end to end, as a user runs it (a subprocess, the real engine, 64-96 px)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, synthetic_painting, synthetic_photo


def run_cli(
    *args: str, timeout: float = 240, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "nst_server", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def save_png(pixels: np.ndarray, path: Path) -> Path:
    Image.fromarray((pixels * 255 + 0.5).astype(np.uint8)).save(path)
    return path


def test_stylize_writes_a_stylised_png_of_the_content_size(tmp_path):
    content = save_png(synthetic_photo(72, 96, alpha=True), tmp_path / "photo.png")
    style = save_png(synthetic_painting(), tmp_path / "painting.png")
    out = tmp_path / "out" / "result.png"
    done = run_cli(
        "stylize", str(content), str(style), "-o", str(out), "--iterations", "4", "--max-size", "64"
    )
    assert done.returncode == 0, done.stderr
    assert "weights: VGG19" in done.stderr  # says which weights are in use
    assert "4/4" in done.stderr  # the progress bar reached the end
    result = np.asarray(Image.open(out))
    source = np.asarray(Image.open(content))
    assert result.shape == source.shape == (72, 96, 4)
    np.testing.assert_array_equal(result[..., 3], source[..., 3])
    assert np.abs(result[..., :3].astype(float) - source[..., :3]).mean() > 2


def test_stylize_refuses_a_file_that_is_not_an_image(tmp_path):
    bogus = tmp_path / "notes.png"
    bogus.write_text("not a picture")
    style = save_png(synthetic_painting(), tmp_path / "painting.png")
    done = run_cli("stylize", str(bogus), str(style), "-o", str(tmp_path / "x.png"))
    assert done.returncode == 2
    assert "notes.png: not an image" in done.stderr and "Traceback" not in done.stderr
    assert "VGG19" not in done.stderr  # refused before the network was loaded
    assert not (tmp_path / "x.png").exists()


def test_stylize_refuses_out_of_range_params_before_any_work(tmp_path):
    content = save_png(synthetic_photo(), tmp_path / "photo.png")
    done = run_cli(
        "stylize", str(content), str(content), "-o", str(tmp_path / "x.png"), "--iterations", "0"
    )
    assert done.returncode == 2
    assert "iterations must be between 1 and 5000" in done.stderr


def test_every_param_has_a_flag():
    from nst_server.cli import _build_parser
    from nst_server.params import StyleParams

    help_text = io.StringIO()
    parser = _build_parser()
    stylize = parser._subparsers._group_actions[0].choices["stylize"]  # noqa: SLF001
    stylize.print_help(help_text)
    for name in StyleParams.describe("cpu"):
        assert "--" + name.replace("_", "-") in help_text.getvalue()


def test_serve_refuses_a_short_token_and_warns_about_token_on_the_command_line():
    done = run_cli("serve", "--token", "s3cret", "--port", "1", timeout=120)
    assert done.returncode == 2
    assert "at least 32" in done.stderr and "Traceback" not in done.stderr
    assert "process list" in done.stderr and "--token-file" in done.stderr


def test_serve_refuses_bad_settings_from_the_environment():
    done = run_cli("serve", timeout=120, env={"NST_QUEUE_SIZE": "0"})
    assert done.returncode == 2
    assert "NST_QUEUE_SIZE" in done.stderr and "between 1 and 1000" in done.stderr


def test_token_command_shows_and_resets_the_token(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    where = run_cli("token", timeout=60, env=env)
    path = tmp_path / "neural-style" / "token"
    assert where.returncode == 0 and str(path) in where.stdout
    assert "token.header" in where.stdout  # how to use it without putting it in argv
    assert (path.stat().st_mode & 0o777) == 0o600
    shown = run_cli("token", "--show", timeout=60, env=env)
    assert shown.stdout.strip() == path.read_text().strip()
    reset = run_cli("token", "--reset", timeout=60, env=env)
    assert reset.returncode == 0 and "install.sh" in reset.stderr
    assert path.read_text().strip() != shown.stdout.strip()
    assert shown.stdout.strip() not in reset.stdout + reset.stderr


@pytest.mark.parametrize("argv", [["--version"], ["fetch-weights"]])
def test_version_and_fetch_weights_when_present(argv):
    done = run_cli(*argv, timeout=180)
    assert done.returncode == 0, done.stderr
    assert ("nst-server 0." in done.stdout) or ("VGG19 weights ready" in done.stdout)
