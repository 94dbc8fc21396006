#!/usr/bin/env bash
# Installs a CUDA 13.0 build toolchain from NVIDIA's PyPI wheels into a cache folder, for building
# Spotter's `cuda` / `cudnn` features on a machine without a CUDA toolkit or a GPU.
#
#   scripts/cuda-toolchain.sh [--cudnn]      # install (idempotent), then print the environment
#   eval "$(scripts/cuda-toolchain.sh --env)" # only print the environment (after an install)
#
# What it makes (default folder ~/.cache/spotter-cuda, override with SPOTTER_CUDA_DIR):
#   site/nvidia/cu13/          nvcc 13.0, cicc, ptxas, headers, libcudart/cublas/cublasLt/curand/nvrtc
#   site/nvidia/cu13/lib/*.so  unversioned links (the linker wants libcublas.so, the wheels ship .so.13)
#   site/nvidia/cu13/lib/stubs/libcuda.so
#                              a stub of the driver library (soname libcuda.so.1) generated from cuda.h:
#                              the binary links against it and loads the real driver at run time
#   with --cudnn: libcudnn.so.9 and the cuDNN 9.21 headers from nvidia-cudnn-cu13
#
# Versions are pinned to CUDA 13.0 on purpose: candle compiles its kernels to PTX at build time,
# and a driver only loads PTX of its own CUDA version or older (driver 580 = CUDA 13.0).
# Set SPOTTER_CUDA_VERSION=13.2 (etc.) only for a newer driver; see PINS below.
set -euo pipefail

DIR="${SPOTTER_CUDA_DIR:-$HOME/.cache/spotter-cuda}"
ROOT="$DIR/site/nvidia/cu13"
WANT_CUDNN=0
ENV_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --cudnn) WANT_CUDNN=1 ;;
    --env) ENV_ONLY=1 ;;
    -h | --help)
      sed -n '2,20p' "$0"
      exit 0
      ;;
    *)
      echo "error: unknown argument '$arg' (expected --cudnn or --env)" >&2
      exit 2
      ;;
  esac
done

print_env() {
  cat <<EOF
export CUDA_HOME="$ROOT"
export PATH="$ROOT/bin:\$PATH"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
export CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH="$ROOT/lib:$ROOT/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
EOF
}

if [ "$ENV_ONLY" = 1 ]; then
  [ -x "$ROOT/bin/nvcc" ] || {
    echo "error: no toolchain in $DIR; run scripts/cuda-toolchain.sh first" >&2
    exit 1
  }
  print_env
  exit 0
fi

# PINS: CUDA 13.0.x wheels (nvcc emits PTX ISA 9.0, which driver 580 accepts).
PINS=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cuda-cccl==13.0.85"
  "nvidia-cublas==13.0.2.14"
  "nvidia-curand==10.4.0.35"
  "nvidia-cuda-nvrtc==13.0.88"
)
CUDNN_PIN="nvidia-cudnn-cu13==9.21.1.3" # cudarc's `cudnn` feature speaks the cuDNN 9.21 API

for tool in python3 unzip cc; do
  command -v "$tool" >/dev/null || {
    echo "error: $tool is needed (apt-get install python3-pip unzip build-essential)" >&2
    exit 1
  }
done

mkdir -p "$DIR/wheels" "$DIR/site"
download() {
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 -d "$DIR/wheels" "$@"
}

need=()
for pin in "${PINS[@]}"; do
  name="${pin%%==*}"
  version="${pin##*==}"
  ls "$DIR/wheels/${name//-/_}-${version}-"*.whl >/dev/null 2>&1 || need+=("$pin")
done
if [ "$WANT_CUDNN" = 1 ] && ! ls "$DIR"/wheels/nvidia_cudnn_cu13-9.21.1.3-*.whl >/dev/null 2>&1; then
  need+=("$CUDNN_PIN")
fi
if [ "${#need[@]}" -gt 0 ]; then
  echo "downloading ${need[*]} (about 700 MB, 1.2 GB with cuDNN)" >&2
  download "${need[@]}"
fi

stamp="$DIR/site/.unpacked"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${PINS[*]}" ]; then
  echo "unpacking the CUDA wheels into $DIR/site" >&2
  for pin in "${PINS[@]}"; do
    name="${pin%%==*}"
    version="${pin##*==}"
    unzip -qo "$DIR/wheels/${name//-/_}-${version}-"*.whl 'nvidia/*' -d "$DIR/site"
  done
  echo "${PINS[*]}" >"$stamp"
fi
chmod +x "$ROOT"/bin/* "$ROOT"/nvvm/bin/* 2>/dev/null || true

if [ "$WANT_CUDNN" = 1 ] && [ ! -f "$ROOT/lib/libcudnn.so.9" ]; then
  echo "unpacking cuDNN's front library and headers" >&2
  tmp="$(mktemp -d)"
  unzip -qo "$DIR"/wheels/nvidia_cudnn_cu13-9.21.1.3-*.whl 'nvidia/cudnn/include/*' 'nvidia/cudnn/lib/libcudnn.so.9' -d "$tmp"
  cp "$tmp"/nvidia/cudnn/include/*.h "$ROOT/include/"
  cp "$tmp/nvidia/cudnn/lib/libcudnn.so.9" "$ROOT/lib/"
  rm -rf "$tmp"
fi

# Unversioned names for the linker (the run-time loader uses the sonames: libcublas.so.13, ...).
for lib in "$ROOT"/lib/lib*.so.*; do
  base="$(basename "$lib")"
  plain="${base%%.so.*}.so"
  case "$base" in *builtins* | *.alt.*) continue ;; esac
  [ -e "$ROOT/lib/$plain" ] || ln -s "$base" "$ROOT/lib/$plain"
done

# The driver API stub: every function cuda.h declares, as an empty symbol, soname libcuda.so.1.
stub="$ROOT/lib/stubs/libcuda.so"
if [ ! -f "$stub" ]; then
  echo "generating the libcuda stub from cuda.h" >&2
  mkdir -p "$ROOT/lib/stubs"
  tmp="$(mktemp -d)"
  cc -E -P -I"$ROOT/include" "$ROOT/include/cuda.h" -o "$tmp/cuda.i"
  # After preprocessing, the API macros (cuMemAlloc -> cuMemAlloc_v2, ...) are resolved.
  grep -oE '\b(cu[A-Z][A-Za-z0-9_]*)[[:space:]]*\(' "$tmp/cuda.i" | sed -E 's/[[:space:]]*\($//' | sort -u |
    awk '{ printf "void %s(void) {}\n", $1 }' >"$tmp/stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub" "$tmp/stub.c"
  echo "libcuda stub: $(wc -l <"$tmp/stub.c") functions" >&2
  rm -rf "$tmp"
fi

"$ROOT/bin/nvcc" --version | tail -2 >&2
print_env
