#!/usr/bin/env bash
# Takes the README's screenshots of the real window under Xvfb (needs xvfb, x11-apps, ffmpeg).
# Usage: scripts/screenshots.sh [path/to/spotter]   (default: target/debug/spotter)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/spotter}
out=assets/screenshots
model=tests/fixtures/yolov9/full/gelan-s.pt
display=:${SPOTTER_SHOT_DISPLAY:-97}
home=$(mktemp -d)
mkdir -m 700 "$home/runtime"
Xvfb "$display" -screen 0 1280x800x24 -nolisten tcp >/dev/null 2>&1 &
xvfb=$!
trap 'kill $xvfb 2>/dev/null || true; rm -rf "$home"' EXIT
sleep 2

shot() { # name seconds args...
  local name=$1 secs=$2
  shift 2
  DISPLAY=$display XDG_RUNTIME_DIR=$home/runtime XDG_DATA_HOME=$home/data HOME=$home \
    SPOTTER_WEIGHTS_DIR=$home/weights "$bin" "$@" 2>"$home/$name.log" &
  local app=$!
  sleep "$secs"
  xwd -root -silent -display "$display" -out "$home/$name.xwd"
  kill $app
  wait $app 2>/dev/null || true
  ffmpeg -y -loglevel error -i "$home/$name.xwd" "$out/$name.png"
  echo "$out/$name.png"
}

# A second copy of gelan-s (converted to safetensors) stands in for a second model: the test
# fixtures hold no other official weights.
"$bin" weights convert "$model" "$home/gelan-s-converted.safetensors" >/dev/null
shot main 25 assets/demo.mp4 --model "$model"
shot compare 35 assets/demo.mp4 --model "$model" --model "$home/gelan-s-converted.safetensors"
shot layers 30 assets/demo.mp4 --model "$model" --layers
