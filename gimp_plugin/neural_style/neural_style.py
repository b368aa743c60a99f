#!/usr/bin/env python3
"""GIMP 3 plug-in: Filters > Artistic > Neural Style...

Sends the active layer (the photo) and a style layer or file (the painting) to the local
neural-style server (nst_server), shows the job's progress, and inserts the result as a new layer
"Neural Style (<style name>)" above the photo, in one undo group. A selection is sent as the
job's mask (the server stylises only there, with a soft edge) and also becomes the layer's mask.
Result layers carry a parasite naming their photo layer: running the plug-in on a result layer
sends that photo as the content and the result as the starting image, so a run can continue
(more steps, another style) instead of starting over.

Thin on purpose: HTTP, polling, PNG and the server start-up live in nst_client.py (a sibling
module, importable because GIMP runs this file as a script, so its folder is on sys.path), which
the tests import without GIMP. Shape and calls follow GIMP 3.0's own plug-ins/python/foggify.py.
"""

import sys

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp

gi.require_version("Gegl", "0.4")
import nst_client
from gi.repository import Gegl, GLib, GObject

PROC_NAME = "python-fu-neural-style"

#: GIMP asks for pixels in these formats: non-linear (gamma) RGB, as the server and VGG19 expect.
#: "u16" for images deeper than 8 bits, so their precision reaches the server (a 16-bit PNG).
_FORMATS = {
    (8, False): "R'G'B' u8",
    (8, True): "R'G'B'A u8",
    (16, False): "R'G'B' u16",
    (16, True): "R'G'B'A u16",
}


def _source_bits(image):
    """Bits per channel the image holds: 8, 16 (u16, half float) or 32 (u32, float, double)."""
    nick = image.get_precision().value_nick  # e.g. "u8-non-linear", "float-linear"
    if nick.startswith("u8"):
        return 8
    if nick.startswith(("u16", "half")):
        return 16
    return 32


def _fail(procedure, message, status=Gimp.PDBStatusType.EXECUTION_ERROR):
    return procedure.new_return_values(status, GLib.Error(message))


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


def _continue_source(image, active):
    """(record, source photo layer) when ``active`` is a result of this plug-in whose photo is
    still in the image; (record, None) when that photo is gone; (None, None) otherwise.

    Layer ids hold within a GIMP session only; after an XCF is reopened they differ, so an id
    counts only if the name matches too, and otherwise a unique layer of that name is taken.
    """
    parasite = active.get_parasite(nst_client.RESULT_PARASITE)
    record = nst_client.decode_result_record(parasite.get_data() if parasite else None)
    if record is None:
        return None, None
    name = record["source_name"]
    source_id = record["source_id"]
    by_id = Gimp.Item.get_by_id(source_id) if Gimp.Item.id_is_valid(source_id) else None
    if (
        isinstance(by_id, Gimp.Layer)
        and by_id != active
        and by_id.get_image() == image
        and by_id.get_name() == name
    ):
        return record, by_id
    named = [
        layer
        for layer in _all_layers(image.get_layers())
        if layer.get_name() == name and layer != active
    ]
    return record, (named[0] if len(named) == 1 else None)


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


