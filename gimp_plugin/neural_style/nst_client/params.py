"""From the plug-in's settings (option name -> value, see options.py) and the server's
``/v1/params`` to what a job sends: its ``params`` JSON and which paintings go up."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .errors import NstError, ServerTooOld
from .options import BY_NAME, OPTIONS, QUALITY_FACTORS, Option

#: Strength 0..100 with 50 = the server's balance. A server from before ``strength`` gets the
#: style weight instead: each 25 points multiply its default by 10 (log scale, because Gatys'
#: balance only changes visibly by decades).
STRENGTH_DEFAULT = BY_NAME["strength"].default
STRENGTH_DECADE = 25.0

#: Options build_job_params maps by hand; every other option with a ``field`` is sent as it is
#: when it differs from the server's default.
_MAPPED_BY_HAND = ("iterations", "max-size", "strength", "style-blend", "seed")


def param_default(schema: Mapping[str, Any], name: str, fallback: Any) -> Any:
    entry = schema.get("params", {}).get(name)
    if isinstance(entry, Mapping) and "default" in entry:
        return entry["default"]
    return fallback


def has_param(schema: Mapping[str, Any], name: str) -> bool:
    return isinstance(schema.get("params", {}).get(name), Mapping)


def _clamp(schema: Mapping[str, Any], name: str, value: float) -> float:
    entry = schema.get("params", {}).get(name) or {}
    lo, hi = entry.get("minimum"), entry.get("maximum")
    if isinstance(lo, (int, float)):
        value = max(lo, value)
    if isinstance(hi, (int, float)):
        value = min(hi, value)
    return value


def _needs_param(schema: Mapping[str, Any], name: str, what: str) -> None:
    """An older server rejects unknown params with a terse 400: say what to do instead."""
    if not has_param(schema, name):
        raise ServerTooOld(
            f"This neural style server does not support {what} (no '{name}' parameter): update "
            "it (run install/install.sh again) or leave that setting at its default."
        )


def style_weight_for_strength(strength: float, default_weight: float) -> float:
    """Strength 0..100 -> an older server's style_weight: 50 keeps the server default, each 25
    points up or down multiply or divide it by 10 (0 = 1/100, 100 = 100x the default)."""
    if not 0.0 <= strength <= 100.0:
        raise NstError(f"strength must be between 0 and 100, got {strength:g}")
    return default_weight * 10.0 ** ((strength - STRENGTH_DEFAULT) / STRENGTH_DECADE)


def blend_for_share(share: float) -> list[float]:
    """The plug-in's "second style share" (0..100 %) -> style_blend weights [first, second]."""
    if not 0.0 <= share <= 100.0:
        raise NstError(f"the second style's share must be between 0 and 100, got {share:g}")
    return [100.0 - share, share]


def styles_to_send(share: float, use_file: bool, has_second: bool) -> list[str]:
    """Which paintings a job uploads, by option name, in upload order. The second style counts
    only with a share above 0 (GIMP's layer chooser has no "none"); at 100 % the first would
    weigh nothing, so it stays home."""
    use_second = has_second and share > 0
    first = "style-file" if use_file else "style-layer"
    sources = [first] if share < 100 or not use_second else []
    return sources + (["style-layer-2"] if use_second else [])


def _value(settings: Mapping[str, Any], name: str) -> Any:
    return settings.get(name, BY_NAME[name].default)


def _sized(
    schema: Mapping[str, Any], settings: Mapping[str, Any], option: Option, factor: float
) -> int | None:
    """iterations / max_size: as given, or the server's default scaled by the quality."""
    value = _value(settings, option.name)
    if value != option.auto:
        return int(value)
    default = int(param_default(schema, option.field, option.default or 0) or 0)
    if option.field == "max_size":
        if default <= 0:  # 0 from the server means "full size": keep it whatever the quality
            return None
        return int(_clamp(schema, option.field, max(64, round(default * factor))))
    default = default or 150
    return int(_clamp(schema, option.field, max(1, round(default * factor))))


def _differs(value: Any, default: Any) -> bool:
    if isinstance(value, float) and isinstance(default, (int, float)):
        return not math.isclose(value, float(default))
    return value != default


def build_job_params(
    schema: Mapping[str, Any],
    settings: Mapping[str, Any] | None = None,
    *,
    styles: int = 1,
) -> dict[str, Any]:
    """The ``params`` JSON of a job from the plug-in's ``settings`` (option name -> value; a
    missing one is at its default) and the server's ``/v1/params``; ``styles`` paintings go up.

    iterations / max size at 0 follow the quality, which scales the server's device defaults;
    other values are sent as given (the server checks the range and says so). Every other
    option that sets a server parameter is sent only when it differs from the server's default,
    so the server's defaults rule while the artist leaves them alone, and an older server that
    lacks a parameter still takes jobs that do not use it.
    """
    settings = settings or {}
    quality = _value(settings, "quality")
    if quality not in QUALITY_FACTORS:
        raise NstError(f"quality must be one of {', '.join(QUALITY_FACTORS)}, got {quality!r}")
    size_factor, steps_factor = QUALITY_FACTORS[quality]
    params: dict[str, Any] = {"seed": int(_value(settings, "seed"))}
    params["iterations"] = _sized(schema, settings, BY_NAME["iterations"], steps_factor)
    max_size = _sized(schema, settings, BY_NAME["max-size"], size_factor)
    if max_size is not None:
        params["max_size"] = max_size

    strength = float(_value(settings, "strength"))
    if has_param(schema, "strength"):
        if _differs(strength, param_default(schema, "strength", STRENGTH_DEFAULT)):
            params["strength"] = float(_clamp(schema, "strength", strength))
    elif strength != STRENGTH_DEFAULT:  # a server from before `strength`: its style_weight
        default_weight = float(param_default(schema, "style_weight", 20.0) or 20.0)
        params["style_weight"] = float(
            _clamp(schema, "style_weight", style_weight_for_strength(strength, default_weight))
        )

    if styles == 2:
        _needs_param(schema, "style_blend", "blending several styles")
        params["style_blend"] = blend_for_share(float(_value(settings, "style-blend")))

    for option in OPTIONS:
        if option.field is None or option.name in _MAPPED_BY_HAND:
            continue
        value = _value(settings, option.name)
        if not _differs(value, param_default(schema, option.field, option.default)):
            continue
        _needs_param(schema, option.field, f"the setting '{option.label.replace('_', '')}'")
        if option.kind in ("double", "int"):
            value = type(value)(_clamp(schema, option.field, value))
        params[option.field] = value
    return params
