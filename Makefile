# fastedge — the two commands of README.md, and a few more.
#
#   make run    build release and start `fastedge serve` on its embedded default
#   make test   fmt check, clippy -D warnings, cargo doc -D warnings, the whole test suite
#               (doc examples and privileged tests included)
#   make soak   the faults suite in its long form, on both serve engines
#   make deb    a Debian package (binary, systemd units, configuration, man pages, completions)
#
# Both install what they need first (Debian packages; idempotent: only what is missing).

SHELL := /bin/bash
CARGO ?= cargo
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# Build: clang + cmake (BoringSSL, bindgen, BPF C), libelf + zlib (libbpf, libxdp), m4 (libxdp),
# pkg-config. Tests: iproute2 (network namespaces, veth), curl, openssl and h2load (real TLS
# clients), nginx-light (a real backend reading PROXY v2 and speaking h2), tcpdump and tshark
# (read what `fastedge tap` and the pcap brick write), bsdutils (`script`: a terminal for the
# live-line test); dpkg-dev and python3 (the Debian package: built, installed in a throwaway
# copy of the machine, its unit run with a notify socket); tmux (a terminal whose screen the
# `fastedge top` test reads); gcc (`cc`: the C way reader, capi/examples/way_reader.c, is compiled
# against the built libfastedge_ways by the c_consumer suite); redis-server and prometheus (the
# fleet suite: three boxes sharing sessions through a real Redis, scraped by a real Prometheus,
# whose promtool checks our exposition and the shipped rules); libcap2-bin and util-linux (`capsh`
# and `prlimit`: split run without CAP_IPC_LOCK under a small RLIMIT_MEMLOCK).
PACKAGES := clang cmake libelf-dev zlib1g-dev m4 pkg-config make iproute2 curl openssl ca-certificates \
	nginx-light nghttp2-client tcpdump tshark bsdutils dpkg-dev python3 tmux gcc redis-server prometheus \
	libcap2-bin util-linux

.PHONY: bench-split-search run deb test deps build fmt-check clippy unit-and-e2e serve-on-glommio netmap-check fuzz-check fuzz fuzz-long soak bench bench-peers clean-netns

