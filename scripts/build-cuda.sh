#!/usr/bin/env bash
# Builds the CUDA variant of Spotter (release) in its own target folder, plus the GPU check binary
# (`detector/tests/gpu.rs`), and copies both, stripped, to target/cuda/dist/.
#
#   scripts/build-cuda.sh            # --features cuda
#   scripts/build-cuda.sh --cudnn    # --features cudnn (conv2d through cuDNN)
#
# With a CUDA toolkit installed (nvcc on PATH, CUDA_HOME set) it uses that; otherwise it installs
# the pinned PyPI toolchain first (scripts/cuda-toolchain.sh). CUDA_COMPUTE_CAP defaults to 90
# (H100/H200); set it for other GPUs (80: A100, 89: L4/RTX 40xx, ...).
# The default build (`cargo build`, `make test`) needs none of this.
set -euo pipefail
cd "$(dirname "$0")/.."

feature=cuda
for arg in "$@"; do
  case "$arg" in
    --cudnn) feature=cudnn ;;
    *)
      echo "error: unknown argument '$arg' (expected --cudnn)" >&2
      exit 2
      ;;
  esac
done

if command -v nvcc >/dev/null && [ -n "${CUDA_HOME:-}" ] && [ -z "${SPOTTER_CUDA_PYPI:-}" ]; then
  echo "using the installed CUDA toolkit: $(nvcc --version | tail -1)" >&2
  export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
else
  toolchain_args=()
  [ "$feature" = cudnn ] && toolchain_args+=(--cudnn)
  eval "$(scripts/cuda-toolchain.sh "${toolchain_args[@]}")"
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/cuda}"
dist="$CARGO_TARGET_DIR/dist"
mkdir -p "$dist"

# One cargo invocation builds both the `spotter` binary (which the integration tests need) and the
# GPU check, so they share one feature resolution: a separate `cargo build` and `cargo test`
# resolve the proc-macro features differently and would compile all CUDA kernels twice.
echo "building spotter and the GPU check, --release --features $feature, into $CARGO_TARGET_DIR" \
  "(CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP)" >&2
artifacts="$(nice cargo test --release --features "$feature" -p spotter -p spotter-detector --no-run \
  --test gpu --test integration --message-format=json-render-diagnostics | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        t = m["target"]
        if (t["name"], t["kind"]) in (("spotter", ["bin"]), ("gpu", ["test"])):
            print(t["name"], m["executable"])
')"
spotter="$(echo "$artifacts" | awk '$1 == "spotter" { print $2 }')"
check="$(echo "$artifacts" | awk '$1 == "gpu" { print $2 }')"
[ -n "$spotter" ] && [ -n "$check" ] || {
  echo "error: the build did not produce both binaries: $artifacts" >&2
  exit 1
}
cp "$spotter" "$dist/spotter-$feature"
cp "$check" "$dist/gpu-check-$feature"
strip "$dist/spotter-$feature" "$dist/gpu-check-$feature"
ls -la "$dist/spotter-$feature" "$dist/gpu-check-$feature" >&2
