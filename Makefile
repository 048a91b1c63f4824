# cookie-crud: the two commands a fresh machine needs are `make cluster-start` (or
# `cargo run --release` for one node) and `make test`.

SHELL := /bin/bash
CARGO ?= cargo
BIN := target/release/cookie-crud

.PHONY: build run test test-stress fuzz lint cluster-start cluster-stop cluster-clean cluster-test cluster-add-node cluster-remove-node bench jepsen

build:
	$(CARGO) build --release --workspace

run: build
	$(BIN)

# Every test: unit tests, openraft's storage suite on the redb store, and black-box tests
# that start real node processes on 127.0.0.1. Release mode, so the tests and the binary
# they start share one build. Then the vendored openraft's own unit tests with the patch
# (scripts/openraft-tests.sh, a debug build of its own), and a short Schemathesis run of
# the API against a real 3-node cluster (scripts/fuzz.sh installs Schemathesis from PyPI
# on first use).
test:
	$(CARGO) test --release --workspace
	CARGO=$(CARGO) scripts/openraft-tests.sh
	scripts/fuzz.sh

# The tests with a busy loop on every core beside them (STRESS_ROUNDS rounds, default 3): a
# test that assumes a step happens in time, rather than waiting for it, fails here before CI
# finds it (scripts/stress-tests.sh).
test-stress:
	CARGO=$(CARGO) scripts/stress-tests.sh

# The long fuzz run: 500 examples per operation and phase.
fuzz: build
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-500} scripts/fuzz.sh

# Formatting, clippy, the API docs without warnings (no broken or private intra-doc link),
# and the layering rule: no import cycle between modules and no import up a layer
# (tests/layers.rs reads every module's imports with syn; docs/architecture.md).
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	$(CARGO) test --release --test layers
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --quiet

# TLS=1: HTTPS for clients and mutual TLS between the nodes (scripts/tls-mode.sh).
cluster-start: build
	scripts/cluster.sh start

cluster-stop:
	scripts/cluster.sh stop

# Grow and shrink the local cluster: N is 4..9 (client port 808N, peer port 908N).
cluster-add-node: build
	scripts/cluster.sh add-node $(N)

cluster-remove-node:
	scripts/cluster.sh remove-node $(N)

cluster-clean:
	scripts/cluster.sh clean

cluster-test:
	scripts/cluster-test.sh

# Figures for docs/benchmarks.md: cookie-crud against etcd (installed from Debian when
# missing), then the same with the cheap load generator, 30 s a phase, full percentiles and a
# per-second latency plot (target/load-latency.svg; LOAD_SECS, LOAD_CLIENTS, LOAD_ONLY), the
# cache alone, its memory per entry, and HTTP reads with the cache on and off.
bench:
	command -v etcd >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server)
	BENCH_SECS=$${BENCH_SECS:-5} $(CARGO) bench --bench compare
	LOAD_SECS=$${LOAD_SECS:-30} $(CARGO) bench --bench load
	$(CARGO) bench --bench cache
	$(CARGO) bench --bench cache_memory
	BENCH_SECS=$${BENCH_SECS:-5} $(CARGO) bench --bench http_cache
	python3 benches/handover.py --bin target/release/cookie-crud --rounds 3

# The Jepsen-style fault suite: each fault alone, then all mixed, JEPSEN_TIME seconds each
# (default 60). JEPSEN_FAULTS="partition" (or "kill pause", "stop": SIGTERM, a leader's handover
# and a restart, or "member" and mixes such as
# "kill,partition,member": remove a node and add it back with empty data; "power" and "disk",
# power cuts and full disks on a lossy FUSE filesystem, need root) picks runs; JEPSEN_SEED fixes
# the seed; JEPSEN_NODES=5 runs a five-node cluster; JEPSEN_TLS=1 runs it with mutual TLS
# between the nodes and HTTPS for the clients; JEPSEN_WAL_APART=1 puts each node's WAL outside
# its data directory (storage.wal_dir; not with power or disk); JEPSEN_ASSERT=1 builds (into target/assert)
# with openraft's debug assertions on, its own invariant checks that release builds skip. A
# node that panicked fails the run. Results: results/jepsen-<seed>/.
JEPSEN_CARGO = $(if $(JEPSEN_ASSERT),CARGO_TARGET_DIR=target/assert $(CARGO) test --release --config 'profile.release.package.openraft.debug-assertions=true',$(CARGO) test --release)
jepsen:
	@set -eo pipefail; for f in $${JEPSEN_FAULTS:-kill pause stop partition all}; do \
	  echo "== jepsen: faults=$$f time=$${JEPSEN_TIME:-60}s"; \
	  JEPSEN_FAULTS=$$f JEPSEN_TIME=$${JEPSEN_TIME:-60} $(JEPSEN_CARGO) --test jepsen -- --nocapture 2>&1 \
	    | grep -E "^(nemesis|jepsen run|register ops|set:|keyed:|walks:|result|  |smallest|results in|test result)"; \
	done

# The operator files in deploy/ (Prometheus and its alerting rules, Grafana, Dockerfile,
# compose, Kubernetes): the real validators first (promtool check config/rules and the
# alerts' unit tests, kubernetes-validate, hadolint, the Compose Specification schema;
# scripts/deploy-check.sh installs them on first use: promtool from Debian, the rest from
# PyPI into .venv-deploy/), then the files checked against each other and against real
# nodes (tests/deploy.rs).
.PHONY: deploy-check
deploy-check:
	scripts/deploy-check.sh
	$(CARGO) test --release --test deploy
