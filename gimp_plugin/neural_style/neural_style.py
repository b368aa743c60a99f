#!/usr/bin/env python3
"""GIMP 3 plug-in: Filters > Artistic > Neural Style...

Sends the active layer (the photo) and a style layer or file (the painting) to the local
neural-style server (nst_server), shows the job's progress, and inserts the result as a new layer
"Neural Style (<style name>)" above the photo, in one undo group. A selection is sent as the
job's mask (the server stylises only there, with a soft edge) and also becomes the layer's mask.
Result layers carry a parasite recording how they were made: running the plug-in on a result
layer sends its photo as the content and the result as the starting image, so a run can continue
(more steps, another style) instead of starting over.

Thin on purpose: HTTP, polling, PNG, the options table, records and the server start-up live in
the nst_client package beside this file (importable because GIMP runs this file as a script, so
its folder is on sys.path), which the tests import without GIMP. The procedure's arguments come
from nst_client.options.OPTIONS. Shape and calls follow GIMP 3.0's plug-ins/python/foggify.py:
``neural_style()`` is a pipeline of named steps.
"""

import sys
import time
from dataclasses import dataclass, field

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp

gi.require_version("Gegl", "0.4")
import nst_client
from gi.repository import Gegl, GLib, GObject
from nst_client import options

PROC_NAME = "python-fu-neural-style"

#: GIMP asks for pixels in these formats: non-linear (gamma) RGB, as the server and VGG19 expect.
#: "u16" for images deeper than 8 bits, so their precision reaches the server (a 16-bit PNG).
_FORMATS = {
    (8, False): "R'G'B' u8",
    (8, True): "R'G'B'A u8",
    (16, False): "R'G'B' u16",
    (16, True): "R'G'B'A u16",
}


class Refusal(Exception):
    """The artist asked for something the plug-in cannot do: a calling error, with the fix."""


@dataclass
class Job:
    """What one run sends and what its result layer will record."""

    content_layer: object
    source_bits: int
    params: dict
    settings: dict
    content: object  # nst_client.RawImage
    style_pngs: list
    paintings: list  # nst_client.Painting, in upload order
    mask_png: bytes | None = None
    init_png: bytes | None = None


@dataclass
class Outcome:
    """The finished job: its result PNG, its last status and what it said along the way."""

    png: bytes
    last_status: dict
    seconds: float
    notes: list = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# GIMP helpers


def _source_bits(image):
    """Bits per channel the image holds: 8, 16 (u16, half float) or 32 (u32, float, double)."""
    nick = image.get_precision().value_nick  # e.g. "u8-non-linear", "float-linear"
    if nick.startswith("u8"):
        return 8
    if nick.startswith(("u16", "half")):
        return 16
    return 32


def _read_pixels(drawable, bit_depth):
    """The drawable's pixels as an nst_client.RawImage (alpha only if the layer has one)."""
    width, height = drawable.get_width(), drawable.get_height()
    alpha = drawable.has_alpha()
    fmt = _FORMATS[(bit_depth, alpha)]
    data = drawable.get_buffer().get(
        Gegl.Rectangle.new(0, 0, width, height), 1.0, fmt, Gegl.AbyssPolicy.CLAMP
    )
    return nst_client.RawImage(width, height, 4 if alpha else 3, bit_depth, bytes(data))


def _style_from_file(gfile, bit_depth):
    """Load an image file with GIMP's own loaders (any format GIMP reads) and flatten it."""
    style_image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, gfile)
    if style_image is None:
        raise nst_client.NstError(f"GIMP could not open the style file {gfile.get_path()}")
    try:
        if style_image.get_base_type() != Gimp.ImageBaseType.RGB:
            style_image.convert_rgb()
        layer = style_image.merge_visible_layers(Gimp.MergeType.CLIP_TO_IMAGE)
        return _read_pixels(layer, bit_depth)
    finally:
        style_image.delete()


