#!/usr/bin/env python3
"""GIMP 3 plug-in: Filters > Artistic > Neural Style...

Sends the active layer (the photo) and a style layer or file (the painting) to the local
neural-style server (nst_server) and inserts the result as a new layer "Neural Style (<style
name>)" above the photo, in one undo group. Interactive, it opens a window that stays open
(nst_gimp/window.py): runs are queued, the picture shows on the canvas while it is painted, Keep
takes it as it is, history and presets are at hand. Called by a script, it runs once with the
given arguments and GIMP's progress bar. A selection is sent as the
job's mask (the server stylises only there, with a soft edge) and also becomes the layer's mask.
Result layers carry a parasite recording how they were made: running the plug-in on a result
layer sends its photo as the content and the result as the starting image, so a run can continue
(more steps, another style) instead of starting over.

Thin on purpose: HTTP, polling, PNG, the options table, records, the server start-up and the
window's logic live in the nst_client package beside this file (importable because GIMP runs
this file as a script, so its folder is on sys.path), which the tests import without GIMP; GIMP
and GTK calls shared with the window live in nst_gimp. The procedure's arguments come
from nst_client.options.OPTIONS. Shape and calls follow GIMP 3.0's plug-ins/python/foggify.py:
``neural_style()`` is a pipeline of named steps.
"""

import sys
import time
from dataclasses import dataclass, field

import gi

gi.require_version("Gimp", "3.0")
import nst_client
from gi.repository import Gimp, GLib, GObject
from nst_client import options
from nst_gimp import images, preview
from nst_gimp.images import Refusal

PROC_NAME = "python-fu-neural-style"


@dataclass
class Job:
    """What one run sends and what its result layer will record."""

    inputs: images.Inputs
    params: dict
    settings: dict


@dataclass
class Outcome:
    """The finished job: its result PNG, its last status and what it said along the way."""

    png: bytes
    last_status: dict
    seconds: float
    notes: list = field(default_factory=list)


def _settings(config):
    """The remembered options' values (option name -> value), as presets and records hold them."""
    return {option.name: config.get_property(option.name) for option in options.REMEMBERED}


def _window(procedure, config, image, photo, content_layer, init_layer, installed):
    """Interactive: the window that stays open (nst_gimp/window.py); returns when it closes."""
    gi.require_version("GimpUi", "3.0")
    from gi.repository import GimpUi
    from nst_gimp import script, window

    GimpUi.init(PROC_NAME)
    if config.get_property("style-layer") is None:
        config.set_property("style-layer", images.other_layer(image, photo, content_layer))
    if config.get_property("style-layer-2") is None:
        # Left empty, GIMP's chooser takes the active layer (the photo): offer another
        # painting instead. It only counts once its share is above 0.
        config.set_property(
            "style-layer-2",
            images.other_layer(image, photo, content_layer, config.get_property("style-layer"))
            or config.get_property("style-layer"),
        )
    if not config.get_property("server-url"):
        config.set_property("server-url", installed.get("server_url", ""))
    studio = window.StudioWindow(
        procedure, config, image, photo, content_layer, init_layer, installed
    )
    script.attach_from_environment(studio)
    studio.run()


def _start_server(client, installed, report):
    nst_client.ensure_server(
        client, installed.get("start_command"), report=lambda text: report(None, text)
    )


def _prepare_job(client, image, content_layer, init_layer, settings, config, photo):
    """Read the pixels and work out the params: everything the server is sent."""
    chosen = images.paintings(config, photo, content_layer)
    params = nst_client.build_job_params(client.params(), settings, styles=len(chosen))
    inputs = images.read_inputs(image, content_layer, init_layer, chosen)
    return Job(inputs=inputs, params=params, settings=settings)


def _stylise(client, job, report):
    statuses, notes = [], []
    started = time.monotonic()
    png = nst_client.run_job(
        client,
        nst_client.encode_png(job.inputs.content),
        job.inputs.style_pngs,
        job.params,
        progress=report,
        mask_png=job.inputs.mask_png,
        init_png=job.inputs.init_png,
        on_note=notes.append,
        on_status=statuses.append,
    )
    return Outcome(png, statuses[-1] if statuses else {}, time.monotonic() - started, notes)


def _decode(outcome, job):
    Gimp.progress_set_text("Neural style: decoding the result")
    content = job.inputs.content
    try:
        return nst_client.decode_png(outcome.png, expected_size=(content.width, content.height))
    except ValueError as exc:
        raise nst_client.NstError(f"The server's result could not be read: {exc}") from None


def _facts(job, outcome):
    status = outcome.last_status
    progress = status.get("progress") or {}
    step = progress.get("step")
    return nst_client.ResultFacts(
        processing_size=nst_client.processing_size(status),
        steps=step if isinstance(step, int) else job.params.get("iterations"),
        time_s=outcome.seconds,
        engine_version=status.get("engine_version"),
        finished_early=progress.get("finished_early") is True,
    )


def _layer_name(job, facts, result):
    name = nst_client.result_layer_name(
        [p.name for p in job.inputs.paintings],
        facts.processing_size,
        (result.width, result.height),
    )
    note = images.precision_note(result.bit_depth, job.inputs.source_bits)
    if note:
        # Never lose precision silently: say so in the layer name and in GIMP's messages.
        Gimp.message(
            f"Neural Style: the result has {result.bit_depth} bits per channel; this image has "
            f"{job.inputs.source_bits}, so the new layer holds less precision than the photo."
        )
    return name + (note or "")


