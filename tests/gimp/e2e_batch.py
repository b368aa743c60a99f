# GIMP batch script (python-fu-eval) for tests/gimp/test_gimp_e2e.py. Runs INSIDE GIMP 3 in the
# Debian 13 chroot:  gimp-console-3.0 -i --batch-interpreter=python-fu-eval -b - --quit < this
#
# Gimp, Gegl, Gio and GLib are already imported by python-fu-eval. Do not call sys.exit(): it
# crashes the batch runner (see shared notes); an uncaught exception makes GIMP exit with 64.
# Output: one line per scenario, "NST-E2E <scenario> <json>", which the pytest side parses
# (stderr carries GIMP's noise, so only these markers and the exit code are asserted on).
#
# Settings come from the environment (gimp-console passes it to its plug-ins):
#   NST_E2E_DIR        folder inside the chroot with content.jpg and style.jpg; results go here
#   NST_E2E_URL        the real server's URL (the host's 127.0.0.1 is shared with the chroot)
#   NST_E2E_DEAD_URL   a URL where nothing listens (the "server unreachable" scenario)
#   NST_E2E_SCENARIOS  comma-separated: basic, selection, unreachable, long, deep, style-file,
#                      grey, float, dialog (GUI only)
#   NST_E2E_SIZE       long side of the test image in pixels (default 112)
#   NST_E2E_MAX_SIZE, NST_E2E_ITERATIONS   job size (defaults 96 and 20)
import json
import os
import sys

from gi.repository import Gegl, Gimp, Gio

E2E_DIR = os.environ["NST_E2E_DIR"]
URL = os.environ.get("NST_E2E_URL", "")
SIZE = int(os.environ.get("NST_E2E_SIZE", "112"))
MAX_SIZE = int(os.environ.get("NST_E2E_MAX_SIZE", "96"))
ITERATIONS = int(os.environ.get("NST_E2E_ITERATIONS", "20"))
# The photo layer sits at an offset inside a larger canvas, so "same offsets" means something.
OFFSET = (7, 5)


def emit(scenario, doc):
    print(f"NST-E2E {scenario} {json.dumps(doc)}", flush=True)


def pixels(drawable, fmt="R'G'B' u8"):
    w, h = drawable.get_width(), drawable.get_height()
    return bytes(
        drawable.get_buffer().get(Gegl.Rectangle.new(0, 0, w, h), 1.0, fmt, Gegl.AbyssPolicy.CLAMP)
    )


def mean_rgb(data):
    n = len(data) // 3
    return [sum(data[c::3]) / n for c in range(3)]


def distance(a, b):
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) ** 0.5


def mean_abs_diff(a, b):
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)


def build_image():
    """A canvas with the photo (scaled to SIZE, at OFFSET) and the painting as a layer above."""
    image = Gimp.file_load(
        Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(os.path.join(E2E_DIR, "content.jpg"))
    )
    w, h = image.get_width(), image.get_height()
    scale = SIZE / max(w, h)
    w, h = max(1, round(w * scale)), max(1, round(h * scale))
    image.scale(w, h)
    photo = image.get_layers()[0]
    photo.set_name("Photo")
    image.resize(w + 2 * OFFSET[0], h + 2 * OFFSET[1], OFFSET[0], OFFSET[1])
    style = Gimp.file_load_layer(
        Gimp.RunMode.NONINTERACTIVE,
        image,
        Gio.File.new_for_path(os.path.join(E2E_DIR, "style.jpg")),
    )
    style.set_name("Starry Night")
    image.insert_layer(style, None, 0)
    style.scale(w, h, False)
    style.set_offsets(*OFFSET)
    style.set_visible(False)
    image.set_selected_layers([photo])
    return image, photo, style


