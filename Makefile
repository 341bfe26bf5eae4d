# carapace: `make demo` runs the main job, `make test` runs every test. Both install what they
# need on a fresh Debian 12 machine (apt packages, kernels, Rust builds); kernels are cached
# under ~/.cache/carapace keyed by their config, so later runs cost seconds.

JOBS ?= 2
CARGO := cargo
export CARAPACE_JOBS := $(JOBS)

.PHONY: all deps kernels images build lint unit-test lab-test test bench demo clean

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

test: deps lint kernels unit-test lab-test

# Benchmarks print measured figures (host start-up, lab boot against QEMU microvm).
bench: deps kernels
	$(CARGO) build --locked --release -j$(JOBS) -p carapace-vmm
	CARAPACE_VMM=$(CURDIR)/target/release/carapace-vmm \
	CARAPACE_GUEST_KERNEL=$$(guest-kernel/build | tail -n1) \
	CARAPACE_LAB_KERNEL=$$(guest-kernel/build --name lab --fragment tests/lab/lab.config | tail -n1) \
	CARAPACE_TEST_INITRAMFS=$$(images/build-test-initramfs | tail -n1) \
	$(CARGO) bench --locked -j$(JOBS) -p carapace-tests --bench vmm

demo: deps
	tests/demo

clean:
	$(CARGO) clean
