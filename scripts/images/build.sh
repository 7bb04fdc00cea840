#!/usr/bin/env bash
# Build the Dockerfile's targets with buildah, without a Docker daemon or a registry.
#
#   bash scripts/images/build.sh [TARGET...]     # default: operator trainer evaluator
#   bash scripts/images/build.sh operator        # no torch stand-in needed: ~3 minutes cold
#
# The bases are the stand-ins of standins.sh, passed through the Dockerfile's build arguments
# (PYTHON_IMAGE, TORCH_DEVEL_IMAGE, TORCH_RUNTIME_IMAGE); --pull=never makes sure nothing else is
# used. Images are tagged localhost/diffar-test/diffar-<target>:latest. --layers keeps buildah's
# layer cache, so a rerun rebuilds only what changed. buildah 1.28 keys a RUN's cache on its
# command and arguments, not on what it mounts: REVISION, the build context's hash, makes the
# layer that installs the diffar wheel (and only it) rebuild when the source changes, and
# STAGE_NONCE rebuilds the stages that are mounted (a cached one is mounted empty).
#
# What this build does not do: use the real CUDA bases, or compile flash-attn's kernels (the
# stand-in has no nvcc; FLASH_ATTENTION_SKIP_CUDA_BUILD=TRUE builds its wheel without them).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(operator trainer evaluator)

log() { echo "images: $*" >&2; }

# The torch stand-in (4 GB) only for the trainer and evaluator.
want=python
for target in "${TARGETS[@]}"; do
  case "$target" in
    operator) ;;
    trainer | evaluator) want=torch ;;
    *) echo "images: unknown target $target (operator, trainer, evaluator)" >&2; exit 2 ;;
  esac
done
TORCH_IMAGE=""
eval "$(bash scripts/images/standins.sh "$want")"

# The files .dockerignore lets into the context, hashed (the wheel's inputs and the requirements).
REVISION="context-$(tar -c --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
  --exclude=__pycache__ --exclude='*.pyc' pyproject.toml README.md trainer evaluator operator images |
  sha256sum | cut -c1-12)"

args=(
  --isolation chroot --format docker --pull=never --layers --force-rm
  --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE"
  --build-arg "TORCH_DEVEL_IMAGE=${TORCH_IMAGE:-none-needed}"
  --build-arg "TORCH_RUNTIME_IMAGE=${TORCH_IMAGE:-none-needed}"
  --build-arg FLASH_ATTENTION_SKIP_CUDA_BUILD=TRUE
  --build-arg "REVISION=$REVISION"
)
# pip inside the build trusts what the host trusts (TLS-intercepting proxies): the host's CA
# bundle as the optional `pip-ca` secret, mounted only while a RUN uses it.
for ca in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
  if [[ -n "$ca" && -s "$ca" ]]; then
    args+=(--secret "id=pip-ca,src=$ca")
    break
  fi
done

for target in "${TARGETS[@]}"; do
  start=$(date +%s)
  log "building $target ($REVISION)"
  # A new STAGE_NONCE for every build: the stages RUN --mount reads (the wheel, flash-attn) are
  # rebuilt, never taken from the cache (see the Dockerfile).
  nice -n 10 buildah build "${args[@]}" --build-arg "STAGE_NONCE=$(date +%s%N)" --target "$target" \
    --tag "localhost/diffar-test/diffar-$target:latest" -f Dockerfile . \
    >"${IMAGES_LOG_DIR:-/tmp}/diffar-image-$target.log" 2>&1 || {
    tail -30 "${IMAGES_LOG_DIR:-/tmp}/diffar-image-$target.log" >&2
    log "building $target failed (log: ${IMAGES_LOG_DIR:-/tmp}/diffar-image-$target.log)"
    exit 1
  }
  log "built localhost/diffar-test/diffar-$target:latest in $(($(date +%s) - start))s"
done
