"""The Neural Style window: a non-modal window that stays open for the next try.

Thin on purpose: what runs, when, and what a history entry or a preset means is the GTK-free
controller's (nst_client.controller); GIMP calls are in images.py and preview.py. This module
lays out the widgets and passes things between them:

    the procedure's own options (GimpUi.ProcedureDialog widgets, the Advanced expander)
    | runs (progress, ETA, Keep, Cancel) and a before/after toggle, history, presets

Threads: the controller does HTTP on its own threads and hands every event to this main loop
with GLib.idle_add; everything here (GTK and GIMP calls) runs on the main loop.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
gi.require_version("Gtk", "3.0")
gi.require_version("GdkPixbuf", "2.0")
gi.require_version("Pango", "1.0")
import nst_client
from gi.repository import GdkPixbuf, Gimp, GimpUi, Gio, GLib, GObject, Gtk, Pango
from nst_client import controller as ctl
from nst_client import options

from . import images
from .preview import PreviewLayer, is_preview

TITLE = "Neural Style"
#: Previews are asked for at this longer side at most; the server caps it at the run's current
#: processing size, so this means "the picture as the run sees it", scaled by GIMP.
PREVIEW_SIZE = 4096
THUMBNAIL_PX = 56
FINISHED_ROWS_KEPT = 3
IMAGE_WATCH_MS = 500
#: The answers to "Cancel them?" when closing with runs pending.
CANCEL_THEM, LET_THEM_FINISH, STAY = 1, 2, 3
START_FROM_PHOTO = "photo"


@dataclass(frozen=True)
class RunTarget:
    """Where a run's preview and result go, fixed when Run was pressed."""

    photo: object  # Gimp.Layer: preview and result take its size and offsets
    above: object  # Gimp.Layer: the result goes above it (the photo, or the result continued)
    offsets: tuple
    mask: object  # nst_client.RawImage or None: the selection at Run
    source_bits: int


def remembered_settings(config) -> dict:
    """The remembered options' values (option name -> value), as presets and records hold them."""
    return {option.name: config.get_property(option.name) for option in options.REMEMBERED}


def _pixbuf(png: bytes):
    loader = GdkPixbuf.PixbufLoader.new_with_type("png")
    loader.write(png)
    loader.close()
    return loader.get_pixbuf()


def _shown(widget):
    widget.show()
    return widget


def _frame(title: str, child) -> Gtk.Frame:
    frame = GimpUi.Frame.new(title)
    frame.add(child)
    return frame


class RunRow(Gtk.ListBoxRow):
    """One run: what it is, its progress and time left, Keep and Cancel."""

    def __init__(self, view: ctl.RunView, on_keep, on_cancel) -> None:
        super().__init__()
        self.run_id = view.id
        box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=2)
        box.set_border_width(4)
        self.label = Gtk.Label(label=view.label, xalign=0.0)
        self.label.set_ellipsize(Pango.EllipsizeMode.END)
        self.bar = Gtk.ProgressBar(show_text=True)
        buttons = Gtk.Box(spacing=6)
        self.keep = Gtk.Button.new_with_mnemonic("_Keep")
        self.keep.set_tooltip_text("Stop after this step and keep the picture as it is now")
        self.cancel = Gtk.Button.new_with_mnemonic("Ca_ncel")
        self.cancel.set_tooltip_text("Stop this run; the image stays as it was")
        self.keep.connect("clicked", lambda _b: on_keep(self.run_id))
        self.cancel.connect("clicked", lambda _b: on_cancel(self.run_id))
        buttons.pack_end(self.cancel, False, False, 0)
        buttons.pack_end(self.keep, False, False, 0)
        for widget in (self.label, self.bar, buttons):
            box.pack_start(widget, False, False, 0)
        self.add(box)
        self.state = view.state
        self.update(view)

    def update(self, view: ctl.RunView) -> None:
        self.state = view.state
        text = view.text.removeprefix("Neural style: ")
        if view.state == ctl.WAITING:
            text = f"waiting ({view.place} ahead)" if view.place else "waiting"
            if view.eta_s is not None:
                text += f", about {nst_client.format_duration(view.eta_s)} to its end"
        elif view.state == ctl.FAILED:
            text = f"Failed: {view.error}"
        self.bar.set_text(text)
        self.bar.set_tooltip_text(text)
        if view.fraction is None and view.pending:
            self.bar.pulse()
        else:
            self.bar.set_fraction(view.fraction or 0.0)
        self.keep.set_sensitive(view.can_keep)
        self.cancel.set_sensitive(view.can_cancel)
        self.keep.set_visible(view.pending)
        self.cancel.set_visible(view.pending)


