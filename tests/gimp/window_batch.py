# GIMP batch script (python-fu-eval) for the window's end-to-end tests (tests/gimp/test_window.py):
# runs INSIDE the GUI GIMP (gimp-3.0 / gimp-3.2 under Xvfb, tests/gimp/gui_harness.py):
#     gimp-3.x --no-splash --batch-interpreter=python-fu-eval -b - < this
#
# Opens one or two images with a display each (the photo at an offset inside a larger canvas,
# the painting as a hidden layer above) and ends; GIMP stays open. The test then opens the
# plug-in's window from GIMP's own UI (its action search, as an artist would find Filters >
# Artistic > Neural Style...), and the window's test hook (NST_WINDOW_SCRIPT,
# gimp_plugin/neural_style/nst_gimp/script.py) presses its buttons and logs what happens.
# Output: "NST-WIN <name> <json>" lines.
#
#   NST_E2E_DIR        folder inside the chroot with content.jpg, style.jpg, style2.jpg
#   NST_E2E_SIZE       long side of the photo in pixels (0: as the file is)
#   NST_WINDOW_IMAGES  how many images to open (1 or 2)
#   NST_WINDOW_STALE_PREVIEW  1: the first image also has a marked preview layer, as a killed
#                      plug-in leaves it (the plug-in removes it when it starts)
import json
import os

from gi.repository import Gimp, Gio

E2E_DIR = os.environ["NST_E2E_DIR"]
SIZE = int(os.environ.get("NST_E2E_SIZE", "128"))
OFFSET = (7, 5)


def emit(name, doc):
    print(f"NST-WIN {name} {json.dumps(doc)}", flush=True)


def load(name):
    return Gimp.file_load(
        Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(os.path.join(E2E_DIR, name))
    )


def add_stale_preview(image, photo):
    """A preview layer as a killed plug-in (or an XCF saved mid-run) leaves it: marked."""
    layer = Gimp.Layer.new(
        image,
        "Neural Style preview",
        photo.get_width(),
        photo.get_height(),
        Gimp.ImageType.RGB_IMAGE,
        100.0,
        Gimp.LayerMode.NORMAL,
    )
    layer.attach_parasite(Gimp.Parasite.new("neural-style-preview", Gimp.PARASITE_PERSISTENT, b"1"))
    image.insert_layer(layer, None, 0)


def build_image(photo_name, stale_preview=False):
    image = load("content.jpg")
    w, h = image.get_width(), image.get_height()
    if SIZE:
        scale = SIZE / max(w, h)
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
        image.scale(w, h)
    photo = image.get_layers()[0]
    photo.set_name(photo_name)
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
    if stale_preview:
        add_stale_preview(image, photo)
    image.set_selected_layers([photo])
    # An image a plug-in loads has its undo disabled; the artist's image has it on (from here:
    # what was made so far is how the image was opened, not undo steps).
    while not image.undo_is_enabled():
        image.undo_enable()
    image.clean_all()
    Gimp.Display.new(image)
    return image, photo, style


emit("gimp", {"version": Gimp.version()})
built = [build_image("Photo", stale_preview=bool(os.environ.get("NST_WINDOW_STALE_PREVIEW")))]
if int(os.environ.get("NST_WINDOW_IMAGES", "1")) > 1:
    built.append(build_image("Photo 2"))
Gimp.displays_flush()
emit("displayed", {"images": len(built)})
