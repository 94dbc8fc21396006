# Spotter: `make run` starts the application, `make test` runs the whole test suite.
# Both install missing system packages first (Debian/Ubuntu, needs root or sudo).

SHELL := /bin/bash
CARGO ?= cargo
ARGS ?=
# Debian packages the build and the tests need: a C toolchain, libclang (bindgen for the FFmpeg
# and V4L2 bindings), FFmpeg's libraries (decode/encode) and its command-line tool (tests make
# clips with it), libjpeg-turbo (JPEG decoding identical to OpenCV's), and for the window an X
# server (Xvfb, tests and screenshots) with the OpenGL/Vulkan runtime.
APT_PACKAGES := build-essential pkg-config clang libclang-dev curl ca-certificates libturbojpeg0-dev \
	libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev libavfilter-dev libavdevice-dev \
	ffmpeg xvfb xauth x11-apps \
	libgl1 libegl1 libgl1-mesa-dri mesa-vulkan-drivers libvulkan1 libx11-xcb1 libxcursor1 libxi6 libxkbcommon-x11-0

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test deps lint build release bench bench-ort cuda cudnn device-pack

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "error: cargo not found; install Rust 1.95+ from https://rustup.rs"; exit 1; }

run: deps
	$(CARGO) run --release -- $(ARGS)

release: deps
	$(CARGO) build --release

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: deps lint
	@log=$$(mktemp); set -o pipefail; \
	$(CARGO) test --workspace --no-fail-fast 2>&1 | tee $$log; status=$$?; \
	awk '/^test result:/ { p += $$4; f += $$6 } END { printf "%d passed, %d failed\n", p, f }' $$log; \
	rm -f $$log; exit $$status

bench: deps
	$(CARGO) run --release -- bench $(ARGS)

# Spotter vs ONNX Runtime on the CPU, side by side (needs `pip install onnxruntime onnx numpy`);
# e.g. make bench-ort ARGS="--models gelan-s,gelan-c --sizes 640,320"
bench-ort: release
	python3 scripts/bench-vs-onnxruntime.py $(ARGS)

# CUDA build (no GPU or CUDA toolkit needed here: scripts/cuda-toolchain.sh installs a pinned
# CUDA 13.0 toolchain from PyPI wheels when nvcc is missing). Output: target/cuda/dist/.
cuda:
	scripts/build-cuda.sh

# The same with conv2d through cuDNN.
cudnn:
	scripts/build-cuda.sh --cudnn

# Gzipped binaries + the GPU run script in DEST (default .device/), to carry to a GPU machine.
DEST ?= .device
device-pack:
	scripts/pack-device.sh $(DEST)
