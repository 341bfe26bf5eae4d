# carapace: `make demo` runs the main job, `make test` runs every test. Both install what they
# need on a fresh Debian 12 machine (apt packages, kernels, Rust builds); kernels are cached
# under ~/.cache/carapace keyed by their config, so later runs cost seconds.

JOBS ?= 2
CARGO := cargo
export CARAPACE_JOBS := $(JOBS)

.PHONY: all deps kernels images build lint unit-test lab-test test demo clean

all: build

deps:
	tests/install-deps

kernels: deps
	guest-kernel/build
	guest-kernel/build --name lab --fragment tests/lab/lab.config

images: deps
	images/build-initramfs
	images/build-busybox-image

build: deps
	$(CARGO) build --locked --release -j$(JOBS)

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --locked -j$(JOBS) --workspace --all-targets -- -D warnings

unit-test: deps
	$(CARGO) test --locked -j$(JOBS) --workspace

lab-test: deps
	tests/lab/test

test: deps lint unit-test lab-test

demo: deps
	tests/demo

clean:
	$(CARGO) clean
