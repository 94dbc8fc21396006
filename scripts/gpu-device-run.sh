#!/usr/bin/env bash
# Runs on a GPU machine from the repository root (the fixtures under tests/fixtures): the GPU
# check, then the f16 benchmark at 640, batch 1 and 8, of gelan-s, gelan-c and yolov9-e with the
# cuda build and, when packed, the cudnn build, with a large f16 matrix product as the reference
# throughput. Prints a summary table last.
#
#   bash DIR/gpu-device-run.sh DIR      # DIR holds what scripts/pack-device.sh packed
#
# Needs the NVIDIA driver and the CUDA 13 libraries the binaries link (libcublas.so.13,
# libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13, libcudart.so.13, libcudnn.so.9 for cudnn):
# a CUDA toolkit, or the nvidia-* pip packages of a PyTorch install, which this script finds.
# Results go to $OUT (default /tmp/spotter-gpu-out).
set -uo pipefail

PACK="${1:-.device}"
OUT="${OUT:-/tmp/spotter-gpu-out}"
mkdir -p "$OUT"
BIN="$(mktemp -d)"
start=$(date +%s)
stamp() { echo "[$(($(date +%s) - start)) s] $*"; }

# Device, precision, size and runs can be changed for a dry run elsewhere (SPOTTER_DEVICE=cpu ...).
DEVICE="${SPOTTER_DEVICE:-cuda}"
PRECISION="${SPOTTER_PRECISION:-f16}"
IMGSZ="${SPOTTER_IMGSZ:-640}"
RUNS="${SPOTTER_RUNS:-50}"
MATMUL="${SPOTTER_MATMUL:-8192}"

for f in "$PACK"/*.xz; do
  name="$(basename "$f" .xz)"
  if command -v xz >/dev/null; then
    xz -dc "$f" >"$BIN/$name"
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$f" "$BIN/$name"
  fi
  chmod +x "$BIN/$name"
done
ls -la "$BIN"

# The CUDA libraries: pip's nvidia-* packages (PyTorch's), else a toolkit.
libdirs="$(python3 - <<'EOF' 2>/dev/null
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
dirs = []
for root in roots:
    for lib in glob.glob(os.path.join(root, "*", "lib")) + glob.glob(os.path.join(root, "cu*", "lib")):
        if glob.glob(os.path.join(lib, "lib*.so*")) and lib not in dirs:
            dirs.append(lib)
print(":".join(dirs))
EOF
)"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && libdirs="${libdirs:+$libdirs:}$d"
done
# libturbojpeg from the pack when the system has none.
ldconfig -p | grep -q 'libturbojpeg.so.0 ' || libdirs="${libdirs:+$libdirs:}$(cd "$PACK" && pwd)/lib"
libdirs="${libdirs#:}"
export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
# Anything still missing: look for it in the usual places.
for lib in $(ldd "$BIN"/* 2>/dev/null | awk '/not found/ { print $1 }' | sort -u); do
  found="$(find /usr/local /opt /usr/lib /usr/lib64 -name "$lib" 2>/dev/null | head -1)"
  if [ -n "$found" ]; then
    echo "found $lib in $(dirname "$found")"
    export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$(dirname "$found")"
  fi
done
for b in "$BIN"/*; do
  missing="$(ldd "$b" | grep 'not found')"
  [ -n "$missing" ] && echo "MISSING for $(basename "$b"): $missing"
done

{
  date -u +"date: %Y-%m-%d %H:%M UTC"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv,noheader
  nvcc --version 2>/dev/null | tail -1
  python3 -c 'import torch; print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version())' 2>/dev/null
} | tee "$OUT/machine.txt"

export SPOTTER_FIXTURES="$PWD/tests/fixtures"

bench() {
  local variant="$1"
  shift
  timeout 120 "$BIN/spotter-$variant" bench --device "$DEVICE" --precision "$PRECISION" --imgsz "$IMGSZ" --json "$@" \
    >>"$OUT/bench-$variant.jsonl" 2>>"$OUT/bench.err" || echo "bench $variant $* failed: $?"
}

for variant in cuda cudnn; do
  check="$BIN/gpu-check-$variant"
  if [ -x "$check" ]; then
    stamp "GPU check ($variant build)"
    # cuDNN runs f32 convolutions on TF32 tensor cores by default (10-bit mantissa): turn that off
    # for the f32 parity checks. cuBLAS in Candle already computes f32 products in f32.
    tf32=()
    [ "$variant" = cudnn ] && tf32=(env NVIDIA_TF32_OVERRIDE=0)
    timeout 200 "${tf32[@]}" "$check" --test-threads=1 --nocapture >"$OUT/gpu-check-$variant.log" 2>&1
    echo "exit code $?" >>"$OUT/gpu-check-$variant.log"
    grep -E 'GPU-CHECK|^test |test result|panicked|exit code' "$OUT/gpu-check-$variant.log"
  fi
  [ -x "$BIN/spotter-$variant" ] || continue
  stamp "benchmark ($variant build)"
  for batch in 1 8; do
    matmul=()
    [ "$batch" = 1 ] && matmul=(--matmul "$MATMUL")
    bench "$variant" --batch "$batch" --runs "$RUNS" --warmup 5 "${matmul[@]}" --model tests/fixtures/yolov9/full/gelan-s.pt
    bench "$variant" --batch "$batch" --runs "$RUNS" --warmup 5 --random-weights --model gelan-c --model yolov9-e
  done
  tail -3 "$OUT/bench.err"
  nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader 2>/dev/null
  if [ "$variant" = cuda ]; then
    stamp "per-layer profile, gelan-c batch 1 (cuda build)"
    timeout 60 "$BIN/spotter-cuda" bench --device "$DEVICE" --precision "$PRECISION" --imgsz "$IMGSZ" \
      --random-weights --model gelan-c --runs 10 --per-layer >"$OUT/per-layer-gelan-c.txt" 2>&1
    head -2 "$OUT/per-layer-gelan-c.txt"
  fi
done

stamp "summary"
python3 - "$OUT" <<'EOF' | tee "$OUT/summary.md"
import json, os, sys
out = sys.argv[1]
rows = []
for variant in ("cuda", "cudnn"):
    path = os.path.join(out, f"bench-{variant}.jsonl")
    if not os.path.exists(path):
        continue
    matmul = None
    for line in open(path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if "matmul" in r:
            matmul = r
            print(f"[{variant}] matmul {r['matmul']}^3 {r['dtype']}: {r['p50_ms']:.3f} ms = {r['tflops']:.1f} TFLOP/s")
            continue
        frac = r.get("matmul_fraction")
        if frac is None and matmul:
            frac = r["achieved_gflops"] / (matmul["tflops"] * 1e3)
        rows.append((variant, r["model"], r["batch"], r["dtype"], r["p50_ms"], r["p95_ms"], r["gflops"],
                     r["achieved_gflops"] / 1e3, frac))
print()
print("| build | model | batch | dtype | p50 ms | p95 ms | GFLOPs/img | TFLOP/s | % of matmul |")
print("|---|---|---|---|---|---|---|---|---|")
for v, m, b, d, p50, p95, g, t, f in rows:
    fs = f"{100 * f:.1f} %" if f is not None else "-"
    print(f"| {v} | {m} | {b} | {d} | {p50:.2f} | {p95:.2f} | {g:.1f} | {t:.1f} | {fs} |")
EOF
stamp "done"