class StudioWindow:
    """One image's window; ``run()`` returns when it is closed and its runs are over."""

    def __init__(self, procedure, config, image, photo, content_layer, init_layer, installed):
        self.config = config
        self.image = image
        self.photo = photo
        self.content_layer = content_layer
        self.installed = installed
        self.preview = PreviewLayer(image)
        # The view the window was opened from: while a plug-in runs, GIMP keeps a closed
        # image alive (the call holds it), so its view going is how the window sees the close.
        self.display = Gimp.default_display()
        self.closing = False
        self.observers = []  # the test hook (script.py): told of previews and run ends
        self.question = None  # the "Cancel them?" dialog while it is up
        self._rows: dict[int, RunRow] = {}
        self._ended: set[int] = set()
        self._history: list[nst_client.HistoryEntry] = []
        self._client_key = None
        self.controller = nst_client.StudioController(
            self._client(),
            notify=lambda event: GLib.idle_add(self._on_event, event),
            presets=nst_client.PresetStore(
                GLib.build_filenamev([Gimp.directory(), "neural-style", "presets"])
            ),
            start_command=installed.get("start_command"),
            preview_size=PREVIEW_SIZE,
            warm_up=True,
        )
        self.dialog = self._build(procedure, config, init_layer)

    # -- layout ------------------------------------------------------------------------------

    def _build(self, procedure, config, init_layer):
        dialog = GimpUi.ProcedureDialog(procedure=procedure, config=config, title=TITLE)
        dialog.set_ok_label("_Run")
        dialog.set_modal(False)
        main = [o.name for o in options.OPTIONS if o.group == options.STYLE]
        advanced = [o.name for o in options.OPTIONS if o.group != options.STYLE]
        dialog.get_label("advanced-label", "Advanced", False, False)
        advanced_box = dialog.fill_box("advanced-box", advanced)
        advanced_box.pack_start(self._start_from(init_layer), False, False, 0)
        dialog.fill_expander("advanced", "advanced-label", False, "advanced-box")
        settings_box = dialog.fill_box("nst-settings", [*main, "advanced"])

        side = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=8)
        side.set_size_request(380, -1)
        side.pack_start(self._runs_panel(), False, False, 0)
        side.pack_start(self._history_panel(), True, True, 0)
        side.pack_start(self._presets_panel(), False, False, 0)
        self.message = Gtk.Label(xalign=0.0, wrap=True, selectable=True)
        self.message.set_max_width_chars(48)
        side.pack_start(self.message, False, False, 0)

        # Before Run: the processing size, the enlargement and what "Restore detail" costs.
        self.estimate = Gtk.Label(xalign=0.0, wrap=True)
        self.estimate.set_max_width_chars(48)
        left = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=8)
        left.pack_start(settings_box, False, False, 0)
        left.pack_start(self.estimate, False, False, 0)

        columns = Gtk.Box(spacing=12)
        columns.pack_start(left, False, False, 0)
        columns.pack_start(Gtk.Separator(orientation=Gtk.Orientation.VERTICAL), False, False, 0)
        columns.pack_start(side, True, True, 0)
        content = dialog.get_content_area()
        content.pack_start(columns, True, True, 0)
        for child in content.get_children():
            # GIMP's own "Load/Save Settings" row: the Presets panel does this here.
            if isinstance(child, Gtk.ButtonBox):
                child.hide()
                child.set_no_show_all(True)
        reset = dialog.get_widget_for_response(1)  # its menu only works inside dialog.run()
        if reset is not None:
            reset.hide()
            reset.set_no_show_all(True)
        close = dialog.get_widget_for_response(Gtk.ResponseType.CANCEL)
        if close is not None:
            close.set_label("_Close")
        self.run_button = dialog.get_widget_for_response(Gtk.ResponseType.OK)
        dialog.connect("response", self._on_response)
        dialog.connect("delete-event", lambda *_a: self._on_close() or True)
        dialog.connect("focus-in-event", lambda *_a: self.refresh_history() and False)
        for name in ("style-layer", "style-layer-2"):
            widget = dialog.get_widget(name, GObject.TYPE_NONE)
            if isinstance(widget, GimpUi.DrawableChooser):
                widget.connect("size-allocate", _redraw_thumbnail_once)
        columns.show_all()
        return dialog

    def _start_from(self, init_layer):
        box = Gtk.Box(spacing=6)
        box.pack_start(Gtk.Label(label="Start from", xalign=0.0), False, False, 0)
        self.start_from = Gtk.ComboBoxText()
        self.start_from.set_tooltip_text(
            "The photo, or one of its results to continue from (more steps, another style)"
        )
        self._start_from_default = str(init_layer.get_id()) if init_layer else START_FROM_PHOTO
        box.pack_start(self.start_from, True, True, 0)
        return box

    def _runs_panel(self):
        box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=4)
        self.runs = Gtk.ListBox(selection_mode=Gtk.SelectionMode.NONE)
        self.runs.set_placeholder(
            _shown(Gtk.Label(label="Press Run: the picture appears on the canvas"))
        )
        box.pack_start(self.runs, False, False, 0)
        self.before_after = Gtk.ToggleButton.new_with_mnemonic("_Before (show the photo)")
        self.before_after.set_tooltip_text("Hide the preview to compare with the photo")
        self.before_after.connect("toggled", lambda b: self.preview.set_visible(not b.get_active()))
        box.pack_start(self.before_after, False, False, 0)
        return _frame("Runs", box)

    def _history_panel(self):
        box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=4)
        self.history = Gtk.ListBox(selection_mode=Gtk.SelectionMode.SINGLE)
        self.history.set_placeholder(_shown(Gtk.Label(label="No results in this image yet")))
        self.history.connect("row-selected", self._on_history_selected)
        scrolled = Gtk.ScrolledWindow(hscrollbar_policy=Gtk.PolicyType.NEVER)
        scrolled.set_min_content_height(3 * (THUMBNAIL_PX + 10))
        scrolled.add(self.history)
        box.pack_start(scrolled, True, True, 0)
        buttons = Gtk.Box(spacing=6)
        self.again = Gtk.Button.new_with_mnemonic("_Again (new seed)")
        self.again.set_tooltip_text("Run the selected result's settings again with a new seed")
        self.again.connect("clicked", lambda _b: self._on_again())
        self.again.set_sensitive(False)
        buttons.pack_end(self.again, False, False, 0)
        box.pack_start(buttons, False, False, 0)
        return _frame("History (select one to restore its settings)", box)

    def _presets_panel(self):
        grid = Gtk.Grid(column_spacing=6, row_spacing=4)
        self.presets = Gtk.ComboBoxText()
        self.presets.set_hexpand(True)
        load = Gtk.Button.new_with_mnemonic("_Load")
        delete = Gtk.Button.new_with_mnemonic("_Delete")
        self.preset_name = Gtk.Entry(placeholder_text="Name, e.g. Van Gogh, strong, 768 px")
        self.preset_name.set_hexpand(True)
        save = Gtk.Button.new_with_mnemonic("_Save")
        load.connect("clicked", lambda _b: self._on_load_preset())
        delete.connect("clicked", lambda _b: self._on_delete_preset())
        save.connect("clicked", lambda _b: self._on_save_preset())
        grid.attach(self.presets, 0, 0, 1, 1)
        grid.attach(load, 1, 0, 1, 1)
        grid.attach(delete, 2, 0, 1, 1)
        grid.attach(self.preset_name, 0, 1, 1, 1)
        grid.attach(save, 1, 1, 2, 1)
        self.preset_buttons = {"load": load, "delete": delete, "save": save}
        return _frame("Presets", grid)

    # -- running -----------------------------------------------------------------------------

    def run(self) -> None:
        """Show the window and serve it until it is closed and no run is pending."""
        self.refresh_history()
        self._refresh_start_from()
        self.refresh_presets()
        self.dialog.show()
        self.config.connect("notify", lambda *_a: self._ask_estimate())
        self._ask_estimate()
        GLib.timeout_add(IMAGE_WATCH_MS, self._watch_image)
        Gtk.main()
        self.preview.remove()
        self.dialog.destroy()
        for observer in self.observers:
            observer.on_closed()

    def say(self, text: str, error: bool = False) -> None:
        markup = html.escape(text)
        self.message.set_markup(f"<b>{markup}</b>" if error else markup)

    def _ask_estimate(self) -> None:
        if images.alive(self.content_layer):
            size = (self.content_layer.get_width(), self.content_layer.get_height())
            self.controller.estimate(size, remembered_settings(self.config))

    def _client_settings(self) -> tuple:
        return (self.config.get_property("server-url"), self.config.get_property("server-token"))

    def _client(self):
        self._client_key = self._client_settings()
        return nst_client.make_client(*self._client_key, self.installed)

    def _on_response(self, _dialog, response) -> None:
        if response == Gtk.ResponseType.OK:
            self.start_run()
        elif response in (Gtk.ResponseType.CANCEL, Gtk.ResponseType.DELETE_EVENT):
            self._on_close()

    def start_run(self) -> int | None:
        """Read what the run needs from the image now and queue it; None (and a message)
        when something is missing."""
        try:
            if not images.alive(self.content_layer):
                raise images.Refusal(
                    "The photo layer this window was opened on was deleted: close the window "
                    "and open it again on a photo layer."
                )
            if self._client_settings() != self._client_key:
                self.controller.use_client(self._client())
            init_layer = self._chosen_start()
            chosen = images.paintings(self.config, self.photo, self.content_layer)
            inputs = images.read_inputs(self.image, self.content_layer, init_layer, chosen)
            above = init_layer if init_layer is not None else self.content_layer
            content = inputs.content
            request = nst_client.RunRequest(
                content_png=nst_client.encode_png(content),
                content_size=(content.width, content.height),
                style_pngs=inputs.style_pngs,
                paintings=inputs.paintings,
                settings=remembered_settings(self.config),
                source_id=self.content_layer.get_id(),
                source_name=self.content_layer.get_name(),
                mask_png=inputs.mask_png,
                init_png=inputs.init_png,
                target=RunTarget(
                    self.content_layer,
                    above,
                    tuple(self.content_layer.get_offsets()[1:]),
                    inputs.mask,
                    inputs.source_bits,
                ),
            )
            run_id = self.controller.submit(request)
        except (images.Refusal, nst_client.NstError) as exc:
            self.say(str(exc), error=True)
            return None
        except GLib.Error as exc:  # a GIMP call failed (reading pixels, the style file)
            self.say(f"GIMP could not prepare the images: {exc.message}", error=True)
            return None
        self.say("")
        for observer in self.observers:
            observer.on_run(run_id)
        return run_id

    def _chosen_start(self):
        chosen = self.start_from.get_active_id() or START_FROM_PHOTO
        if chosen == START_FROM_PHOTO:
            return None
        layer = Gimp.Item.get_by_id(int(chosen))
        if not images.alive(layer):
            raise images.Refusal("The result to start from was deleted: choose another.")
        return layer

    def keep(self, run_id: int) -> None:
        self.controller.keep(run_id)

    def cancel(self, run_id: int) -> None:
        self.controller.cancel(run_id)

    # -- what the controller reports (main loop) ---------------------------------------------

    def _on_event(self, event: ctl.Event) -> bool:
        try:
            self._handle(event)
        except Exception as exc:  # noqa: BLE001 - a bug shows in the window, never kills it
            self.say(f"Neural Style failed unexpectedly: {exc!r}", error=True)
        return GLib.SOURCE_REMOVE

    def _handle(self, event: ctl.Event) -> None:
        view = event.run
        if view is not None and view.id not in self._ended:
            self._row(view)
        if event.kind == ctl.PREVIEW and view is not None and view.id not in self._ended:
            self._show_preview(view, event.preview_png)
        elif event.kind == ctl.FINISHED and view is not None and view.id not in self._ended:
            self._ended.add(view.id)
            self.preview.remove()
            if view.state == ctl.DONE:
                self._land(view, event.result)
            elif view.state == ctl.FAILED:
                self.say(view.error or "The run failed", error=True)
                if self.closing:  # the window is gone: GIMP's own message instead
                    Gimp.message(f"Neural Style: {view.error or 'the run failed'}")
            for observer in self.observers:
                observer.on_finished(view)
            self._trim_rows()
        elif event.kind == ctl.MESSAGE:
            self.say(event.message or "")
        elif event.kind == ctl.ESTIMATE:
            self.estimate.set_text(event.message or "")
            for observer in self.observers:
                observer.on_estimate(event.message or "")
        elif event.kind == ctl.IDLE and self.closing:
            Gtk.main_quit()

    def _row(self, view: ctl.RunView) -> None:
        row = self._rows.get(view.id)
        if row is None:
            row = RunRow(view, self.keep, self.cancel)
            self._rows[view.id] = row
            self.runs.add(row)
            row.show_all()
        row.update(view)

    def _trim_rows(self) -> None:
        ended = [run_id for run_id, row in self._rows.items() if row.state in ctl.FINAL]
        for run_id in ended[:-FINISHED_ROWS_KEPT]:
            self.runs.remove(self._rows.pop(run_id))

    def _show_preview(self, view: ctl.RunView, png: bytes) -> None:
        target: RunTarget = view.target
        try:
            shown = self.preview.show(_pixbuf(png), target.photo, target.above, target.mask)
        except GLib.Error as exc:  # e.g. a floating selection: no layer can be added now
            self.say(f"The preview could not be shown: {exc.message}")
            return
        if shown:
            for observer in self.observers:
                observer.on_preview(view, self.preview.pixels_layer())

    def _land(self, view: ctl.RunView, result: ctl.Result) -> None:
        target: RunTarget = view.target
        if self.image_closed():
            return
        name = result.layer_name + (
            images.precision_note(result.image.bit_depth, target.source_bits) or ""
        )
        notes = [f"{note}." for note in result.notes]
        if not images.alive(target.photo):
            notes.append("The photo layer was deleted, so the result was added on top.")
        place = (
            images.landing_place(self.image, target.above) if images.alive(target.above) else None
        )
        try:
            layer = images.insert_result(
                self.image,
                target.above,
                target.offsets,
                name,
                result.image,
                result.record,
                target.mask,
                place,
            )
        except nst_client.NstError as exc:
            self.say(str(exc), error=True)
            return
        self.say(" ".join([f"Added '{layer.get_name()}'.", *notes]))
        self.refresh_history()

    # -- history -----------------------------------------------------------------------------

    def refresh_history(self) -> None:
        if not images.alive(self.image):
            return
        layers = []
        for layer in images.all_layers(self.image.get_layers()):
            if is_preview(layer):
                continue
            parasite = layer.get_parasite(nst_client.RESULT_PARASITE)
            data = parasite.get_data() if parasite else None
            layers.append((layer.get_id(), layer.get_name(), data, layer))
        entries = nst_client.history_from_layers(layers)
        if [(e.layer_id, e.layer_name) for e in entries] == [
            (e.layer_id, e.layer_name) for e in self._history
        ]:
            return
        self._history = entries
        for row in self.history.get_children():
            self.history.remove(row)
        for entry in entries:
            self.history.add(self._history_row(entry))
        self.history.show_all()
        self._refresh_start_from()

    def _history_row(self, entry: nst_client.HistoryEntry) -> Gtk.ListBoxRow:
        row = Gtk.ListBoxRow()
        box = Gtk.Box(spacing=8)
        box.set_border_width(3)
        try:
            thumb = entry.thumbnail.get_thumbnail(
                THUMBNAIL_PX, THUMBNAIL_PX, Gimp.PixbufTransparency.SMALL_CHECKS
            )
            box.pack_start(Gtk.Image.new_from_pixbuf(thumb), False, False, 0)
        except (GLib.Error, AttributeError, TypeError):
            box.pack_start(Gtk.Image(), False, False, 0)
        facts = entry.facts()
        label = Gtk.Label(xalign=0.0, wrap=True)
        label.set_markup(f"<b>{html.escape(facts[0])}</b>\n{html.escape(', '.join(facts[1:]))}")
        label.set_max_width_chars(36)
        box.pack_start(label, True, True, 0)
        row.add(box)
        row.entry = entry
        return row

    def _refresh_start_from(self) -> None:
        current = self.start_from.get_active_id() or self._start_from_default
        self.start_from.remove_all()
        self.start_from.append(START_FROM_PHOTO, "The photo")
        for entry in self._history:
            self.start_from.append(str(entry.layer_id), f"Result: {entry.layer_name}")
        if not self.start_from.set_active_id(current):
            self.start_from.set_active_id(START_FROM_PHOTO)

    def _on_history_selected(self, _listbox, row) -> None:
        self.again.set_sensitive(row is not None)
        if row is not None:
            self._apply(self.controller.restore(row.entry), row.entry)
            self.say(f"Settings of '{row.entry.layer_name}' restored.")

    def _on_again(self) -> int | None:
        row = self.history.get_selected_row()
        if row is None:
            return None
        self._apply(self.controller.again(row.entry), row.entry)
        return self.start_run()

    def _apply(self, settings: dict, entry: nst_client.HistoryEntry | None = None) -> None:
        for name, value in settings.items():
            self.config.set_property(name, value)
        if entry is not None:
            self._restore_paintings(entry)

    def _restore_paintings(self, entry: nst_client.HistoryEntry) -> None:
        """The result's paintings back in the style choosers, where they still exist."""
        found = []
        for painting in entry.record.get("paintings") or []:
            if painting.get("file"):
                found.append(("file", Gio.File.new_for_path(painting["file"])))
                continue
            layer_id = painting.get("layer_id")
            layer = Gimp.Item.get_by_id(layer_id) if isinstance(layer_id, int) else None
            if (
                isinstance(layer, Gimp.Layer)
                and layer.get_image() == self.image
                and layer.get_name() == painting.get("name")
            ):
                found.append(("layer", layer))
        layers = [value for kind, value in found if kind == "layer"]
        files = [value for kind, value in found if kind == "file"]
        if files:
            self.config.set_property("style-file", files[0])
        elif layers:
            self.config.set_property("style-file", None)
            self.config.set_property("style-layer", layers[0])
        if len(layers) > 1 or (files and layers):
            self.config.set_property("style-layer-2", layers[-1])

    # -- presets -----------------------------------------------------------------------------

    def refresh_presets(self, select: str | None = None) -> None:
        presets, problems = self.controller.presets_list()
        current = select or self.presets.get_active_id()
        self.presets.remove_all()
        for preset in presets:
            label = preset.name + (" (built in)" if preset.built_in else "")
            self.presets.append(preset.name, label)
        if not (current and self.presets.set_active_id(current)):
            self.presets.set_active(0)
        if problems:
            self.say(" ".join(problems), error=True)

    def _on_load_preset(self) -> None:
        name = self.presets.get_active_id()
        if name:
            try:
                self._apply(self.controller.apply_preset(name, remembered_settings(self.config)))
            except nst_client.NstError as exc:
                self.say(str(exc), error=True)
                return
            self.say(f"Preset '{name}' loaded.")

    def _on_save_preset(self) -> None:
        name = " ".join(self.preset_name.get_text().split())
        try:
            self.controller.save_preset(name, remembered_settings(self.config))
        except nst_client.NstError as exc:
            self.say(str(exc), error=True)
            return
        self.preset_name.set_text("")
        self.refresh_presets(select=name)
        self.say(f"Preset '{name}' saved.")

    def _on_delete_preset(self) -> None:
        name = self.presets.get_active_id()
        if not name:
            return
        try:
            self.controller.delete_preset(name)
        except nst_client.NstError as exc:
            self.say(str(exc), error=True)
            return
        self.refresh_presets()
        self.say(f"Preset '{name}' deleted.")

    # -- closing -----------------------------------------------------------------------------

    def _on_close(self) -> None:
        if self.closing:
            return
        pending = self.controller.pending()
        cancel = False
        if pending:
            answer = self._ask_cancel(len(pending))
            if answer == STAY or self.closing:  # closing: the image went while it asked
                return
            cancel = answer == CANCEL_THEM
        self.closing = True
        self.dialog.hide()
        self.controller.close(cancel_pending=cancel)  # IDLE (now or later) ends the loop

    def _ask_cancel(self, count: int) -> int:
        runs = "1 run is" if count == 1 else f"{count} runs are"
        question = Gtk.MessageDialog(
            transient_for=self.dialog,
            modal=True,
            message_type=Gtk.MessageType.QUESTION,
            text=f"{runs} not finished. Cancel them?",
            secondary_text="If not, they finish and their results are added to the image "
            "after the window has closed.",
        )
        question.set_title(f"{TITLE}: runs pending")
        question.add_button("_Back to the window", STAY)
        question.add_button("_Let them finish", LET_THEM_FINISH)
        question.add_button("_Cancel them", CANCEL_THEM)
        question.set_default_response(CANCEL_THEM)
        self.question = question
        try:
            answer = question.run()
        finally:
            self.question = None
            question.destroy()
        return answer if answer in (CANCEL_THEM, LET_THEM_FINISH) else STAY

    def image_closed(self) -> bool:
        if not images.alive(self.image):
            return True
        return self.display is not None and not images.alive(self.display)

    def _watch_image(self) -> bool:
        """A closed image takes its runs with it: cancel them on the server and say so."""
        if not self.image_closed():
            return GLib.SOURCE_CONTINUE
        pending = len(self.controller.pending())
        if pending:
            runs = "its run was" if pending == 1 else f"its {pending} runs were"
            text = f"Neural Style: the image was closed, so {runs} cancelled."
            Gimp.message(text)
            for observer in self.observers:
                observer.on_message(text)
        if self.question is not None:
            self.question.response(CANCEL_THEM)
        self.closing = True
        self.dialog.hide()
        self.controller.close(cancel_pending=True)
        return GLib.SOURCE_REMOVE


def _redraw_thumbnail_once(chooser, _allocation):
    """GIMP 3.0.4's drawable chooser draws its thumbnail when its drawable is set, which for
    a dialog is before the widget has a size, so the preview stays blank; redraw it once the
    size is known (setting the same drawable again redraws)."""
    if getattr(chooser, "_nst_redrawn", False):
        return
    chooser._nst_redrawn = True
    GLib.idle_add(lambda: chooser.set_drawable(chooser.get_drawable()) and False)
