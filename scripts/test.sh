#!/usr/bin/env bash
# The test command: sets up everything the suite needs on a fresh machine (Debian packages,
# pinned Python packages), then runs it. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_system_deps.sh
python -m pip install -q --disable-pip-version-check -c requirements/ci.txt torch==2.13.0
python -m pip install -q --disable-pip-version-check -c requirements/ci.txt -e '.[cpu,torch,gpu,tune,perf,mlir,sandbox,distributed,ai,observe,test]'
python -m pytest -q -p no:cacheprovider --timeout=900 "$@"
