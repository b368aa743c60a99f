#!/usr/bin/env python3
"""GIMP 3 plug-in: Filters > Artistic > Neural Style...

Sends the active layer (the photo) and a style layer or file (the painting) to the local
neural-style server (nst_server), shows the job's progress, and inserts the result as a new layer
"Neural Style (<style name>)" above the photo, in one undo group, masked by the selection if any.

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


def _other_layer(image, active):
    """A sensible default style layer for the dialog: the top-most layer that is not the photo."""
    for layer in image.get_layers():
        if layer != active:
            return layer
    return None


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

    if run_mode == Gimp.RunMode.INTERACTIVE:
        gi.require_version("GimpUi", "3.0")
        from gi.repository import GimpUi

        GimpUi.init(PROC_NAME)
        if config.get_property("style-layer") is None:
            config.set_property("style-layer", _other_layer(image, active))
        if not config.get_property("server-url"):
            config.set_property("server-url", settings.get("server_url", ""))
        dialog = GimpUi.ProcedureDialog(procedure=procedure, config=config)
        dialog.fill(
            [
                "style-layer",
                "style-file",
                "strength",
                "quality",
                "iterations",
                "max-size",
                "optimizer",
                "seed",
                "server-url",
                "server-token",
            ]
        )
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
    if style_file is None and style_layer == active:
        return _fail(
            procedure,
            "The style layer is the photo layer itself: choose the painting's layer.",
            Gimp.PDBStatusType.CALLING_ERROR,
        )

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

    try:
        nst_client.ensure_server(
            client, settings.get("start_command"), report=lambda text: report(None, text)
        )
        schema = client.params()
        params = nst_client.build_job_params(
            schema,
            quality=config.get_property("quality"),
            strength=config.get_property("strength"),
            iterations=config.get_property("iterations"),
            max_size=config.get_property("max-size"),
            optimizer=config.get_property("optimizer"),
            seed=config.get_property("seed"),
        )
        content = _read_pixels(active, bit_depth)
        if style_file is not None:
            style = _style_from_file(style_file, bit_depth)
            style_name = style_file.get_basename()
        else:
            style = _read_pixels(style_layer, bit_depth)
            style_name = style_layer.get_name()
        png = nst_client.run_job(
            client,
            nst_client.encode_png(content),
            [nst_client.encode_png(style)],
            params,
            progress=report,
        )
        Gimp.progress_set_text("Neural style: decoding the result")
        result = nst_client.decode_png(png)
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

    if (result.width, result.height) != (active.get_width(), active.get_height()):
        Gimp.progress_end()
        return _fail(
            procedure,
            f"The server returned a {result.width}x{result.height} picture for a "
            f"{active.get_width()}x{active.get_height()} layer.",
        )

    name = f"Neural Style ({style_name})"
    if result.bit_depth < source_bits:
        # Never lose precision silently: say so in the layer name and in GIMP's messages.
        name += f" [{result.bit_depth}-bit result]"
        Gimp.message(
            f"Neural Style: the result has {result.bit_depth} bits per channel; this image has "
            f"{source_bits}, so the new layer holds less precision than the photo."
        )

    Gimp.context_push()
    image.undo_group_start()
    layer = None
    inserted = False
    try:
        layer = _new_layer(image, name, result)
        offset_x, offset_y = active.get_offsets()[1:]
        layer.set_offsets(offset_x, offset_y)
        image.insert_layer(layer, active.get_parent(), image.get_item_position(active))
        inserted = True
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
            "one, masked by the selection if there is one. Strength: 50 is the server's "
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
            "style-layer", "_Style layer", "Layer holding the painting", True, flags
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
        procedure.add_double_argument(
            "strength",
            "S_trength",
            "Style vs content, 0-100 (50: server default; +-25 = style weight x/÷ 10)",
            0.0,
            100.0,
            nst_client.STRENGTH_DEFAULT,
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
            "optimizer", "_Optimizer", "Optimisation method", optimizer, "lbfgs", flags
        )
        procedure.add_int_argument(
            "seed", "S_eed", "Random seed (same seed, same picture)", 0, 2**31 - 1, 0, flags
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
