#!/usr/bin/env bash
# Provide the local RabbitMQ the demos and tests use: install it if it is missing, start it
# on loopback unless it already answers, and wait until it is ready.
#
#   scripts/broker.sh [--rabbitmq 3|4.0|4.3]         ensure the broker runs (idempotent)
#   scripts/broker.sh [--rabbitmq 3|4.0|4.3] stop    stop it
#
#   --rabbitmq 3 (the default): RabbitMQ 3.10, Debian 12's package, node rabbit@localhost
#     on 127.0.0.1:5672.
#   --rabbitmq 4.0 (or 4): RabbitMQ 4.0, Debian 13's package in a Debian 13 root of its
#     own, node rabbit4@localhost on 127.0.0.1:5682 (POSTAGE_PORT=5682), with transient
#     non-exclusive queues denied by hand (POSTAGE_RABBITMQ_DENY_TRANSIENT=0: 4.0's own
#     defaults).
#   --rabbitmq 4.3: RabbitMQ 4.3.6, Debian unstable's package in a root of its own, node
#     rabbit43@localhost on 127.0.0.1:5683 (POSTAGE_PORT=5683), with 4.3.6's own defaults.
# scripts/node.sh does the work.
set -euo pipefail
cd "$(dirname "$0")/.."

version=${POSTAGE_RABBITMQ:-3}
if [ "${1:-}" = --rabbitmq ]; then
  version=$2
  shift 2
fi
case $version in
  3 | 3.10) version=3 name=rabbit port=5672 dist=25672 ;;
  4 | 4.0) version=4.0 name=rabbit4 port=5682 dist=25682 ;;
  4.3) name=rabbit43 port=5683 dist=25683 ;;
  *) echo "broker: --rabbitmq takes 3, 4.0 (or 4) or 4.3, not $version" >&2; exit 2 ;;
esac
node() { scripts/node.sh --rabbitmq "$version" "$@"; }

if [ "${1:-}" = stop ]; then
  node stop "$name"
  exit 0
fi

# The AMQP port is what clients need; rabbitmqctl also proves the node booted.
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null &&
  node ctl "$name" await_startup --timeout 2 >/dev/null 2>&1; then
  echo "broker: RabbitMQ $version already answers on 127.0.0.1:$port" >&2
  # A broker started by an older script lacks the plugin partitioned queues need:
  # enabled online (no restart), and a no-op when it runs already.
  node plugins "$name" enable rabbitmq_consistent_hash_exchange >/dev/null
  exit 0
fi
echo "broker: starting RabbitMQ $version ($name@localhost) on 127.0.0.1:$port" >&2
node start "$name" "$port" "$dist"
echo "broker: ready" >&2
