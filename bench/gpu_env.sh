# Sourced by the GPU scripts (gpu_check.sh, gpu_repro.sh) after they set PY: installs whatever
# wheels $WHEELS (default .whl/) holds with pip --no-index into a scratch folder on PYTHONPATH
# (the GPU machine has no network), then refuses to go on without the packages both scripts need.
WHEELS=${WHEELS:-.whl}

if compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/diffar-site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/diffar-site${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" - <<'PY' || exit 1
import importlib.util, sys
missing = [m for m in ("torch", "numpy", "pydantic", "yaml") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {missing}; carry wheels in .whl/ (bench/gpu_wheels.sh)")
PY
