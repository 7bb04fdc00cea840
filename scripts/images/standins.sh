#!/usr/bin/env bash
# Stand-in base images for building the Dockerfile where no registry image can be pulled.
#
#   python stand-in   for python:3.11.x-slim-bookworm: Debian bookworm (debootstrap minbase) with
#                     its python3 (3.11), as a virtualenv at /usr/local so that `python` and `pip`
#                     are on PATH where the official image has them;
#   torch stand-in    for pytorch/pytorch:2.13.0-cuda12.8-cudnn9-{runtime,devel}: the python
#                     stand-in plus torch==2.13.0 installed with pip from PyPI. PyPI carries only
#                     the CUDA build of torch for linux x86_64 (torch + the nvidia-* wheels, about
#                     4 GB installed); it imports and runs on a CPU-only machine.
#
# Names are localhost/diffar-standin/{python,torch}:<tag>-<key>: upstream names are never re-tagged,
# so a stand-in can never be mistaken for the real base. <key> hashes everything that goes into
# the image, so a rebuild happens only when an input changes. The debootstrap tarball and the
# torch wheels are cached under $DIFFAR_IMAGES_CACHE (default ~/.cache/diffar-images).
#
#   bash scripts/images/standins.sh [python|torch]   # torch (default): both; python: that one
#
# Prints PYTHON_IMAGE=... (and TORCH_IMAGE=...) for the build to read. Needs root, buildah and
# debootstrap (Debian packages).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${DIFFAR_IMAGES_CACHE:-$HOME/.cache/diffar-images}"
SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates
TORCH_REQ="torch==2.13.0"
NICE=(nice -n 10)
WANT="${1:-torch}"
[[ "$WANT" == python || "$WANT" == torch ]] || { echo "usage: standins.sh [python|torch]" >&2; exit 2; }

log() { echo "images: $*" >&2; }
die() { echo "images: error: $*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || die "run as root (debootstrap and buildah's chroot isolation need it)"
for tool in buildah debootstrap; do
  command -v "$tool" >/dev/null || die "$tool is not installed (make system-deps installs it)"
done

key() { sha256sum | cut -c1-12; }
exists() { buildah inspect --type image "$1" >/dev/null 2>&1; }

# The host's Debian mirror (a local mirror or proxy keeps working); debootstrap's default if none.
mirror() {
  grep -rhoE '^[^#]*https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
    grep -oE 'https?://[^ ]+' | grep -v snapshot | head -1 || true
}

# torch and its dependencies, downloaded once by the host's pip (network-bound: it runs while
# debootstrap runs). The stand-in installs them with --no-index, so a missing one fails.
WHEELS="$CACHE/wheels/torch-$(printf '%s\n' "$TORCH_REQ" | key)"
fetch_wheels() {
  [[ -f "$WHEELS/.complete" ]] && return 0
  log "downloading $TORCH_REQ and its dependencies (about 3 GB, once) into $WHEELS"
  mkdir -p "$WHEELS"
  "${NICE[@]}" python3 -m pip download -q --disable-pip-version-check --only-binary :all: \
    -d "$WHEELS" "$TORCH_REQ"
  touch "$WHEELS/.complete"
}

# Bump RECIPE when the way a stand-in is made changes (the keys cover the inputs, not this file).
RECIPE=1
PY_KEY="$(printf '%s\n' "$SUITE" "$PACKAGES" "$RECIPE" | key)"
PYTHON_IMAGE="localhost/diffar-standin/python:3.11-$SUITE-$PY_KEY"
TORCH_KEY="$(printf '%s\n' "$PY_KEY" "$TORCH_REQ" "$RECIPE" | key)"
TORCH_IMAGE="localhost/diffar-standin/torch:2.13.0-$TORCH_KEY"
fetching=""
if [[ "$WANT" == torch ]] && ! exists "$TORCH_IMAGE" && [[ ! -f "$WHEELS/.complete" ]]; then
  fetch_wheels &
  fetching=$!
fi

if exists "$PYTHON_IMAGE"; then
  log "stand-in $PYTHON_IMAGE is there"
else
  tarball="$CACHE/rootfs/$SUITE-python-$PY_KEY.tar"
  if [[ ! -f "$tarball" ]]; then
    log "debootstrap $SUITE (minbase + $PACKAGES): a few minutes"
    mkdir -p "$CACHE/rootfs"
    work="$(mktemp -d "$CACHE/rootfs/.work.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    # shellcheck disable=SC2046
    "${NICE[@]}" debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work/root" $(mirror) \
      >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
    # python and pip where the official python image has them (/usr/local/bin).
    chroot "$work/root" python3 -m venv /usr/local
    rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
    tar -C "$work/root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$work"
    trap - EXIT
  fi
  log "stand-in $PYTHON_IMAGE from $tarball"
  ctr="$(buildah from --pull=never scratch)"
  buildah add --quiet "$ctr" "$tarball" / >/dev/null
  buildah config --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 --label diffar.standin-for=python:3.11-slim-bookworm "$ctr"
  buildah commit --quiet --format docker --rm "$ctr" "$PYTHON_IMAGE" >/dev/null
fi

echo "PYTHON_IMAGE=$PYTHON_IMAGE"
[[ "$WANT" == torch ]] || exit 0

if exists "$TORCH_IMAGE"; then
  log "stand-in $TORCH_IMAGE is there"
else
  if [[ -n "$fetching" ]]; then
    wait "$fetching" || die "downloading $TORCH_REQ failed"
  else
    fetch_wheels
  fi
  log "stand-in $TORCH_IMAGE: pip install $TORCH_REQ"
  ctr="$(buildah from --pull=never "$PYTHON_IMAGE")"
  "${NICE[@]}" buildah run --isolation chroot --volume "$WHEELS:/wheels:ro" "$ctr" -- \
    pip install -q --no-cache-dir --no-index --find-links /wheels "$TORCH_REQ"
  buildah config --label diffar.standin-for=pytorch/pytorch:2.13.0-cuda12.8-cudnn9 "$ctr"
  buildah commit --quiet --format docker --rm "$ctr" "$TORCH_IMAGE" >/dev/null
fi

echo "TORCH_IMAGE=$TORCH_IMAGE"
