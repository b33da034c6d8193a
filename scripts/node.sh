#!/usr/bin/env bash
# Start, stop or run rabbitmqctl against a RabbitMQ node of the project's own, with its own
# name, ports, data and (optionally) configuration file, on any broker the project tests
# against:
#
#   scripts/node.sh [--rabbitmq 3|4.0|4.3] start NAME AMQP_PORT DIST_PORT [CONFIG_FILE]
#   scripts/node.sh [--rabbitmq 3|4.0|4.3] stop NAME
#   scripts/node.sh [--rabbitmq 3|4.0|4.3] ctl NAME ARGS...   (rabbitmqctl -q -n NAME@localhost ARGS)
#   scripts/node.sh [--rabbitmq 3|4.0|4.3] plugins NAME ARGS...   (rabbitmq-plugins -q -n NAME@localhost ARGS)
#
# NAME is the short node name (the node is NAME@localhost). Data and logs live under
# /tmp/postage-nodes/NAME and are wiped at each start; the node writes its Erlang VM's pid
# to /tmp/postage-nodes/NAME/pid.
#
# The version is --rabbitmq's, else POSTAGE_RABBITMQ's, else 3:
#   3    Debian 12's rabbitmq-server (3.10) on the host, installed when missing.
#   4.0  Debian 13's (4.0, Erlang 27; `4` is the same), in a Debian 13 root
#        (POSTAGE_RABBITMQ4_ROOT, default /var/tmp/postage-rabbitmq4), Erlang port mapper
#        on port 4370.
#   4.3  Debian unstable's (4.3.6, Erlang 29, Khepri), in a Debian unstable root
#        (POSTAGE_RABBITMQ43_ROOT, default /var/tmp/postage-rabbitmq43), Erlang port
#        mapper on port 4371.
# Both packages need a newer libc than Debian 12's: their roots are made with debootstrap
# (a minute or two the first time, with the host's /etc/hosts: epmd needs `localhost`)
# and share the host's loopback, /tmp, /proc and /dev.
#
# Plugins: every node runs rabbitmq_consistent_hash_exchange (shipped with the broker),
# which postage's partitioned queues route through.
#
# Deprecated features: every node runs with its version's defaults, except that 4.0 nodes
# refuse transient non-exclusive queues (deprecated_features.permit.transient_nonexcl_queues
# = false), as an operator may set on any 4.x, so the suite keeps one pass on the durable
# queue shape. POSTAGE_RABBITMQ_DENY_TRANSIENT=1 or 0 sets that denial on any 4.x node
# (the old POSTAGE_RABBITMQ_PERMIT_DEPRECATED=1 is DENY_TRANSIENT=0).
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

version=${POSTAGE_RABBITMQ:-3}
if [ "${1:-}" = --rabbitmq ]; then
  version=$2
  shift 2
fi
case $version in
  3 | 3.10) version=3 ;;
  4 | 4.0)
    version=4.0 suite=trixie epmd_port=4370
    root=${POSTAGE_RABBITMQ4_ROOT:-/var/tmp/postage-rabbitmq4}
    ;;
  4.3)
    suite=sid epmd_port=4371
    root=${POSTAGE_RABBITMQ43_ROOT:-/var/tmp/postage-rabbitmq43}
    ;;
  *)
    echo "node: --rabbitmq takes 3, 4.0 (or 4) or 4.3, not $version" >&2
    exit 2
    ;;
esac

# Installs the broker of $version when it is missing.
install() {
  case $version in
    3)
      command -v rabbitmq-server >/dev/null 2>&1 && return
      echo "node: installing rabbitmq-server (Debian 12 package)" >&2
      # No init system runs here: keep the package scripts from starting a service.
      printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
      as_root chmod +x /usr/sbin/policy-rc.d
      as_root apt-get update -qq
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
      as_root rm -f /usr/sbin/policy-rc.d
      ;;
    *)
      if [ ! -x "$root/usr/sbin/rabbitmq-server" ]; then
        if ! command -v debootstrap >/dev/null 2>&1; then
          as_root apt-get update -qq
          as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
        fi
        echo "node: building a Debian $suite root with rabbitmq-server in $root" >&2
        as_root rm -rf "$root.partial"
        as_root debootstrap --variant=minbase --include=rabbitmq-server "$suite" "$root.partial" \
          http://deb.debian.org/debian >"/tmp/postage-debootstrap-$suite.log" 2>&1 ||
          { tail -20 "/tmp/postage-debootstrap-$suite.log" >&2; exit 1; }
        # Without a `localhost` line epmd fails (nxdomain) and the node does not boot.
        as_root cp /etc/hosts "$root.partial/etc/hosts"
        as_root mv "$root.partial" "$root"
      fi
      for dir in proc dev tmp; do
        mountpoint -q "$root/$dir" || as_root mount --bind "/$dir" "$root/$dir"
      done
      ;;
  esac
}

