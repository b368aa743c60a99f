#!/usr/bin/env bash
# One-command set-up of Neural Style for GIMP on Linux (macOS: same script, see README).
#
#   ./install/install.sh             create the Python environment, install the server, fetch the
#                                    VGG19 weights, install the GIMP plug-in, start the server
#   ./install/install.sh --restart   same, and restart a server that is already running
#   ./install/install.sh --no-start  everything but starting the server
#   ./install/install.sh --systemd   same, and run the server as a systemd --user service that
#                                    starts at log-in (instead of a background process)
#   ./install/install.sh --uninstall remove the plug-in, stop the server, delete the environment
#
# Re-runnable: every step checks what is already there. Environment overrides: NST_VENV (default
# <repo>/.venv), NST_PORT (8765), NST_PYTHON (python3.11, 3.12, 3.10 or python3, whichever exists).
# The server's token is made once in ${XDG_CONFIG_HOME:-~/.config}/neural-style/token (0600);
# re-running this on an install made before tokens existed migrates it (the plug-in is told
# where the token is, a server started without one is restarted).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NST_VENV:-$REPO/.venv}"
PORT="${NST_PORT:-8765}"
URL="http://127.0.0.1:$PORT"
STATE_DIR="${XDG_STATE_HOME:-$HOME/.local/state}/neural-style"
TOKEN_FILE="${NST_TOKEN_FILE:-${XDG_CONFIG_HOME:-$HOME/.config}/neural-style/token}"
LOG="$STATE_DIR/server.log"
PIDFILE="$STATE_DIR/server.pid"
START=1 RESTART=0 UNINSTALL=0 SYSTEMD=0
for arg in "$@"; do
  case "$arg" in
    --no-start) START=0 ;;
    --restart) RESTART=1 ;;
    --uninstall) UNINSTALL=1 ;;
    --systemd) SYSTEMD=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done

say() { printf '==> %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

server_up() {
  "$VENV/bin/python" - "$URL" <<'PY' 2>/dev/null
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/v1/health", timeout=2) as r:
    sys.exit(0 if json.load(r).get("status") in ("ok", "loading") else 1)
PY
}

# A server from before tokens: its health tells anyone its weights and log without one.
server_without_token() {
  "$VENV/bin/python" - "$URL" <<'PY' 2>/dev/null
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/v1/health", timeout=2) as r:
    sys.exit(0 if "weights" in json.load(r) else 1)
PY
}

stop_server() {
  if [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    say "stopping the server (pid $(cat "$PIDFILE"))"
    kill "$(cat "$PIDFILE")" || true
    for _ in $(seq 50); do kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break; sleep 0.2; done
  fi
  rm -f "$PIDFILE"
}

UNIT="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user/neural-style.service"

if [[ $UNINSTALL == 1 ]]; then
  stop_server
  if [[ -f "$UNIT" ]]; then
    systemctl --user disable --now neural-style.service 2>/dev/null || true
    rm -f "$UNIT"
  fi
  [[ -x "$REPO/install/install_plugin.sh" ]] && "$REPO/install/install_plugin.sh" --uninstall
  rm -rf "$VENV"
  say "removed the plug-in, the server and $VENV (weights stay in ~/.local/share/neural-style)"
  exit 0
fi

# --- Python ---------------------------------------------------------------------------------
PY="${NST_PYTHON:-}"
if [[ -z "$PY" ]]; then
  for candidate in python3.11 python3.12 python3.10 python3.13 python3; do
    if command -v "$candidate" >/dev/null; then PY="$candidate"; break; fi
  done
fi
[[ -n "$PY" ]] || die "no python3 found: install Python 3.10-3.13 (Debian/Ubuntu: sudo apt install python3 python3-venv)"
"$PY" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 13)))' \
  || die "$("$PY" --version) is not supported by TensorFlow: install Python 3.10-3.13 and run again with NST_PYTHON=python3.11"

