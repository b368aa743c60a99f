"""Test-only: script the window and log what it shows, for the end-to-end tests in real GIMP.

A batch call cannot observe a window that stays open, so the tests (tests/gimp/test_window.py)
start GIMP under Xvfb, open the real window and set NST_WINDOW_SCRIPT to a JSON file::

    {"windows": {"Photo": {"log": "/tmp/.../window.jsonl",
                           "steps": [{"run": true}, {"wait_previews": 3}, {"keep": true},
                                     {"wait_finished": 1}, ...]}}}

keyed by the name of the photo layer the window is opened on (two images, two windows).

The steps press the window's real buttons (the same GTK signals a click emits) one after the
other, each waiting for its condition; every run, preview and end is logged as a JSON line with
the image's layers and pixel measures, which the tests assert on. The artist's own edits and
Ctrl+Z come from xdotool on GIMP's image window (the test drives them between "wait_file"
steps). Without NST_WINDOW_SCRIPT nothing here runs.
"""

from __future__ import annotations

import json
import os
import time

import gi

gi.require_version("Gimp", "3.0")
import nst_client
from gi.repository import Gimp, GLib

from . import images
from .preview import is_preview
from .window import remembered_settings

ENV_SCRIPT = "NST_WINDOW_SCRIPT"
TICK_MS = 50


def attach_from_environment(window):
    path = os.environ.get(ENV_SCRIPT)
    if not path:
        return None
    with open(path, encoding="utf-8") as handle:
        doc = json.load(handle)["windows"].get(window.content_layer.get_name())
    if doc is None:
        return None
    script = WindowScript(window, doc["steps"], doc["log"])
    window.observers.append(script)
    GLib.timeout_add(TICK_MS, script.tick)
    return script


