#!/usr/bin/env bash
# Idempotent set-up of .venv: pinned CPU torch, the build requirements, and this package
# installed editable (which builds the C++ extension wvq_kernels._C).
#
#   bash scripts/bootstrap.sh           # runtime + [test,vqvae] extras (wvq train needs vqvae)
#   bash scripts/bootstrap.sh --bench   # also the [bench] extras
#
# A second run with nothing changed skips pip entirely (1-2 s instead of ~30 s for a no-op
# editable install, which rebuilds the extension in a fresh build directory): a stamp in .venv
# records a hash of everything the install depends on (build files, C++ sources, extras).
set -euo pipefail
cd "$(dirname "$0")/.."

readonly VENV=.venv
readonly PY="$VENV/bin/python"

extras=test,vqvae
case "${1:-}" in
  "") ;;
  --bench) extras=test,vqvae,bench ;;
  *) echo "usage: $0 [--bench]" >&2; exit 2 ;;
esac

# Hash of every input of the install, so that an edit to any of them triggers a rebuild.
inputs_fingerprint() {
  {
    echo "$extras"
    "$PY" --version
    local path
    for path in pyproject.toml setup.py CMakeLists.txt csrc; do
      if [[ -e "$path" ]]; then find "$path" -type f; fi
    done | LC_ALL=C sort | xargs -r sha256sum
  } | sha256sum | cut -d' ' -f1
}

# This machine kind's pip config lists local file:// indexes that need not exist; pip then warns
# once per package. Those lines are dropped; pip's exit status is kept.
pip_install() {
  "$PY" -m pip install --quiet "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
  return "${PIPESTATUS[0]}"
}

[[ -x "$PY" ]] || python3 -m venv "$VENV"

stamp="$VENV/.wvq-bootstrap-${extras//,/-}"
fingerprint=$(inputs_fingerprint)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$fingerprint" ]] && "$PY" -c "import wvq_kernels._C" 2>/dev/null; then
  echo "bootstrap: up to date ($VENV, extras [$extras])"
  exit 0
fi

echo "bootstrap: installing into $VENV (extras [$extras])"
# pip's --no-build-isolation uses what is in the venv, so the build requirements go first. They
# hold torch's pin (an unpinned or open-ended torch makes pip pull a multi-GB CUDA build), and
# the package then requires exactly the torch it was built against, so nothing can move torch.
build_requirements=$("$PY" scripts/pins.py build)
mapfile -t build_reqs <<< "$build_requirements"
pip_install "${build_reqs[@]}"
pip_install --no-build-isolation -e ".[$extras]"
"$PY" -c "import wvq_kernels._C"
echo "$fingerprint" > "$stamp"
echo "bootstrap: done"
