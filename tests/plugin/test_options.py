"""The plug-in's one options table (nst_client/options.py): every entry that sets a server
parameter names a real ``StyleParams`` field (its range, choices and default are checked against
the real server's ``GET /v1/params`` in test_real_server.py); everything derived from the table
(dialog order, job params, presets) follows it."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "gimp_plugin" / "neural_style"))

import nst_client  # noqa: E402
from nst_client import options  # noqa: E402

from nst_server.params import StyleParams  # noqa: E402

#: Options that are the plug-in's own (no server parameter), and why.
PLUGIN_ONLY = {
    "style-layer": "a layer of the image, uploaded as a style",
    "style-file": "a file, uploaded as a style",
    "style-layer-2": "a layer of the image, uploaded as a style",
    "quality": "scales the server's default iterations and max_size",
    "server-url": "where the server is",
    "server-token": "how to talk to it",
}


def test_every_entry_names_a_styleparams_field_or_is_the_plugins_own() -> None:
    fields = {f.name for f in dataclasses.fields(StyleParams)}
    for option in options.OPTIONS:
        if option.field is None:
            assert option.name in PLUGIN_ONLY, f"{option.name} sets no server parameter"
        else:
            assert option.field in fields, f"{option.name}: no StyleParams.{option.field}"
    assert len({o.name for o in options.OPTIONS}) == len(options.OPTIONS)
    assert len({o.field for o in options.OPTIONS if o.field}) == len(
        [o for o in options.OPTIONS if o.field]
    )


def test_strength_and_the_new_engine_options_are_in_the_table() -> None:
    assert options.BY_NAME["strength"].field == "strength"
    for name in ("style-loss", "upscale"):
        assert options.BY_NAME[name].group == options.ADVANCED


def test_every_choice_the_server_offers_for_the_new_options_is_offered() -> None:
    from nst_server.params import STYLE_LOSSES, UPSCALES

    assert options.BY_NAME["style-loss"].choice_nicks() == STYLE_LOSSES
    assert options.BY_NAME["upscale"].choice_nicks() == UPSCALES


def test_each_field_option_reaches_the_job_params_when_changed() -> None:
    """Changing any option away from its default changes what the job sends: nothing in the
    table is silently dropped on its way to the server."""
    schema = {"params": StyleParams.describe("cpu")}
    base = nst_client.build_job_params(schema, {}, styles=2)
    for option in options.REMEMBERED:
        if option.field is None:
            continue
        if option.kind == options.CHOICE:
            value = next(n for n in option.choice_nicks() if n != option.default)
        elif option.kind == options.BOOL:
            value = not option.default
        else:
            value = type(option.default)((option.default or 0) + 2)
        params = nst_client.build_job_params(schema, {option.name: value}, styles=2)
        assert params != base, f"{option.name}={value!r} changed nothing"
        assert option.field in params, option.name


def test_pdb_arguments_keep_their_order_and_new_ones_go_last() -> None:
    """Scripts may pass the procedure's arguments by position: the historical order stays."""
    historical = [
        "style-layer",
        "style-file",
        "style-layer-2",
        "style-blend",
        "strength",
        "style-scale",
        "preserve-colors",
        "quality",
        "iterations",
        "max-size",
        "optimizer",
        "seed",
        "server-url",
        "server-token",
    ]
    names = [o.name for o in options.OPTIONS]
    assert names[: len(historical)] == historical
    assert names[len(historical) :] == ["style-loss", "upscale"]


def test_dialog_order_is_by_section_then_table_order() -> None:
    order = options.dialog_order()
    assert sorted(order) == sorted(o.name for o in options.OPTIONS)
    groups = [options.BY_NAME[name].group for name in order]
    assert groups == sorted(groups, key=options.GROUPS.index)
    assert order[:2] == ["style-layer", "style-file"]
    assert order[-2:] == ["server-url", "server-token"]


def test_remembered_options_are_the_look_not_the_image_or_the_machine() -> None:
    remembered = {o.name for o in options.REMEMBERED}
    assert not remembered & {"style-layer", "style-file", "style-layer-2", "server-url"}
    assert "server-token" not in remembered  # a secret never goes into a preset or record
    assert {"strength", "quality", "seed", "style-loss", "upscale"} <= remembered


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"strength": "strong"}, "strength must be a number"),
        ({"strength": 150.0}, "between 0 and 100"),
        ({"seed": 1.5}, "whole"),
        ({"quality": "ultra"}, "quality must be one of draft, standard, final"),
        ({"preserve-colors": 1}, "true or false"),
        ({"strength": float("nan")}, "finite"),
    ],
)
def test_clean_settings_reports_each_bad_value(raw: dict, problem: str) -> None:
    settings, problems = nst_client.clean_settings({"seed": 3, **raw, "unknown-future": 1})
    assert problems and problem in problems[0]
    assert "unknown-future" not in settings
