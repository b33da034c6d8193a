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

# Traffic for the rates and their charts, going on while the page is shot: sends to
# the billing pair (round robin between them) and to the inventory component.
(
  round=0
  while true; do
    round=$((round + 1))
    "$bin/postage" send billing/rr hello --params "\"invoice $round\"" >/dev/null 2>&1 || true
    "$bin/postage" send billing/rr hello --params "\"invoice $round\"" >/dev/null 2>&1 || true
    if [ $((round % 3)) = 0 ]; then
      "$bin/postage" send inventory hello --params "\"item $round\"" >/dev/null 2>&1 || true
    fi
  done
) &
pids+=($!)
sleep 12

mkdir -p "$(dirname "$out")"
timeout -k 5 60 chromium --headless --no-sandbox --disable-background-networking --disable-dev-shm-usage \
  --hide-scrollbars --window-size=1700,640 --timeout=5000 \
  --screenshot="$PWD/$out" "http://127.0.0.1:$port/" >/dev/null 2>&1
echo "dashboard-shot: wrote $out" >&2
