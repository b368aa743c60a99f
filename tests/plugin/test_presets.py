"""Named presets (nst_client/presets.py): save, load, delete; built-in ones; a corrupt file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "gimp_plugin" / "neural_style"))

import nst_client  # noqa: E402
from nst_client.options import defaults  # noqa: E402


@pytest.fixture
def store(tmp_path: Path) -> nst_client.PresetStore:
    # As the window makes it: Gimp.directory()/neural-style/presets, not there yet.
    return nst_client.PresetStore(tmp_path / "neural-style" / "presets")


def names(store: nst_client.PresetStore) -> list[str]:
    presets, problems = store.load_all()
    assert problems == []
    return [p.name for p in presets]


def test_built_in_presets_are_there_from_the_start(store) -> None:
    presets, problems = store.load_all()
    assert problems == []
    assert [(p.name, p.built_in) for p in presets] == [("Quick draft", True), ("Final", True)]
    assert store.get("Quick draft").settings["quality"] == "draft"
    assert store.get("Final").settings["quality"] == "final"
    assert set(store.get("Final").settings) == set(defaults())


def test_save_load_and_delete(store) -> None:
    look = {**defaults(), "strength": 85.0, "max-size": 768, "style-loss": "sliced"}
    path = store.save("Van Gogh, strong, 768 px", look)
    assert path.parent == store.directory and path.is_file()
    assert names(store) == ["Quick draft", "Final", "Van Gogh, strong, 768 px"]
    assert store.get("Van Gogh, strong, 768 px").settings == look
    # Saving again under the same name replaces it.
    store.save("Van Gogh, strong, 768 px", {**look, "strength": 60.0})
    assert store.get("Van Gogh, strong, 768 px").settings["strength"] == 60.0
    assert names(store).count("Van Gogh, strong, 768 px") == 1
    store.delete("Van Gogh, strong, 768 px")
    assert names(store) == ["Quick draft", "Final"]
    with pytest.raises(nst_client.NstError, match="no preset named"):
        store.delete("Van Gogh, strong, 768 px")


def test_names_that_are_not_file_names_still_get_their_own_file(store) -> None:
    for name in ("a/b", "a:b", "a?b", "..", "Ünïcödé ✓"):
        store.save(name, {"strength": 10.0})
    assert sorted(names(store)[2:]) == sorted(["a/b", "a:b", "a?b", "..", "Ünïcödé ✓"])
    assert all(p.parent == store.directory for p in store.directory.iterdir())
    assert store.get("a/b").settings["strength"] == 10.0


def test_only_the_look_is_saved(store) -> None:
    store.save("x", {**defaults(), "server-url": "http://evil:1", "server-token": "secret"})
    text = next(store.directory.glob("*.json")).read_text()
    assert "secret" not in text and "evil" not in text


@pytest.mark.parametrize(
    ("name", "settings", "message"),
    [
        ("", {}, "needs a name"),
        ("Final", {}, "built-in preset"),
        ("x" * 101, {}, "at most 100"),
        ("bad", {"strength": 500.0}, "between 0 and 100"),
    ],
)
def test_refused_saves_say_why(store, name, settings, message) -> None:
    with pytest.raises(nst_client.NstError, match=message):
        store.save(name, settings)


def test_built_in_presets_cannot_be_deleted(store) -> None:
    with pytest.raises(nst_client.NstError, match="built-in"):
        store.delete("Quick draft")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"{broken", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "no settings"),
        (json.dumps({"name": "x", "settings": {"strength": "max"}}).encode(), "strength"),
        (json.dumps({"settings": {}}).encode(), "no name"),
        (b" " * 70_000, "too large"),
    ],
)
def test_a_corrupt_file_gives_a_message_and_the_others_still_load(store, content, why) -> None:
    store.save("Good one", {"strength": 20.0})
    (store.directory / "broken.json").write_bytes(content)
    presets, problems = store.load_all()
    assert [p.name for p in presets] == ["Quick draft", "Final", "Good one"]
    assert len(problems) == 1
    assert "broken.json" in problems[0] and why in problems[0]
    assert "Traceback" not in problems[0]


def test_a_preset_from_an_older_plugin_gets_the_new_options_defaults(store) -> None:
    store.directory.mkdir(parents=True)
    old = {"version": 1, "name": "Old", "settings": {"strength": 30.0, "quality": "draft"}}
    (store.directory / "Old.json").write_text(json.dumps(old))
    settings = store.get("Old").settings
    assert settings["strength"] == 30.0 and settings["style-loss"] == "gram"


def test_an_unwritable_folder_gives_a_message(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = nst_client.PresetStore(blocker / "presets")
    with pytest.raises(nst_client.NstError, match="Cannot save the preset"):
        store.save("x", {})
