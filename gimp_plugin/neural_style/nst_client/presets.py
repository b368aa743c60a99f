"""Named presets: a look the artist saved ("Van Gogh, strong, 768 px"), one JSON file each.

They live in ``Gimp.directory()/neural-style/presets/`` (the caller passes the folder), not in
the plug-in's folder, which a re-install replaces. Two are built in and defined here. A preset
holds the remembered options (options.py), never layers, files or the server. A corrupt file
gives a readable message and the other presets still load.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import NstError
from .options import clean_settings, defaults

PRESET_VERSION = 1
MAX_NAME_CHARS = 100
#: A preset file is a few hundred bytes; anything much larger is not one.
MAX_FILE_BYTES = 64 * 1024

#: Built in, defined in code: always there, cannot be overwritten or deleted.
BUILT_IN: dict[str, dict[str, Any]] = {
    "Quick draft": {**defaults(), "quality": "draft"},
    "Final": {**defaults(), "quality": "final"},
}


@dataclass(frozen=True)
class Preset:
    name: str
    settings: dict[str, Any]
    built_in: bool = False


def _file_name(name: str) -> str:
    # Percent-encoding is reversible and keeps every name its own file on every system
    # ("a/b", "a:b" and "a?b" included).
    return urllib.parse.quote(name, safe=" -_(),'") + ".json"


def _check_name(name: str) -> str:
    name = " ".join(name.split())
    if not name:
        raise NstError("A preset needs a name.")
    if len(name) > MAX_NAME_CHARS:
        raise NstError(f"A preset's name can have at most {MAX_NAME_CHARS} characters.")
    if name in BUILT_IN:
        raise NstError(f"'{name}' is a built-in preset: choose another name.")
    return name


class PresetStore:
    """The presets in ``directory`` plus the built-in ones."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def load_all(self) -> tuple[list[Preset], list[str]]:
        """Every preset (built-in first, then saved ones by name) and a readable message for
        each file that could not be read; one bad file never hides the others."""
        presets = [Preset(name, dict(settings), True) for name, settings in BUILT_IN.items()]
        problems: list[str] = []
        try:
            files = sorted(self.directory.glob("*.json"))
        except OSError as exc:
            return presets, [f"Cannot read the presets folder {self.directory}: {exc}"]
        saved = []
        for path in files:
            try:
                saved.append(self._read(path))
            except NstError as exc:
                problems.append(str(exc))
        presets += sorted(saved, key=lambda preset: preset.name.casefold())
        return presets, problems

    def get(self, name: str) -> Preset:
        if name in BUILT_IN:
            return Preset(name, dict(BUILT_IN[name]), True)
        path = self.directory / _file_name(name)
        if not path.is_file():
            raise NstError(f"There is no preset named '{name}'.")
        return self._read(path)

    def save(self, name: str, settings: dict[str, Any]) -> Path:
        """Save (or replace) a preset; returns its file. Settings that are not a look (layers,
        server) are left out; an invalid value is refused with the reason."""
        name = _check_name(name)
        remembered, problems = clean_settings(settings)
        if problems:
            raise NstError(f"Cannot save the preset '{name}': {'; '.join(problems)}")
        doc = {"version": PRESET_VERSION, "name": name, "settings": remembered}
        path = self.directory / _file_name(name)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".json.tmp")
            temporary.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", "utf-8")
            os.replace(temporary, path)
        except OSError as exc:
            raise NstError(f"Cannot save the preset '{name}' in {self.directory}: {exc}") from None
        return path

    def delete(self, name: str) -> None:
        if name in BUILT_IN:
            raise NstError(f"'{name}' is a built-in preset and cannot be deleted.")
        path = self.directory / _file_name(name)
        try:
            path.unlink()
        except FileNotFoundError:
            raise NstError(f"There is no preset named '{name}'.") from None
        except OSError as exc:
            raise NstError(f"Cannot delete the preset '{name}': {exc}") from None

    def _read(self, path: Path) -> Preset:
        def corrupt(why: str) -> NstError:
            return NstError(f"The preset file {path} cannot be used ({why}); delete or fix it.")

        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise corrupt(str(exc)) from None
        if len(data) > MAX_FILE_BYTES:
            raise corrupt("it is far too large to be a preset")
        try:
            doc = json.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise corrupt(f"not valid JSON: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("settings"), dict):
            raise corrupt("no settings in it")
        name = doc.get("name")
        if not isinstance(name, str) or not name.strip():
            raise corrupt("no name in it")
        settings, problems = clean_settings(doc["settings"])
        if problems:
            raise corrupt("; ".join(problems))
        # A preset saved by an older plug-in lacks newer options: those take their defaults.
        return Preset(name, {**defaults(), **settings})
