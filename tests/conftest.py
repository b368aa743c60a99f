"""Shared fixtures: the real VGG19 engine and the test images in ../shared (never copied here)."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
#: Public-domain test paintings and photos live beside the repository, never inside it.
SHARED_IMAGES = Path(os.environ.get("NST_SHARED_IMAGES", REPO.parent / "shared" / "images"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Tests never touch the user's real token or log: servers started by tests (and their
# subprocesses) keep them in a throwaway config and state folder.
_ISOLATED = Path(tempfile.mkdtemp(prefix="nst-tests-"))
os.environ["XDG_CONFIG_HOME"] = str(_ISOLATED / "config")
os.environ["XDG_STATE_HOME"] = str(_ISOLATED / "state")
for _variable in ("NST_TOKEN", "NST_TOKEN_FILE"):
    os.environ.pop(_variable, None)


@pytest.fixture(scope="session")
def engine():
    """The real engine on the real VGG19 weights (fetched by install/install.sh).

    Fails, never skips, when the weights are missing: every proof of the engine needs them.
    """
    from nst_server.engine import StyleEngine
    from nst_server.weights import WeightsError, resolve_weights

    try:
        eng = StyleEngine(resolve_weights())
    except WeightsError as exc:
        pytest.fail(f"real VGG19 weights needed (run `nst-server fetch-weights`): {exc}")
    eng.load()
    return eng


@pytest.fixture(scope="session")
def shared_images() -> Path:
    """../shared/images, or a loud skip where this checkout has no shared folder beside it."""
    if not (SHARED_IMAGES / "content").is_dir():
        message = f"SKIPPED: test images not found at {SHARED_IMAGES} (../shared is absent)"
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    return SHARED_IMAGES


def load_rgb(path: Path, long_side: int | None = None) -> np.ndarray:
    """An image file as float32 RGB in [0, 1], optionally shrunk to ``long_side``."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        if long_side:
            img.thumbnail((long_side, long_side), Image.Resampling.LANCZOS)
        return np.asarray(img, np.float32) / 255.0


def synthetic_photo(height: int = 48, width: int = 64, alpha: bool = False) -> np.ndarray:
    """A smooth 'photo': gradients and a disc, so VGG features are non-trivial."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    disc = (x - width * 0.6) ** 2 + (y - height * 0.4) ** 2 < (min(height, width) * 0.25) ** 2
    rgb = np.stack([x / width, y / height, 0.3 + 0.5 * disc], axis=2).astype(np.float32)
    if alpha:
        a = np.clip(x / width * 1.5, 0, 1)[..., None].astype(np.float32)
        rgb = np.concatenate([rgb, a], axis=2)
    return rgb


def synthetic_painting(height: int = 64, width: int = 64) -> np.ndarray:
    """A 'painting': diagonal colour stripes, a texture whose Gram matrix differs from a photo's."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = (x + y) / 6.0
    rgb = np.stack(
        [
            0.5 + 0.5 * np.sin(phase),
            0.5 + 0.5 * np.sin(phase + 2.0),
            0.5 + 0.5 * np.sin(phase + 4.0),
        ],
        axis=2,
    )
    return rgb.astype(np.float32)
