# carapace: `make demo` runs the main job, `make test` runs every test. Both install what they
# need on a fresh Debian 12 machine (apt packages, kernels, Rust builds); kernels are cached
# under ~/.cache/carapace keyed by their config, so later runs cost seconds.

JOBS ?= 2
CARGO := cargo
export CARAPACE_JOBS := $(JOBS)

.PHONY: all deps kernels images build install lint unit-test lab-test test bench bench-ctr bench-cri lab-stress demo clean

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

# Installs the binaries, the guest kernel and initramfs, a default config (kept if present) and
# containerd's runtime stanza. PREFIX and DESTDIR as usual; PROFILE=debug installs the debug
# build (the lab test of `make install` uses it to save a release build).
PREFIX ?= /usr/local
PROFILE ?= release
install: deps kernels images
	$(CARGO) build --locked -j$(JOBS) --profile $(subst debug,dev,$(PROFILE)) -p carapace-vmm -p carapace-shim
	install -D -m 755 target/$(PROFILE)/carapace-vmm $(DESTDIR)$(PREFIX)/bin/carapace-vmm
	install -D -m 755 target/$(PROFILE)/containerd-shim-carapace-v2 $(DESTDIR)$(PREFIX)/bin/containerd-shim-carapace-v2
	install -D -m 644 "$$(guest-kernel/build | tail -n1)" $(DESTDIR)$(PREFIX)/share/carapace/vmlinux
	install -D -m 644 "$$(images/build-initramfs | tail -n1)" $(DESTDIR)$(PREFIX)/share/carapace/initramfs.img
	[ -e $(DESTDIR)/etc/carapace/config.toml ] || { install -D -m 644 shim/config.toml $(DESTDIR)/etc/carapace/config.toml && \
	  [ "$(PREFIX)" = /usr/local ] || sed -i 's|^#\(kernel\|initramfs\) = "/usr/local/|\1 = "$(PREFIX)/|' $(DESTDIR)/etc/carapace/config.toml; }
	shim/install-containerd-runtime $(DESTDIR)/etc/containerd/config.toml

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

# Guest deaths counted in the lab, carapace-vmm against QEMU microvm (tests/bench/stress.rs):
# STRESS_BOOTS boots per VMM (default 200) of STRESS_CYCLES container cycles each (default 10).
# STRESS_BASELINE=<another carapace-vmm> runs that build too, alternating with the two. Consoles
# and KVM traces of the guests that died are kept in target/lab-stress/stress.
STRESS_BOOTS ?= 200
STRESS_CYCLES ?= 10
lab-stress: deps kernels images
	$(CARGO) build --locked --release -j$(JOBS) -p carapace-vmm
	rm -rf $(CURDIR)/target/lab-stress && mkdir -p $(CURDIR)/target/lab-stress
	CARAPACE_VMM=$(CURDIR)/target/release/carapace-vmm \
	CARAPACE_GUEST_KERNEL=$$(guest-kernel/build | tail -n1) \
	CARAPACE_LAB_KERNEL=$$(guest-kernel/build --name lab --fragment tests/lab/lab.config | tail -n1) \
	CARAPACE_INITRAMFS=$$(images/build-initramfs | tail -n1) \
	CARAPACE_LAB_OUT=$(CURDIR)/target/lab-stress \
	CARAPACE_STRESS_BOOTS=$(STRESS_BOOTS) CARAPACE_STRESS_CYCLES=$(STRESS_CYCLES) $(if $(STRESS_BASELINE),CARAPACE_STRESS_BASELINE=$(abspath $(STRESS_BASELINE))) \
	$(CARGO) bench --locked -j$(JOBS) -p carapace-tests --bench stress

demo: deps
	tests/demo

# `ctr run --rm busybox true` with runc and with carapace, 10 runs each in one session.
bench-ctr: deps
	tests/demo --bench 10

# The CRI's RunPodSandbox, CreateContainer and StartContainer, runc against carapace, CRI_RUNS
# rounds (default 10) in one lab session (tests/bench/cri.rs).
CRI_RUNS ?= 10
bench-cri: deps kernels images
	$(CARGO) build --locked --release -j$(JOBS) -p carapace-vmm -p carapace-shim
	CARAPACE_VMM=$(CURDIR)/target/release/carapace-vmm CARAPACE_CRI_RUNS=$(CRI_RUNS) \
	CARAPACE_GUEST_KERNEL=$$(guest-kernel/build | tail -n1) \
	CARAPACE_LAB_KERNEL=$$(guest-kernel/build --name lab --fragment tests/lab/lab.config | tail -n1) \
	CARAPACE_INITRAMFS=$$(images/build-initramfs | tail -n1) \
	CARAPACE_BUSYBOX_IMAGE=$$(images/build-busybox-image | tail -n1) \
	$(CARGO) bench --locked -j$(JOBS) -p carapace-tests --bench cri

# Every fuzz target (vmm/fuzz, agent/fuzz) under libFuzzer, one after the other, FUZZ_RUNS
# executions each (default 10000000) or FUZZ_TIME seconds each; prints executions, coverage and
# crashes per target (tests/fuzz). `make test` replays the committed corpus as unit tests.
FUZZ_RUNS ?= 10000000
.PHONY: fuzz
fuzz: deps
	FUZZ_RUNS=$(FUZZ_RUNS) $(if $(FUZZ_TIME),FUZZ_TIME=$(FUZZ_TIME)) tests/fuzz

clean:
	$(CARGO) clean
