"""Job parameters: one frozen dataclass, the single source of defaults and ranges.

The CLI builds its flags from it, the API validates JSON with it and serves its description at
``GET /v1/params``, and the GIMP plug-in reads that description for its defaults.
Nothing here imports TensorFlow: the device is passed in as a string.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: VGG19 convolution layers, in network order (Keras names; outputs include the ReLU).
VGG19_LAYERS: tuple[str, ...] = tuple(
    f"block{block}_conv{conv}"
    for block, convs in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4))
    for conv in range(1, convs + 1)
)

OPTIMIZERS = ("lbfgs", "adam")
INITS = ("content", "noise", "style")
#: "auto" is resolved by the engine: mixed_bfloat16 where the hardware has bfloat16 matrix units
#: (CPUs with AMX or AVX512-BF16, NVIDIA GPUs from Ampere on), float32 elsewhere.
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
#: Statistics of the painting's features that the style loss matches: Gram matrices (Gatys et
#: al.), mean and covariance (a Wasserstein-2 distance between Gaussians), or the whole
#: distribution along random directions (sliced Wasserstein, Heitz et al. 2021).
STYLE_LOSSES = ("gram", "wasserstein", "sliced")
#: How a result is brought to the photo's size when the photo is larger than the processing
#: size: a plain Lanczos resize, or one that restores detail at the photo's own scale.
UPSCALES = ("plain", "detail")
#: Strength 0..100; 50 is the balanced default.
STRENGTH_DEFAULT = 50.0

#: Smallest processing size: VGG19 pools four times before block5, so below this the deep
#: style layers see a handful of pixels and the Gram matrices carry no texture.
MIN_PROCESSING_SIZE = 64


class ParamsError(ValueError):
    """A parameter has the wrong type or is out of range; the message names it."""


def _meta(
    help_text: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] | None = None,
    items: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    return {
        "help": help_text,
        "minimum": minimum,
        "maximum": maximum,
        "choices": choices,
        "items": items,
    }


@dataclass(frozen=True)
class StyleParams:
    """Everything a stylisation job can be told. Defaults here are for a GPU; see ``for_device``."""

    iterations: int = field(
        default=500, metadata=_meta("Optimisation steps in total.", minimum=1, maximum=5000)
    )
    max_size: int = field(
        default=512,
        metadata=_meta(
            "Longer side, in pixels, at which the optimisation runs; the result is scaled back to "
            "the photo's size. 0 means the photo's full size.",
            minimum=0,
            maximum=8192,
        ),
    )
    optimizer: str = field(
        default="lbfgs",
        metadata=_meta(
            "L-BFGS converges in far fewer steps; Adam uses less memory.", choices=OPTIMIZERS
        ),
    )
    init: str = field(
        default="content",
        metadata=_meta("Starting image: the photo, random noise, or the painting.", choices=INITS),
    )
    seed: int = field(
        default=0,
        metadata=_meta(
            "Random seed: the same seed and settings give the same picture.",
            minimum=0,
            maximum=2**31 - 1,
        ),
    )
    content_weight: float = field(
        default=1.0,
        metadata=_meta("How strongly the photo's structure is kept.", minimum=0.0, maximum=1e6),
    )
    strength: float = field(
        default=STRENGTH_DEFAULT,
        metadata=_meta(
            "How much of the painting: 0 keeps the photo, 100 is mostly painting, 50 is "
            "balanced; the same number gives a comparable amount of style with any painting. "
            "Ignored when style_weight is given.",
            minimum=0.0,
            maximum=100.0,
        ),
    )
    style_weight: float | None = field(
        default=None,
        metadata=_meta(
            "Raw weight of the style loss; when given it overrides strength (null: from strength).",
            minimum=0.0,
            maximum=1e6,
        ),
    )
    tv_weight: float = field(
        default=1.0,
        metadata=_meta(
            "Smoothness: suppresses pixel noise; too high blurs.", minimum=0.0, maximum=1e6
        ),
    )
    learning_rate: float = field(
        default=0.02,
        metadata=_meta(
            "Adam's step size (pixel values are in 0..1); ignored by L-BFGS.",
            minimum=1e-5,
            maximum=1.0,
        ),
    )
    coarse_to_fine: bool = field(
        default=True,
        metadata=_meta(
            "Start small and refine at growing sizes, spending most steps at the small ones: "
            "faster, and a large result has the same look as a small one."
        ),
    )
    preserve_colors: bool = field(
        default=False,
        metadata=_meta("Keep the photo's colours: transfer brushwork and light, not the palette."),
    )
    style_blend: tuple[float, ...] = field(
        default=(),
        metadata=_meta(
            "Relative weight of each style image, in upload order (empty: equal).",
            minimum=0.0,
            maximum=1e6,
        ),
    )
    style_loss: str = field(
        default="gram",
        metadata=_meta(
            "Which statistics of the painting are matched: 'gram' (Gatys et al.), "
            "'wasserstein' (feature mean and covariance) or 'sliced' (sliced Wasserstein).",
            choices=STYLE_LOSSES,
        ),
    )
    upscale: str = field(
        default="plain",
        metadata=_meta(
            "How the result is brought to the photo's size when the photo is larger than "
            "max_size: 'plain' (Lanczos) or 'detail' (restores detail at the photo's scale).",
            choices=UPSCALES,
        ),
    )
    style_scale: float = field(
        default=1.0,
        metadata=_meta(
            "Size of the painting's brushwork in the result: 2 makes strokes twice as large.",
            minimum=0.1,
            maximum=4.0,
        ),
    )
    precision: str = field(
        default="auto",
        metadata=_meta(
            "Number format of VGG19's arithmetic (losses stay float32). 'auto' uses bfloat16 "
            "where the processor has bfloat16 units (2-3x faster, same picture), else float32.",
            choices=PRECISIONS,
        ),
    )
    jit: bool = field(
        default=False,
        metadata=_meta(
            "Compile each step with XLA: can be faster on a GPU (not consistently on a CPU); "
            "each new image size is compiled once (a few seconds)."
        ),
    )
    content_layers: tuple[str, ...] = field(
        default=("block4_conv2",),
        metadata=_meta("VGG19 layers whose features must match the photo.", items=VGG19_LAYERS),
    )
    style_layers: tuple[str, ...] = field(
        default=("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1"),
        metadata=_meta(
            "VGG19 layers whose Gram matrices must match the painting.", items=VGG19_LAYERS
        ),
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_field(f, getattr(self, f.name))
        if self.max_size != 0 and self.max_size < MIN_PROCESSING_SIZE:
            raise ParamsError(
                f"max_size must be 0 (full size) or at least {MIN_PROCESSING_SIZE}, "
                f"got {self.max_size}"
            )
        if not self.content_layers and not self.style_layers:
            raise ParamsError("at least one of content_layers and style_layers must be given")
        if self.style_blend and sum(self.style_blend) <= 0:
            raise ParamsError("style_blend needs at least one weight above 0")

    @classmethod
    def for_device(cls, device: str) -> StyleParams:
        """Defaults for ``device`` ("gpu" or "cpu").

        A CPU does one 512 px VGG19 step in seconds, not milliseconds, so its defaults are a
        smaller size and fewer steps: coarse to fine (256 -> 314 -> 384 px), an edit takes
        under a minute on two cores with bfloat16 units and a few minutes without.
        """
        if device == "gpu":
            return cls()
        return cls(iterations=150, max_size=384)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], device: str) -> StyleParams:
        """Device defaults overridden by ``values`` (e.g. parsed JSON); unknown keys are errors."""
        if not isinstance(values, Mapping):
            raise ParamsError("params must be a JSON object")
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ParamsError(
                f"unknown parameter(s): {', '.join(map(str, unknown))}; known: {', '.join(names)}"
            )
        coerced = {key: _coerce(names[key], value) for key, value in values.items()}
        return dataclasses.replace(cls.for_device(device), **coerced)

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in dataclasses.fields(self)
        }

    @classmethod
    def describe(cls, device: str) -> dict[str, dict[str, Any]]:
        """Every parameter's type, range, choices and default on ``device`` (for GET /v1/params)."""
        defaults = cls.for_device(device)
        out: dict[str, dict[str, Any]] = {}
        for f in dataclasses.fields(cls):
            meta = f.metadata
            entry: dict[str, Any] = {
                "type": _type_name(f),
                "default": defaults.to_dict()[f.name],
                "help": meta["help"],
            }
            if _is_optional(f):
                entry["nullable"] = True
            for key in ("minimum", "maximum", "choices", "items"):
                if meta.get(key) is not None:
                    entry[key] = list(meta[key]) if isinstance(meta[key], tuple) else meta[key]
            out[f.name] = entry
        return out


