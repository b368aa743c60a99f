# GIMP batch script (python-fu-eval) for tests/gimp/test_gimp_e2e.py. Runs INSIDE GIMP 3 in the
# Debian 13 chroot:  gimp-console-3.0 -i --batch-interpreter=python-fu-eval -b - --quit < this
#
# Gimp, Gegl, Gio and GLib are already imported by python-fu-eval. Do not call sys.exit(): it
# crashes the batch runner (see shared notes); an uncaught exception makes GIMP exit with 64.
# Output: one line per scenario, "NST-E2E <scenario> <json>", which the pytest side parses
# (stderr carries GIMP's noise, so only these markers and the exit code are asserted on).
#
# Settings come from the environment (gimp-console passes it to its plug-ins):
#   NST_E2E_DIR        folder inside the chroot with content.jpg, style.jpg and style2.jpg;
#                      results go here
#   NST_E2E_URL        the real server's URL (the host's 127.0.0.1 is shared with the chroot)
#   NST_E2E_DEAD_URL   a URL where nothing listens (the "server unreachable" scenario)
#   NST_E2E_SCENARIOS  comma-separated: basic, selection, unreachable, long, deep, style-file,
#                      grey, float, preserve, two-styles, continue, registered, badtoken,
#                      dialog (GUI only), showcase
#                      (docs/gimp-result.png, by hand only: NST_E2E_SIZE=427, server defaults,
#                      about 6 minutes on a 2-core CPU; writes showcase.png into NST_E2E_DIR)
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


def chroma(data):
    """Per-pixel (Cb, Cr) of R'G'B' u8 bytes (BT.601): the colour without the lightness."""
    out = []
    for i in range(0, len(data), 3):
        r, g, b = data[i], data[i + 1], data[i + 2]
        out.append(-0.168736 * r - 0.331264 * g + 0.5 * b)
        out.append(0.5 * r - 0.418688 * g - 0.081312 * b)
    return out


def mean_chroma_shift(result_px, photo_px):
    """How far the picture's overall colour cast moved: the distance between the mean (Cb, Cr)
    of the two. Per-pixel chroma is not the measure: the server's colour preservation may
    recolour the painting to the photo's palette, so single strokes vary in hue like paint
    while the whole keeps the photo's colours."""
    a, b = chroma(result_px), chroma(photo_px)
    n = len(a) // 2
    return distance([sum(a[0::2]) / n, sum(a[1::2]) / n], [sum(b[0::2]) / n, sum(b[1::2]) / n])


def record_of(layer):
    """The plug-in's parasite on a result layer, as a dict (None without one)."""
    parasite = layer.get_parasite("neural-style-result")
    return json.loads(bytes(parasite.get_data()).decode()) if parasite else None


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
    style = add_hidden_layer(image, photo, "style.jpg", "Starry Night")
    return image, photo, style


def add_hidden_layer(image, photo, filename, name):
    """A painting from E2E_DIR as a hidden layer of the photo's size and place, on top; the
    photo stays the selected layer."""
    layer = Gimp.file_load_layer(
        Gimp.RunMode.NONINTERACTIVE,
        image,
        Gio.File.new_for_path(os.path.join(E2E_DIR, filename)),
    )
    layer.set_name(name)
    image.insert_layer(layer, None, 0)
    layer.scale(photo.get_width(), photo.get_height(), False)
    layer.set_offsets(*OFFSET)
    layer.set_visible(False)
    image.set_selected_layers([photo])
    return layer


def second_painting_colour(width, height):
    """Mean colour of The Scream scaled to the photo's size, loaded on its own (not a layer, so
    scenarios that do not use it keep their layer counts)."""
    other = Gimp.file_load(
        Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(os.path.join(E2E_DIR, "style2.jpg"))
    )
    other.scale(width, height)
    colour = mean_rgb(pixels(other.get_layers()[0]))
    other.delete()
    return colour


def add_second_style(image, photo):
    """The second painting (The Scream) as a hidden layer of the photo's size."""
    return add_hidden_layer(image, photo, "style2.jpg", "The Scream")


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


def export_side_by_side(layers, path, indexed=False):
    """Photo, painting and result next to each other, flattened, as a PNG (``indexed``: 256
    dithered colours, a third of the size and no visible change, for pictures in the repo)."""
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
    if indexed:
        out.convert_indexed(
            Gimp.ConvertDitherType.FS, Gimp.ConvertPaletteType.GENERATE, 256, False, True, ""
        )
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
            chroma_shift=mean_chroma_shift(result_px, photo_px),
            photo_to_painting_colour=distance(mean_rgb(photo_px), painting),
            result_to_painting_colour=distance(mean_rgb(result_px), painting),
            record=record_of(layer),
            photo_id=photo.get_id(),
            style_id=style.get_id(),
            result_to_scream_colour=distance(
                mean_rgb(result_px), second_painting_colour(photo.get_width(), photo.get_height())
            ),
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
        w, h = layer.get_width(), layer.get_height()
        y = h // 2
        doc.update(mask_inside=mask[y * w + 2], mask_outside=mask[y * w + w - 3])
        # The selection went to the server as the job's mask: the layer's own pixels (not
        # just what its layer mask shows) are the photo outside and stylised inside. 4 px of
        # margin: the server feathers the edge (a Gaussian of about 1 px here).
        result_px, photo_px = pixels(layer), pixels(photo)
        inside, outside = [], []
        for row in range(h):
            for x in range(w):
                i = (row * w + x) * 3
                if x < sel_w - 4:
                    inside.extend(abs(result_px[i + c] - photo_px[i + c]) for c in range(3))
                elif x >= sel_w + 4:
                    outside.extend(abs(result_px[i + c] - photo_px[i + c]) for c in range(3))
        doc.update(
            inside_mean_diff=sum(inside) / len(inside),
            outside_max_diff=max(outside),
            outside_mean_diff=sum(outside) / len(outside),
        )
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


