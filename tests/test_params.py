"""StyleParams: the one source of defaults, ranges and validation."""

from __future__ import annotations

import dataclasses

import pytest

from nst_server.params import VGG19_LAYERS, ParamsError, StyleParams


def test_cpu_defaults_are_smaller_and_shorter_than_gpu_defaults():
    cpu, gpu = StyleParams.for_device("cpu"), StyleParams.for_device("gpu")
    assert cpu.max_size < gpu.max_size and cpu.iterations < gpu.iterations
    assert gpu.max_size == 512
    assert cpu.content_layers == ("block4_conv2",)
    assert cpu.style_layers == tuple(f"block{i}_conv1" for i in range(1, 6))
    assert cpu.optimizer == "lbfgs" and cpu.init == "content"


def test_params_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        StyleParams().iterations = 3  # type: ignore[misc]


def test_from_mapping_overrides_device_defaults():
    p = StyleParams.from_mapping(
        {"iterations": 7.0, "style_weight": 5, "style_layers": "block2_conv1"}, "cpu"
    )
    assert p.iterations == 7 and isinstance(p.iterations, int)
    assert p.style_weight == 5.0 and isinstance(p.style_weight, float)
    assert p.style_layers == ("block2_conv1",)
    assert p.max_size == StyleParams.for_device("cpu").max_size


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"iterations": "ten"}, "iterations must be an integer"),
        ({"iterations": True}, "iterations must be an integer"),
        ({"iterations": 2.5}, "iterations must be an integer"),
        ({"iterations": 0}, "iterations must be between 1 and 5000"),
        ({"iterations": 10**9}, "iterations must be between"),
        ({"max_size": 20}, "max_size must be 0 (full size) or at least 64"),
        ({"max_size": -1}, "max_size must be between"),
        ({"optimizer": "sgd"}, "optimizer must be one of 'lbfgs', 'adam'"),
        ({"optimizer": 3}, "optimizer must be a string"),
        ({"style_weight": "heavy"}, "style_weight must be a number"),
        ({"style_weight": float("nan")}, "style_weight must be a finite number"),
        ({"tv_weight": -1}, "tv_weight must be between"),
        ({"tv_weight": 10**400}, "tv_weight is far too large"),
        ({"iterations": 10**400}, "iterations must be between"),
        ({"content_layers": ["block9_conv9"]}, "unknown VGG19 layer"),
        ({"content_layers": [1, 2]}, "must be a list of layer names"),
        ({"style_layers": ["block1_conv1", "block1_conv1"]}, "lists a layer twice"),
        ({"content_layers": [], "style_layers": []}, "at least one of"),
        ({"colour": 1}, "unknown parameter(s): colour"),
        ({"preserve_colors": 1}, "preserve_colors must be true or false"),
        ({"style_blend": [1, "a"]}, "style_blend must be a list of numbers"),
        ({"style_blend": [1, -1]}, "style_blend must be between 0 and"),
        ({"style_blend": [0, 0]}, "at least one weight above 0"),
        ({"style_scale": 9}, "style_scale must be between 0.1 and 4"),
    ],
)
def test_bad_values_are_refused_with_a_message_naming_the_field(values, message):
    with pytest.raises(ParamsError) as info:
        StyleParams.from_mapping(values, "cpu")
    assert message in str(info.value)


def test_from_mapping_needs_an_object():
    with pytest.raises(ParamsError, match="JSON object"):
        StyleParams.from_mapping([1, 2], "cpu")  # type: ignore[arg-type]


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_describe_lists_every_field_with_type_range_and_device_default(device):
    described = StyleParams.describe(device)
    defaults = StyleParams.for_device(device).to_dict()
    assert set(described) == {f.name for f in dataclasses.fields(StyleParams)}
    for name, entry in described.items():
        assert entry["default"] == defaults[name]
        assert entry["type"] in {"integer", "number", "string", "boolean", "array"}
        assert entry["help"]
    assert described["iterations"]["minimum"] == 1 and described["iterations"]["maximum"] == 5000
    assert described["optimizer"]["choices"] == ["lbfgs", "adam"]
    assert described["style_layers"]["items"] == list(VGG19_LAYERS)


def test_to_dict_round_trips_through_from_mapping():
    p = StyleParams.from_mapping({"iterations": 9, "content_layers": ["block5_conv2"]}, "gpu")
    assert StyleParams.from_mapping(p.to_dict(), "gpu") == p


def test_strength_is_the_default_and_a_raw_style_weight_is_optional():
    p = StyleParams.from_mapping({}, "cpu")
    assert p.strength == 50.0 and p.style_weight is None
    assert StyleParams.from_mapping({"style_weight": None}, "cpu").style_weight is None
    assert StyleParams.from_mapping({"strength": 80}, "cpu").strength == 80.0
    described = StyleParams.describe("cpu")
    assert described["style_weight"]["nullable"] is True
    assert described["strength"]["minimum"] == 0 and described["strength"]["maximum"] == 100
    assert described["style_loss"]["choices"] == ["gram", "wasserstein", "sliced"]
    with pytest.raises(ParamsError, match="strength must be between 0 and 100"):
        StyleParams.from_mapping({"strength": 101}, "cpu")
    with pytest.raises(ParamsError, match="style_loss must be one of"):
        StyleParams.from_mapping({"style_loss": "gatys"}, "cpu")
