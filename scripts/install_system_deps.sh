#!/usr/bin/env bash
# System packages UHOP's tests exercise for real (not skipped): installed here so a fresh
# machine and CI get them from Debian. Idempotent; needs root (CI and dev machines run as root).
set -euo pipefail
PKGS=(
  bubblewrap        # sandbox: namespaces for untrusted kernels
  postgresql        # perf store tests start a real server (binaries in /usr/lib/postgresql/<v>/bin)
  pocl-opencl-icd   # OpenCL backend: PoCL's CPU device, registered in /etc/OpenCL/vendors/pocl.icd
  ocl-icd-libopencl1  # the ICD loader Debian's OpenCL drivers register with
  clinfo            # `clinfo -l`: which OpenCL platforms the loader sees (debugging)
  g++               # torch.compile's Inductor compiles C++ kernels on CPU (backend="uhop" rest)
  chromium          # dashboard browser test: Playwright drives it (its own browser download is not used)
  libcairo2         # PNG plots (cairosvg)
)
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
