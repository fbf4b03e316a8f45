#!/usr/bin/env bash
# The main job: set up (with the benchmark extras), describe the machine, check every available
# backend against the reference, then a quick benchmark. The benchmark runs even when the check
# fails, so that one run shows everything; the exit status is the check's.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --bench
.venv/bin/wvq info
status=0
.venv/bin/wvq check || status=$?
.venv/bin/wvq bench --quick
exit "$status"
