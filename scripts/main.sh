#!/usr/bin/env bash
# The main job: set up, describe the machine, check every available backend against the
# reference, then train the reference VQ-VAE with the defaults (Wasserstein quantizer,
# K = 65,536, embedded photograph patches, ~8.5 min; artefacts in runs/wasserstein/).
# Training runs even when the check fails, so that one run shows everything; the exit status
# is the check's, or training's when the check passed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/wvq info
status=0
.venv/bin/wvq check || status=$?
.venv/bin/wvq train || status=$((status ? status : $?))
exit "$status"
