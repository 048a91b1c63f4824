#!/usr/bin/env bash
# openraft's own unit tests on the vendored, patched copy (vendor/README.md): upstream's
# engine, progress and replication tests, and the patch's own (test_extend_inflight), in a
# debug build, so that openraft's debug assertions (a follower's log going backwards, a
# range acknowledged out of order) hold under the patch too.
#
# The crate is the workspace's [patch], not a member: as a member its dev-dependencies
# would enter the workspace's lock and `clippy -D warnings` would lint upstream's code. So
# it is tested as a package of its own, in a scratch copy with a lockfile of its own
# (vendor/openraft-tests.lock), built into target/openraft-tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp -r vendor/openraft/. "$scratch/"
cp vendor/openraft-tests.lock "$scratch/Cargo.lock"
"${CARGO:-cargo}" test --locked --lib --manifest-path "$scratch/Cargo.toml" \
  --target-dir target/openraft-tests
# The chunked snapshot transport's tests (the patch changed its retry of an unreachable
# target) are upstream's behind this feature.
"${CARGO:-cargo}" test --locked --lib --manifest-path "$scratch/Cargo.toml" \
  --target-dir target/openraft-tests --features generic-snapshot-data network::snapshot_transport