deps:
	@missing=""; for p in $(PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust from rustup.rs"; exit 1; }

run: deps
	$(CARGO) build --release -p fastedge
	./target/release/fastedge serve

# A Debian package of the release build: target/deb/fastedge_VERSION_ARCH.deb with the binary,
# systemd units (serve, split@PIPELINE, keyserver), /etc/fastedge/serve.toml, man pages, shell
# completions, the C way-reader library with its header and example, and Prometheus examples.
deb: deps
	$(CARGO) build --release -p fastedge -p fastedge-ways
	packaging/build-deb.sh

test: deps disk-check fmt-check clippy doc-check unit-and-e2e serve-on-glommio netmap-check fuzz-check

# Room for the build before it starts: `make test` on a clean clone writes ~7 GB (target/ and
# fuzz/target/), and a linker that runs out of space dies of SIGBUS, far from the cause.
# TEST_DISK_GB is what a build from nothing needs; an existing target/debug needs less.
TEST_DISK_GB ?= 10
.PHONY: disk-check
# Order-only: under `make -j` too, nothing builds before the check passed.
fmt-check clippy doc-check unit-and-e2e serve-on-glommio netmap-check fuzz-check: | disk-check
disk-check:
	@target="$${CARGO_TARGET_DIR:-target}"; dir="$$target"; \
	while [ ! -d "$$dir" ]; do dir=$$(dirname "$$dir"); done; \
	free=$$(df -Pk "$$dir" | awk 'NR == 2 { print int($$4 / 1048576) }'); \
	if [ -d "$$target/debug" ]; then need=3; else need=$(TEST_DISK_GB); fi; \
	if [ "$$free" -lt "$$need" ]; then \
	  echo "make test: $$free GB free for $$target, the build needs about $$need GB" \
	    "(a fresh one ~7 GB): free some space, or set TEST_DISK_GB"; \
	  exit 1; \
	fi

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The API documentation builds without a warning (broken intra-doc links, links to private
# items, missing docs in the library crates: they deny `missing_docs`). Only our crates are
# documented (`--no-deps`): tens of seconds after clippy. The doc examples themselves run
# with the tests below (`cargo test --workspace` runs every library's doctests).
.PHONY: doc-check
doc-check:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

# Builds every target first: the end-to-end suites run the `fastedge` binary.
unit-and-e2e:
	$(CARGO) build --workspace --all-targets
	$(CARGO) test --workspace --no-fail-fast

# The serve suites once more on the second engine (the default run above uses io_uring).
SERVE_SUITES := $(patsubst tests/tests/%.rs,%,$(wildcard tests/tests/serve_*.rs)) tls_adapter runtime_executors terminator_embed
serve-on-glommio:
	FASTEDGE_ENGINE=glommio $(CARGO) test --workspace --no-fail-fast $(addprefix --test ,$(SERVE_SUITES))
	FASTEDGE_ENGINE=glommio $(CARGO) test --workspace --test faults serve_

# The faults suite (tests/tests/faults.rs) in its long form: SOAK_CONNECTIONS connections
# through `fastedge serve` (on each engine) while its backend is killed and restarted, and
# SOAK_SECONDS of `fastedge gen` traffic through `fastedge split` while consumers are
# SIGKILLed. `make test` runs the short form (6,000 connections, 10 s).
SOAK_CONNECTIONS ?= 100000
SOAK_SECONDS ?= 300
soak: deps
	$(CARGO) build --workspace --all-targets
	FASTEDGE_SOAK_CONNECTIONS=$(SOAK_CONNECTIONS) FASTEDGE_SOAK_SECONDS=$(SOAK_SECONDS) \
	  $(CARGO) test --workspace --test faults -- --nocapture --test-threads 1
	FASTEDGE_ENGINE=glommio FASTEDGE_SOAK_CONNECTIONS=$(SOAK_CONNECTIONS) \
	  $(CARGO) test --workspace --test faults serve_ -- --nocapture

netmap-check:
	$(CARGO) check -p fastedge-rings --features netmap

fuzz-check:
	cd fuzz && $(CARGO) check

# Runs each fuzz target for FUZZ_SECONDS (needs cargo-fuzz; RUSTC_BOOTSTRAP lets the stable
# toolchain take the sanitizer flags). Each starts from the small seed corpus kept in the
# repository (fuzz/corpus/TARGET) and the inputs of earlier runs (fuzz/target/corpus/TARGET,
# where new ones go: not kept). A crash stops the loop; its input is in fuzz/artifacts/TARGET.
FUZZ_SECONDS ?= 60
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for target in $$(RUSTC_BOOTSTRAP=1 $(CARGO) fuzz list); do \
	  mkdir -p target/corpus/$$target corpus/$$target && \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$target target/corpus/$$target corpus/$$target -- \
	    -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

# The long form: every target for 10 minutes.
fuzz-long:
	$(MAKE) fuzz FUZZ_SECONDS=600

bench:
	$(CARGO) bench -p fastedge-benches

# The peer harness (BENCHMARKS.md): fastedge beside haproxy (TLS) and beside AF_PACKET fanout
# and XDP_DROP (split), pinned, medians of rounds; tables, JSON and SVG charts in
# benches/results/. Installs the peers it needs (Debian packages) first.
BENCH_PACKAGES := haproxy nginx-light libnginx-mod-stream hitch nghttp2-client wrk curl openssl clang iproute2
bench-peers: deps
	@missing=""; for p in $(BENCH_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then echo "installing for the benchmarks:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi
	$(SUDO) ROUNDS=3 DURATION=5 benches/peers/serve_vs_peers.sh
	$(SUDO) ROUNDS=3 DURATION=4 WAYS=4 benches/peers/split_vs_fanout.sh
	$(SUDO) ROUNDS=3 DURATION=4 WAYS=64 benches/peers/split_vs_fanout.sh

# split's sustained rate: per contender, 4 and 64 ways, 64- and 1500-byte frames, the highest
# rate delivered with < 0.1 % loss (bisection, then 3 confirmation rounds; ~25 min in all).
bench-split-search: deps
	for ways in 4 64; do for size in 64 1500; do \
	  $(SUDO) SEARCH=1 ROUNDS=3 WAYS=$$ways SIZE=$$size benches/peers/split_vs_fanout.sh || exit 1; \
	done; done
	$(SUDO) ROUNDS=3 DURATION=4 WAYS=4 SIZE=1500 RATE=100000 benches/peers/split_vs_fanout.sh
	$(SUDO) ROUNDS=3 DURATION=4 WAYS=64 SIZE=1500 RATE=100000 benches/peers/split_vs_fanout.sh

# Removes test namespaces left behind by a killed test run.
clean-netns:
	for ns in $$(ip netns list | awk '/^fe-test-/ {print $$1}'); do $(SUDO) ip netns delete $$ns; done