def _mean_abs_diff(a: bytes, b: bytes) -> float | None:
    if not a or not b or len(a) != len(b):
        return None
    step = max(1, len(a) // 30000)  # a sample is plenty for "closer to this than to that"
    total = sum(abs(x - y) for x, y in zip(a[::step], b[::step], strict=True))
    return total / len(a[::step])


class WindowScript:
    def __init__(self, window, steps, log_path) -> None:
        self.window = window
        self.steps = list(steps)
        self.log_path = log_path
        self.started = time.monotonic()
        self.previews = 0
        self.export_dir = None
        self.run_previews: dict[int, int] = {}
        self.finished = 0
        self.answer = None
        self.busy = False  # a deferred press has not returned yet
        self.last_preview_px: dict[int, bytes] = {}
        self.kept_from: dict[int, bytes] = {}  # run id -> its last preview when Keep was pressed
        self.run_ids: list[int] = []
        self.log("script", steps=len(self.steps), gimp=Gimp.version())

    # -- log -----------------------------------------------------------------------------

    def log(self, event: str, at: float | None = None, **fields) -> None:
        """One line; ``at``: when it happened (time.monotonic()), if not now."""
        now = time.monotonic()
        at = now if at is None else at
        line = {
            "t": round(at - self.started, 3),
            "wall": round(time.time() - (now - at), 3),  # to line up with the server's log
            "event": event,
            **fields,
        }
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")

    def _px_rgb(self, layer) -> bytes:
        raw = images.read_pixels(layer, 8)
        if raw.channels == 3:
            return raw.pixels
        return bytes(b for i, b in enumerate(raw.pixels) if i % 4 != 3)

    def layers(self) -> list[dict]:
        window = self.window
        if not images.alive(window.image):
            return []
        photo = window.content_layer
        photo_px = self._px_rgb(photo) if images.alive(photo) else b""
        out = []
        for layer in images.all_layers(window.image.get_layers()):
            parasite = layer.get_parasite("neural-style-result")
            record = json.loads(bytes(parasite.get_data()).decode()) if parasite else None
            doc = {
                "name": layer.get_name(),
                "id": layer.get_id(),
                "size": [layer.get_width(), layer.get_height()],
                "offsets": list(layer.get_offsets()[1:]),
                "visible": layer.get_visible(),
                "preview": is_preview(layer),
                "has_mask": layer.get_mask() is not None,
            }
            if record is not None or is_preview(layer):
                px = self._px_rgb(layer)
                doc["diff_to_photo"] = _mean_abs_diff(px, photo_px)
                if record is not None:
                    doc["record"] = {
                        k: record.get(k)
                        for k in ("steps", "finished_early", "seed", "strength", "style")
                    }
                    for run_id, kept in self.kept_from.items():
                        doc.setdefault("diff_to_kept_preview", {})[run_id] = _mean_abs_diff(
                            px, kept
                        )
            out.append(doc)
        return out

    @staticmethod
    def _mask(layer) -> dict | None:
        """The layer mask's share of selected pixels in the left and right quarters."""
        mask = layer.get_mask()
        if mask is None:
            return None
        raw = images.read_pixels(mask, 8)  # 3 equal channels from a grey mask
        width, height = raw.width, raw.height
        values = raw.pixels[0 :: raw.channels]

        def share(x0, x1):
            picked = [values[y * width + x] for y in range(height) for x in range(x0, x1)]
            return sum(v > 127 for v in picked) / max(1, len(picked))

        return {"left": share(0, width // 4), "right": share(width - width // 4, width)}

    # -- what the window tells ---------------------------------------------------------------

    def on_run(self, run_id: int) -> None:
        self.run_ids.append(run_id)
        self.log("run", id=run_id)

    def on_preview(self, view, layer) -> None:
        shown = time.monotonic()  # the measures below take a while: not part of the timing
        self.previews += 1
        self.run_previews[view.id] = self.run_previews.get(view.id, 0) + 1
        if self.export_dir and layer is not None:  # frames for the README's animation
            path = os.path.join(self.export_dir, f"frame-{self.previews:03d}.png")
            with open(path, "wb") as handle:
                handle.write(nst_client.encode_png(images.read_pixels(layer, 8)))
        px = self._px_rgb(layer) if layer is not None else b""
        self.last_preview_px[view.id] = px
        photo = self.window.content_layer
        self.log(
            "preview",
            at=shown,
            n=self.previews,
            id=view.id,
            text=view.text,
            fraction=view.fraction,
            layer=None
            if layer is None
            else {
                "name": layer.get_name(),
                "size": [layer.get_width(), layer.get_height()],
                "offsets": list(layer.get_offsets()[1:]),
                "visible": layer.get_visible(),
                "has_mask": layer.get_mask() is not None,
                "position": self.window.image.get_item_position(layer),
            },
            photo_position=self.window.image.get_item_position(photo),
            mask=None if layer is None else self._mask(layer),
            diff_to_photo=_mean_abs_diff(px, self._px_rgb(photo)),
            selected=[s.get_name() for s in self.window.image.get_selected_layers()],
        )

    def on_closed(self) -> None:
        window = self.window
        alive = not window.image_closed()
        self.log(
            "closed",
            layers=[layer["name"] for layer in self.layers()] if alive else None,
            image_closed=not alive,
            dirty=alive and window.image.is_dirty(),
        )

    def on_message(self, text: str) -> None:
        self.log("message", text=text)

    def on_estimate(self, text: str) -> None:
        self.log("estimate", text=text)

    def on_finished(self, view) -> None:
        self.finished += 1
        self.log(
            "finished",
            id=view.id,
            state=view.state,
            error=view.error,
            message=self.window.message.get_text(),
            layers=self.layers(),
        )

    # -- steps -------------------------------------------------------------------------------

    def tick(self) -> bool:
        window = self.window
        if window.question is not None and self.answer is not None:
            self.log("answer", answer=self.answer)
            window.question.response(self.answer)
            self.answer = None
        while self.steps and not self.busy and self._step(self.steps[0]):
            self.steps.pop(0)
        if not self.steps and not self.busy:
            self.log("script-end")
            return GLib.SOURCE_REMOVE
        return GLib.SOURCE_CONTINUE

    def _press(self, what: str, action) -> None:
        """Press later, from the main loop, so a press that opens a nested loop (the question)
        does not block this tick."""
        self.busy = True

        def press():
            self.log("press", what=what)
            try:
                action()
            finally:
                self.busy = False
            return GLib.SOURCE_REMOVE

        GLib.idle_add(press)

    def _row(self, which):
        """The row of a pending run: ``"last"`` (or true), ``"first"``."""
        rows = self.window._rows.values()
        pending = [row for row in rows if row.state not in ("done", "failed", "cancelled")]
        if not pending:
            return None
        return pending[0] if which == "first" else pending[-1]

    def _step(self, step: dict) -> bool:
        """Do or wait for ``step``; True when it is done."""
        window = self.window
        if "run" in step:
            self._press("run", window.run_button.clicked)
        elif "set" in step:
            for name, value in step["set"].items():
                if name.startswith("style-layer") and isinstance(value, str):
                    value = next(
                        layer
                        for layer in images.all_layers(window.image.get_layers())
                        if layer.get_name() == value
                    )
                window.config.set_property(name, value)
        elif "keep" in step or "cancel" in step:
            row = self._row(step.get("keep", step.get("cancel")))
            if row is None:
                self.log("error", what="no pending run to press on", step=step)
                return True
            if "keep" in step:
                self.kept_from[row.run_id] = self.last_preview_px.get(row.run_id, b"")
            button = row.keep if "keep" in step else row.cancel
            self._press("keep" if "keep" in step else "cancel", button.clicked)
        elif "wait_previews" in step:  # previews of the last run asked for ("of": another)
            runs = self.run_ids[step.get("of", -1) :]
            return bool(runs) and self.run_previews.get(runs[0], 0) >= step["wait_previews"]
        elif "wait_finished" in step:
            return self.finished >= step["wait_finished"]
        elif "wait_estimate" in step:  # the estimate under the settings shows this text
            return step["wait_estimate"] in window.estimate.get_text()
        elif "wait_file" in step:
            return os.path.exists(os.path.join(os.path.dirname(self.log_path), step["wait_file"]))
        elif "sleep" in step:
            due = step.setdefault("_due", time.monotonic() + step["sleep"])
            return time.monotonic() >= due
        elif "log" in step:
            self.log(
                "state",
                label=step["log"],
                layers=self.layers(),
                selection=images.alive(window.image) and not Gimp.Selection.is_empty(window.image),
                dirty=images.alive(window.image) and window.image.is_dirty(),
                message=window.message.get_text(),
                estimate=window.estimate.get_text(),
                history=[row.entry.layer_name for row in window.history.get_children()],
                runs=[
                    {
                        "id": run_id,
                        "state": row.state,
                        "text": row.bar.get_text(),
                        "keep": row.keep.get_sensitive(),
                        "cancel": row.cancel.get_sensitive(),
                    }
                    for run_id, row in window._rows.items()
                ],
                settings=remembered_settings(window.config),
                presets=[row[1] for row in window.presets.get_model()],
            )
        elif "signal" in step:  # the host waits for this line, then acts (xdotool, screenshot)
            self.log("signal", name=step["signal"])
        elif "close" in step:
            self.answer = {"cancel": 1, "finish": 2, "stay": 3}.get(step["close"])
            close = window.dialog.get_widget_for_response(-6)  # Gtk.ResponseType.CANCEL
            self._press("close", close.clicked)
        elif "delete_layer" in step:
            for layer in images.all_layers(window.image.get_layers()):
                if layer.get_name() == step["delete_layer"]:
                    window.image.remove_layer(layer)
                    Gimp.displays_flush()
                    break
        elif "mark_clean" in step:  # as saving the image does
            window.image.clean_all()
        elif "select" in step:  # a rectangle in the photo's coordinates
            x, y, width, height = step["select"]
            offset_x, offset_y = window.content_layer.get_offsets()[1:]
            window.image.select_rectangle(
                Gimp.ChannelOps.REPLACE, offset_x + x, offset_y + y, width, height
            )
        elif "export_previews" in step:
            self.export_dir = os.path.join(os.path.dirname(self.log_path), step["export_previews"])
            os.makedirs(self.export_dir, exist_ok=True)
        elif "before_after" in step:
            window.before_after.set_active(step["before_after"])
        elif "select_history" in step:
            rows = window.history.get_children()
            window.history.select_row(rows[step["select_history"]])
        elif "again" in step:
            self._press("again", window.again.clicked)
        elif "preset_save" in step:
            window.preset_name.set_text(step["preset_save"])
            window.preset_buttons["save"].clicked()
        elif "preset_load" in step or "preset_delete" in step:
            name = step.get("preset_load") or step.get("preset_delete")
            window.presets.set_active_id(name)
            window.preset_buttons["load" if "preset_load" in step else "delete"].clicked()
        else:
            self.log("error", what="unknown step", step=step)
        return True