def _selection_mask(image, layer):
    """The selection over ``layer``'s extent as an 8-bit greyscale PNG of the layer's size, or
    None without a selection. Read straight from the selection channel (image coordinates);
    the abyss outside the canvas is 0, i.e. not selected."""
    if Gimp.Selection.is_empty(image):
        return None
    offset_x, offset_y = layer.get_offsets()[1:]
    width, height = layer.get_width(), layer.get_height()
    data = (
        image.get_selection()
        .get_buffer()
        .get(
            Gegl.Rectangle.new(offset_x, offset_y, width, height),
            1.0,
            "Y u8",
            Gegl.AbyssPolicy.NONE,
        )
    )
    return nst_client.encode_png(nst_client.RawImage(width, height, 1, 8, bytes(data)))


def _all_layers(layers):
    """Every layer, inside groups too (a photo layer may live in a group)."""
    for layer in layers:
        yield layer
        if layer.is_group():
            yield from _all_layers(layer.get_children())


def _new_layer(image, name, result):
    """A complete, not yet inserted layer holding the decoded result PNG."""
    layer_type = Gimp.ImageType.RGBA_IMAGE if result.has_alpha else Gimp.ImageType.RGB_IMAGE
    layer = Gimp.Layer.new(
        image, name, result.width, result.height, layer_type, 100.0, Gimp.LayerMode.NORMAL
    )
    channels = {1: "Y'", 2: "Y'A", 3: "R'G'B'", 4: "R'G'B'A"}[result.channels]
    fmt = f"{channels} u{result.bit_depth}"
    buffer = layer.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, result.width, result.height), fmt, result.pixels)
    buffer.flush()
    layer.update(0, 0, result.width, result.height)
    return layer


def _other_layer(image, *taken):
    """A sensible default style layer for the dialog: the top-most layer not in ``taken``."""
    for layer in image.get_layers():
        if layer not in taken:
            return layer
    return None


def _redraw_thumbnail_once(chooser, _allocation):
    """GIMP 3.0.4's drawable chooser draws its thumbnail when its drawable is set, which for
    a dialog is before the widget has a size, so the preview stays blank; redraw it once the
    size is known (setting the same drawable again redraws)."""
    if getattr(chooser, "_nst_redrawn", False):
        return
    chooser._nst_redrawn = True
    GLib.idle_add(lambda: chooser.set_drawable(chooser.get_drawable()) and False)


# --------------------------------------------------------------------------------------------
# The run's steps


def _target_layer(image, drawables):
    """The photo: exactly one layer of an RGB image."""
    if len(drawables) != 1 or not isinstance(drawables[0], Gimp.Layer):
        raise Refusal("Neural Style works on one layer: select the photo layer only.")
    if image.get_base_type() != Gimp.ImageBaseType.RGB:
        raise Refusal("Neural Style needs an RGB image: convert it with Image > Mode > RGB first.")
    return drawables[0]


def _continue_source(image, active):
    """(content layer, layer to start from or None): the photo itself, or, when ``active`` is a
    result of this plug-in whose photo is still in the image, that photo and the result.

    Layer ids hold within a GIMP session only; after an XCF is reopened they differ, so an id
    counts only if the name matches too, and otherwise a unique layer of that name is taken.
    """
    parasite = active.get_parasite(nst_client.RESULT_PARASITE)
    record = nst_client.decode_result_record(parasite.get_data() if parasite else None)
    if record is None:
        return active, None
    name = record["source_name"]
    source_id = record["source_id"]
    by_id = Gimp.Item.get_by_id(source_id) if Gimp.Item.id_is_valid(source_id) else None
    if (
        isinstance(by_id, Gimp.Layer)
        and by_id != active
        and by_id.get_image() == image
        and by_id.get_name() == name
    ):
        return by_id, active
    named = [
        layer
        for layer in _all_layers(image.get_layers())
        if layer.get_name() == name and layer != active
    ]
    if len(named) == 1:
        return named[0], active
    Gimp.message(
        f"Neural Style: the photo layer '{name}' this result was made from is no longer in the "
        "image, so the result layer itself is stylised as a new photo."
    )
    return active, None


