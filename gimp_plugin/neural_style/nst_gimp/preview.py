"""The live preview on the canvas: one temporary layer "Neural Style preview" per image, over the
photo at its size and offsets, showing the run's current picture.

It is the plug-in's, not the artist's: the image's undo is frozen only around each insert,
update and removal of it, so the undo history keeps exactly the artist's own steps (plus one
"Neural Style" group per kept result). It carries a persistent parasite marking it, so a layer
left behind (GIMP killed the plug-in; an XCF saved mid-run keeps it) is recognised and removed
the next time the plug-in starts.

Only the GTK main loop's thread calls these.
"""

from __future__ import annotations

import contextlib

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp

from .images import add_mask, alive, all_layers, landing_place

PREVIEW_NAME = "Neural Style preview"
PREVIEW_PARASITE = "neural-style-preview"


@contextlib.contextmanager
def undo_frozen(image):
    """No undo steps for what happens inside (the artist's steps before and after stay), and
    an image that was clean stays clean: GIMP marks it dirty even with undo frozen, and a run
    that only showed a preview must not make closing the image ask to save it."""
    was_clean = not image.is_dirty()
    image.undo_freeze()
    try:
        yield
    finally:
        image.undo_thaw()
        if was_clean and image.is_dirty():
            image.clean_all()


def _marker():
    return Gimp.Parasite.new(PREVIEW_PARASITE, Gimp.PARASITE_PERSISTENT, b"1")


def is_preview(layer) -> bool:
    return layer.get_parasite(PREVIEW_PARASITE) is not None


def remove_marked(image) -> int:
    """Remove every preview layer of this plug-in in ``image`` (left behind by a killed plug-in
    or saved in an XCF mid-run); returns how many there were."""
    marked = [layer for layer in all_layers(image.get_layers()) if is_preview(layer)]
    if marked:
        with undo_frozen(image):
            for layer in marked:
                if alive(layer):
                    image.remove_layer(layer)
        Gimp.displays_flush()
    return len(marked)


class PreviewLayer:
    """The preview layer of one image (none until the first picture arrives)."""

    def __init__(self, image) -> None:
        self.image = image
        self.layer = None
        self.visible = True  # False: "before" (the photo shows)

    def show(self, pixbuf, photo, above, mask=None) -> bool:
        """Put ``pixbuf`` (GdkPixbuf, the server's picture at its processing size) on the canvas
        where the result will go (above ``above``), at ``photo``'s offsets and scaled by GIMP to
        its size, with ``mask`` (the selection the run was asked with) as its mask, so the photo
        shows outside it as in the result. False when the photo is gone."""
        image = self.image
        if not alive(image) or not alive(photo) or not alive(above):
            self.remove()
            return False
        selected = image.get_selected_layers()
        Gimp.context_push()
        try:
            with undo_frozen(image):
                old, self.layer = self.layer, None
                if alive(old):  # first, so the new one gets the name, not "... #1"
                    image.remove_layer(old)
                layer = Gimp.Layer.new_from_pixbuf(
                    image, PREVIEW_NAME, pixbuf, 100.0, Gimp.LayerMode.NORMAL, 0.0, 0.0
                )
                layer.attach_parasite(_marker())
                image.insert_layer(layer, *landing_place(image, above))
                self.layer = layer
                Gimp.context_set_interpolation(Gimp.InterpolationType.CUBIC)
                layer.scale(photo.get_width(), photo.get_height(), False)
                layer.set_offsets(*photo.get_offsets()[1:])
                add_mask(layer, mask)
                layer.set_visible(self.visible)
                # Inserting selected the preview: give the artist's selection back.
                image.set_selected_layers([s for s in selected if alive(s)])
        finally:
            Gimp.context_pop()
        Gimp.displays_flush()
        return True

    def set_visible(self, visible: bool) -> None:
        """Before/after: False shows the photo under the preview."""
        self.visible = visible
        if alive(self.layer) and alive(self.image):
            with undo_frozen(self.image):
                self.layer.set_visible(visible)
            Gimp.displays_flush()

    def remove(self) -> None:
        layer, self.layer = self.layer, None
        if alive(layer) and alive(self.image):
            with undo_frozen(self.image):
                self.image.remove_layer(layer)
            Gimp.displays_flush()

    def pixels_layer(self):
        """The layer on the canvas now, or None (tests compare it with the result)."""
        return self.layer if alive(self.layer) else None
