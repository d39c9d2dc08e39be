#!/usr/bin/env bash
# Runs the whole local path: RabbitMQ, host-bridge (both roles) and the two
# components, under `spin up` when spin is on PATH, else `wasmtime serve`.
# Ctrl-C stops everything: the bridge drains first, nothing is left running.
# Expects `make build` to have run (make up does it).
set -euo pipefail
cd "$(dirname "$0")/.."

export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
HTTP_ADDR=${HTTP_ADDR:-127.0.0.1:3000}
WORKER_ADDR=${WORKER_ADDR:-127.0.0.1:3001}
WORK_DURATION_MS=${WORK_DURATION_MS:-5000}
WASMTIME=${WASMTIME:-wasmtime}
WASM_DIR=target/wasm32-wasip2/release
BRIDGE=target/release/host-bridge

pids=()
stop() {
  trap - INT TERM EXIT
  if [ ${#pids[@]} -gt 0 ]; then
    echo "up: stopping (the bridge drains in-flight jobs first)"
    # The bridge first, so that it stops consuming and finishes its job while
    # the worker is still there to do it; then the components.
    kill -TERM "${pids[0]}" 2>/dev/null || true
    wait "${pids[0]}" 2>/dev/null || true
    kill -TERM "${pids[@]:1}" 2>/dev/null || true
    wait 2>/dev/null || true
  fi
}
# Ctrl-C or SIGTERM is a requested stop: clean up and exit 0.
trap 'stop; exit 0' INT TERM
trap stop EXIT

if command -v spin >/dev/null 2>&1; then
  runner=spin
  worker_url="http://$HTTP_ADDR/work"
else
  runner=wasmtime
  worker_url="http://$WORKER_ADDR/"
fi

echo "up: host-bridge (publish on 127.0.0.1:9091, admin on :9090) -> worker at $worker_url"
# Each part runs in its own session (setsid), so that a terminal's Ctrl-C
# reaches only this script, which then stops them in order.
WORKER_URL=$worker_url setsid "$BRIDGE" &
pids+=($!)

if [ "$runner" = spin ]; then
  echo "up: spin up on $HTTP_ADDR"
  setsid spin up --listen "$HTTP_ADDR" --env WORK_DURATION_MS="$WORK_DURATION_MS" &
  pids+=($!)
else
  echo "up: wasmtime serve: producer on $HTTP_ADDR, worker on $WORKER_ADDR (spin is not on PATH)"
  # The same environment spin.toml gives the components. -Scli provides
  # the wasi:cli imports (environment, stderr) that plain proxies lack.
  # -O pooling-allocator=n: the pooling allocator's fixed 1,000 instances
  # turn overload into the runtime's own text/html 500s (e2e/tests/stress.rs
  # saw 1,043 of 2,000 at once, none of them queued). On demand, overload
  # becomes latency, and the bridge's in-flight cap (MAX_PUBLISHES_IN_FLIGHT)
  # answers 503 JSON with Retry-After.
  # --max-concurrent-requests 256: guests at once, each an instance with its
  # own memory: the runtime's memory bound (wasmtime's default is 1,000).
  # More requests wait for a turn, on at most --max-concurrent-connections
  # 1024 connections; past those the kernel's backlog holds them.
  serve_flags=(-Scli -O pooling-allocator=n --max-concurrent-requests 256 --max-concurrent-connections 1024)
  setsid "$WASMTIME" serve "${serve_flags[@]}" --addr "$HTTP_ADDR" \
    --env BRIDGE_PUBLISH_URL=http://127.0.0.1:9091/v1/publish \
    --env BRIDGE_OBSERVE_URL=http://127.0.0.1:9091/v1/observe \
    --env BRIDGE_TIMEOUT_MS=7000 \
    "$WASM_DIR/producer.wasm" &
  pids+=($!)
  setsid "$WASMTIME" serve "${serve_flags[@]}" --addr "$WORKER_ADDR" \
    --env WORK_DURATION_MS="$WORK_DURATION_MS" \
    "$WASM_DIR/worker.wasm" &
  pids+=($!)
fi

echo "up: try   curl -i http://$HTTP_ADDR/generate   (Ctrl-C to stop)"
# If any part exits, stop the rest.
wait -n
echo "up: a process exited; stopping the rest" >&2
exit 1
