#!/usr/bin/env bash
# The screenshot README shows (docs/dashboard.png, or the path given): a small fleet of
# demos/group_app GenericApplications serving metrics, in a virtual host of its own on the
# local RabbitMQ 3.10 (scripts/broker.sh), some traffic to them, `postage dashboard` on
# loopback, and headless Chromium's screenshot of its page. Everything it started is
# stopped and the virtual host deleted at the end.
#
#   scripts/dashboard-shot.sh [OUT.png]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/dashboard.png}
scripts/broker.sh >/dev/null
scripts/chromium.sh
cargo build -q --locked -p demos -p postage-app --bins
bin=$PWD/target/debug
node=${RABBITMQ_NODENAME:-rabbit@localhost}
vhost=postage-dashboard-shot-$$
port=${POSTAGE_DASHBOARD_SHOT_PORT:-18069}
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rabbitmqctl -q -n "$node" delete_vhost "$vhost" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
rabbitmqctl -q -n "$node" add_vhost "$vhost" >/dev/null
rabbitmqctl -q -n "$node" set_permissions -p "$vhost" "${POSTAGE_USER:-guest}" '.*' '.*' '.*' >/dev/null
export POSTAGE_VHOST=$vhost POSTAGE_METRICS=127.0.0.1:0

# The fleet: a billing component twice (a group of two) and an inventory component.
start() {
  "$bin/group_app" "$@" >"$work/app-${#pids[@]}.log" 2>&1 &
  pids+=($!)
}
start --name billing --group invoices
start --name billing --group invoices
start --name inventory --group stock --group audit
"$bin/postage" dashboard --listen "127.0.0.1:$port" >"$work/dashboard.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  grep -q "postage dashboard on" "$work/dashboard.log" && break
  sleep 0.1
done

# Some traffic for the rates and their charts: a few seconds of sends to each.
for round in $(seq 1 12); do
  for _ in 1 2 3; do
    "$bin/postage" send billing hello --params "\"invoice $round\"" >/dev/null &
  done
  "$bin/postage" send inventory hello --params "\"item $round\"" >/dev/null &
  wait_for=$(jobs -p | grep -v -x -F "$(printf '%s\n' "${pids[@]}")" || true)
  for pid in $wait_for; do wait "$pid" 2>/dev/null || true; done
  sleep 0.3
done

mkdir -p "$(dirname "$out")"
chromium --headless --no-sandbox --disable-background-networking --disable-dev-shm-usage \
  --hide-scrollbars --window-size=1500,420 --virtual-time-budget=3000 \
  --screenshot="$PWD/$out" "http://127.0.0.1:$port/" >/dev/null 2>&1
echo "dashboard-shot: wrote $out" >&2