def _type_name(f: dataclasses.Field) -> str:
    return {
        "int": "integer",
        "float": "number",
        "float | None": "number",
        "str": "string",
        "bool": "boolean",
        "tuple[str, ...]": "array",
        "tuple[float, ...]": "array",
    }[str(f.type)]


def _is_real(value: Any) -> bool:
    # bool is an int subclass in Python; true/false for a number is a client bug.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Accept JSON-ish values of the right kind; refuse everything else with a clear message."""
    kind = _type_name(f)
    if value is None and _is_optional(f):
        return None
    if kind == "integer":
        if not _is_real(value) or (isinstance(value, float) and not value.is_integer()):
            raise ParamsError(f"{f.name} must be an integer, got {_show(value)}")
        return int(value)
    if kind == "number":
        if not _is_real(value):
            raise ParamsError(f"{f.name} must be a number, got {_show(value)}")
        return _to_float(f, value)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise ParamsError(f"{f.name} must be true or false, got {_show(value)}")
        return value
    if kind == "string":
        if not isinstance(value, str):
            raise ParamsError(f"{f.name} must be a string, got {_show(value)}")
        return value
    if str(f.type) == "tuple[float, ...]":
        if not isinstance(value, (list, tuple)) or not all(_is_real(v) for v in value):
            raise ParamsError(f"{f.name} must be a list of numbers, got {_show(value)}")
        return tuple(_to_float(f, v) for v in value)
    if isinstance(value, str):  # a single layer name is a list of one
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ParamsError(f"{f.name} must be a list of layer names, got {_show(value)}")
    return tuple(value)