def call_plugin(image, photo, style, url, **extra):
    proc = Gimp.get_pdb().lookup_procedure("python-fu-neural-style")
    if proc is None:
        raise RuntimeError("python-fu-neural-style is not registered")
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [photo])
    config.set_property("style-layer", style)
    config.set_property("max-size", MAX_SIZE)
    config.set_property("iterations", ITERATIONS)
    config.set_property("quality", "draft")
    config.set_property("seed", 1)
    config.set_property("server-url", url)
    for key, value in extra.items():
        config.set_property(key.replace("_", "-"), value)
    result = proc.run(config)
    status = result.index(0)
    message = None
    if result.length() > 1:
        value = result.index(1)
        message = value if isinstance(value, str) else str(value)
    return status.value_nick, message


def describe_new_layer(image, before, photo):
    new = [layer for layer in image.get_layers() if layer not in before]
    if len(new) != 1:
        return None, {"new_layers": len(new)}
    layer = new[0]
    return layer, {
        "new_layers": 1,
        "name": layer.get_name(),
        "size": [layer.get_width(), layer.get_height()],
        "offsets": list(layer.get_offsets()[1:]),
        "position": image.get_item_position(layer),
        "has_mask": layer.get_mask() is not None,
    }


def export_side_by_side(layers, path):
    """Photo, painting and result next to each other, flattened, as a PNG."""
    w = max(layer.get_width() for layer in layers)
    h = max(layer.get_height() for layer in layers)
    gap = 4
    out = Gimp.Image.new(len(layers) * (w + gap) - gap, h, Gimp.ImageBaseType.RGB)
    for i, layer in enumerate(layers):
        copy = Gimp.Layer.new_from_drawable(layer, out)
        out.insert_layer(copy, None, 0)
        copy.set_visible(True)
        copy.set_offsets(i * (w + gap), 0)
    flat = out.flatten()
    ok = Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, out, Gio.File.new_for_path(path), None)
    out.delete()
    return bool(ok) and flat is not None


def scenario_basic():
    image, photo, style = build_image()
    before = image.get_layers()
    status, message = call_plugin(image, photo, style, URL)
    layer, doc = describe_new_layer(image, before, photo)
    doc.update(
        status=status,
        message=message,
        layers_before=len(before),
        layers_after=len(image.get_layers()),
        photo_size=[photo.get_width(), photo.get_height()],
        photo_offsets=list(photo.get_offsets()[1:]),
        photo_position=image.get_item_position(photo),
    )
    if layer is not None:
        photo_px, style_px, result_px = pixels(photo), pixels(style), pixels(layer)
        painting = mean_rgb(style_px)
        doc.update(
            diff_to_photo=mean_abs_diff(result_px, photo_px),
            photo_to_painting_colour=distance(mean_rgb(photo_px), painting),
            result_to_painting_colour=distance(mean_rgb(result_px), painting),
            exported=export_side_by_side(
                [photo, style, layer], os.path.join(E2E_DIR, "side_by_side.png")
            ),
        )
    emit("basic", doc)
    image.delete()


def scenario_selection():
    image, photo, style = build_image()
    # A rectangle over the photo's left half (image coordinates).
    sel_w = photo.get_width() // 2
    image.select_rectangle(Gimp.ChannelOps.REPLACE, OFFSET[0], OFFSET[1], sel_w, photo.get_height())
    before = image.get_layers()
    status, message = call_plugin(image, photo, style, URL)
    layer, doc = describe_new_layer(image, before, photo)
    doc.update(status=status, message=message)
    if layer is not None and layer.get_mask() is not None:
        mask = pixels(layer.get_mask(), "Y u8")
        w = layer.get_width()
        y = layer.get_height() // 2
        doc.update(mask_inside=mask[y * w + 2], mask_outside=mask[y * w + w - 3])
    emit("selection", doc)
    image.delete()


