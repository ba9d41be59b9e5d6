#!/usr/bin/env bash
# System packages UHOP's tests exercise for real (not skipped): installed here so a fresh
# machine and CI get them from Debian. Idempotent. Installing needs root (CI runs as root); as a
# normal user with everything already installed it does nothing, and with something missing it
# uses `sudo -n` if that works without a password, else names the command to run as root and
# goes on (the tests that need a missing package skip, saying which).
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
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "scripts/install_system_deps.sh: not root: Debian packages ${missing[*]} are missing; their tests will skip." >&2
  echo "  To run them too, as root: apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
