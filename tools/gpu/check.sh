#!/usr/bin/env bash
# The GPU check, run on the GPU machine from the repository root:
#
#   bash tools/gpu/check.sh
#
# with .gpu/ (built here by `tools/gpu/build.sh release`) carried along. Writes $OUT/gpu_report.json
# (parity, vista and PyTorch timings, GEMM peaks, memory) and $OUT/gpu_check.log. Steps:
#   1. nvidia-smi; LD_LIBRARY_PATH so that .gpu/gpu_check finds libcuda.so.1 (driver) and the
#      CUDA 13 libraries (cuBLAS, cuBLASLt, cuRAND, NVRTC, cudart) where the machine keeps them;
#   2. tools/gpu/torch_bench.py: the real-size random-weight models vista loads, PyTorch's outputs on
#      a few inputs, PyTorch eager timings (f32 TF32 off, bf16 autocast) and GEMM peaks;
#   3. .gpu/gpu_check: parity on the committed fixtures (GPU vs vista's CPU path, f32 and bf16),
#      candle's GEMM rate, vista's timings of the same workloads, and the comparison.
#
# Rehearsal on a machine without a GPU: VISTA_DEVICE=cpu PYTHON=/path/to/venv/python bash tools/gpu/check.sh
# (tiny batches; the models keep their real size). Each step has a timeout; a failing step is
# reported and the others still run. The exit status is gpu_check's (non-zero when parity fails).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-${VISTA_GPU_WORK:-/tmp/vista-gpu}/out}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
exec > >(tee "$LOG") 2>&1
export PYTHONUNBUFFERED=1
# The fixtures of this copy of the repository (the binary was built in another folder).
export VISTA_FIXTURES=$PWD/crates/vista/tests/fixtures

DEVICE=${VISTA_DEVICE:-cuda}
WORK=${VISTA_GPU_WORK:-/tmp/vista-gpu}
PY=${PYTHON:-python3}
BIN=$WORK/bin/gpu_check
SIZE_ARGS=()
[ "$DEVICE" = cpu ] && SIZE_ARGS=(--tiny)
START=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - START ))s] $*"; }

stamp "machine"
nvidia-smi || echo "(no nvidia-smi)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>/dev/null || true
uname -a; nproc; [ -f .gpu/BUILD ] && cat .gpu/BUILD

stamp "libraries"
# Where each library the binary was linked against lives on this machine: the driver's folder,
# a CUDA install, the CUDA wheels of python3's packages (PyTorch's nvidia/cu13/lib), ldconfig's cache;
# .gpu/lib last (the runtime from the build's wheel).
CANDIDATES=(/usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/local/cuda/lib64
  /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13.0/lib64)
if command -v "$PY" >/dev/null; then
  while IFS= read -r d; do CANDIDATES+=("$d"); done < <("$PY" - <<'EOF' 2>/dev/null
import glob, site, sys
paths = list(site.getsitepackages()) + [site.getusersitepackages()] + sys.path
seen = set()
for sp in paths:
    for d in sorted(glob.glob(f"{sp}/nvidia/*/lib")) + sorted(glob.glob(f"{sp}/nvidia/*/lib64")):
        if d not in seen:
            seen.add(d)
            print(d)
EOF
)
fi
while IFS= read -r d; do CANDIDATES+=("$d"); done < <(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1|libcublas\.so\.13|libnvrtc\.so\.13/ {print $NF}' | xargs -r -n1 dirname | sort -u)
CANDIDATES+=("$PWD/.gpu/lib")
LIBDIRS=()
for lib in libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13; do
  found=""
  for d in "${CANDIDATES[@]}"; do
    if [ -e "$d/$lib" ]; then found=$d; break; fi
  done
  echo "  $lib: ${found:-NOT FOUND}"
  if [ -n "$found" ] && [[ ! " ${LIBDIRS[*]-} " == *" $found "* ]]; then LIBDIRS+=("$found"); fi
done
if [ "${#LIBDIRS[@]}" -gt 0 ]; then
  LD_LIBRARY_PATH="$(IFS=:; echo "${LIBDIRS[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LD_LIBRARY_PATH
fi
echo "  LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
# build.sh ships the binaries xz-compressed (.gpu travels within 64 MiB): unpack them outside the
# repository (so that .gpu stays small if it is carried again).
mkdir -p "$WORK/bin"
for name in gpu_check vista; do
  if [ -f ".gpu/$name.xz" ] && { [ ! -x "$WORK/bin/$name" ] || [ ".gpu/$name.xz" -nt "$WORK/bin/$name" ]; }; then
    if command -v xz >/dev/null; then
      xz -dc ".gpu/$name.xz" >"$WORK/bin/$name"
    else
      "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
        ".gpu/$name.xz" "$WORK/bin/$name"
    fi
    chmod +x "$WORK/bin/$name"
  fi
done
if [ ! -x "$BIN" ]; then
  echo "ERROR: $BIN is missing: build it with tools/gpu/build.sh release and carry .gpu"
  exit 2
fi
ldd "$BIN" | grep -E "cuda|cublas|curand|nvrtc|not found" || true

stamp "PyTorch: models, references, timings"
mkdir -p "$WORK"
TORCH_JSON=$WORK/torch.json
rm -f "$TORCH_JSON"
# shellcheck disable=SC2086 # VISTA_TORCH_ARGS: extra flags, word-split on purpose (e.g. --no-timing)
timeout 240 "$PY" tools/gpu/torch_bench.py --out "$WORK" --device "$DEVICE" "${SIZE_ARGS[@]}" ${VISTA_TORCH_ARGS:-} \
  || echo "torch_bench.py exited with $?"
[ -f "$TORCH_JSON" ] && cp "$TORCH_JSON" "$OUT/torch.json"

stamp "vista: parity, GEMM, timings"
TORCH_ARGS=()
[ -f "$TORCH_JSON" ] && TORCH_ARGS=(--torch "$TORCH_JSON")
# shellcheck disable=SC2086 # VISTA_CHECK_ARGS: extra flags, word-split on purpose (e.g. --dtypes f32)
timeout 300 "$BIN" --device "$DEVICE" --models "$WORK" "${TORCH_ARGS[@]}" --out "$OUT/gpu_report.json" \
  "${SIZE_ARGS[@]}" ${VISTA_CHECK_ARGS:-}
STATUS=$?
echo "gpu_check exited with $STATUS"
# gpu_check saves its report after each part, so a timeout keeps what was done ("complete" absent).
if [ "$STATUS" -ne 0 ] && [ "$STATUS" -ne 1 ] && [ ! -f "$OUT/gpu_report.json" ]; then
  # A crash or a timeout: at least the parity, alone, for the report.
  stamp "vista: parity only, after the failure"
  timeout 120 "$BIN" --device "$DEVICE" --parts parity --out "$OUT/gpu_report.json" "${SIZE_ARGS[@]}"
fi
stamp "done: $OUT/gpu_report.json"
ls -la "$OUT"
sleep 1 # let tee flush the log
exit "$STATUS"
