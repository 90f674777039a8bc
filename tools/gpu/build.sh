#!/usr/bin/env bash
# Builds vista with `--features cuda` on a machine with no CUDA toolkit and no GPU.
#
#   tools/gpu/build.sh check     cargo check --release --all-targets --features cuda: CI keeps the CUDA code compiling
#   tools/gpu/build.sh release   stripped, xz-compressed `vista` CLI and `gpu_check` example (--release --features cuda) in .gpu/
#   tools/gpu/build.sh env       print the environment the builds use (eval "$(tools/gpu/build.sh env)")
#
# What it needs and where it comes from (tools/gpu/README.md has the why):
# * nvcc 13.0 from PyPI wheels, unpacked into one `nvidia/cu13/{bin,include,lib,nvvm}` tree under
#   ${VISTA_GPU_CACHE:-~/.cache/vista-gpu} (downloaded once; about 100 MB of wheels). candle-kernels
#   compiles its .cu files with it at build time (PTX for the compute capability CUDA_COMPUTE_CAP,
#   default 80: PTX the driver compiles for any GPU from the A100 on, H100/H200 included).
# * link-time stand-ins for libcuda.so.1, libcublas.so.13, libcublasLt.so.13, libcurand.so.10 and
#   libnvrtc.so.13 (release only): shared libraries with those sonames that define every symbol
#   cudarc declares, generated from cudarc's sources and compiled with gcc. The binary records the
#   sonames and resolves the real libraries where it runs (tools/gpu/check.sh sets LD_LIBRARY_PATH).
#   libcudart.so.13 is the real one from the runtime wheel, and travels in .gpu/lib as a fallback.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
MODE=${1:-}
CACHE=${VISTA_GPU_CACHE:-$HOME/.cache/vista-gpu}
# Pinned to CUDA 13.0: the GPU machine's driver is 580 (CUDA 13.0), which cannot load PTX from a
# newer nvcc, and cudarc 0.19 knows CUDA versions up to 13.4 only.
WHEELS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
)
TOOLKIT=$CACHE/cuda-13.0.88
CU=$TOOLKIT/nvidia/cu13
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}

log() { echo "[gpu/build] $*" >&2; }

