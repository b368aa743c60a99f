#!/usr/bin/env bash
# Install (or remove) the GIMP 3 plug-in "Filters > Artistic > Neural Style...".
#
#   install/install_plugin.sh [--plugin-dir DIR]... [--start-command "CMD"] [--server-url URL]
#   install/install_plugin.sh --uninstall [--plugin-dir DIR]...
#
# Copies gimp_plugin/neural_style/ to <plug-ins dir>/neural_style/ (GIMP 3 only registers a
# plug-in living in a folder named like its file, with the exec bit) into
#   ~/.config/GIMP/3.0/plug-ins                                 (always)
#   ~/.var/app/org.gimp.GIMP/config/GIMP/3.0/plug-ins           (when the Flatpak profile exists)
# or only into the --plugin-dir(s) given (the chroot test harness uses that).
#
# The server URL and the command that starts the server are recorded in
#   <plug-ins dir>/neural_style/plugin.json   {"server_url": ..., "start_command": ...}
# next to the plug-in rather than in ~/.config/neural-style: a Flatpak GIMP sees its own
# ~/.config, and the plug-in finds its folder without guessing. NST_PLUGIN_CONFIG overrides the
# path at run time. Re-running replaces the files (idempotent); flags not given keep the values
# already recorded.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$HERE/../gimp_plugin/neural_style"
NAME=neural_style
PLUGIN_DIRS=()
START_COMMAND=""
SERVER_URL=""
UNINSTALL=0

usage() { sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --plugin-dir) PLUGIN_DIRS+=("${2:?--plugin-dir needs a directory}"); shift 2 ;;
        --start-command) START_COMMAND="${2?--start-command needs a command}"; shift 2 ;;
        --server-url) SERVER_URL="${2:?--server-url needs a URL}"; shift 2 ;;
        --uninstall) UNINSTALL=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install_plugin.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done

if [[ ${#PLUGIN_DIRS[@]} -eq 0 && "$(uname -s)" == Darwin ]]; then
    # macOS keeps GIMP's profile elsewhere (not tested here: no Mac in this project's CI).
    PLUGIN_DIRS+=("$HOME/Library/Application Support/GIMP/3.0/plug-ins")
elif [[ ${#PLUGIN_DIRS[@]} -eq 0 ]]; then
    PLUGIN_DIRS+=("${XDG_CONFIG_HOME:-$HOME/.config}/GIMP/3.0/plug-ins")
    FLATPAK="$HOME/.var/app/org.gimp.GIMP/config/GIMP/3.0"
    if [[ -d "$FLATPAK" ]]; then
        PLUGIN_DIRS+=("$FLATPAK/plug-ins")
    fi
fi

# Pick a Python for writing JSON safely (quotes in a command); the host's python3 is enough.
PY="$(command -v python3 || true)"

write_config() {  # $1: target file
    local target="$1" old="{}"
    [[ -f "$target" ]] && old="$(cat "$target")"
    if [[ -z "$PY" ]]; then
        echo "install_plugin.sh: python3 is needed to write $target" >&2
        exit 1
    fi
    OLD="$old" URL="$SERVER_URL" CMD="$START_COMMAND" "$PY" - "$target" <<'PYEOF'
import json, os, sys
try:
    doc = json.loads(os.environ["OLD"])
    if not isinstance(doc, dict):
        doc = {}
except ValueError:
    doc = {}
if os.environ["URL"]:
    doc["server_url"] = os.environ["URL"]
if os.environ["CMD"]:
    doc["start_command"] = os.environ["CMD"]
doc.setdefault("server_url", "http://127.0.0.1:8765")
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w", encoding="utf-8") as fh:
    json.dump(doc, fh, indent=2)
    fh.write("\n")
os.replace(tmp, sys.argv[1])
PYEOF
}

for dir in "${PLUGIN_DIRS[@]}"; do
    dest="$dir/$NAME"
    if [[ $UNINSTALL -eq 1 ]]; then
        if [[ -d "$dest" ]]; then
            rm -rf -- "$dest"
            echo "removed $dest"
        else
            echo "not installed in $dir"
        fi
        continue
    fi
    mkdir -p "$dest"
    # Keep a recorded plugin.json across re-installs; replace everything else.
    saved=""
    [[ -f "$dest/plugin.json" ]] && saved="$(cat "$dest/plugin.json")"
    find "$dest" -mindepth 1 -maxdepth 1 ! -name plugin.json -exec rm -rf -- {} +
    install -m 0755 "$SRC/neural_style.py" "$dest/neural_style.py"
    install -m 0644 "$SRC/nst_client.py" "$dest/nst_client.py"
    [[ -n "$saved" ]] && printf '%s\n' "$saved" >"$dest/plugin.json"
    write_config "$dest/plugin.json"
    echo "installed $dest (settings: $dest/plugin.json)"
done
if [[ $UNINSTALL -eq 0 ]]; then
    echo "Restart GIMP 3, then use Filters > Artistic > Neural Style..."
fi
