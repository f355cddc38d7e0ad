#!/usr/bin/env bash
# `make run`: a farmhand worker on the embedded broker (no server needed),
# the example task submitted to it and its result printed, then the worker
# drained and stopped. Everything lives under ./var.
set -euo pipefail
cd "$(dirname "$0")/.."
export WORKING_DIR=${WORKING_DIR:-$PWD/var}
FARMHAND=${FARMHAND:-.venv/bin/farmhand}
CONFIG=examples/config.yml
mkdir -p "$WORKING_DIR"

# As the systemd unit does at every start: task networks may not reach this host (farmhand firewall).
"$FARMHAND" --config "$CONFIG" firewall apply
"$FARMHAND" --config "$CONFIG" check
"$FARMHAND" --config "$CONFIG" worker >"$WORKING_DIR/worker.log" 2>&1 &
worker=$!
trap 'kill "$worker" 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  grep -q " ready\." "$WORKING_DIR/worker.log" 2>/dev/null && break
  kill -0 "$worker" 2>/dev/null || { cat "$WORKING_DIR/worker.log" >&2; exit 1; }
  sleep 0.5
done
echo "worker ready (log: $WORKING_DIR/worker.log); submitting examples/hello.yml"
status=0
"$FARMHAND" --config "$CONFIG" submit --wait --timeout 300 examples/hello.yml || status=$?
"$FARMHAND" --config "$CONFIG" drain --grace 30 >/dev/null
wait "$worker" || true
trap - EXIT
exit "$status"
