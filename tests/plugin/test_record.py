"""Result records (the parasite on result layers): version 2 written, version 1 still read;
the result layer's name."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "gimp_plugin" / "neural_style"))

import nst_client  # noqa: E402

SETTINGS = {
    **nst_client.presets.BUILT_IN["Final"],
    "strength": 70.0,
    "seed": 1234,
    "style-loss": "sliced",
    "server-token": "s3cret-that-must-not-be-recorded",
}
PARAMS = {"iterations": 300, "max_size": 768, "seed": 1234, "strength": 70.0}


def test_version_2_round_trip() -> None:
    paintings = [
        nst_client.Painting("Starry Night", layer_id=17),
        nst_client.Painting("scream.jpg", file="/home/a/scream.jpg"),
    ]
    facts = nst_client.ResultFacts(
        processing_size=768, steps=214, time_s=83.26, engine_version=3, finished_early=True
    )
    data = nst_client.encode_result_record(42, "Photo", paintings, SETTINGS, PARAMS, facts)
    assert b"s3cret" not in data  # the token is not a look: never in a record
    # GIMP's Parasite.get_data() gives a list of ints; both forms decode.
    for form in (data, list(data)):
        record = nst_client.decode_result_record(form)
        assert record is not None
        assert record["version"] == 2
        assert (record["source_id"], record["source_name"]) == (42, "Photo")
        assert record["paintings"] == [
            {"name": "Starry Night", "layer_id": 17, "file": None},
            {"name": "scream.jpg", "layer_id": None, "file": "/home/a/scream.jpg"},
        ]
        assert record["style"] == "Starry Night + scream.jpg"
        assert record["strength"] == 70.0 and record["seed"] == 1234
        assert (record["processing_size"], record["steps"]) == (768, 214)
        assert record["time_s"] == 83.3 and record["engine_version"] == 3
        assert record["finished_early"] is True
        assert record["params"] == PARAMS
        # The settings restore the look exactly (the history's "restore").
        assert record["settings"]["style-loss"] == "sliced"
        assert record["settings"]["quality"] == "final"
        assert "server-token" not in record["settings"]


def test_version_1_records_are_still_read() -> None:
    """A record written by the previous plug-in (as saved in artists' XCF files)."""
    v1 = json.dumps(
        {
            "version": 1,
            "source_id": 7,
            "source_name": "Photo",
            "style": "Starry Night + The Scream",
            "params": {"iterations": 20, "max_size": 96, "seed": 1, "style_scale": 2.0},
        },
        sort_keys=True,
    ).encode()
    record = nst_client.decode_result_record(v1)
    assert record is not None and record["version"] == 1
    assert (record["source_id"], record["source_name"]) == (7, "Photo")
    assert [p["name"] for p in record["paintings"]] == ["Starry Night", "The Scream"]
    assert record["seed"] == 1
    # What version 1 did not record is unknown, not invented.
    assert record["processing_size"] is None and record["time_s"] is None
    assert record["engine_version"] is None and record["strength"] is None
    # Its params give back the settings they came from.
    assert record["settings"] == {
        "iterations": 20,
        "max-size": 96,
        "seed": 1,
        "style-scale": 2.0,
    }


@pytest.mark.parametrize(
    "bad",
    [
        None,
        b"",
        b"{broken",
        b"[1, 2]",
        b'{"version": 3, "source_id": 1, "source_name": "x"}',
        b'{"version": 2, "source_id": "1", "source_name": "x"}',
        b'{"version": 2, "source_id": true, "source_name": "x"}',
        b"\xff",
        b"[" * 100_000,
    ],
)
def test_garbage_is_no_record(bad) -> None:
    assert nst_client.decode_result_record(bad) is None


def test_damaged_fields_read_as_unknown() -> None:
    doc = {
        "version": 2,
        "source_id": 1,
        "source_name": "Photo",
        "settings": {"strength": "very", "seed": 5},
        "paintings": [{"name": 3}, "x", {"name": "ok", "layer_id": "9"}],
        "steps": "many",
        "time_s": None,
    }
    record = nst_client.decode_result_record(json.dumps(doc).encode())
    assert record is not None
    assert record["settings"] == {"seed": 5}
    assert record["paintings"] == [{"name": "ok", "layer_id": None, "file": None}]
    assert record["steps"] is None and record["time_s"] is None


@pytest.mark.parametrize(
    ("size", "layer", "expected"),
    [
        (384, (1000, 750), "Neural Style (Starry Night) 384 px ×2.6"),
        (384, (384, 288), "Neural Style (Starry Night)"),  # processed at full size
        (None, (1000, 750), "Neural Style (Starry Night)"),  # size unknown: said nothing
    ],
)
def test_result_layer_name(size, layer, expected) -> None:
    assert nst_client.result_layer_name(["Starry Night"], size, layer) == expected


def test_two_styles_are_both_named() -> None:
    name = nst_client.result_layer_name(["Starry Night", "The Scream"], 96, (112, 84))
    assert name == "Neural Style (Starry Night + The Scream) 96 px ×1.2"
