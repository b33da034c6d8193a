#!/usr/bin/env bash
# The whole test suite against every RabbitMQ postage supports: the cheap gates first
# (format, clippy, docs, warnings denied), then start the brokers if needed, then every test
# of the workspace (unit, integration against RabbitMQ, macro UI tests, doc tests, demos
# end to end) against RabbitMQ 3.10, and every test that talks to a broker again against
# RabbitMQ 4.0 with the denials 4.3 ships.
#
#   scripts/test.sh                  both brokers (what CI runs)
#   scripts/test.sh --rabbitmq 3     one of them (3 or 4)
set -euo pipefail
cd "$(dirname "$0")/.."

versions="3 4"
if [ "${1:-}" = --rabbitmq ]; then
  versions=$2
fi

# RabbitMQ 4 lives in a Debian 13 root that takes a minute or two to build the first
# time: build it while the gates and the tests compile.
pids=()
for version in $versions; do
  scripts/broker.sh --rabbitmq "$version" &
  pids+=($!)
done
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The workspace's tests turn on postage-core's `otel` feature; without it, on its own.
cargo clippy -p postage-core --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
# The tests start the workspace's programs (demos, the `postage` CLI) from target/debug.
cargo build --workspace --bins --tests --locked
# The AsyncAPI project's own parser, which the tests validate postage's documents with.
npm ci --prefix tests/asyncapi --no-audit --no-fund --loglevel=error
for pid in "${pids[@]}"; do
  wait "$pid"
done

failed=()
first=1
for version in $versions; do
  case $version in
    3) broker=(POSTAGE_RABBITMQ=3 POSTAGE_PORT=5672 RABBITMQ_NODENAME=rabbit@localhost) ;;
    4) broker=(POSTAGE_RABBITMQ=4 POSTAGE_PORT=5682 RABBITMQ_NODENAME=rabbit4@localhost) ;;
  esac
  echo "=== the test suite against RabbitMQ $version" >&2
  started=$SECONDS
  if [ $first = 1 ]; then
    tests=(--workspace)
    skip=()
  else
    # Doc tests and the macro UI tests do not talk to a broker: once is enough.
    tests=(--workspace --lib --bins --tests)
    skip=(--skip macro_ui::)
  fi
  # broker_faults closes every connection of the broker and restarts it: on its own, after.
  # A hung test fails its pass (the harness names tests running for over 60 s) instead
  # of eating CI's time: each pass takes about 6 minutes.
  env "${broker[@]}" timeout -k 30 1200 cargo test "${tests[@]}" --locked --no-fail-fast -- \
    --test-threads=4 --skip broker_faults:: "${skip[@]}" || failed+=("$version")
  env "${broker[@]}" timeout -k 30 600 cargo test -p postage-tests --test suite --locked -- \
    broker_faults:: || failed+=("$version faults")
  echo "=== RabbitMQ $version: $((SECONDS - started)) s" >&2
  first=0
done

# The benchmark builds and runs as a smoke run, in the test profile the tests already
# built (a release build of the whole tree would double CI's time and disk); its timings
# are never asserted. For figures, run it as README's performance section says.
POSTAGE_BENCH_QUICK=1 cargo bench --profile test -p postage-tests --locked --bench throughput

if [ ${#failed[@]} -gt 0 ]; then
  echo "tests failed against RabbitMQ ${failed[*]}" >&2
  exit 1
fi
