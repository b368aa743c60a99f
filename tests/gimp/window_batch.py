# GIMP batch script (python-fu-eval) for the window's end-to-end tests (tests/gimp/test_window.py):
# runs INSIDE the GUI GIMP (gimp-3.0 / gimp-3.2 under Xvfb, tests/gimp/gui_harness.py):
#     gimp-3.x --no-splash --batch-interpreter=python-fu-eval -b - < this
#
# Opens one or two images with a display each (the photo at an offset inside a larger canvas,
# the painting as a hidden layer above), then opens the plug-in's window INTERACTIVE on the
# first, as Filters > Artistic > Neural Style... does; the window's test hook
# (NST_WINDOW_SCRIPT, gimp_plugin/neural_style/nst_gimp/script.py) presses its buttons. The call
# returns when the window closes. Output: "NST-WIN <name> <json>" lines.
#
#   NST_E2E_DIR        folder inside the chroot with content.jpg, style.jpg, style2.jpg
#   NST_E2E_URL        the real server's URL
#   NST_E2E_SIZE       long side of the photo in pixels (0: as the file is)
#   NST_WINDOW_IMAGES  how many images to open (1 or 2; the window opens on the first)
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


def build_image(photo_name):
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
    image.set_selected_layers([photo])
    # An image a plug-in loads has its undo disabled; the artist's image has it on.
    while not image.undo_is_enabled():
        image.undo_enable()
    image.clean_all()
    Gimp.Display.new(image)
    return image, photo, style


def layers_of(image):
    return [layer.get_name() for layer in image.get_layers()] if image.is_valid() else None


emit("gimp", {"version": Gimp.version()})
built = [build_image("Photo")]
if int(os.environ.get("NST_WINDOW_IMAGES", "1")) > 1:
    built.append(build_image("Photo 2"))
Gimp.displays_flush()
emit("displayed", {"images": len(built)})

image, photo, style = built[0]
proc = Gimp.get_pdb().lookup_procedure("python-fu-neural-style")
config = proc.create_config()
config.set_property("run-mode", Gimp.RunMode.INTERACTIVE)
config.set_property("image", image)
config.set_core_object_array("drawables", [photo])
config.set_property("style-layer", style)
config.set_property("server-url", os.environ.get("NST_E2E_URL", ""))
result = proc.run(config)
emit(
    "returned",
    {
        "status": result.index(0).value_nick,
        "message": str(result.index(1)) if result.length() > 1 else None,
        "layers": [layers_of(image) for image, _, _ in built],
    },
)
