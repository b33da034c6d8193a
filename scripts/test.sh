#!/usr/bin/env bash
# The whole test suite against every RabbitMQ postage supports: start the brokers in the
# background, the cheap gates (format, clippy, docs, warnings denied) and the build
# meanwhile, then every test of the workspace (unit, integration against RabbitMQ, macro UI
# tests, doc tests, demos end to end) against the first broker, and every test that talks
# to a broker again against each of the others:
#
#   3    RabbitMQ 3.10 (Debian 12), its own defaults
#   4.0  RabbitMQ 4.0 (Debian 13), transient non-exclusive queues denied by hand (as an
#        operator may set on any 4.x): the pass that keeps the durable queue shape tested
#   4.3  RabbitMQ 4.3.6 (Debian unstable, Erlang 29, Khepri), its own defaults (which
#        permit transient non-exclusive queues and deny global QoS)
#
# PostgreSQL (scripts/postgres.sh) starts beside them, for the outbox tests, which run in
# the first pass only (on SQLite and PostgreSQL; they do not depend on the broker's version).
#
#   scripts/test.sh                          all three (what CI runs)
#   scripts/test.sh --rabbitmq 4.3           one of them (3, 4.0 or 4.3; 4 is 4.0)
#   scripts/test.sh --rabbitmq "3 4.3"       some of them, in that order
set -euo pipefail
cd "$(dirname "$0")/.."

versions="3 4.0 4.3"
if [ "${1:-}" = --rabbitmq ]; then
  versions=$(for v in $2; do case $v in 4) echo 4.0 ;; 3.10) echo 3 ;; *) echo "$v" ;; esac; done | xargs)
fi

# The RabbitMQ 4 brokers live in roots of their own that take a minute or two to build the
# first time: build and start them all while the gates and the tests compile.
mkdir -p target
pids=()
for version in $versions; do
  scripts/broker.sh --rabbitmq "$version" >"target/broker-$version.log" 2>&1 &
  pids+=($!)
done
# PostgreSQL for the outbox tests (tests/tests/suite/outbox.rs), started meanwhile too.
scripts/postgres.sh >target/postgres.url 2>target/postgres.log &
postgres=$!
# The patched lapin's tests build in a target directory of their own, in the background
# (niced) while the gates and the workspace build run and the brokers start: not during
# the passes, whose tests time bounds (a black hole noticed within twice the heartbeat).
lapin_tests=(--lib --test queued_publishes --test consumer_dropped_as_channel_closes
  --test channel_dropped_as_connection_closes)
(
  cd patches/lapin
  CARGO_TARGET_DIR=../../target/lapin nice -n 10 cargo test --locked --features tokio --no-run \
    "${lapin_tests[@]}" -q
) >target/lapin-build.log 2>&1 &
lapin_build=$!
started_build=$SECONDS
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The workspace's tests turn on postage-core's `otel` feature; without it, on its own.
cargo clippy -p postage-core --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
# The tests start the workspace's programs (demos, the `postage` CLI) from target/debug.
cargo build --workspace --bins --tests --locked
# What a user builds: a crate outside the workspace that depends on postage-core by path,
# as README says, must get lapin from patches/lapin, as the tests and benchmarks do.
user_crate=$(mktemp -d)
mkdir -p "$user_crate/src"
echo 'fn main() {}' >"$user_crate/src/main.rs"
printf '[package]\nname = "a-user"\nversion = "0.1.0"\nedition = "2024"\n\n[dependencies]\npostage-core = { path = "%s" }\n' \
  "$PWD/postage-core" >"$user_crate/Cargo.toml"
if ! cargo tree --manifest-path "$user_crate/Cargo.toml" -i lapin --prefix none -e normal -q |
  grep -q "^lapin v.* ($PWD/patches/lapin)\$"; then
  echo "test: a crate depending on postage-core does not get the patched lapin" >&2
  exit 1
fi
rm -rf "$user_crate"
echo "test: a crate depending on postage-core gets lapin from patches/lapin" >&2
# The macro UI tests (trybuild) compile programs against the workspace, which checks its
# dependencies once more: here, before the passes, not beside the tests that time bounds.
cargo test -p postage-tests --test suite --locked -q -- macro_ui::
# The AsyncAPI project's own parser, which the tests validate postage's documents with.
npm ci --prefix tests/asyncapi --no-audit --no-fund --loglevel=error

# The original Python Postage 1.2.1 (Python 2.7, from PyPI) for the interop tests of
# tests/tests/suite/python_postage.rs; without a Python 2.7 this says so loudly, and under
# CI those tests fail rather than pass unrun.
scripts/python-postage.sh >/dev/null || echo "test: Python Postage could not be installed (see above)" >&2
# Headless Chromium and chromedriver (Debian's chromium and chromium-driver) for the
# dashboard's browser tests (tests/tests/suite/dashboard.rs); under CI those tests fail
# rather than pass unrun without them.
scripts/chromium.sh || echo "test: Chromium could not be installed (see above)" >&2

i=0
for version in $versions; do
  if ! wait "${pids[$i]}"; then
    cat "target/broker-$version.log" >&2
    echo "RabbitMQ $version did not start" >&2
    exit 1
  fi
  cat "target/broker-$version.log" >&2
  i=$((i + 1))
done
if ! wait "$postgres"; then
  cat target/postgres.log >&2
  echo "PostgreSQL did not start" >&2
  exit 1
