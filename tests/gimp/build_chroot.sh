#!/usr/bin/env bash
# Build (or reuse) a Debian chroot holding GIMP 3 with Python plug-in support:
#   trixie (Debian 13)        GIMP 3.0.x  gimp-console-3.0  default root /var/cache/nst-gimp3-root
#   forky  (Debian testing)   GIMP 3.2.x  gimp-console-3.2  default root /var/cache/nst-gimp32-root
#
# Why a chroot: these machines run Debian 12, whose GIMP is 2.10 without Python. Installing
# newer Debian packages into the host would break it, so GIMP runs in here.
#
# Usage: tests/gimp/build_chroot.sh [--release trixie|forky] [ROOT]
#        (release default: $NST_GIMP_RELEASE or trixie; ROOT default: the release's root above,
#        or $NST_GIMP_ROOT for trixie, $NST_GIMP32_ROOT for forky)
#        NST_GIMP_XVFB=1 tests/gimp/build_chroot.sh   also installs Xvfb + xdotool + imagemagick
#                                                    (the dialog screenshot, the window's tests)
# Idempotent: a finished debootstrap has etc/debian_version and no debootstrap/ dir, and a
# finished package step leaves a stamp naming the package list, so a second run takes ~0 s.
# Never bind-mounts /dev (a later `rm -rf ROOT` would delete the host's device nodes); /proc is
# mounted only while apt runs and always unmounted on exit.
set -euo pipefail

RELEASE="${NST_GIMP_RELEASE:-trixie}"
if [[ "${1:-}" == --release ]]; then
    RELEASE="${2:?--release needs trixie or forky}"
    shift 2
fi
case "$RELEASE" in
    trixie) DEFAULT_ROOT="${NST_GIMP_ROOT:-/var/cache/nst-gimp3-root}" ;;
    forky) DEFAULT_ROOT="${NST_GIMP32_ROOT:-/var/cache/nst-gimp32-root}" ;;
    *) echo "build_chroot.sh: unknown release $RELEASE (trixie or forky)" >&2; exit 2 ;;
esac
ROOT="${1:-$DEFAULT_ROOT}"
MIRROR="${NST_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES=(gimp python3 python3-gi gir1.2-gimp-3.0 gir1.2-gegl-0.4 gir1.2-babl-0.1 ca-certificates)
if [[ "${NST_GIMP_XVFB:-0}" == 1 ]]; then
    PACKAGES+=(xvfb xauth xdotool imagemagick x11-apps fonts-dejavu-core)
fi
STAMP="$ROOT/var/lib/nst-gimp-chroot.stamp"
WANT="${PACKAGES[*]}"

log() { printf '[build_chroot %s] %s\n' "$RELEASE" "$*"; }
gimp_version() { chroot "$ROOT" dpkg-query -W -f='${Version}' gimp 2>/dev/null || echo '?'; }

if [[ $EUID -ne 0 ]]; then
    echo "build_chroot.sh: must run as root (debootstrap and chroot need it)" >&2
    exit 2
fi
if ! command -v debootstrap >/dev/null; then
    # The one change this harness makes to the host (a fresh CI machine lacks it).
    log "installing debootstrap on the host"
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap ||
      { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap; }
    } >/dev/null 2>&1 || true
    if ! command -v debootstrap >/dev/null; then
        echo "build_chroot.sh: debootstrap is missing and could not be installed;" \
             "install it with: apt-get install -y debootstrap" >&2
        exit 2
    fi
fi

mounted_under_root() { awk -v r="$(realpath -m "$ROOT")" '$2 == r || index($2, r "/") == 1' /proc/mounts; }

have_all() {  # every wanted package was installed by an earlier run
    [[ -f "$STAMP" ]] || return 1
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        tr ' ' '\n' <"$STAMP" | grep -qxF "$pkg" || return 1
    done
}

if have_all; then
    log "reusing $ROOT (GIMP $(gimp_version))"
    exit 0
fi

start=$SECONDS
if [[ ! -f "$ROOT/etc/debian_version" || -d "$ROOT/debootstrap" ]]; then
    if [[ -e "$ROOT" ]]; then
        # A half-finished debootstrap cannot be resumed reliably: start over, but never while
        # anything is mounted inside (rm -rf would follow into it).
        if [[ -n "$(mounted_under_root)" ]]; then
            echo "build_chroot.sh: something is mounted under $ROOT; unmount it first" >&2
            exit 2
        fi
        log "removing unfinished root $ROOT"
        rm -rf --one-file-system "$ROOT"
    fi
    mkdir -p "$ROOT"
    # Debian 12's debootstrap has no script for testing's name: sid's bootstraps it the same.
    SCRIPT=()
    if [[ ! -e "/usr/share/debootstrap/scripts/$RELEASE" ]]; then
        SCRIPT=(/usr/share/debootstrap/scripts/sid)
    fi
    log "debootstrap $RELEASE into $ROOT"
    debootstrap --variant=minbase "$RELEASE" "$ROOT" "$MIRROR" "${SCRIPT[@]}" \
        >"$ROOT.debootstrap.log" 2>&1 || { tail -20 "$ROOT.debootstrap.log" >&2; exit 1; }
fi
if [[ "$RELEASE" != trixie ]]; then
    # Testing's Release file may be past its Valid-Until date on the mirror.
    echo 'Acquire::Check-Valid-Until "false";' >"$ROOT/etc/apt/apt.conf.d/99nst-no-valid-until"
fi

cleanup() { umount "$ROOT/proc" 2>/dev/null || true; }
trap cleanup EXIT
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
# The host's resolver so apt inside can reach the mirror.
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
log "apt-get install ${PACKAGES[*]}"
chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c "apt-get update -q && apt-get install -y -q --no-install-recommends $WANT && apt-get clean" \
    >"$ROOT.apt.log" 2>&1 || { tail -20 "$ROOT.apt.log" >&2; exit 1; }
cleanup
trap - EXIT
mkdir -p "$(dirname "$STAMP")"
{ [[ -f "$STAMP" ]] && cat "$STAMP"; printf '%s\n' "$WANT"; } | tr ' ' '\n' | sort -u | tr '\n' ' ' \
    >"$STAMP.new"
mv "$STAMP.new" "$STAMP"
log "done in $((SECONDS - start)) s: GIMP $(gimp_version)"
