#!/usr/bin/env bash
# Prepare .device/ (git-ignored) for `make gpu-check` on a lent GPU machine whose python3 (3.12)
# already holds torch but none of this project's other packages and cannot reach a registry:
#   - wheels: deepinv and its missing dependency natsort, astra-toolbox with the CUDA 12 runtime,
#     jsonschema and its dependencies;
#   - libcufft.so.11: the shim of cufft11_shim.c (astra's wheel links cuFFT 11; the machine has 12);
#   - rtk_reference.pt: RTK's A x and Aᵀ y for the astra-vs-RTK agreement (ITK is 1.6 GB: too
#     big to carry, so the reference is computed here).
# Run here, then on the device: tools/device/gpu_check.sh with `carry: [".device"]`.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .device/whl
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .device/whl \
    deepinv==0.5.0 natsort==8.4.0 astra-toolbox==2.5.0 nvidia-cuda-runtime-cu12==12.9.79 \
    jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
gcc -O2 -shared -fPIC -o .device/libcufft.so.11 tools/device/cufft11_shim.c \
    -Wl,-soname,libcufft.so.11 -Wl,--version-script=tools/device/cufft11.map -ldl
.venv/bin/unroll3d bench gpu_check --write-reference .device/rtk_reference.pt
du -sh .device
