#!/usr/bin/env bash
# Screenshot of the plug-in's real dialog: GIMP (GUI) under Xvfb in a GIMP 3 chroot.
#
#   tests/gimp/dialog_screenshot.sh [OUT.png]     (default /tmp/nst-gimp-e2e/dialog.png; root)
#
# Not a test: a picture for README. Builds/reuses the chroot with Xvfb (NST_GIMP_XVFB=1),
# installs the plug-in into a throwaway profile, opens a two-layer image and runs the plug-in
# INTERACTIVE, grabs the screen once the "Neural Style" dialog is up, then ends the processes it
# started (by pid).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$HERE/../.."
# NST_GIMP_RELEASE=forky: GIMP 3.2 (its chroot and binary) instead of 3.0.
RELEASE="${NST_GIMP_RELEASE:-trixie}"
if [[ "$RELEASE" == forky ]]; then
    ROOT="${NST_GIMP32_ROOT:-/var/cache/nst-gimp32-root}" GIMP_BIN=gimp-3.2
else
    ROOT="${NST_GIMP_ROOT:-/var/cache/nst-gimp3-root}" GIMP_BIN=gimp-3.0
fi
OUT="${1:-/tmp/nst-gimp-e2e/dialog.png}"
SHARED="${NST_SHARED_IMAGES:-$REPO/../shared/images}"

NST_GIMP_XVFB=1 bash "$HERE/build_chroot.sh" --release "$RELEASE" "$ROOT"
WORK="/tmp/nst-dialog-$$"
mkdir -p "$ROOT$WORK/profile/plug-ins" "$(dirname "$OUT")"
cp "$SHARED/content/tubingen.jpg" "$ROOT$WORK/content.jpg"
cp "$SHARED/style/starry_night.jpg" "$ROOT$WORK/style.jpg"
cp "$SHARED/style/the_scream.jpg" "$ROOT$WORK/style2.jpg"
bash "$REPO/install/install_plugin.sh" --plugin-dir "$ROOT$WORK/profile/plug-ins" >/dev/null

ENVV=(HOME=/root PATH=/usr/bin:/bin LANG=C.UTF-8 DISPLAY=:77 GIMP3_DIRECTORY="$WORK/profile"
      NST_E2E_DIR="$WORK" NST_E2E_SIZE=480 NST_E2E_SCENARIOS=dialog)
in_root() { chroot "$ROOT" /usr/bin/env -i "${ENVV[@]}" "$@"; }

# Started directly (not through the function) so that $! is the process itself: chroot and env
# exec, so killing that pid ends Xvfb / GIMP and nothing is left behind.
chroot "$ROOT" /usr/bin/env -i "${ENVV[@]}" Xvfb :77 -screen 0 1400x1000x24 -nolisten tcp \
    >/dev/null 2>&1 &
XVFB=$!
GIMP=""
PROC_MOUNTED=0
cleanup() {
    if [[ -n "$GIMP" ]]; then kill "$GIMP" 2>/dev/null || true; fi
    sleep 1
    kill "$XVFB" 2>/dev/null || true
    wait 2>/dev/null || true
    if [[ $PROC_MOUNTED == 1 ]]; then umount "$ROOT/proc" 2>/dev/null || true; fi
    rm -rf "${ROOT:?}$WORK" "$ROOT/tmp/.X77-lock" "$ROOT/tmp/.X11-unix/X77"
}
trap cleanup EXIT
# GIMP 3.2's GTK loads icons through glycin, whose bwrap sandbox needs /proc: mounted for the
# GUI session only, unmounted on exit (batch mode needs no mounts).
if ! mountpoint -q "$ROOT/proc"; then
    mount -t proc proc "$ROOT/proc"
    PROC_MOUNTED=1
fi
sleep 2
chroot "$ROOT" /usr/bin/env -i "${ENVV[@]}" "$GIMP_BIN" --no-splash \
    --batch-interpreter=python-fu-eval -b - <"$HERE/e2e_batch.py" >"$ROOT$WORK/gimp.out" 2>&1 &
GIMP=$!
for _ in $(seq 120); do
    if win=$(in_root xdotool search --name '^Neural Style' 2>/dev/null | head -1) && [[ -n "$win" ]]; then
        break
    fi
    sleep 1
done
if [[ -z "${win:-}" ]]; then
    echo "dialog_screenshot.sh: the dialog never appeared; GIMP said:" >&2
    tail -30 "$ROOT$WORK/gimp.out" >&2
    exit 1
fi
sleep 3  # let it draw
in_root import -window root "$WORK/screen.png"
in_root import -window "$win" -frame "$WORK/dialog.png" 2>/dev/null ||
    cp "$ROOT$WORK/screen.png" "$ROOT$WORK/dialog.png"
cp "$ROOT$WORK/dialog.png" "$OUT"
cp "$ROOT$WORK/screen.png" "${OUT%.png}-screen.png"
cp "$ROOT$WORK/gimp.out" "${OUT%.png}-gimp.log"
echo "saved $OUT and ${OUT%.png}-screen.png"