def _to_float(f: dataclasses.Field, value: float) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer beyond float range, e.g. 10**400 in the JSON
        raise ParamsError(f"{f.name} is far too large, got {_show(value)}") from None


def _is_optional(f: dataclasses.Field) -> bool:
    return str(f.type).endswith("| None")


def _check_field(f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    kind = _type_name(f)
    if value is None and _is_optional(f):
        return
    if kind == "boolean":
        if not isinstance(value, bool):
            raise ParamsError(f"{f.name} must be true or false, got {_show(value)}")
    elif kind in ("integer", "number"):
        if kind == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
            raise ParamsError(f"{f.name} must be an integer, got {_show(value)}")
        if kind == "number" and (not _is_real(value) or not math.isfinite(value)):
            raise ParamsError(f"{f.name} must be a finite number, got {_show(value)}")
        _check_range(f, value)
    elif kind == "string":
        if value not in meta["choices"]:
            raise ParamsError(
                f"{f.name} must be one of {', '.join(repr(c) for c in meta['choices'])}, "
                f"got {_show(value)}"
            )
    elif str(f.type) == "tuple[float, ...]":
        if len(value) > 16:
            raise ParamsError(f"{f.name} has more than 16 entries")
        for item in value:
            if not _is_real(item) or not math.isfinite(item):
                raise ParamsError(f"{f.name} must hold finite numbers, got {_show(item)}")
            _check_range(f, item)
    else:
        bad = [v for v in value if v not in meta["items"]]
        if bad:
            raise ParamsError(
                f"{f.name}: unknown VGG19 layer(s) {', '.join(map(repr, bad))}; "
                f"valid: {', '.join(meta['items'])}"
            )
        if len(set(value)) != len(value):
            raise ParamsError(f"{f.name} lists a layer twice")


def _check_range(f: dataclasses.Field, value: float) -> None:
    lo, hi = f.metadata["minimum"], f.metadata["maximum"]
    if not lo <= value <= hi:
        raise ParamsError(f"{f.name} must be between {lo:g} and {hi:g}, got {value!r}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