def neural_style(procedure, run_mode, image, drawables, config, data):
    if len(drawables) != 1 or not isinstance(drawables[0], Gimp.Layer):
        return _fail(
            procedure,
            "Neural Style works on one layer: select the photo layer only.",
            Gimp.PDBStatusType.CALLING_ERROR,
        )
    active = drawables[0]
    if image.get_base_type() != Gimp.ImageBaseType.RGB:
        return _fail(
            procedure,
            "Neural Style needs an RGB image: convert it with Image > Mode > RGB first.",
            Gimp.PDBStatusType.CALLING_ERROR,
        )

    try:
        settings = nst_client.load_config()
    except nst_client.NstError as exc:
        return _fail(procedure, str(exc))

    # Continue from a result: the photo it was made from is the content, the result the start.
    content_layer, init_layer = active, None
    record, source = _continue_source(image, active)
    if source is not None:
        content_layer, init_layer = source, active
    elif record is not None:
        Gimp.message(
            f"Neural Style: the photo layer '{record['source_name']}' this result was made from "
            "is no longer in the image, so the result layer itself is stylised as a new photo."
        )

    if run_mode == Gimp.RunMode.INTERACTIVE:
        gi.require_version("GimpUi", "3.0")
        from gi.repository import GimpUi

        GimpUi.init(PROC_NAME)
        if config.get_property("style-layer") is None:
            config.set_property("style-layer", _other_layer(image, active, content_layer))
        if config.get_property("style-layer-2") is None:
            # Left empty, GIMP's chooser takes the active layer (the photo): offer another
            # painting instead. It only counts once its share is above 0.
            config.set_property(
                "style-layer-2",
                _other_layer(image, active, content_layer, config.get_property("style-layer"))
                or config.get_property("style-layer"),
            )
        if not config.get_property("server-url"):
            config.set_property("server-url", settings.get("server_url", ""))
        dialog = GimpUi.ProcedureDialog(procedure=procedure, config=config)
        dialog.fill(
            [
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
        )
        for name in ("style-layer", "style-layer-2"):
            widget = dialog.get_widget(name, GObject.TYPE_NONE)
            if isinstance(widget, GimpUi.DrawableChooser):
                widget.connect("size-allocate", _redraw_thumbnail_once)
        ok = dialog.run()
        dialog.destroy()
        if not ok:
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())

    style_layer = config.get_property("style-layer")
    style_file = config.get_property("style-file")
    if style_file is not None and not style_file.get_path():
        style_file = None
    if style_layer is None and style_file is None:
        return _fail(
            procedure,
            "Choose a style: a layer holding the painting, or an image file.",
            Gimp.PDBStatusType.CALLING_ERROR,
        )
    if style_file is None and style_layer in (active, content_layer):
        return _fail(
            procedure,
            "The style layer is the photo layer itself: choose the painting's layer.",
            Gimp.PDBStatusType.CALLING_ERROR,
        )
    # The second style only counts with a share above 0: the dialog's drawable chooser has no
    # "none" entry, so its value alone cannot say "off", and 0 (the default) keeps one style.
    style_layer_2 = config.get_property("style-layer-2")
    share = config.get_property("style-blend")
    if style_layer_2 is not None and share > 0 and style_layer_2 in (active, content_layer):
        return _fail(
            procedure,
            "The second style layer is the photo layer itself: choose a painting's layer.",
            Gimp.PDBStatusType.CALLING_ERROR,
        )
    use_second = style_layer_2 is not None and share > 0

    url = config.get_property("server-url") or settings.get("server_url") or ""
    client = nst_client.NstClient(url, config.get_property("server-token") or "")
    source_bits = _source_bits(image)
    # Deeper than 8 bits: send 16-bit PNGs (the server computes in float and answers in 16 bits).
    bit_depth = 8 if source_bits == 8 else 16

    Gimp.progress_init("Neural style")

    def report(fraction, text):
        Gimp.progress_set_text(text)
        if fraction is None:
            Gimp.progress_pulse()
        else:
            Gimp.progress_update(fraction)

    notes = []
    try:
        nst_client.ensure_server(
            client, settings.get("start_command"), report=lambda text: report(None, text)
        )
        schema = client.params()
        styles, style_names = [], []
        if share < 100 or not use_second:  # at 100 % the first style would weigh nothing
            if style_file is not None:
                styles.append(_style_from_file(style_file, bit_depth))
                style_names.append(style_file.get_basename())
            else:
                styles.append(_read_pixels(style_layer, bit_depth))
                style_names.append(style_layer.get_name())
        if use_second:
            styles.append(_read_pixels(style_layer_2, bit_depth))
            style_names.append(style_layer_2.get_name())
        params = nst_client.build_job_params(
            schema,
            quality=config.get_property("quality"),
            strength=config.get_property("strength"),
            iterations=config.get_property("iterations"),
            max_size=config.get_property("max-size"),
            optimizer=config.get_property("optimizer"),
            seed=config.get_property("seed"),
            preserve_colors=config.get_property("preserve-colors"),
            style_scale=config.get_property("style-scale"),
            style_blend=nst_client.blend_for_share(share) if len(styles) == 2 else None,
        )
        content = _read_pixels(content_layer, bit_depth)
        init_png = None
        if init_layer is not None:
            init_png = nst_client.encode_png(_read_pixels(init_layer, bit_depth))
        png = nst_client.run_job(
            client,
            nst_client.encode_png(content),
            [nst_client.encode_png(style) for style in styles],
            params,
            progress=report,
            mask_png=_selection_mask(image, content_layer),
            init_png=init_png,
            on_note=notes.append,
        )
        Gimp.progress_set_text("Neural style: decoding the result")
        result = nst_client.decode_png(png, expected_size=(content.width, content.height))
    except nst_client.NstError as exc:
        Gimp.progress_end()
        return _fail(procedure, str(exc))
    except ValueError as exc:  # a PNG we cannot decode
        Gimp.progress_end()
        return _fail(procedure, f"The server's result could not be read: {exc}")
    except GLib.Error as exc:  # a GIMP call failed (reading pixels, loading the style file)
        Gimp.progress_end()
        return _fail(procedure, f"Neural Style: GIMP could not prepare the images: {exc.message}")
    except Exception as exc:  # anything else still reaches the user as a message, not a trace
        Gimp.progress_end()
        return _fail(procedure, f"Neural Style failed unexpectedly: {exc!r}")

    name = f"Neural Style ({' + '.join(style_names)})"
    if result.bit_depth < source_bits:
        # Never lose precision silently: say so in the layer name and in GIMP's messages.
        name += f" [{result.bit_depth}-bit result]"
        Gimp.message(
            f"Neural Style: the result has {result.bit_depth} bits per channel; this image has "
            f"{source_bits}, so the new layer holds less precision than the photo."
        )

    # Never silent: a note (e.g. "processed at a smaller size: memory") reaches the user.
    for note in notes:
        Gimp.message(f"Neural Style: {note}")
    record_bytes = nst_client.encode_result_record(
        content_layer.get_id(), content_layer.get_name(), " + ".join(style_names), params
    )

    Gimp.context_push()
    image.undo_group_start()
    layer = None
    inserted = False
    try:
        layer = _new_layer(image, name, result)
        offset_x, offset_y = content_layer.get_offsets()[1:]
        layer.set_offsets(offset_x, offset_y)
        # Above the active layer: the photo, or the result this run continued from.
        image.insert_layer(layer, active.get_parent(), image.get_item_position(active))
        inserted = True
        # Persistent: survives saving as XCF, so "continue" works after reopening the file.
        layer.attach_parasite(
            Gimp.Parasite.new(
                nst_client.RESULT_PARASITE,
                Gimp.PARASITE_PERSISTENT | Gimp.PARASITE_UNDOABLE,
                record_bytes,
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
        return _fail(procedure, f"Could not add the result layer: {exc}")
    finally:
        image.undo_group_end()
        Gimp.context_pop()
        Gimp.progress_end()
    Gimp.displays_flush()
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


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
            "stays the content). Strength: 50 is the server's "
            "balance; every 25 points up or down multiply or divide the style weight by 10. "
            "Iterations and max size 0 follow the quality preset, which scales the server's "
            "defaults for its device (Draft: half size, a third of the steps; Final: double).",
            name,
        )
        procedure.set_menu_label("_Neural Style...")
        procedure.set_attribution("neural-style-gimp", "MIT", "2025")
        procedure.add_menu_path("<Image>/Filters/Artistic")

        flags = GObject.ParamFlags.READWRITE
        procedure.add_drawable_argument(
            "style-layer", "St_yle layer", "Layer holding the painting", True, flags
        )
        procedure.add_file_argument(
            "style-file",
            "Style _file",
            "Image file to use as the style instead of a layer",
            Gimp.FileChooserAction.OPEN,
            True,
            None,
            flags,
        )
        procedure.add_drawable_argument(
            "style-layer-2",
            "Seco_nd style layer",
            "Another painting to blend in (used when its share is above 0)",
            True,
            flags,
        )
        procedure.add_double_argument(
            "style-blend",
            "Second style sh_are (%)",
            "Share of the second style layer in the blend, 0-100 (0: one style only)",
            0.0,
            100.0,
            0.0,
            flags,
        )
        procedure.add_double_argument(
            "strength",
            "S_trength",
            "Style vs content, 0-100 (50: server default; +-25 = style weight x/÷ 10)",
            0.0,
            100.0,
            nst_client.STRENGTH_DEFAULT,
            flags,
        )
        procedure.add_double_argument(
            "style-scale",
            "Style scal_e",
            "Size of the painting's brushwork in the result: 2 = strokes twice as large",
            0.1,
            4.0,
            1.0,
            flags,
        )
        procedure.add_boolean_argument(
            "preserve-colors",
            "Kee_p the photo's colours",
            "Transfer brushwork and light only, not the painting's palette",
            False,
            flags,
        )
        quality = Gimp.Choice.new()
        quality.add("draft", 0, "Draft", "Half size, a third of the steps: a quick look")
        quality.add("standard", 1, "Standard", "The server's defaults for its device")
        quality.add("final", 2, "Final", "Double size and steps")
        procedure.add_choice_argument(
            "quality", "_Quality", "Sets processing size and steps", quality, "standard", flags
        )
        procedure.add_int_argument(
            "iterations",
            "_Iterations",
            "Optimisation steps (0: from the quality setting)",
            0,
            5000,
            0,
            flags,
        )
        procedure.add_int_argument(
            "max-size",
            "_Max size",
            "Processing size in pixels, longer side (0: from the quality setting)",
            0,
            8192,
            0,
            flags,
        )
        optimizer = Gimp.Choice.new()
        optimizer.add("lbfgs", 0, "L-BFGS", "Converges in fewer steps")
        optimizer.add("adam", 1, "Adam", "Uses less memory")
        procedure.add_choice_argument(
            "optimizer", "Optimi_zer", "Optimisation method", optimizer, "lbfgs", flags
        )
        procedure.add_int_argument(
            "seed", "See_d", "Random seed (same seed, same picture)", 0, 2**31 - 1, 0, flags
        )
        procedure.add_string_argument(
            "server-url",
            "Server _URL",
            "Neural style server (empty: the one the installer recorded, else "
            f"{nst_client.DEFAULT_SERVER_URL})",
            "",
            flags,
        )
        procedure.add_string_argument(
            "server-token",
            "Server to_ken",
            "Bearer token for a remote server (empty for the local one)",
            "",
            flags,
        )
        return procedure


Gimp.main(NeuralStyle.__gtype__, sys.argv)
