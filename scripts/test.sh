#!/usr/bin/env bash
# The whole test suite: start the broker if needed, then every test of the workspace
# (unit, integration against RabbitMQ, macro UI tests, doc tests, demos end to end).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/broker.sh
# The tests start the workspace's programs (demos, the `postage` CLI) from target/debug.
cargo build --workspace --bins --locked
cargo test --workspace --locked --no-fail-fast -- --test-threads=4
# The benchmark builds and runs as a smoke run, in the test profile the tests already
# built (a release build of the whole tree would double CI's time and disk); its timings
# are never asserted. For figures, run it as README's performance section says.
POSTAGE_BENCH_QUICK=1 cargo bench --profile test -p postage-tests --locked --bench throughput
