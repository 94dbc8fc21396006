#!/usr/bin/env bash
# Packs what a GPU machine needs to run scripts/gpu-device-run.sh into one folder: the CUDA (and,
# when built, cuDNN) binaries from target/cuda/dist, xz-compressed (52 MB -> 6 MB each), the
# libturbojpeg the binaries link (GPU images rarely have it), and the run script.
#
#   scripts/pack-device.sh DEST [VARIANT...]   # VARIANT: cuda, cudnn (default: every one built)
#                                   # then, on the GPU machine, from a checkout with the fixtures:
#                                   #   bash DEST/gpu-device-run.sh DEST
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:?usage: scripts/pack-device.sh DEST [cuda] [cudnn]}"
shift
variants=("${@:-cuda cudnn}")
dist="${CARGO_TARGET_DIR:-$PWD/target/cuda}/dist"
mkdir -p "$dest"
found=0
rm -f "$dest"/*.xz
for f in "$dist"/spotter-* "$dist"/gpu-check-*; do
  [ -f "$f" ] || continue
  [[ " ${variants[*]} " == *" ${f##*-} "* ]] || continue
  xz -9 -T2 -c "$f" >"$dest/$(basename "$f").xz"
  found=1
done
[ "$found" = 1 ] || {
  echo "error: nothing in $dist; run scripts/build-cuda.sh first" >&2
  exit 1
}
mkdir -p "$dest/lib"
turbojpeg="$(ldconfig -p | awk '/libturbojpeg.so.0 / && /x86-64/ { print $NF; exit }')"
[ -n "$turbojpeg" ] && cp -L "$turbojpeg" "$dest/lib/libturbojpeg.so.0"
cp scripts/gpu-device-run.sh "$dest/"
du -sh "$dest"/* >&2
