#!/usr/bin/env bash
# Provide a local RabbitMQ for the demos and tests: install Debian's rabbitmq-server if it
# is missing, start it on loopback unless one already answers, and wait until it is ready.
#
#   scripts/broker.sh          ensure the broker runs (idempotent)
#   scripts/broker.sh stop     stop the node this script started
set -euo pipefail

export RABBITMQ_NODENAME="${RABBITMQ_NODENAME:-rabbit@localhost}"
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT="${RABBITMQ_NODE_PORT:-5672}"
export ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_DIST_PORT="${RABBITMQ_DIST_PORT:-25672}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

answers() {
  # The AMQP port is what clients need; rabbitmqctl also proves the node booted.
  (exec 3<>"/dev/tcp/127.0.0.1/$RABBITMQ_NODE_PORT") 2>/dev/null &&
    rabbitmqctl -q -n "$RABBITMQ_NODENAME" await_startup --timeout 2 >/dev/null 2>&1
}

if [ "${1:-}" = stop ]; then
  rabbitmqctl -q -n "$RABBITMQ_NODENAME" stop >/dev/null 2>&1 || true
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "broker: installing rabbitmq-server (Debian package)" >&2
  # No init system runs here: keep the package scripts from starting a service of their own.
  printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
  as_root chmod +x /usr/sbin/policy-rc.d
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
  as_root rm -f /usr/sbin/policy-rc.d
fi

if answers; then
  echo "broker: RabbitMQ already answers on 127.0.0.1:$RABBITMQ_NODE_PORT" >&2
  exit 0
fi

echo "broker: starting $RABBITMQ_NODENAME on 127.0.0.1:$RABBITMQ_NODE_PORT" >&2
as_root env RABBITMQ_NODENAME="$RABBITMQ_NODENAME" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
  RABBITMQ_NODE_PORT="$RABBITMQ_NODE_PORT" ERL_EPMD_ADDRESS=127.0.0.1 \
  RABBITMQ_DIST_PORT="$RABBITMQ_DIST_PORT" rabbitmq-server -detached
for _ in $(seq 1 120); do
  if answers; then
    echo "broker: ready" >&2
    exit 0
  fi
  sleep 0.5
done
echo "broker: RabbitMQ did not answer within 60 s; see /var/log/rabbitmq/" >&2
exit 1
