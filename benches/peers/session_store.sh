#!/usr/bin/env bash
# The cost of the fleet's shared session store on a resumed handshake: two `fastedge serve`
# boxes (release) on SERVER_CPU sharing a ticket secret and a redis-server on the same host,
# and benches/src/bin/session_resume.rs on CLIENT_CPU resuming TLS 1.2 sessions by ID on the
# box that made them (local cache) and on the other box (through Redis). ROUNDS runs of
# HANDSHAKES rounds each; prints each run's line (medians and p99 in µs, store/local ratio).
#
# Usage: benches/peers/session_store.sh   (needs redis-server; builds fastedge release)
#   ROUNDS=3 HANDSHAKES=2000 SERVER_CPU=0 CLIENT_CPU=1 REDIS_CPU=$CLIENT_CPU ENGINE=uring (or glommio)
set -euo pipefail
cd "$(dirname "$0")/../.."
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
ROUNDS=${ROUNDS:-3}
HANDSHAKES=${HANDSHAKES:-2000}
ENGINE=${ENGINE:-uring}
REDIS_CPU=${REDIS_CPU:-$CLIENT_CPU}
command -v redis-server >/dev/null || { echo "needs redis-server: apt-get install redis-server" >&2; exit 1; }
work=$(mktemp -d /tmp/fastedge-store-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
echo "building fastedge and the bench tools (release)..." >&2
cargo build --release -p fastedge -p fastedge-benches --bins 2>/dev/null
bin=$PWD/target/release/fastedge
redis_port=16379
taskset -c "$REDIS_CPU" redis-server --port "$redis_port" --bind 127.0.0.1 --save "" \
  --appendonly no --dir "$work" >/dev/null &
pids+=($!)
"$bin" ticket-secret "$work/secret" >/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=bench.test -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
python3 -m http.server --bind 127.0.0.1 18080 >/dev/null 2>&1 &
pids+=($!)
for box in 1 2; do
  cat > "$work/box$box.toml" <<TOML
cores = "$SERVER_CPU"
engine = "$ENGINE"
[frontend]
listen = ["127.0.0.1:1844$box"]
[tls]
cert = "$work/cert.pem"
key = "$work/key.pem"
ticket_secret_file = "$work/secret"
session_store = "redis://127.0.0.1:$redis_port"
[[backend]]
address = "127.0.0.1:18080"
TOML
  FASTEDGE_LOG=warn "$bin" serve --config "$work/box$box.toml" 2>"$work/box$box.log" &
  pids+=($!)
done
sleep 1
for _ in $(seq "$ROUNDS"); do
  taskset -c "$CLIENT_CPU" target/release/session_resume 127.0.0.1:18441 127.0.0.1:18442 "$HANDSHAKES"
done