def _insert_result(image, active, job, outcome, result):
    """The result as a new layer above ``active`` (the photo, or the result this run continued
    from) with its record, in one undo group."""
    # Never silent: a note (e.g. "processed at a smaller size: memory") reaches the user.
    for note in outcome.notes:
        Gimp.message(f"Neural Style: {note}")
    facts = _facts(job, outcome)
    content_layer = job.inputs.content_layer
    record = nst_client.encode_result_record(
        content_layer.get_id(),
        content_layer.get_name(),
        job.inputs.paintings,
        job.settings,
        job.params,
        facts,
    )
    images.insert_result(
        image,
        active,
        tuple(content_layer.get_offsets()[1:]),
        _layer_name(job, facts, result),
        result,
        record,
        job.inputs.mask,
    )


def _report(fraction, text):
    Gimp.progress_set_text(text)
    if fraction is None:
        Gimp.progress_pulse()
    else:
        Gimp.progress_update(fraction)


def _fail(procedure, message, status=Gimp.PDBStatusType.EXECUTION_ERROR):
    return procedure.new_return_values(status, GLib.Error(message))


def neural_style(procedure, run_mode, image, drawables, config, data):
    try:
        # A preview layer left behind (GIMP killed a window's plug-in, an XCF saved mid-run).
        preview.remove_marked(image)
        photo = images.target_layer(image, drawables)
        installed = nst_client.load_config()
        content_layer, init_layer = images.continue_source(image, photo)
        if run_mode == Gimp.RunMode.INTERACTIVE:
            _window(procedure, config, image, photo, content_layer, init_layer, installed)
            return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())
        settings = _settings(config)
        client = nst_client.make_client(
            config.get_property("server-url"), config.get_property("server-token"), installed
        )
        Gimp.progress_init("Neural style")
        try:
            _start_server(client, installed, _report)
            job = _prepare_job(client, image, content_layer, init_layer, settings, config, photo)
            outcome = _stylise(client, job, _report)
            result = _decode(outcome, job)
            _insert_result(image, photo, job, outcome, result)
        finally:
            Gimp.progress_end()
    except Refusal as exc:
        return _fail(procedure, str(exc), Gimp.PDBStatusType.CALLING_ERROR)
    except nst_client.NstError as exc:
        return _fail(procedure, str(exc))
    except GLib.Error as exc:  # a GIMP call failed (reading pixels, loading the style file)
        return _fail(procedure, f"Neural Style: GIMP could not prepare the images: {exc.message}")
    except Exception as exc:  # anything else still reaches the user as a message, not a trace
        return _fail(procedure, f"Neural Style failed unexpectedly: {exc!r}")
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


# --------------------------------------------------------------------------------------------
# The procedure, its arguments from the options table


def _add_argument(procedure, option):
    flags = GObject.ParamFlags.READWRITE
    common = (option.name, option.label, option.help)
    if option.kind == options.LAYER:
        procedure.add_drawable_argument(*common, True, flags)
    elif option.kind == options.FILE:
        procedure.add_file_argument(*common, Gimp.FileChooserAction.OPEN, True, None, flags)
    elif option.kind == options.DOUBLE:
        procedure.add_double_argument(
            *common, option.minimum, option.maximum, option.default, flags
        )
    elif option.kind == options.INT:
        procedure.add_int_argument(*common, option.minimum, option.maximum, option.default, flags)
    elif option.kind == options.BOOL:
        procedure.add_boolean_argument(*common, option.default, flags)
    elif option.kind == options.CHOICE:
        choice = Gimp.Choice.new()
        for index, entry in enumerate(option.choices):
            choice.add(entry.nick, index, entry.label, entry.help)
        procedure.add_choice_argument(*common, choice, option.default, flags)
    elif option.kind == options.STRING:
        procedure.add_string_argument(*common, option.default, flags)
    else:
        raise ValueError(f"unknown option kind {option.kind!r} of {option.name}")


class NeuralStyle(Gimp.PlugIn):
    def do_set_i18n(self, procname):
        # Not GIMP's 'gimp30-python' domain (reserved for bundled plug-ins); no translations yet.
        return False

    def do_query_procedures(self):
        return [PROC_NAME]

    def do_create_procedure(self, name):
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, neural_style, None)
        procedure.set_image_types("RGB*")
        procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
        procedure.set_documentation(
            "Repaint a photo layer in the style of a painting (neural style transfer)",
            "Sends the active layer and a style layer or image file to the local neural-style "
            "server (VGG19, Gatys et al.) and adds the result as a new layer above the active "
            "one; a selection limits the style to it (sent as the job's mask, and the layer's "
            "mask). Run on a result layer, it continues from that result (the original photo "
            "stays the content). Strength: 0 keeps the photo, 50 is balanced, 100 is mostly "
            "painting. Iterations and max size 0 follow the quality preset, which scales the "
            "server's defaults for its device (Draft: half size, a third of the steps; Final: "
            "double).",
            name,
        )
        procedure.set_menu_label("_Neural Style...")
        procedure.set_attribution("neural-style-gimp", "MIT", "2025")
        procedure.add_menu_path("<Image>/Filters/Artistic")
        for option in options.OPTIONS:
            _add_argument(procedure, option)
        return procedure


Gimp.main(NeuralStyle.__gtype__, sys.argv)
