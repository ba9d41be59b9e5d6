#!/usr/bin/env bash
# The test command: sets up everything the suite needs on a fresh machine (Debian packages,
# pinned Python packages), then runs it. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_system_deps.sh
python -m pip install -q --disable-pip-version-check -c requirements/ci.txt torch==2.13.0
python -m pip install -q --disable-pip-version-check -c requirements/ci.txt -e '.[cpu,torch,gpu,tune,perf,mlir,sandbox,distributed,ai,observe,opencl,test]'
# OpenCL: only Debian's PoCL (installed above). The PoCL that pip can bundle with pyopencl
# (pocl-binary-distribution) cannot compile kernels on some CPUs; pointing the ICD loader at the
# system vendor folder keeps any such platform out of the process.
export OCL_ICD_VENDORS=/etc/OpenCL/vendors
python -m pytest -q -p no:cacheprovider --timeout=900 "$@"
