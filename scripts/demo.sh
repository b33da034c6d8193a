#!/usr/bin/env bash
# The main demo, end to end: start the broker if needed, start the RPC echo receiver,
# call it once (the sender prints the answer), then send `quit` and wait for it to stop.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/broker.sh
cargo build -q -p demos --bins
bin=target/debug
log=$(mktemp)
trap 'kill "$receiver" 2>/dev/null || true; rm -f "$log"' EXIT

"$bin/rpc_echo_receive" >"$log" 2>&1 &
receiver=$!
for _ in $(seq 1 100); do
  grep -q "waiting for messages" "$log" && break
  kill -0 "$receiver" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
echo "--- rpc_echo_send prints the answer:"
"$bin/rpc_echo_send"
"$bin/rpc_echo_send" --quit
wait "$receiver"
echo "--- rpc_echo_receive printed:"
cat "$log"
