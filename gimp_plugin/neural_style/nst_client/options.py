"""The plug-in's options: ONE table, from which everything else is derived.

GIMP's PDB arguments (declared when GIMP starts, with no server to ask), the dialog's order and
sections, the mapping to a job's params (params.py), presets and restoring a result's settings
all read :data:`OPTIONS`. Adding an option is adding one entry here (and, if it sets a new
server parameter, nothing else: it is sent when it differs from the server's default).

PDB arguments keep the order of this table; scripts may pass them by position, so new entries go
at the end. tests/plugin/test_options.py checks every ``field`` against nst_server's
``StyleParams`` and every range and choice against what ``/v1/params`` says.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Kinds of option (how GIMP declares the argument).
LAYER, FILE, DOUBLE, INT, BOOL, CHOICE, STRING = (
    "layer",
    "file",
    "double",
    "int",
    "bool",
    "choice",
    "string",
)
# The dialog's sections, in order.
STYLE, ADVANCED, SERVER = "style", "advanced", "server"
GROUPS = (STYLE, ADVANCED, SERVER)


@dataclass(frozen=True)
class Choice:
    nick: str
    label: str
    help: str


@dataclass(frozen=True)
class Option:
    """One setting of the plug-in: a PDB argument, a control, perhaps a server parameter."""

    name: str  # PDB argument name, settings key, preset key
    kind: str
    label: str  # with GIMP's mnemonic underscore
    help: str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Choice, ...] = ()
    #: The StyleParams field this option sets (None: the plug-in's own, e.g. a layer).
    field: str | None = None
    #: A value meaning "from the quality setting": never sent as it is.
    auto: Any = None
    group: str = STYLE
    #: Kept in presets and result records and restored from them (layers, files and the
    #: server are this image's or this machine's, not a look).
    remembered: bool = True

    def choice_nicks(self) -> tuple[str, ...]:
        return tuple(choice.nick for choice in self.choices)


#: (max_size factor, iterations factor) of each quality, relative to the server's defaults for
#: its device (read from /v1/params), so "Standard" is whatever the server thinks is right on a
#: CPU or a GPU.
QUALITY_FACTORS: dict[str, tuple[float, float]] = {
    "draft": (0.5, 1 / 3),
    "standard": (1.0, 1.0),
    "final": (2.0, 2.0),
}

OPTIONS: tuple[Option, ...] = (
    Option(
        "style-layer",
        LAYER,
        "St_yle layer",
        "Layer holding the painting",
        remembered=False,
    ),
    Option(
        "style-file",
        FILE,
        "Style _file",
        "Image file to use as the style instead of a layer",
        remembered=False,
    ),
    Option(
        "style-layer-2",
        LAYER,
        "Seco_nd style layer",
        "Another painting to blend in (used when its share is above 0)",
        remembered=False,
    ),
    Option(
        "style-blend",
        DOUBLE,
        "Second style sh_are (%)",
        "Share of the second style layer in the blend, 0-100 (0: one style only)",
        default=0.0,
        minimum=0.0,
        maximum=100.0,
        field="style_blend",
    ),
    Option(
        "strength",
        DOUBLE,
        "S_trength",
        "How much of the painting: 0 keeps the photo, 100 is mostly painting, 50 is balanced",
        default=50.0,
        minimum=0.0,
        maximum=100.0,
        field="strength",
    ),
    Option(
        "style-scale",
        DOUBLE,
        "Style scal_e",
        "Size of the painting's brushwork in the result: 2 = strokes twice as large",
        default=1.0,
        minimum=0.1,
        maximum=4.0,
        field="style_scale",
    ),
    Option(
        "preserve-colors",
        BOOL,
        "Kee_p the photo's colours",
        "Transfer brushwork and light only, not the painting's palette",
        default=False,
        field="preserve_colors",
    ),
    Option(
        "quality",
        CHOICE,
        "_Quality",
        "Sets processing size and steps",
        default="standard",
        choices=(
            Choice("draft", "Draft", "Half size, a third of the steps: a quick look"),
            Choice("standard", "Standard", "The server's defaults for its device"),
            Choice("final", "Final", "Double size and steps"),
        ),
    ),
    Option(
        "iterations",
        INT,
        "_Iterations",
        "Optimisation steps (0: from the quality setting)",
        default=0,
        minimum=0,
        maximum=5000,
        field="iterations",
        auto=0,
        group=ADVANCED,
    ),
    Option(
        "max-size",
        INT,
        "_Max size",
        "Processing size in pixels, longer side (0: from the quality setting)",
        default=0,
        minimum=0,
        maximum=4096,  # the server's default limit (/v1/params says; a test checks)
        field="max_size",
        auto=0,
        group=ADVANCED,
    ),
    Option(
        "optimizer",
        CHOICE,
        "Optimi_zer",
        "Optimisation method",
        default="lbfgs",
        choices=(
            Choice("lbfgs", "L-BFGS", "Converges in fewer steps"),
            Choice("adam", "Adam", "Uses less memory"),
        ),
        field="optimizer",
        group=ADVANCED,
    ),
    Option(
        "seed",
        INT,
        "See_d",
        "Random seed (same seed, same picture)",
        default=0,
        minimum=0,
        maximum=2**31 - 1,
        field="seed",
    ),
    Option(
        "server-url",
        STRING,
        "Server _URL",
        "Neural style server (empty: the one the installer recorded, else http://127.0.0.1:8765)",
        default="",
        group=SERVER,
        remembered=False,
    ),
    Option(
        "server-token",
        STRING,
        "Server to_ken",
        "Bearer token (empty: the local server's token file, or NST_TOKEN)",
        default="",
        group=SERVER,
        remembered=False,
    ),
    Option(
        "style-loss",
        CHOICE,
        "Style _loss",
        "Which statistics of the painting are matched",
        default="gram",
        choices=(
            Choice("gram", "Gram matrices", "Gatys et al.'s classic"),
            Choice("wasserstein", "Mean and covariance", "A Wasserstein distance"),
            Choice("sliced", "Whole distribution", "Sliced Wasserstein"),
        ),
        field="style_loss",
        group=ADVANCED,
    ),
    Option(
        "upscale",
        CHOICE,
        "Up_scale",
        "How the result is enlarged to a photo larger than the processing size",
        default="plain",
        choices=(
            Choice("plain", "Plain", "A Lanczos resize"),
            Choice("detail", "Restore detail", "Detail at the photo's own scale"),
        ),
        field="upscale",
        group=ADVANCED,
    ),
)

BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}
#: The options a preset or a result record holds.
REMEMBERED: tuple[Option, ...] = tuple(option for option in OPTIONS if option.remembered)


def dialog_order() -> list[str]:
    """Option names in the order the dialog shows them: by section, then by table order."""
    return [option.name for group in GROUPS for option in OPTIONS if option.group == group]


def defaults() -> dict[str, Any]:
    """Every remembered option at its default."""
    return {option.name: option.default for option in REMEMBERED}


def check_value(option: Option, value: Any) -> Any:
    """``value`` as ``option`` holds it; raises ValueError with a readable reason otherwise."""
    if option.kind == BOOL:
        if not isinstance(value, bool):
            raise ValueError(f"{option.name} must be true or false, got {value!r:.40}")
        return value
    if option.kind in (INT, DOUBLE):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{option.name} must be a number, got {value!r:.40}")
        if not math.isfinite(value) or (option.kind == INT and value != int(value)):
            raise ValueError(f"{option.name} must be a whole finite number, got {value!r:.40}")
        if option.minimum is not None and not option.minimum <= value <= option.maximum:
            raise ValueError(
                f"{option.name} must be between {option.minimum:g} and {option.maximum:g}, "
                f"got {value!r:.40}"
            )
        return int(value) if option.kind == INT else float(value)
    if option.kind == CHOICE:
        if value not in option.choice_nicks():
            raise ValueError(
                f"{option.name} must be one of {', '.join(option.choice_nicks())}, "
                f"got {value!r:.40}"
            )
        return value
    if option.kind == STRING:
        if not isinstance(value, str):
            raise ValueError(f"{option.name} must be text, got {value!r:.40}")
        return value
    raise ValueError(f"{option.name} is not a setting that can be stored")


def clean_settings(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The remembered settings in ``raw`` that are valid, and a message for each that is not.
    Names the table does not know (a newer plug-in's) are left out silently."""
    settings: dict[str, Any] = {}
    problems: list[str] = []
    for option in REMEMBERED:
        if option.name in raw:
            try:
                settings[option.name] = check_value(option, raw[option.name])
            except ValueError as exc:
                problems.append(str(exc))
    return settings, problems
