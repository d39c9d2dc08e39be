#!/usr/bin/env bash
# Runs the whole local path: RabbitMQ, host-bridge (all three roles) and the
# two components, under `spin up` when spin is on PATH, else `wasmtime serve`.
# Clients reach the bridge's ingress on HTTP_ADDR, which forwards to the
# producer's runtime on PRODUCER_ADDR (loopback): the runtime's own listener
# has no read timeouts.
#
# Ctrl-C (or SIGTERM, or SIGHUP from a closed terminal) stops everything in
# order: the bridge drains first, then the components. A second Ctrl-C
# during that stops everything at once. Nothing outlives this script, even
# when it is SIGKILLed: every part has a parent-death signal.
# Expects `make build` to have run (make up does it).
set -euo pipefail
cd "$(dirname "$0")/.."

export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
HTTP_ADDR=${HTTP_ADDR:-127.0.0.1:3000}
PRODUCER_ADDR=${PRODUCER_ADDR:-127.0.0.1:3080}
WORKER_ADDR=${WORKER_ADDR:-127.0.0.1:3001}
export PUBLISH_ADDR=${PUBLISH_ADDR:-127.0.0.1:9091}
export ADMIN_ADDR=${ADMIN_ADDR:-0.0.0.0:9090}
WORK_DURATION_MS=${WORK_DURATION_MS:-5000}
WASMTIME=${WASMTIME:-wasmtime}
WASM_DIR=target/wasm32-wasip2/release
BRIDGE=${BRIDGE:-target/release/host-bridge}
# How long the second signal gives the bridge to close its connection
# before everything left is killed. Its unacked jobs go back to the queue
# either way.
HURRY_SECS=${HURRY_SECS:-3}

if command -v spin >/dev/null 2>&1; then
  runner=spin
  worker_url="http://$PRODUCER_ADDR/work"
  addrs=("$HTTP_ADDR" "$PRODUCER_ADDR" "$PUBLISH_ADDR" "$ADMIN_ADDR")
else
  runner=wasmtime
  worker_url="http://$WORKER_ADDR/"
  addrs=("$HTTP_ADDR" "$PRODUCER_ADDR" "$WORKER_ADDR" "$PUBLISH_ADDR" "$ADMIN_ADDR")
fi

# A port already taken (often by a stack left from before) would make one
# part fail after the others started: say which, and who holds it, first.
for addr in "${addrs[@]}"; do
  port=${addr##*:}
  holder=$(ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'users:(("[^"]*",pid=[0-9]*' | head -n 1 |
    sed -E 's/users:\(\("([^"]*)",pid=([0-9]*)/\1 (pid \2)/' || true)
  if [ -n "$holder" ] || ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
    echo "up: port $port is taken by ${holder:-another process}; stop it first" >&2
    exit 1
  fi
done

pids=() # the bridge first, then the components

# Starts one part in its own session (setsid), so that a terminal's Ctrl-C
# reaches only this script, which stops the parts in order; with a
# parent-death signal (setpriv --pdeathsig), so that if this script dies in
# any way the kernel sends the part SIGTERM. setpriv sets it, then execs
# setsid, which (not being a group leader) execs the part in the same
# process: the setting survives both execs.
# setpriv is util-linux (on every Debian and Ubuntu); without it the parts
# still stop in order, but would outlive a SIGKILLed runner.
if command -v setpriv >/dev/null 2>&1; then
  with_pdeathsig=(setpriv --pdeathsig TERM --)
else
  with_pdeathsig=()
  echo "up: setpriv not found: the parts would outlive a killed runner" >&2
fi
start() {
  "${with_pdeathsig[@]}" setsid "$@" &
  pids+=($!)
}

# A second signal during the ordered stop: the bridge gets its SIGTERM (it
# may have it already), the rest are killed, and the bridge too after
# HURRY_SECS.
hurry() {
  trap '' INT TERM HUP
  echo "up: second signal: stopping everything now" >&2
  kill -TERM "${pids[0]}" 2>/dev/null || true
  kill -KILL "${pids[@]:1}" 2>/dev/null || true
  for _ in $(seq $((HURRY_SECS * 10))); do
    kill -0 "${pids[0]}" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  trap - EXIT
  exit 130
}

stop() {
  trap hurry INT TERM HUP
  trap - EXIT
  if [ ${#pids[@]} -gt 0 ]; then
    echo "up: stopping (the bridge drains in-flight jobs first; Ctrl-C again to stop at once)"
    # The bridge first, so that it stops consuming and finishes its job while
    # the worker is still there to do it; then the components.
    kill -TERM "${pids[0]}" 2>/dev/null || true
    wait "${pids[0]}" 2>/dev/null || true
    kill -TERM "${pids[@]:1}" 2>/dev/null || true
    wait 2>/dev/null || true
  fi
}
# Ctrl-C, SIGTERM or SIGHUP is a requested stop: clean up and exit 0.
trap 'stop; exit 0' INT TERM HUP
trap stop EXIT

echo "up: host-bridge (ingress on $HTTP_ADDR -> producer at $PRODUCER_ADDR, publish on $PUBLISH_ADDR, admin on $ADMIN_ADDR) -> worker at $worker_url"
BRIDGE_ROLES=${BRIDGE_ROLES:-publish,consume,ingress} INGRESS_ADDR=$HTTP_ADDR \
  PRODUCER_URL="http://$PRODUCER_ADDR" WORKER_URL=$worker_url start "$BRIDGE"

if [ "$runner" = spin ]; then
  echo "up: spin up on $PRODUCER_ADDR"
  start spin up --listen "$PRODUCER_ADDR" --env WORK_DURATION_MS="$WORK_DURATION_MS"
else
  echo "up: wasmtime serve: producer on $PRODUCER_ADDR, worker on $WORKER_ADDR (spin is not on PATH)"
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
  # --max-instance-reuse-count 128: an instance serves up to 128 requests,
  # one at a time, instead of one (wasmtime's default for WASIp2), which
  # saves instantiating and dropping a store per request (issue 10's
  # profile: 12 % of the runtime's CPU). The components keep no state
  # between requests; e2e/tests/components.rs checks that under this flag.
  serve_flags=(-Scli -O pooling-allocator=n --max-concurrent-requests 256 --max-concurrent-connections 1024 --max-instance-reuse-count 128)
  start "$WASMTIME" serve "${serve_flags[@]}" --addr "$PRODUCER_ADDR" \
    --env BRIDGE_PUBLISH_URL="http://$PUBLISH_ADDR/v1/publish" \
    --env BRIDGE_OBSERVE_URL="http://$PUBLISH_ADDR/v1/observe" \
    --env BRIDGE_TIMEOUT_MS=7000 \
    "$WASM_DIR/producer.wasm"
  start "$WASMTIME" serve "${serve_flags[@]}" --addr "$WORKER_ADDR" \
    --env WORK_DURATION_MS="$WORK_DURATION_MS" \
    "$WASM_DIR/worker.wasm"
fi

echo "up: try   curl -i http://$HTTP_ADDR/generate   (Ctrl-C to stop)"
# If any part exits, stop the rest.
wait -n
echo "up: a process exited; stopping the rest" >&2
exit 1
