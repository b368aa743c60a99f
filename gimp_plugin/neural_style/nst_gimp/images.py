"""GIMP calls shared by the procedure and the window: reading a run's pixels out of the image
(photo, paintings, selection, the result to continue from) and putting a result back as a layer.

Only the GTK main loop's thread calls these (GIMP's wire protocol is not thread-safe).
"""

from __future__ import annotations

from dataclasses import dataclass

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
import nst_client
from gi.repository import Gegl, Gimp

#: GIMP asks for pixels in these formats: non-linear (gamma) RGB, as the server and VGG19 expect.
#: "u16" for images deeper than 8 bits, so their precision reaches the server (a 16-bit PNG).
_FORMATS = {
    (8, False): "R'G'B' u8",
    (8, True): "R'G'B'A u8",
    (16, False): "R'G'B' u16",
    (16, True): "R'G'B'A u16",
}
_CHANNELS = {1: "Y'", 2: "Y'A", 3: "R'G'B'", 4: "R'G'B'A"}


class Refusal(Exception):
    """The artist asked for something the plug-in cannot do: a calling error, with the fix."""


@dataclass(frozen=True)
class Inputs:
    """Everything a run reads from the image, read at once on the main loop (so a layer
    deleted or painted on later does not change a run already asked for)."""

    content_layer: object  # Gimp.Layer: the photo
    source_bits: int
    content: nst_client.RawImage
    style_pngs: list
    paintings: list  # nst_client.Painting, in upload order
    mask: nst_client.RawImage | None = None  # the selection over the photo ("Y u8")
    init_png: bytes | None = None

    @property
    def mask_png(self) -> bytes | None:
        return None if self.mask is None else nst_client.encode_png(self.mask)


def source_bits(image) -> int:
    """Bits per channel the image holds: 8, 16 (u16, half float) or 32 (u32, float, double)."""
    nick = image.get_precision().value_nick  # e.g. "u8-non-linear", "float-linear"
    if nick.startswith("u8"):
        return 8
    if nick.startswith(("u16", "half")):
        return 16
    return 32


def read_pixels(drawable, bit_depth: int) -> nst_client.RawImage:
    """The drawable's pixels as an nst_client.RawImage (alpha only if the layer has one)."""
    width, height = drawable.get_width(), drawable.get_height()
    alpha = drawable.has_alpha()
    fmt = _FORMATS[(bit_depth, alpha)]
    data = drawable.get_buffer().get(
        Gegl.Rectangle.new(0, 0, width, height), 1.0, fmt, Gegl.AbyssPolicy.CLAMP
    )
    return nst_client.RawImage(width, height, 4 if alpha else 3, bit_depth, bytes(data))


def style_from_file(gfile, bit_depth: int) -> nst_client.RawImage:
    """Load an image file with GIMP's own loaders (any format GIMP reads) and flatten it."""
    style_image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, gfile)
    if style_image is None:
        raise nst_client.NstError(f"GIMP could not open the style file {gfile.get_path()}")
    try:
        if style_image.get_base_type() != Gimp.ImageBaseType.RGB:
            style_image.convert_rgb()
        layer = style_image.merge_visible_layers(Gimp.MergeType.CLIP_TO_IMAGE)
        return read_pixels(layer, bit_depth)
    finally:
        style_image.delete()


def selection_mask(image, layer) -> nst_client.RawImage | None:
    """The selection over ``layer``'s extent ("Y u8", the layer's size), or None without a
    selection. Read straight from the selection channel (image coordinates); the abyss outside
    the canvas is 0, i.e. not selected."""
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
    return nst_client.RawImage(width, height, 1, 8, bytes(data))


def all_layers(layers):
    """Every layer, inside groups too (a photo layer may live in a group)."""
    for layer in layers:
        yield layer
        if layer.is_group():
            yield from all_layers(layer.get_children())


def alive(item) -> bool:
    """Whether a layer (or image) still exists: the artist may delete it at any time."""
    try:
        return item is not None and item.is_valid()
    except Exception:  # noqa: BLE001 - a dead proxy raises instead of answering False
        return False


def other_layer(image, *taken):
    """A sensible default style layer: the top-most layer not in ``taken``."""
    for layer in image.get_layers():
        if layer not in taken:
            return layer
    return None


def target_layer(image, drawables):
    """The photo: exactly one layer of an RGB image."""
    if len(drawables) != 1 or not isinstance(drawables[0], Gimp.Layer):
        raise Refusal("Neural Style works on one layer: select the photo layer only.")
    if image.get_base_type() != Gimp.ImageBaseType.RGB:
        raise Refusal("Neural Style needs an RGB image: convert it with Image > Mode > RGB first.")
    return drawables[0]


def continue_source(image, active):
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
        for layer in all_layers(image.get_layers())
        if layer.get_name() == name and layer != active
    ]
    if len(named) == 1:
        return named[0], active
    Gimp.message(
        f"Neural Style: the photo layer '{name}' this result was made from is no longer in the "
        "image, so the result layer itself is stylised as a new photo."
    )
    return active, None


