#!/usr/bin/env bash
# Prints the path of a minimal Debian bookworm root filesystem with systemd,
# built once with debootstrap and cached (about 1 minute and 250 MB the first
# time). Used by scripts/systemd-test.sh and scripts/container-test.sh.
# Installs debootstrap and systemd-container from Debian's archive if missing.
# Needs root.
set -euo pipefail
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/mixpanel-rotator"
ROOTFS="$CACHE/rootfs-bookworm"
# Bump when the package list changes, so that a cached root is rebuilt.
STAMP="$ROOTFS/.mixpanel-rotator-rootfs-v1"

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing ${need[*]} from Debian's archive" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -e "$STAMP" ]; then
  echo "building the bookworm root filesystem in $ROOTFS (once)" >&2
  rm -rf "$ROOTFS" "$ROOTFS.tmp"
  mkdir -p "$CACHE"
  debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,curl,ca-certificates,procps \
    bookworm "$ROOTFS.tmp" http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1 || {
    tail -20 "$CACHE/debootstrap.log" >&2
    echo "error: debootstrap failed (log: $CACHE/debootstrap.log)" >&2
    exit 1
  }
  # apt's caches are not needed in a test root.
  rm -rf "$ROOTFS.tmp/var/cache/apt/archives/"*.deb "$ROOTFS.tmp/var/lib/apt/lists/"*
  mv "$ROOTFS.tmp" "$ROOTFS"
  touch "$STAMP"
fi
echo "$ROOTFS"
