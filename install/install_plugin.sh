#!/usr/bin/env bash
# Install (or remove) the GIMP 3 plug-in "Filters > Artistic > Neural Style...".
#
#   install/install_plugin.sh [--plugin-dir DIR]... [--start-command "CMD"] [--server-url URL]
#                             [--token-file PATH]
#   install/install_plugin.sh --uninstall [--plugin-dir DIR]...
#
# Copies the whole folder gimp_plugin/neural_style/ to <plug-ins dir>/neural_style/ (GIMP 3 only
# registers a plug-in living in a folder named like its file, with the exec bit) in EVERY GIMP
# 3.N profile that exists:
#   Linux    ${XDG_CONFIG_HOME:-~/.config}/GIMP/3.N/plug-ins
#   Flatpak  ~/.var/app/org.gimp.GIMP/config/GIMP/3.N/plug-ins
#   macOS    ~/Library/Application Support/GIMP/3.N/plug-ins
# or only into the --plugin-dir(s) given (the chroot test harness uses that), and prints each
# path written. It never creates the profile of a GIMP that has not run, because GIMP copies an
# older profile (a 3.0 one, with its plug-ins) only when its own folder is absent: creating
# GIMP/3.2 by hand would silently drop the artist's 3.0 settings. Only when no 3.N profile exists
# at all is GIMP/3.0 created, which every GIMP 3 then finds.
#
# The server URL, the command that starts the server and the server's token file are recorded in
#   <plug-ins dir>/neural_style/plugin.json  {"server_url", "start_command", "token_file"}
# next to the plug-in rather than in ~/.config/neural-style: a Flatpak GIMP sees its own
# ~/.config, and the plug-in finds its folder without guessing. NST_PLUGIN_CONFIG overrides the
# path at run time. Re-running replaces the plug-in's files (idempotent); plugin.json is kept,
# and flags not given keep the values already recorded.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$HERE/../gimp_plugin/neural_style"
NAME=neural_style
PLUGIN_DIRS=()
START_COMMAND=""
SERVER_URL=""
TOKEN_FILE=""
UNINSTALL=0
# The platform; NST_INSTALL_PLATFORM lets the tests exercise the macOS paths on Linux.
PLATFORM="${NST_INSTALL_PLATFORM:-$(uname -s)}"

usage() { sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --plugin-dir) PLUGIN_DIRS+=("${2:?--plugin-dir needs a directory}"); shift 2 ;;
        --start-command) START_COMMAND="${2?--start-command needs a command}"; shift 2 ;;
        --server-url) SERVER_URL="${2:?--server-url needs a URL}"; shift 2 ;;
        --token-file) TOKEN_FILE="${2:?--token-file needs a path}"; shift 2 ;;
        --uninstall) UNINSTALL=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install_plugin.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done

if [[ ${#PLUGIN_DIRS[@]} -eq 0 ]]; then
    if [[ "$PLATFORM" == Darwin ]]; then
        # Not tested on a Mac (this project's CI runs Linux); the same rules as on Linux.
        BASES=("$HOME/Library/Application Support/GIMP")
    else
        BASES=("${XDG_CONFIG_HOME:-$HOME/.config}/GIMP" "$HOME/.var/app/org.gimp.GIMP/config/GIMP")
    fi
    for base in "${BASES[@]}"; do
        for profile in "$base"/3.*; do
            if [[ -d "$profile" && "$(basename "$profile")" =~ ^3\.[0-9]+$ ]]; then
                PLUGIN_DIRS+=("$profile/plug-ins")
            fi
        done
    done
    if [[ ${#PLUGIN_DIRS[@]} -eq 0 && $UNINSTALL -eq 0 ]]; then
        echo "no GIMP 3 profile found: creating ${BASES[0]}/3.0 (every GIMP 3 starts from it)"
        PLUGIN_DIRS+=("${BASES[0]}/3.0/plug-ins")
    fi
fi

# Pick a Python for writing JSON safely (quotes in a command); the host's python3 is enough.
PY="$(command -v python3 || true)"

write_config() {  # $1: target file (an existing one is updated)
    local target="$1"
    if [[ -z "$PY" ]]; then
        echo "install_plugin.sh: python3 is needed to write $target" >&2
        exit 1
    fi
    URL="$SERVER_URL" CMD="$START_COMMAND" TOKEN_FILE="$TOKEN_FILE" \
        DEFAULT_TOKEN_FILE="${XDG_CONFIG_HOME:-$HOME/.config}/neural-style/token" \
        "$PY" - "$target" <<'PYEOF'
import json, os, sys
target = sys.argv[1]
try:
    with open(target, encoding="utf-8") as fh:
        doc = json.load(fh)
    if not isinstance(doc, dict):
        doc = {}
except (OSError, ValueError):
    doc = {}
for key, env in (("server_url", "URL"), ("start_command", "CMD"), ("token_file", "TOKEN_FILE")):
    if os.environ[env]:
        doc[key] = os.environ[env]
doc.setdefault("server_url", "http://127.0.0.1:8765")
# Where the server keeps its token, as this installer resolves it (a Flatpak GIMP has its own
# ~/.config, so the plug-in must not work it out again).
doc.setdefault("token_file", os.environ["DEFAULT_TOKEN_FILE"])
tmp = target + ".tmp"
with open(tmp, "w", encoding="utf-8") as fh:
    json.dump(doc, fh, indent=2)
    fh.write("\n")
os.replace(tmp, target)
PYEOF
}

copy_plugin() {  # $1: destination folder; every file of the plug-in's folder, plugin.json kept
    local dest="$1" file
    mkdir -p "$dest"
    find "$dest" -mindepth 1 -maxdepth 1 ! -name plugin.json -exec rm -rf -- {} +
    (cd "$SRC" && find . -name __pycache__ -prune -o -type f ! -name plugin.json ! -name '*.pyc' -print) |
        while IFS= read -r file; do
            install -D -m 0644 "$SRC/$file" "$dest/$file"
        done
    chmod 0755 "$dest/$NAME.py"
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
    copy_plugin "$dest"
    write_config "$dest/plugin.json"
    echo "installed $dest (settings: $dest/plugin.json)"
done
if [[ $UNINSTALL -eq 0 ]]; then
    echo "Restart GIMP 3, then use Filters > Artistic > Neural Style..."
fi