def paintings(config, photo, content_layer) -> list:
    """[(nst_client.Painting, pixel reader taking a bit depth)] of the paintings to send."""
    style_file = config.get_property("style-file")
    if style_file is not None and not style_file.get_path():
        style_file = None
    style_layer = config.get_property("style-layer")
    if style_file is None and style_layer is not None and not alive(style_layer):
        raise Refusal("The style layer was deleted: choose the painting's layer again.")
    if style_layer is None and style_file is None:
        raise Refusal("Choose a style: a layer holding the painting, or an image file.")
    if style_file is None and style_layer in (photo, content_layer):
        raise Refusal("The style layer is the photo layer itself: choose the painting's layer.")
    second = config.get_property("style-layer-2")
    share = config.get_property("style-blend")
    if second is not None and share > 0 and not alive(second):
        raise Refusal("The second style layer was deleted: choose another or set its share to 0.")
    if second is not None and share > 0 and second in (photo, content_layer):
        raise Refusal(
            "The second style layer is the photo layer itself: choose a painting's layer."
        )

    def from_layer(layer):
        painting = nst_client.Painting(layer.get_name(), layer_id=layer.get_id())
        return painting, lambda bits: read_pixels(layer, bits)

    sources = {
        "style-file": lambda: (
            nst_client.Painting(style_file.get_basename(), file=style_file.get_path()),
            lambda bits: style_from_file(style_file, bits),
        ),
        "style-layer": lambda: from_layer(style_layer),
        "style-layer-2": lambda: from_layer(second),
    }
    chosen = nst_client.styles_to_send(share, style_file is not None, second is not None)
    return [sources[name]() for name in chosen]


def read_inputs(image, content_layer, init_layer, chosen) -> Inputs:
    """Read the photo, the paintings (``chosen``: :func:`paintings`), the selection and the
    result to continue from."""
    bits = source_bits(image)
    # Deeper than 8 bits: send 16-bit PNGs (the server computes in float and answers in 16 bits).
    bit_depth = 8 if bits == 8 else 16
    init = None if init_layer is None else read_pixels(init_layer, bit_depth)
    return Inputs(
        content_layer=content_layer,
        source_bits=bits,
        content=read_pixels(content_layer, bit_depth),
        style_pngs=[nst_client.encode_png(read(bit_depth)) for _, read in chosen],
        paintings=[painting for painting, _ in chosen],
        mask=selection_mask(image, content_layer),
        init_png=None if init is None else nst_client.encode_png(init),
    )


def precision_note(result_bits: int, image_bits: int) -> str | None:
    """A layer-name suffix when the result holds less precision than the image, else None."""
    return f" [{result_bits}-bit result]" if result_bits < image_bits else None


def write_pixels(drawable, raw: nst_client.RawImage, fmt: str | None = None) -> None:
    fmt = fmt or f"{_CHANNELS[raw.channels]} u{raw.bit_depth}"
    buffer = drawable.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, raw.width, raw.height), fmt, raw.pixels)
    buffer.flush()
    drawable.update(0, 0, raw.width, raw.height)


def new_layer(image, name: str, raw: nst_client.RawImage):
    """A complete, not yet inserted layer holding ``raw``."""
    layer_type = Gimp.ImageType.RGBA_IMAGE if raw.has_alpha else Gimp.ImageType.RGB_IMAGE
    layer = Gimp.Layer.new(
        image, name, raw.width, raw.height, layer_type, 100.0, Gimp.LayerMode.NORMAL
    )
    write_pixels(layer, raw)
    return layer


def add_mask(layer, mask: nst_client.RawImage | None) -> None:
    """``mask`` (the selection when the run was asked for) as the layer's mask."""
    if mask is None:
        return
    layer_mask = layer.create_mask(Gimp.AddMaskType.WHITE)
    layer.add_mask(layer_mask)
    write_pixels(layer_mask, mask, "Y u8")  # as selection_mask read it


def is_result(layer) -> bool:
    return layer.get_parasite(nst_client.RESULT_PARASITE) is not None


def landing_place(image, above) -> tuple:
    """(parent, position) for the window's next picture: right above ``above`` (the photo, or
    the result continued from) and above the results already stacked there, so the newest is
    on top and visible, not hidden under an earlier try."""
    parent = above.get_parent()
    siblings = parent.get_children() if parent is not None else image.get_layers()
    ids = [layer.get_id() for layer in siblings]
    index = ids.index(above.get_id())
    while index > 0 and is_result(siblings[index - 1]):
        index -= 1
    return parent, index


def insert_result(image, above, offsets, name, raw, record: bytes, mask=None, place=None):
    """The result as a new layer above ``above`` (at ``offsets``) with its record and mask, in
    one undo group ("Neural Style"), and selected; nothing is left behind when a GIMP call
    fails. ``place``: (parent, position) instead; ``above`` gone: on top of the image."""
    Gimp.context_push()
    image.undo_group_start()
    layer = None
    inserted = False
    try:
        layer = new_layer(image, name, raw)
        layer.set_offsets(*offsets)
        if place is not None:
            image.insert_layer(layer, *place)
        elif alive(above):
            image.insert_layer(layer, above.get_parent(), image.get_item_position(above))
        else:
            image.insert_layer(layer, None, 0)
        inserted = True
        # Persistent: survives saving as XCF, so "continue" and history work after reopening.
        layer.attach_parasite(
            Gimp.Parasite.new(
                nst_client.RESULT_PARASITE,
                Gimp.PARASITE_PERSISTENT | Gimp.PARASITE_UNDOABLE,
                record,
            )
        )
        add_mask(layer, mask)
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
    return layer