ensure_toolkit() {
  if [ -f "$TOOLKIT/.complete" ]; then return; fi
  mkdir -p "$CACHE/wheels"
  log "downloading nvcc 13.0 wheels into $CACHE/wheels"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2010_x86_64 --platform manylinux_2_12_x86_64 \
    -d "$CACHE/wheels" "${WHEELS[@]}"
  rm -rf "$TOOLKIT.tmp" && mkdir -p "$TOOLKIT.tmp"
  for w in "${WHEELS[@]}"; do
    local name=${w%%==*} ver=${w##*==}
    local file
    file=$(ls "$CACHE/wheels/${name//-/_}-$ver-"*.whl)
    # zipfile drops the permission bits; put the executable bit back from each entry's attributes.
    python3 - "$file" "$TOOLKIT.tmp" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for info in z.infolist():
        path = z.extract(info, sys.argv[2])
        mode = (info.external_attr >> 16) & 0o777
        if mode:
            os.chmod(path, mode)
PY
  done
  rm -rf "$TOOLKIT" && mv "$TOOLKIT.tmp" "$TOOLKIT"
  touch "$TOOLKIT/.complete"
  log "nvcc: $("$CU/bin/nvcc" --version | tail -2 | head -1)"
}

# The cudarc version in Cargo.lock and its unpacked sources in cargo's registry.
cudarc_src() {
  local ver
  ver=$(awk '/^name = "cudarc"$/ { getline; gsub(/"/, "", $3); print $3 }' Cargo.lock)
  [ -n "$ver" ] || { log "cudarc is not in Cargo.lock"; exit 1; }
  cargo fetch --locked -q >/dev/null
  local dir
  dir=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$ver" 2>/dev/null | head -1)
  [ -d "$dir" ] || { log "cudarc $ver sources not found in cargo's registry"; exit 1; }
  echo "$dir"
}

# Link-time stand-ins, in $CU/lib/stubs: cudarc's build script adds $CUDA_HOME/lib/stubs to the
# link search path. Every function returns 999 (CUDA_ERROR_UNKNOWN), so a binary that is run
# against them by mistake fails at cuInit instead of doing anything.
ensure_stubs() {
  local src stubs stamp
  src=$(cudarc_src)
  stubs=$CU/lib/stubs
  stamp="$stubs/.from-$(basename "$src")"
  if [ -f "$stamp" ]; then return; fi
  rm -rf "$stubs" && mkdir -p "$stubs"
  # module dir : library : soname
  local spec
  for spec in driver:cuda:libcuda.so.1 cublas:cublas:libcublas.so.13 cublaslt:cublasLt:libcublasLt.so.13 \
              curand:curand:libcurand.so.10 nvrtc:nvrtc:libnvrtc.so.13; do
    IFS=: read -r dir lib soname <<<"$spec"
    grep -ohE 'load::<_F>\("[A-Za-z0-9_]+"\)' "$src/src/$dir/sys/"*.rs | sed -E 's/.*\("([^"]+)"\)/\1/' | sort -u \
      | awk '{ printf "int %s(void) { return 999; }\n", $1 }' >"$stubs/$lib.c"
    [ -s "$stubs/$lib.c" ] || { log "no symbols found for $lib in $src/src/$dir/sys"; exit 1; }
    gcc -shared -fPIC -o "$stubs/lib$lib.so" -Wl,-soname,"$soname" "$stubs/$lib.c"
    log "stub lib$lib.so ($soname): $(wc -l <"$stubs/$lib.c") symbols"
  done
  ln -sf ../libcudart.so.13 "$stubs/libcudart.so"
  touch "$stamp"
}

print_env() {
  cat <<ENV
export CUDA_HOME="$CU" NVCC="$CU/bin/nvcc" PATH="$CU/bin:\$PATH"
export CUDARC_CUDA_VERSION=13000 CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP CUDAFORGE_THREADS=$(nproc)
ENV
}

setup_env() {
  eval "$(print_env)"
}

case "$MODE" in
  env)
    ensure_toolkit
    print_env
    ;;
  check)
    ensure_toolkit
    setup_env
    # --release: the build scripts' outputs (nvcc's PTX and libmoe.a) live per profile, so the
    # check shares them with `release` and with CI's `cargo test --release` profile.
    cargo check --locked --release --all-targets --features vista/cuda,vista-cli/cuda
    ;;
  release)
    ensure_toolkit
    ensure_stubs
    setup_env
    # One invocation for both: cargo resolves features per invocation, and two (the CLI alone, the
    # example with vista's dev-dependencies) would build candle-kernels twice, nvcc and all.
    cargo build --locked --release --features vista/cuda,vista-cli/cuda --bin vista --example gpu_check
    out=$REPO/.gpu
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    grep -qxF '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >>"$exclude"
    mkdir -p "$out/lib"
    target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    # Stripped and xz-compressed: candle-kernels links its unused quantised-MoE kernels (32 MB of
    # machine code) and every PTX file into each binary, 60-70 MB stripped, 8-12 MB compressed;
    # .gpu travels to the GPU machine, which takes 64 MiB with the repository. check.sh unpacks.
    rm -f "$out/vista" "$out/gpu_check"
    for bin in "$target/release/vista" "$target/release/examples/gpu_check"; do
      strip -o "$out/$(basename "$bin").tmp" "$bin"
      xz -T0 -6 -c "$out/$(basename "$bin").tmp" >"$out/$(basename "$bin").xz"
      rm "$out/$(basename "$bin").tmp"
    done
    cp -L "$CU/lib/libcudart.so.13" "$out/lib/"
    # segment_anything is not installed on the GPU machine: its pure-Python wheel travels (36 kB);
    # torch_bench.py imports it from the zip.
    mkdir -p "$out/wheels"
    [ -f "$out/wheels/segment_anything-1.0-py3-none-any.whl" ] ||
      python3 -m pip download -q --no-deps --only-binary=:all: -d "$out/wheels" segment-anything==1.0
    echo "cuda_compute_cap=$CUDA_COMPUTE_CAP built=$(date -u +%FT%TZ) commit=$(git rev-parse --short HEAD)$(git diff --quiet || echo +dirty)" >"$out/BUILD"
    du -ab "$out" | sort -n >&2
    ;;
  *)
    sed -n '2,7p' "$0" >&2
    exit 2
    ;;
esac