def scenario_badtoken():
    """A token the server does not know (an old install, a reset token): a message saying what
    to run, and no new layer."""
    image, photo, style = build_image()
    before = image.get_layers()
    status, message = call_plugin(image, photo, style, URL, server_token="not-the-token" * 3)
    emit(
        "badtoken",
        {
            "status": status,
            "message": message,
            "layers_before": len(before),
            "layers_after": len(image.get_layers()),
        },
    )
    image.delete()


def scenario_preserve():
    """Preserve colours: the result keeps the photo's chroma (the basic run's changes it)."""
    image, photo, style = build_image()
    before = image.get_layers()
    status, message = call_plugin(image, photo, style, URL, preserve_colors=True)
    layer, doc = describe_new_layer(image, before, photo)
    doc.update(status=status, message=message)
    if layer is not None:
        result_px, photo_px = pixels(layer), pixels(photo)
        doc.update(
            diff_to_photo=mean_abs_diff(result_px, photo_px),
            chroma_shift=mean_chroma_shift(result_px, photo_px),
            record=record_of(layer),
        )
    emit("preserve", doc)
    image.delete()


def scenario_two_styles():
    """Starry Night and The Scream blended 50/50: the result moves toward The Scream's colours
    compared with the Starry-Night-only basic run (the test compares the two)."""
    image, photo, style = build_image()
    second = add_second_style(image, photo)
    before = image.get_layers()
    status, message = call_plugin(image, photo, style, URL, style_layer_2=second, style_blend=50.0)
    layer, doc = describe_new_layer(image, before, photo)
    doc.update(status=status, message=message)
    if layer is not None:
        result_px = pixels(layer)
        scream = second_painting_colour(photo.get_width(), photo.get_height())
        doc.update(
            result_to_scream_colour=distance(mean_rgb(result_px), scream),
            record=record_of(layer),
        )
    emit("two-styles", doc)
    image.delete()


def scenario_continue():
    """Run on the photo, then on the result: the second run must start from the first result
    (sent as init) with the photo as content, and put its layer above the first result."""
    image, photo, style = build_image()
    status1, message1 = call_plugin(image, photo, style, URL)
    first = image.get_selected_layers()[0]  # the plug-in selects its new layer
    doc = {
        "status1": status1,
        "message1": message1,
        "first_is_result": first != photo and record_of(first) is not None,
    }
    if doc["first_is_result"]:
        before = image.get_layers()
        # Very few steps: starting from the photo they could not get near the first result;
        # starting from it (init), the second result stays close to it.
        status, message = call_plugin(image, first, style, URL, iterations=2)
        layer, info = describe_new_layer(image, before, photo)
        doc.update(info, status=status, message=message)
        if layer is not None:
            photo_px, first_px, second_px = pixels(photo), pixels(first), pixels(layer)
            doc.update(
                photo_size=[photo.get_width(), photo.get_height()],
                photo_offsets=list(photo.get_offsets()[1:]),
                first_position=image.get_item_position(first),
                second_to_first=mean_abs_diff(second_px, first_px),
                second_to_photo=mean_abs_diff(second_px, photo_px),
                first_to_photo=mean_abs_diff(first_px, photo_px),
                record=record_of(layer),
                photo_id=photo.get_id(),
            )
    emit("continue", doc)
    image.delete()


def scenario_showcase():
    """The README picture: a real result at the server's defaults (max size 384 on a CPU,
    "standard" quality), exported as photo | painting | result. Minutes on a CPU: not a test."""
    image, photo, style = build_image()
    proc = Gimp.get_pdb().lookup_procedure("python-fu-neural-style")
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [photo])
    config.set_property("style-layer", style)
    config.set_property("server-url", URL)
    result = proc.run(config)
    status = result.index(0).value_nick
    doc = {"status": status}
    if status == "success":
        layer = image.get_selected_layers()[0]
        doc["exported"] = export_side_by_side(
            [photo, style, layer], os.path.join(E2E_DIR, "showcase.png"), indexed=True
        )
    else:
        doc["message"] = str(result.index(1))
    emit("showcase", doc)
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
    add_second_style(image, photo)
    style.set_visible(True)
    Gimp.Display.new(image)
    proc = Gimp.get_pdb().lookup_procedure("python-fu-neural-style")
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.INTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [photo])
    # As if remembered from an earlier run; the second style defaults to the other painting.
    config.set_property("style-layer", style)
    emit("dialog-open", {})
    emit("dialog", {"status": proc.run(config).index(0).value_nick})


def scenario_registered():
    """Whether GIMP found the plug-in in its profile (the installer's layout)."""
    found = Gimp.get_pdb().lookup_procedure("python-fu-neural-style") is not None
    emit("registered", {"registered": found})


SCENARIOS = {
    "registered": scenario_registered,
    "badtoken": scenario_badtoken,
    "basic": scenario_basic,
    "selection": scenario_selection,
    "unreachable": scenario_unreachable,
    "long": scenario_long,
    "deep": scenario_deep,
    "style-file": scenario_style_file,
    "grey": scenario_grey,
    "float": scenario_float,
    "preserve": scenario_preserve,
    "two-styles": scenario_two_styles,
    "continue": scenario_continue,
    "showcase": scenario_showcase,
    "dialog": scenario_dialog,
}
emit("gimp", {"version": Gimp.version(), "directory": Gimp.directory()})
for name in os.environ.get("NST_E2E_SCENARIOS", "basic").split(","):
    SCENARIOS[name.strip()]()
emit("end", {})
