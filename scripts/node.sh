#!/usr/bin/env bash
# Start or stop an extra RabbitMQ node of the tests' own, beside the main one, with its own
# name, ports, data and (optionally) configuration file:
#
#   scripts/node.sh start NAME AMQP_PORT DIST_PORT [CONFIG_FILE]
#   scripts/node.sh stop NAME
#
# NAME is the short node name (the node is NAME@localhost). Data and logs live under
# /tmp/postage-nodes/NAME and are wiped at each start.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

action=$1
name=$2
node="$name@localhost"
base="/tmp/postage-nodes/$name"

if [ "$action" = stop ]; then
  as_root rabbitmqctl -q -n "$node" stop >/dev/null 2>&1 || true
  exit 0
fi

port=$3
dist=$4
config=${5:-}
as_root rabbitmqctl -q -n "$node" stop >/dev/null 2>&1 || true
as_root rm -rf "$base"
as_root mkdir -p "$base/mnesia" "$base/log"
printf '[].\n' | as_root tee "$base/enabled_plugins" >/dev/null
if [ -n "$config" ]; then
  as_root cp "$config" "$base/rabbitmq.conf"
else
  : | as_root tee "$base/rabbitmq.conf" >/dev/null
fi
as_root chown -R rabbitmq:rabbitmq "$base" 2>/dev/null || true
as_root env RABBITMQ_NODENAME="$node" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
  RABBITMQ_NODE_PORT="$port" RABBITMQ_DIST_PORT="$dist" ERL_EPMD_ADDRESS=127.0.0.1 \
  RABBITMQ_MNESIA_BASE="$base/mnesia" RABBITMQ_LOG_BASE="$base/log" \
  RABBITMQ_CONFIG_FILE="$base/rabbitmq.conf" RABBITMQ_ENABLED_PLUGINS_FILE="$base/enabled_plugins" \
  RABBITMQ_PID_FILE="$base/pid" \
  rabbitmq-server -detached
for _ in $(seq 1 120); do
  if as_root rabbitmqctl -q -n "$node" await_startup --timeout 2 >/dev/null 2>&1; then
    exit 0
  fi
  sleep 0.5
done
echo "node: $node did not start; see $base/log" >&2
exit 1
