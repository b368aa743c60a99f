"""What a result layer remembers about how it was made (a persistent parasite, so it survives
saving and reopening an XCF), and the layer's name.

Version 2 (written): the photo layer (id for this session, name for after the XCF is reopened,
when ids change), the paintings (layer id and name, or file path), the settings (presets'
shape, so history can restore them), the params sent, and the facts: strength, processing size,
steps, seed, time taken, engine version. Version 1 (read): photo, style names and params only;
its missing facts read as None and its settings are recovered from its params where they can be.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .options import clean_settings

#: Parasite name on result layers; its data is :func:`encode_result_record`'s JSON.
RESULT_PARASITE = "neural-style-result"
RECORD_VERSION = 2

#: A version 1 record's params -> the settings they came from.
_V1_SETTINGS = {
    "iterations": "iterations",
    "max_size": "max-size",
    "seed": "seed",
    "optimizer": "optimizer",
    "preserve_colors": "preserve-colors",
    "style_scale": "style-scale",
    "strength": "strength",
}


@dataclass(frozen=True)
class Painting:
    """One painting a result was made from: a layer (id and name) or a file (path)."""

    name: str
    layer_id: int | None = None
    file: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name}
        if self.layer_id is not None:
            doc["layer_id"] = self.layer_id
        if self.file is not None:
            doc["file"] = self.file
        return doc


@dataclass(frozen=True)
class ResultFacts:
    """What the finished job tells about itself (from its last snapshot and the clock)."""

    processing_size: int | None = None
    steps: int | None = None
    time_s: float | None = None
    engine_version: int | None = None
    finished_early: bool = False


def encode_result_record(
    source_id: int,
    source_name: str,
    paintings: Sequence[Painting],
    settings: Mapping[str, Any],
    params: Mapping[str, Any],
    facts: ResultFacts = ResultFacts(),
) -> bytes:
    remembered, _problems = clean_settings(settings)
    doc = {
        "version": RECORD_VERSION,
        "source_id": int(source_id),
        "source_name": source_name,
        "style": " + ".join(p.name for p in paintings),
        "paintings": [p.to_json() for p in paintings],
        "settings": remembered,
        "params": dict(params),
        "strength": remembered.get("strength"),
        "processing_size": facts.processing_size,
        "steps": facts.steps,
        "seed": params.get("seed"),
        "time_s": round(facts.time_s, 1) if facts.time_s is not None else None,
        "engine_version": facts.engine_version,
        "finished_early": facts.finished_early,
    }
    return json.dumps(doc, sort_keys=True).encode("utf-8")


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number_or_none(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok else None


def _paintings(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for entry in doc.get("paintings") or []:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            out.append(
                {
                    "name": entry["name"],
                    "layer_id": _int_or_none(entry.get("layer_id")),
                    "file": entry.get("file") if isinstance(entry.get("file"), str) else None,
                }
            )
    if not out and isinstance(doc.get("style"), str):  # version 1: names only
        out = [{"name": n, "layer_id": None, "file": None} for n in doc["style"].split(" + ")]
    return out


def decode_result_record(data: bytes | Sequence[int] | None) -> dict[str, Any] | None:
    """The record of a result layer in version 2's shape (from a version 1 or 2 parasite), or
    None when absent or unreadable (then it is a plain layer: the plug-in stylises it as it is
    rather than failing over a damaged parasite)."""
    if not data:
        return None
    try:
        doc = json.loads(bytes(data).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, TypeError, RecursionError):
        return None
    if (
        not isinstance(doc, dict)
        or doc.get("version") not in (1, 2)
        or _int_or_none(doc.get("source_id")) is None
        or not isinstance(doc.get("source_name"), str)
    ):
        return None
    params = doc.get("params") if isinstance(doc.get("params"), dict) else {}
    if doc["version"] == 1:
        raw = {name: params[key] for key, name in _V1_SETTINGS.items() if key in params}
    else:
        raw = doc.get("settings") if isinstance(doc.get("settings"), dict) else {}
    settings, _problems = clean_settings(raw)
    return {
        "version": doc["version"],
        "source_id": doc["source_id"],
        "source_name": doc["source_name"],
        "style": doc.get("style") if isinstance(doc.get("style"), str) else "",
        "paintings": _paintings(doc),
        "settings": settings,
        "params": params,
        "strength": _number_or_none(doc.get("strength", settings.get("strength"))),
        "processing_size": _int_or_none(doc.get("processing_size")),
        "steps": _int_or_none(doc.get("steps")),
        "seed": _int_or_none(doc.get("seed", params.get("seed"))),
        "time_s": _number_or_none(doc.get("time_s")),
        "engine_version": _int_or_none(doc.get("engine_version")),
        "finished_early": doc.get("finished_early") is True,
    }


def result_layer_name(
    style_names: Sequence[str],
    processing_size: int | None = None,
    layer_size: tuple[int, int] | None = None,
) -> str:
    """ "Neural Style (Starry Night)", with the processing size and the enlargement when the
    layer is larger than the size it was processed at: "Neural Style (Starry Night) 384 px ×2.6"
    (the artist then knows the brushwork was painted small and scaled up)."""
    name = f"Neural Style ({' + '.join(style_names)})"
    if processing_size and layer_size and max(layer_size) > processing_size:
        ratio = max(layer_size) / processing_size
        name += f" {processing_size} px ×{ratio:.1f}"
    return name