def scenario_unreachable():
    image, photo, style = build_image()
    before = image.get_layers()
    status, message = call_plugin(image, photo, style, os.environ["NST_E2E_DEAD_URL"])
    doc = {
        "status": status,
        "message": message,
        "layers_before": len(before),
        "layers_after": len(image.get_layers()),
    }
    emit("unreachable", doc)
    image.delete()


def scenario_long():
    """A job long enough for the test to kill the plug-in process in the middle of it."""
    image, photo, style = build_image()
    before = image.get_layers()
    emit("long-start", {})
    status, message = call_plugin(image, photo, style, URL, iterations=5000)
    emit(
        "long",
        {
            "status": status,
            "message": message,
            "layers_before": len(before),
            "layers_after": len(image.get_layers()),
        },
    )
    image.delete()


def scenario_deep():
    """A 16-bit image: sent as 16-bit PNG; an 8-bit answer must be flagged, never silent."""
    image, photo, style = build_image()
    image.convert_precision(Gimp.Precision.U16_NON_LINEAR)
    before = image.get_layers()
    status, message = call_plugin(image, photo, style, URL)
    layer, doc = describe_new_layer(image, before, photo)
    doc.update(status=status, message=message, precision=image.get_precision().value_nick)
    if layer is not None:
        # 8-bit data widened to 16 bits are all multiples of 257; real 16-bit data are not.
        data = pixels(layer, "R'G'B' u16")
        samples = [int.from_bytes(data[i : i + 2], sys.byteorder) for i in range(0, len(data), 2)]
        doc.update(fine_samples=sum(1 for v in samples if v % 257) / len(samples))
    emit("deep", doc)
    image.delete()


def scenario_float():
    """A 32-bit float image: the 16-bit round trip loses precision, so the layer name says so."""
    image, photo, style = build_image()
    image.convert_precision(Gimp.Precision.FLOAT_LINEAR)
    before = image.get_layers()
    status, message = call_plugin(image, photo, style, URL)
    layer, doc = describe_new_layer(image, before, photo)
    doc.update(status=status, message=message)
    emit("float", doc)
    image.delete()


def scenario_style_file():
    """The painting given as an image file instead of a layer."""
    image, photo, style = build_image()
    before = image.get_layers()
    status, message = call_plugin(
        image,
        photo,
        None,
        URL,
        style_file=Gio.File.new_for_path(os.path.join(E2E_DIR, "style.jpg")),
    )
    layer, doc = describe_new_layer(image, before, photo)
    doc.update(status=status, message=message)
    if layer is not None:
        doc.update(diff_to_photo=mean_abs_diff(pixels(layer), pixels(photo)))
    emit("style-file", doc)
    image.delete()


def scenario_grey():
    """A greyscale image gets a clear message, not a traceback or a half-made layer."""
    image, photo, style = build_image()
    image.convert_grayscale()
    before = image.get_layers()
    status, message = call_plugin(image, photo, style, URL)
    emit(
        "grey",
        {
            "status": status,
            "message": message,
            "layers_before": len(before),
            "layers_after": len(image.get_layers()),
        },
    )
    image.delete()


def scenario_dialog():
    """GUI only (gimp-3.0 under Xvfb, dialog_screenshot.sh): open the plug-in's real dialog."""
    image, photo, style = build_image()
    style.set_visible(True)
    Gimp.Display.new(image)
    proc = Gimp.get_pdb().lookup_procedure("python-fu-neural-style")
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.INTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [photo])
    emit("dialog-open", {})
    emit("dialog", {"status": proc.run(config).index(0).value_nick})


SCENARIOS = {
    "basic": scenario_basic,
    "selection": scenario_selection,
    "unreachable": scenario_unreachable,
    "long": scenario_long,
    "deep": scenario_deep,
    "style-file": scenario_style_file,
    "grey": scenario_grey,
    "float": scenario_float,
    "dialog": scenario_dialog,
}
for name in os.environ.get("NST_E2E_SCENARIOS", "basic").split(","):
    SCENARIOS[name.strip()]()
emit("end", {})