def _ask(procedure, config, image, photo, content_layer, installed):
    """The dialog (interactive runs): False when the artist cancels it."""
    gi.require_version("GimpUi", "3.0")
    from gi.repository import GimpUi

    GimpUi.init(PROC_NAME)
    if config.get_property("style-layer") is None:
        config.set_property("style-layer", _other_layer(image, photo, content_layer))
    if config.get_property("style-layer-2") is None:
        # Left empty, GIMP's chooser takes the active layer (the photo): offer another
        # painting instead. It only counts once its share is above 0.
        config.set_property(
            "style-layer-2",
            _other_layer(image, photo, content_layer, config.get_property("style-layer"))
            or config.get_property("style-layer"),
        )
    if not config.get_property("server-url"):
        config.set_property("server-url", installed.get("server_url", ""))
    dialog = GimpUi.ProcedureDialog(procedure=procedure, config=config)
    main = [o.name for o in options.OPTIONS if o.group == options.STYLE]
    advanced = [o.name for o in options.OPTIONS if o.group != options.STYLE]
    dialog.get_label("advanced-label", "Advanced", False, False)
    dialog.fill_box("advanced-box", advanced)
    dialog.fill_expander("advanced", "advanced-label", False, "advanced-box")
    dialog.fill([*main, "advanced"])
    for name in ("style-layer", "style-layer-2"):
        widget = dialog.get_widget(name, GObject.TYPE_NONE)
        if isinstance(widget, GimpUi.DrawableChooser):
            widget.connect("size-allocate", _redraw_thumbnail_once)
    ok = dialog.run()
    dialog.destroy()
    return ok


def _settings(config):
    """The remembered options' values (option name -> value), as presets and records hold them."""
    return {option.name: config.get_property(option.name) for option in options.REMEMBERED}


def _paintings(config, photo, content_layer):
    """[(nst_client.Painting, pixel reader taking a bit depth)] of the paintings to send."""
    style_file = config.get_property("style-file")
    if style_file is not None and not style_file.get_path():
        style_file = None
    style_layer = config.get_property("style-layer")
    if style_layer is None and style_file is None:
        raise Refusal("Choose a style: a layer holding the painting, or an image file.")
    if style_file is None and style_layer in (photo, content_layer):
        raise Refusal("The style layer is the photo layer itself: choose the painting's layer.")
    second = config.get_property("style-layer-2")
    share = config.get_property("style-blend")
    if second is not None and share > 0 and second in (photo, content_layer):
        raise Refusal(
            "The second style layer is the photo layer itself: choose a painting's layer."
        )

    def from_layer(layer):
        painting = nst_client.Painting(layer.get_name(), layer_id=layer.get_id())
        return painting, lambda bits: _read_pixels(layer, bits)

    sources = {
        "style-file": lambda: (
            nst_client.Painting(style_file.get_basename(), file=style_file.get_path()),
            lambda bits: _style_from_file(style_file, bits),
        ),
        "style-layer": lambda: from_layer(style_layer),
        "style-layer-2": lambda: from_layer(second),
    }
    chosen = nst_client.styles_to_send(share, style_file is not None, second is not None)
    return [sources[name]() for name in chosen]


def _start_server(client, installed, report):
    nst_client.ensure_server(
        client, installed.get("start_command"), report=lambda text: report(None, text)
    )


def _prepare_job(client, image, content_layer, init_layer, paintings, settings):
    """Read the pixels and work out the params: everything the server is sent."""
    source_bits = _source_bits(image)
    # Deeper than 8 bits: send 16-bit PNGs (the server computes in float and answers in 16 bits).
    bit_depth = 8 if source_bits == 8 else 16
    params = nst_client.build_job_params(client.params(), settings, styles=len(paintings))
    content = _read_pixels(content_layer, bit_depth)
    init = None if init_layer is None else _read_pixels(init_layer, bit_depth)
    return Job(
        content_layer=content_layer,
        source_bits=source_bits,
        params=params,
        settings=settings,
        content=content,
        style_pngs=[nst_client.encode_png(read(bit_depth)) for _, read in paintings],
        paintings=[painting for painting, _ in paintings],
        mask_png=_selection_mask(image, content_layer),
        init_png=None if init is None else nst_client.encode_png(init),
    )