# Runs a RabbitMQ command ($1) of $version's installation with the rest as arguments.
run() {
  local command=$1
  shift
  if [ "$version" != 3 ]; then
    as_root chroot "$root" env ERL_EPMD_PORT=$epmd_port ERL_EPMD_ADDRESS=127.0.0.1 "$command" "$@"
  else
    as_root env ERL_EPMD_ADDRESS=127.0.0.1 "$command" "$@"
  fi
}

action=$1
name=$2
node="$name@localhost"
base="/tmp/postage-nodes/$name"
mkdir -p /tmp/postage-nodes
# Tests start nodes in parallel: one installs (and mounts) at a time.
(
  flock 9
  install
) 9>/tmp/postage-nodes/.install.lock

case $action in
  stop)
    run rabbitmqctl -q -n "$node" stop >/dev/null 2>&1 || true
    exit 0
    ;;
  ctl)
    shift 2
    run rabbitmqctl -q -n "$node" "$@"
    exit
    ;;
  plugins)
    shift 2
    run env RABBITMQ_ENABLED_PLUGINS_FILE="$base/enabled_plugins" rabbitmq-plugins -q -n "$node" "$@"
    exit
    ;;
  start) ;;
  *)
    echo "node: unknown action $action (start, stop, ctl, plugins)" >&2
    exit 2
    ;;
esac

port=$3
dist=$4
config=${5:-}
run rabbitmqctl -q -n "$node" stop >/dev/null 2>&1 || true
as_root rm -rf "$base"
as_root mkdir -p "$base/mnesia" "$base/log"
# The consistent-hash exchange (partitioned queues, postage_core::Partitions) ships with
# every version's broker; it only needs enabling.
printf '[rabbitmq_consistent_hash_exchange].\n' | as_root tee "$base/enabled_plugins" >/dev/null
if [ -n "$config" ]; then
  as_root cp "$config" "$base/rabbitmq.conf"
else
  : | as_root tee "$base/rabbitmq.conf" >/dev/null
fi
deny=${POSTAGE_RABBITMQ_DENY_TRANSIENT:-}
if [ -z "$deny" ]; then
  deny=0
  [ "$version" = 4.0 ] && [ "${POSTAGE_RABBITMQ_PERMIT_DEPRECATED:-0}" != 1 ] && deny=1
fi
if [ "$deny" = 1 ] && [ "$version" != 3 ]; then
  # Set by hand (no release denies it by default, 4.3.6 included): transient
  # non-exclusive queues are refused, so postage declares the durable shape.
  echo 'deprecated_features.permit.transient_nonexcl_queues = false' |
    as_root tee -a "$base/rabbitmq.conf" >/dev/null
fi
run chown -R rabbitmq:rabbitmq "$base" 2>/dev/null || true
run env RABBITMQ_NODENAME="$node" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
  RABBITMQ_NODE_PORT="$port" RABBITMQ_DIST_PORT="$dist" \
  RABBITMQ_MNESIA_BASE="$base/mnesia" RABBITMQ_LOG_BASE="$base/log" \
  RABBITMQ_CONFIG_FILE="$base/rabbitmq.conf" RABBITMQ_ENABLED_PLUGINS_FILE="$base/enabled_plugins" \
  RABBITMQ_PID_FILE="$base/pid" \
  rabbitmq-server -detached
deadline=$((SECONDS + 60))
while [ $SECONDS -lt $deadline ]; do
  if run rabbitmqctl -q -n "$node" await_startup --timeout 2 >/dev/null 2>&1; then
    exit 0
  fi
  sleep 0.5
done
echo "node: $node did not start within 60 s; see $base/log" >&2
exit 1
