# cookie-crud: the two commands a fresh machine needs are `make cluster-start` (or
# `cargo run --release` for one node) and `make test`.

CARGO ?= cargo
BIN := target/release/cookie-crud

.PHONY: build run test lint cluster-start cluster-stop cluster-clean cluster-test bench

build:
	$(CARGO) build --release --workspace

run: build
	$(BIN)

# Every test: unit tests, openraft's storage suite on the redb store, and black-box tests
# that start real node processes on 127.0.0.1. Release mode, so the tests and the binary
# they start share one build.
test:
	$(CARGO) test --release --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

cluster-start: build
	scripts/cluster.sh start

cluster-stop:
	scripts/cluster.sh stop

cluster-clean:
	scripts/cluster.sh clean

cluster-test:
	scripts/cluster-test.sh

# Figures for docs/benchmarks.md: the cache alone, its memory per entry, and HTTP reads
# with the cache on and off in the same run.
bench:
	$(CARGO) bench --bench cache
	$(CARGO) bench --bench cache_memory
	BENCH_SECS=$${BENCH_SECS:-5} $(CARGO) bench --bench http_cache
