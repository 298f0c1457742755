#!/usr/bin/env bash
# The engine decision, measured: the same plain TCP forwarder (benches/examples/engine_proxy.rs)
# on fastedge's io_uring engine and on monoio, both rings SINGLE_ISSUER | DEFER_TASKRUN, under
# h2load keep-alive load (HTTP/1.1 through the forwarder to nginx). No TLS: what differs is the
# engine only. Prints requests per forwarder CPU-second, system calls and context switches per
# request, per round and the median.
#
# Settings: ROUNDS (5), REQUESTS (100000), CONNS (64), SERVER_CPU (0: the forwarders),
# CLIENT_CPU (1: h2load and nginx). Needs h2load (nghttp2-client), nginx, perf.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-5}
REQUESTS=${REQUESTS:-100000}
CONNS=${CONNS:-64}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
for tool in h2load nginx perf; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { echo "engines.sh needs $tool" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

echo "building the forwarder (release)..." >&2
cargo build --release --example engine_proxy -p fastedge-benches >/dev/null
proxy=$PWD/target/release/examples/engine_proxy

backend=127.0.0.1:28680
mkdir -p "$work/nginx/logs"
cat > "$work/nginx/nginx.conf" <<NGINX
daemon off; master_process off; worker_processes 1; pid $work/nginx/nginx.pid; error_log stderr error;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $work/nginx/b; proxy_temp_path $work/nginx/p;
  fastcgi_temp_path $work/nginx/f; uwsgi_temp_path $work/nginx/u; scgi_temp_path $work/nginx/s;
  keepalive_requests 1000000;
  server { listen $backend; location / { return 200 "$(head -c 1024 /dev/zero | tr '\0' x)"; } } }
NGINX
taskset -c "$CLIENT_CPU" /usr/sbin/nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" & pids+=($!)

declare -A port=([fastedge]=28681 [monoio]=28682) pid
for engine in fastedge monoio; do
  taskset -c "$SERVER_CPU" "$proxy" "$engine" "127.0.0.1:${port[$engine]}" "$backend" & pids+=($!)
  pid[$engine]=$!
done
for engine in fastedge monoio; do
  for _ in $(seq 50); do ss -ltn "sport = :${port[$engine]}" | grep -q LISTEN && break; sleep 0.1; done
done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
declare -A rate calls switches
for round in $(seq "$ROUNDS"); do
  for engine in fastedge monoio; do
    p=${pid[$engine]}
    # Warm the connections' first allocations, then measure.
    taskset -c "$CLIENT_CPU" h2load --h1 -n 2000 -c "$CONNS" -t 1 "http://127.0.0.1:${port[$engine]}/" >/dev/null
    before=$(ticks "$p")
    perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$p" -o "$work/perf" &
    perfpid=$!
    out=$(taskset -c "$CLIENT_CPU" h2load --h1 -n "$REQUESTS" -c "$CONNS" -t 1 "http://127.0.0.1:${port[$engine]}/")
    kill -INT "$perfpid"; wait "$perfpid" 2>/dev/null || true
    after=$(ticks "$p")
    ok=$(echo "$out" | awk '/^requests:/ {print $8}')
    [ "$ok" = "$REQUESTS" ] || { echo "$engine: h2load: $out" >&2; exit 1; }
    sys=$(awk -F, '/raw_syscalls/ {print $1}' "$work/perf")
    cs=$(awk -F, '/context-switches/ {print $1}' "$work/perf")
    r=$(awk -v n="$REQUESTS" -v t=$((after - before)) -v hz="$hz" 'BEGIN {printf "%d", (t > 0 ? n * hz / t : 0)}')
    c=$(awk -v s="$sys" -v n="$REQUESTS" 'BEGIN {printf "%.2f", s / n}')
    w=$(awk -v s="$cs" -v n="$REQUESTS" 'BEGIN {printf "%.3f", s / n}')
    rate[$engine]+="$r "; calls[$engine]+="$c "; switches[$engine]+="$w "
    echo "round $round $engine: $r requests per CPU-s, $c syscalls and $w context switches per request" >&2
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
echo
echo "| per forwarder CPU-second (CPU $SERVER_CPU; h2load and nginx on CPU $CLIENT_CPU) | fastedge engine | monoio | ratio |"
echo "|---|---:|---:|---:|"
f=$(echo "${rate[fastedge]}" | median); m=$(echo "${rate[monoio]}" | median)
echo "| keep-alive requests, $CONNS connections (median of $ROUNDS) | $f | $m | $(awk -v a="$f" -v b="$m" 'BEGIN {printf "%.2f×", a / b}') |"
echo "| system calls per request | $(echo "${calls[fastedge]}" | median) | $(echo "${calls[monoio]}" | median) | |"
echo "| context switches per request | $(echo "${switches[fastedge]}" | median) | $(echo "${switches[monoio]}" | median) | |"
echo "per round: fastedge ${rate[fastedge]}| monoio ${rate[monoio]}"