fi
POSTAGE_POSTGRES_URL=$(cat target/postgres.url)
export POSTAGE_POSTGRES_URL
wait "$lapin_build" || lapin_built=no
echo "=== gates, build and brokers: $((SECONDS - started_build)) s" >&2

# The integration suite's test program, which the outage test runs from directly.
suite=$(cargo test -p postage-tests --test suite --locked --no-run 2>&1 |
  sed -n 's|.*Executable tests/suite/main.rs (\(.*\))$|\1|p')
suite="$PWD/$suite"
outage=supervision::a_two_minute_outage_is_served_through

failed=()
times=()
first=1
for version in $versions; do
  case $version in
    3)
      broker=(POSTAGE_RABBITMQ=3 POSTAGE_PORT=5672 RABBITMQ_NODENAME=rabbit@localhost)
      what="RabbitMQ 3.10, its own defaults"
      ;;
    4.0)
      broker=(POSTAGE_RABBITMQ=4.0 POSTAGE_PORT=5682 RABBITMQ_NODENAME=rabbit4@localhost)
      what="RabbitMQ 4.0 with transient non-exclusive queues denied (the durable shape)"
      ;;
    4.3)
      broker=(POSTAGE_RABBITMQ=4.3 POSTAGE_PORT=5683 RABBITMQ_NODENAME=rabbit43@localhost)
      what="RabbitMQ 4.3.6, its own defaults (transient queues permitted, global QoS denied)"
      ;;
    *)
      echo "test: --rabbitmq takes 3, 4.0 (or 4) or 4.3, not $version" >&2
      exit 2
      ;;
  esac
  echo "=== the test suite against $what" >&2
  started=$SECONDS
  # The macro UI tests ran before the passes.
  if [ $first = 1 ]; then
    tests=(--workspace)
    skip=(--skip macro_ui::)
  else
    # Doc tests do not talk to a broker: once is enough. Nor do the outbox tests (SQLite
    # and PostgreSQL, durable queues) depend on its version: the first pass runs them.
    tests=(--workspace --lib --bins --tests)
    skip=(--skip macro_ui:: --skip outbox::)
  fi
  # The two-minute outage, on a node of its own, runs beside the rest of the pass rather
  # than at its tail (it alone would add some 90 s a pass).
  (cd tests && env "${broker[@]}" timeout -k 30 600 "$suite" --exact "$outage") \
    >"target/outage-$version.log" 2>&1 &
  outage_pid=$!
  # broker_faults closes every connection of the broker and restarts it: on its own, after.
  # A hung test fails its pass (the harness names tests running for over 60 s) instead
  # of eating CI's time.
  env "${broker[@]}" timeout -k 30 1200 cargo test "${tests[@]}" --locked --no-fail-fast -- \
    --test-threads=4 --skip broker_faults:: --skip "$outage" "${skip[@]}" ||
    failed+=("RabbitMQ $version")
  env "${broker[@]}" timeout -k 30 600 cargo test -p postage-tests --test suite --locked -- \
    broker_faults:: || failed+=("RabbitMQ $version faults")
  # A short chaos soak (scripts/soak.sh: faults drawn at random on nodes of its own, a
  # ledger of every message and call); its seed is printed to repeat it. 45 s of faults
  # a broker (about a minute in all) keeps CI within its time; longer ones by hand.
  env "${broker[@]}" POSTAGE_SOAK_BUILT=1 timeout -k 30 300 scripts/soak.sh --seconds 45 ||
    failed+=("RabbitMQ $version soak")
  if ! wait "$outage_pid"; then
    cat "target/outage-$version.log" >&2
    failed+=("RabbitMQ $version outage")
  fi
  times+=("RabbitMQ $version: $((SECONDS - started)) s")
  echo "=== RabbitMQ $version: $((SECONDS - started)) s" >&2
  first=0
done

# The patched lapin's own tests (patches/README.md), built apart from the workspace (it
# is not a member), against the first broker, the memory alarm ones on a node of their
# own.
first_broker=(${versions})
case ${first_broker[0]} in 3) lapin_port=5672 ;; 4.0) lapin_port=5682 ;; 4.3) lapin_port=5683 ;; esac
echo "=== the patched lapin's tests" >&2
started=$SECONDS
[ "${lapin_built:-}" != no ] || cat target/lapin-build.log >&2
scripts/node.sh --rabbitmq "${first_broker[0]}" start lapin-alarm 5771 25771
(
  cd patches/lapin
  AMQP_ADDR="amqp://127.0.0.1:$lapin_port/%2f" \
    LAPIN_ALARM_AMQP_ADDR="amqp://127.0.0.1:5771/%2f" \
    LAPIN_ALARM_CTL="$PWD/../../scripts/node.sh --rabbitmq ${first_broker[0]} ctl lapin-alarm" \
    CARGO_TARGET_DIR=../../target/lapin timeout -k 30 900 cargo test --locked --features tokio \
    "${lapin_tests[@]}"
) || failed+=("lapin's patch")
scripts/node.sh --rabbitmq "${first_broker[0]}" stop lapin-alarm
times+=("the patched lapin: $((SECONDS - started)) s")

# The benchmark builds and runs as a smoke run, in the test profile the tests already
# built (a release build of the whole tree would double CI's time and disk); its timings
# are never asserted. For figures, run it as README's performance section says.
POSTAGE_BENCH_QUICK=1 cargo bench --profile test -p postage-tests --locked --bench throughput

printf '=== %s\n' "${times[@]}" >&2
if [ ${#failed[@]} -gt 0 ]; then
  echo "tests failed: ${failed[*]}" >&2
  exit 1
fi
