#!/usr/bin/env bash
# Make a local Python base image for deploy/Dockerfile where no registry can be pulled from:
# a minimal Debian bookworm (debootstrap) with python3, pip and `python`, imported into the
# container engine. Then:
#
#   podman build -f deploy/Dockerfile --build-arg BASE_IMAGE=localhost/lsm-base:bookworm .
#
# Like python:3.11-slim, `pip install` installs system-wide (Debian's PEP 668 marker is removed)
# and `python` is python3 (3.11 in bookworm). The image trusts the certificate authorities this
# host trusts (its /etc/ssl/certs/ca-certificates.crt), so that pip inside a build gets through a
# TLS-intercepting proxy as the host does. For local builds and tests only: users build on
# python:3.11-slim, the Dockerfile's default.
#
# Usage: scripts/image_base.sh [IMAGE]     (default localhost/lsm-base:bookworm)
# Environment:
#   LSM_CONTAINER_ENGINE  the engine command (default: podman, else docker)
#   LSM_IMAGE_CACHE       where the root file system tarball is kept between runs
#                         (default /var/cache/litellm-stream-metrics); delete it to rebuild
#   LSM_DEBIAN_MIRROR     the Debian mirror (default: this host's apt source, else deb.debian.org)
# Needs root and debootstrap (apt-get install debootstrap) for the first build; about 45 s.
set -euo pipefail
IMAGE="${1:-localhost/lsm-base:bookworm}"
if [ -n "${LSM_CONTAINER_ENGINE:-}" ]; then
  read -r -a ENGINE <<<"$LSM_CONTAINER_ENGINE"
elif command -v podman >/dev/null; then
  ENGINE=(podman)
else
  ENGINE=(docker)
fi
CACHE="${LSM_IMAGE_CACHE:-/var/cache/litellm-stream-metrics}"
TARBALL="$CACHE/bookworm-python3-rootfs.tar"

if "${ENGINE[@]}" image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "==> $IMAGE is there"
  exit 0
fi

if [ ! -s "$TARBALL" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "image_base.sh: debootstrap needs root (or put a root file system tarball at $TARBALL)" >&2
    exit 1
  fi
  if ! command -v debootstrap >/dev/null; then
    echo "image_base.sh: debootstrap is not installed (apt-get install debootstrap)" >&2
    exit 1
  fi
  MIRROR="${LSM_DEBIAN_MIRROR:-}"
  if [ -z "$MIRROR" ] && [ -r /etc/apt/sources.list.d/debian.sources ]; then
    MIRROR="$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
  fi
  MIRROR="${MIRROR:-http://deb.debian.org/debian}"
  mkdir -p "$CACHE"
  ROOTFS="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
  trap 'rm -rf "$ROOTFS"' EXIT
  echo "==> debootstrap bookworm (python3) from $MIRROR into $ROOTFS (log: $CACHE/debootstrap.log)"
  if ! debootstrap --variant=minbase --include=python3,python3-pip,python-is-python3,ca-certificates \
    bookworm "$ROOTFS" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1; then
    tail -20 "$CACHE/debootstrap.log" >&2
    exit 1
  fi
  rm -f "$ROOTFS"/usr/lib/python3*/EXTERNALLY-MANAGED
  if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
  fi
  rm -rf "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/* \
    "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
  tar --numeric-owner -C "$ROOTFS" -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
fi

echo "==> importing $TARBALL as $IMAGE"
if ! out="$("${ENGINE[@]}" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  "$TARBALL" "$IMAGE" 2>&1)"; then
  echo "$out" >&2
  exit 1
fi