if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating the Python environment in $VENV"
  "$PY" -m venv "$VENV" || die "could not create a virtual environment: on Debian/Ubuntu run 'sudo apt install python3-venv', then run this again"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip

# --- TensorFlow: the CUDA build where an NVIDIA GPU is present --------------------------------
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  say "NVIDIA GPU found ($(nvidia-smi -L | head -n1)): installing TensorFlow with CUDA"
  TF_SPEC='tensorflow[and-cuda]>=2.16'
else
  say "no NVIDIA GPU found: installing TensorFlow for the CPU (an edit takes about a minute, not seconds)"
  TF_SPEC='tensorflow>=2.16'
fi
say "installing the server and its dependencies (about 1 GB the first time)"
"$VENV/bin/python" -m pip install --quiet "$TF_SPEC" -e "$REPO[test]"

# --- weights ----------------------------------------------------------------------------------
say "fetching the VGG19 weights (once)"
"$VENV/bin/nst-server" fetch-weights

# --- the token ---------------------------------------------------------------------------------
"$VENV/bin/nst-server" token --token-file "$TOKEN_FILE" >/dev/null
say "the server's token is in $TOKEN_FILE (nst-server token --show prints it)"

# --- GIMP plug-in -----------------------------------------------------------------------------
START_CMD="$VENV/bin/nst-server serve --port $PORT --log-file $LOG --token-file $TOKEN_FILE"
if [[ -x "$REPO/install/install_plugin.sh" ]]; then
  say "installing the GIMP 3 plug-in"
  PLUGIN_ARGS=(--start-command "$START_CMD" --server-url "$URL")
  # Plug-ins that know tokens are told where it is (older install_plugin.sh: not yet).
  if "$REPO/install/install_plugin.sh" --help 2>/dev/null | grep -q -- --token-file; then
    PLUGIN_ARGS+=(--token-file "$TOKEN_FILE")
  fi
  "$REPO/install/install_plugin.sh" "${PLUGIN_ARGS[@]}"
fi

# --- server -----------------------------------------------------------------------------------
if [[ $START == 0 ]]; then
  say "done (server not started: $START_CMD)"
  exit 0
fi
mkdir -p "$STATE_DIR"
if [[ $SYSTEMD == 1 ]]; then
  command -v systemctl >/dev/null || die "--systemd: this system has no systemctl; run without --systemd"
  stop_server
  mkdir -p "$(dirname "$UNIT")"
  sed -e "s|@NST_SERVER@|$VENV/bin/nst-server|g" -e "s|@PORT@|$PORT|g" -e "s|@REPO@|$REPO|g" \
    -e "s|@TOKEN_FILE@|$TOKEN_FILE|g" "$REPO/install/neural-style.service" > "$UNIT"
  systemctl --user daemon-reload
  # restart, not only start: a running server from before must pick up the new unit
  systemctl --user enable neural-style.service && systemctl --user restart neural-style.service \
    || die "systemctl --user could not start the service; see: journalctl --user -u neural-style"
  say "installed $UNIT: the server starts at log-in (systemctl --user status neural-style)"
  exit 0
fi
[[ $RESTART == 1 ]] && stop_server
if server_up && server_without_token; then
  if [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    say "the running server is from before tokens: restarting it so that it needs one"
    stop_server
  else
    die "a server from before tokens is running at $URL and was not started by this script: stop it (or: systemctl --user restart neural-style), then run this again"
  fi
fi
if server_up; then
  say "the server is already running at $URL (log: $LOG; restart with --restart)"
  exit 0
fi
say "starting the server in the background"
# setsid: the server outlives this shell and the terminal it ran in.
setsid $START_CMD >/dev/null 2>&1 < /dev/null &
echo $! > "$PIDFILE"
for _ in $(seq 120); do
  if server_up; then
    say "server running at $URL  (log: $LOG)"
    exit 0
  fi
  kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break
  sleep 1
done
die "the server did not start; see $LOG"