def _stylise(client, job, report):
    statuses, notes = [], []
    started = time.monotonic()
    png = nst_client.run_job(
        client,
        nst_client.encode_png(job.content),
        job.style_pngs,
        job.params,
        progress=report,
        mask_png=job.mask_png,
        init_png=job.init_png,
        on_note=notes.append,
        on_status=statuses.append,
    )
    return Outcome(png, statuses[-1] if statuses else {}, time.monotonic() - started, notes)


def _decode(outcome, job):
    Gimp.progress_set_text("Neural style: decoding the result")
    try:
        return nst_client.decode_png(
            outcome.png, expected_size=(job.content.width, job.content.height)
        )
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
        [p.name for p in job.paintings], facts.processing_size, (result.width, result.height)
    )
    if result.bit_depth < job.source_bits:
        # Never lose precision silently: say so in the layer name and in GIMP's messages.
        name += f" [{result.bit_depth}-bit result]"
        Gimp.message(
            f"Neural Style: the result has {result.bit_depth} bits per channel; this image has "
            f"{job.source_bits}, so the new layer holds less precision than the photo."
        )
    return name


def _insert_result(image, active, job, outcome, result):
    """The result as a new layer above ``active`` with its record, in one undo group; nothing
    is left behind when a GIMP call fails."""
    # Never silent: a note (e.g. "processed at a smaller size: memory") reaches the user.
    for note in outcome.notes:
        Gimp.message(f"Neural Style: {note}")
    facts = _facts(job, outcome)
    record = nst_client.encode_result_record(
        job.content_layer.get_id(),
        job.content_layer.get_name(),
        job.paintings,
        job.settings,
        job.params,
        facts,
    )
    Gimp.context_push()
    image.undo_group_start()
    layer = None
    inserted = False
    try:
        layer = _new_layer(image, _layer_name(job, facts, result), result)
        offset_x, offset_y = job.content_layer.get_offsets()[1:]
        layer.set_offsets(offset_x, offset_y)
        # Above the active layer: the photo, or the result this run continued from.
        image.insert_layer(layer, active.get_parent(), image.get_item_position(active))
        inserted = True
        # Persistent: survives saving as XCF, so "continue" and history work after reopening.
        layer.attach_parasite(
            Gimp.Parasite.new(
                nst_client.RESULT_PARASITE,
                Gimp.PARASITE_PERSISTENT | Gimp.PARASITE_UNDOABLE,
                record,
            )
        )
        if not Gimp.Selection.is_empty(image):
            layer.add_mask(layer.create_mask(Gimp.AddMaskType.SELECTION))
        image.set_selected_layers([layer])
    except Exception as exc:  # GIMP raises GLib.Error; never leave a half-made layer behind
        if inserted:
            image.remove_layer(layer)
        elif layer is not None:
            layer.delete()
        raise nst_client.NstError(f"Could not add the result layer: {exc}") from None
    finally:
        image.undo_group_end()
        Gimp.context_pop()
    Gimp.displays_flush()


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
        photo = _target_layer(image, drawables)
        installed = nst_client.load_config()
        content_layer, init_layer = _continue_source(image, photo)
        if run_mode == Gimp.RunMode.INTERACTIVE and not _ask(
            procedure, config, image, photo, content_layer, installed
        ):
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
        settings = _settings(config)
        paintings = _paintings(config, photo, content_layer)
        client = nst_client.make_client(
            config.get_property("server-url"), config.get_property("server-token"), installed
        )
        Gimp.progress_init("Neural style")
        try:
            _start_server(client, installed, _report)
            job = _prepare_job(client, image, content_layer, init_layer, paintings, settings)
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
