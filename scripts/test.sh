#!/usr/bin/env bash
# The test command: sets up everything the suite needs on a fresh machine (Debian packages,
# pinned Python packages), then runs it. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_system_deps.sh
# torch: the CPU build of 2.13.0 (requirements/ci.txt). PyPI's own 2.13.0 for Linux is a CUDA build
# that needs another triton than the pinned one, so pip refuses it: say what to do instead.
if ! python -m pip install -q --disable-pip-version-check -c requirements/ci.txt torch==2.13.0; then
  echo "scripts/test.sh: could not install torch==2.13.0, the CPU build the suite is pinned to. Install it first," >&2
  echo "  python -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" >&2
  echo "  (or put its wheel in a --find-links folder), then run scripts/test.sh again." >&2
  exit 1
fi
python -m pip install -q --disable-pip-version-check -c requirements/ci.txt -e '.[cpu,torch,gpu,cuda,tune,perf,mlir,sandbox,distributed,ai,observe,opencl,hf,test]'
# OpenCL: only Debian's PoCL (installed above). The PoCL that pip can bundle with pyopencl
# (pocl-binary-distribution) cannot compile kernels on some CPUs; pointing the ICD loader at the
# system vendor folder keeps any such platform out of the process.
export OCL_ICD_VENDORS=/etc/OpenCL/vendors
python -m pytest -q -p no:cacheprovider --timeout=900 "$@"
