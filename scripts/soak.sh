#!/usr/bin/env bash
# The chaos soak (tests/src/soak): a fleet of postage components under steady traffic on a
# cluster of RabbitMQ nodes of its own (postage-soak-*, ports 5801-5803) while faults come
# and go at random: broker restart, cluster node stopped, closed connections, black hole,
# latency, memory alarm, consumer timeout. Prints a report whose last line reads
# `soak: N sent, N confirmed, 0 lost, D duplicated, C calls, 0 past their bound`, and
# exits non-zero when a confirmed message was lost, a call went past its bound, or a
# component was stuck or leaked.
#
#   scripts/soak.sh --minutes 30             a long soak (RabbitMQ 3.10 by default)
#   scripts/soak.sh --seconds 90 --seed 7    a short one, the faults of seed 7
#   POSTAGE_RABBITMQ=4.3 scripts/soak.sh ... on another broker (3, 4.0 or 4.3)
#
# Runs as root (network namespaces). The shared brokers of scripts/broker.sh are never
# touched; the soak's nodes are stopped at the end however it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

# scripts/test.sh built every program already (with the tests' features): it says so.
if [ "${POSTAGE_SOAK_BUILT:-0}" != 1 ]; then
  nice -n 10 cargo build -p postage-tests --bin soak --bin fault_component --locked -q
fi
stop_nodes() {
  for n in 1 2 3; do scripts/node.sh stop "postage-soak-$n"; done
}
trap stop_nodes EXIT
target=${CARGO_TARGET_DIR:-target}
"$target/debug/soak" "$@"
