#!/usr/bin/env bash
# fastedge serve beside haproxy (mode tcp, ssl, one thread), nginx (stream module, one worker)
# and hitch (one worker), same machine, same run.
#
# All terminate TLS 1.3 with the same ECDSA P-256 certificate on one core (SERVER_CPU) and
# forward to the same nginx backend; the clients and the backend run on the other core
# (CLIENT_CPU). Reported per peer:
#   - full handshakes: `openssl s_time -new` (no resumption) for DURATION seconds: handshakes,
#     and handshakes per server CPU-second (utime+stime of the server from /proc);
#   - resumed handshakes: `openssl s_time -reuse` (session resumption), the same way;
#   - memory: resident KiB per idle TLS connection with CONNS connections held open
#     (benches/src/bin/tls_hold.rs), from the server's VmRSS before and after;
#   - keep-alive requests: h2load --h1 over TLS: requests/s, and requests per server CPU-second.
# The client (OpenSSL 3.0) saturates its core long before the server does, so the per-CPU-second
# figures are the comparison; raw rates are bounded by the client.
#
# Usage: benches/peers/serve_vs_peers.sh   (as root; needs haproxy, nginx-light with
# libnginx-mod-stream, hitch, nghttp2-client, openssl; builds fastedge release)
#   DURATION=10 REQUESTS=40000 ROUNDS=3 SERVER_CPU=1 CLIENT_CPU=0 RESULTS=benches/results
# Writes RESULTS/tls.json (medians) and an SVG chart beside it.
set -euo pipefail
cd "$(dirname "$0")/../.."
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
DURATION=${DURATION:-10}
REQUESTS=${REQUESTS:-40000}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-4000}
# Every contender and the holding client need two descriptors per connection and more.
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d /tmp/fastedge-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

for tool in haproxy nginx hitch h2load openssl; do
  command -v "$tool" >/dev/null || { echo "needs $tool: apt-get install haproxy nginx-light libnginx-mod-stream hitch nghttp2-client openssl (or run make bench-peers)" >&2; exit 1; }
done
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || { echo "needs nginx's stream module: apt-get install libnginx-mod-stream" >&2; exit 1; }
cargo build --release -p fastedge -p fastedge-benches --bins >/dev/null
bin=$PWD/target/release/fastedge
chart=$PWD/target/release/bench_chart
hold=$PWD/target/release/tls_hold
RESULTS=${RESULTS:-$PWD/benches/results}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=bench.test -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" > "$work/haproxy.pem"

backend_port=18080; fastedge_port=18443; haproxy_port=18444
mkdir -p "$work/nginx/logs"
cat > "$work/nginx/nginx.conf" <<NGINX
daemon off; master_process off; worker_processes 1; pid $work/nginx/nginx.pid; error_log stderr error;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $work/nginx/b; proxy_temp_path $work/nginx/p;
  fastcgi_temp_path $work/nginx/f; uwsgi_temp_path $work/nginx/u; scgi_temp_path $work/nginx/s;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$backend_port; location / { return 200 "ok\n"; } } }
NGINX
taskset -c "$CLIENT_CPU" /usr/sbin/nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" & pids+=($!)

cat > "$work/fastedge.toml" <<TOML
cores = "$SERVER_CPU"
[frontend]
listen = ["127.0.0.1:$fastedge_port"]
[tls]
cert = "$work/cert.pem"
key = "$work/key.pem"
min_version = "1.3"
groups = ["X25519"]
[[backend]]
address = "127.0.0.1:$backend_port"
TOML
FASTEDGE_LOG=warn "$bin" serve --config "$work/fastedge.toml" & pids+=($!)
fastedge_pid=$!

cat > "$work/haproxy.cfg" <<HAP
global
  nbthread 1
  cpu-map 1/1 $SERVER_CPU
  maxconn 9000
  ssl-default-bind-options ssl-min-ver TLSv1.3
  ssl-default-bind-curves X25519
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend tls
  bind 127.0.0.1:$haproxy_port ssl crt $work/haproxy.pem
  default_backend app
backend app
  server nginx 127.0.0.1:$backend_port
HAP
taskset -c "$SERVER_CPU" haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 & pids+=($!)
haproxy_pid=$!
nginx_tls_port=18445; hitch_port=18446
mkdir -p "$work/nginx-tls/logs"
cat > "$work/nginx-tls/nginx.conf" <<NGINX
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off; master_process off; worker_processes 1; pid $work/nginx-tls/nginx.pid; error_log stderr error;
events { worker_connections 9000; }
stream { server { listen 127.0.0.1:$nginx_tls_port ssl; ssl_certificate $work/cert.pem;
  ssl_certificate_key $work/key.pem; ssl_protocols TLSv1.3; ssl_ecdh_curve X25519;
  proxy_pass 127.0.0.1:$backend_port; } }
NGINX
taskset -c "$SERVER_CPU" /usr/sbin/nginx -p "$work/nginx-tls" -c "$work/nginx-tls/nginx.conf" & pids+=($!)
nginx_tls_pid=$!

taskset -c "$SERVER_CPU" hitch --frontend="[127.0.0.1]:$hitch_port" --backend="[127.0.0.1]:$backend_port" \
  --workers=1 --tls-protos=TLSv1.3 --user=nobody "$work/haproxy.pem" >/dev/null 2>&1 & pids+=($!)
hitch_pid=$!
sleep 1
# hitch's one worker is a child of its manager: measure the worker.
hitch_worker=$(pgrep -P "$hitch_pid" | head -1 || true)
hitch_worker=${hitch_worker:-$hitch_pid}

cpu_seconds() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }

per_cpu() { awk -v n="$1" -v c="$2" 'BEGIN { if (c > 0) printf "%d", n / c; else print 0 }'; }
diff() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

measure() { # name port pid
  local name=$1 port=$2 pid=$3 before after out n cpu rps ok
  before=$(cpu_seconds "$pid")
  out=$(taskset -c "$CLIENT_CPU" openssl s_time -connect "127.0.0.1:$port" -new -time "$DURATION" 2>/dev/null || true)
  after=$(cpu_seconds "$pid")
  n=$(echo "$out" | awk '/connections in [0-9.]+s/ {print $1; exit}')
  cpu=$(diff "$before" "$after")
  printf '%-9s full handshakes: %6s in %ss, server CPU %ss -> %s handshakes per server CPU-s\n' \
    "$name" "${n:-0}" "$DURATION" "$cpu" "$(per_cpu "${n:-0}" "$cpu")"
  before=$(cpu_seconds "$pid")
  out=$(taskset -c "$CLIENT_CPU" openssl s_time -connect "127.0.0.1:$port" -reuse -time "$DURATION" 2>/dev/null || true)
  after=$(cpu_seconds "$pid")
  n=$(echo "$out" | awk '/connections in [0-9.]+s/ {print $1; exit}')
  cpu=$(diff "$before" "$after")
  printf '%-9s resumed handshakes: %6s in %ss, server CPU %ss -> %s handshakes per server CPU-s\n' \
    "$name" "${n:-0}" "$DURATION" "$cpu" "$(per_cpu "${n:-0}" "$cpu")"
  before=$(cpu_seconds "$pid")
  out=$(taskset -c "$CLIENT_CPU" h2load --h1 -n "$REQUESTS" -c 8 -t 1 "https://127.0.0.1:$port/" 2>/dev/null || true)
  after=$(cpu_seconds "$pid")
  rps=$(echo "$out" | awk '/^finished in/ {print $4; exit}')
  ok=$(echo "$out" | awk '/^requests:/ {print $8; exit}')
  cpu=$(diff "$before" "$after")
  printf '%-9s keep-alive: %s req/s (%s succeeded), server CPU %ss -> %s requests per server CPU-s\n' \
    "$name" "${rps:-?}" "${ok:-0}" "$cpu" "$(per_cpu "${ok:-0}" "$cpu")"
}

echo "server core $SERVER_CPU; clients and nginx backend on core $CLIENT_CPU; TLS 1.3, X25519, ECDSA P-256; $ROUNDS rounds"
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A hs rs ka port_of pid_of
port_of=([fastedge]=$fastedge_port [haproxy]=$haproxy_port [nginx]=$nginx_tls_port [hitch]=$hitch_port)
pid_of=([fastedge]=$fastedge_pid [haproxy]=$haproxy_pid [nginx]=$nginx_tls_pid [hitch]=$hitch_worker)
contenders="fastedge haproxy nginx hitch"
for r in $(seq "$ROUNDS"); do
  for contender in $contenders; do
    port=${port_of[$contender]}; pid=${pid_of[$contender]}
    lines=$(measure "$contender" "$port" "$pid")
    echo "$lines"
    after_arrow() { awk -v pat="$1" '$0 ~ pat { for (i = 1; i <= NF; i++) if ($i == "->") print $(i + 1) }'; }
    hs[$contender]+="$(echo "$lines" | after_arrow 'full handshakes' | head -1) "
    rs[$contender]+="$(echo "$lines" | after_arrow 'resumed handshakes' | head -1) "
    ka[$contender]+="$(echo "$lines" | after_arrow 'keep-alive' | head -1) "
  done
done

# Resident memory per idle TLS connection: CONNS connections held open by tls_hold (one
# process on the client core), the contender's RSS before and after.
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
declare -A mem
for contender in $contenders; do
  port=${port_of[$contender]}; pid=${pid_of[$contender]}
  before=$(rss_kib "$pid")
  mkfifo "$work/hold-$contender"
  taskset -c "$CLIENT_CPU" "$hold" "127.0.0.1:$port" "$CONNS" < "$work/hold-$contender" > "$work/hold-$contender.out" 2>&1 & holder=$!
  exec 9>"$work/hold-$contender"
  for _ in $(seq 600); do grep -q ready "$work/hold-$contender.out" && break; kill -0 "$holder" 2>/dev/null || break; sleep 0.1; done
  sleep 1
  after=$(rss_kib "$pid")
  exec 9>&-
  wait "$holder" 2>/dev/null || true
  if grep -q ready "$work/hold-$contender.out"; then
    mem[$contender]=$(awk -v a="$after" -v b="$before" -v n="$CONNS" 'BEGIN { printf "%.1f", (a - b) / n }')
  else
    mem[$contender]=0
    echo "$contender: could not hold $CONNS connections: $(tail -1 "$work/hold-$contender.out")" >&2
  fi
  printf '%-9s memory: RSS %s KiB -> %s KiB with %s idle TLS connections: %s KiB per connection\n' \
    "$contender" "$before" "$after" "$CONNS" "${mem[$contender]}"
  sleep 1
done

# Medians, machine-readable results and a chart (benches/src/bin/bench_chart.rs).
mkdir -p "$RESULTS"
out=$RESULTS/tls.json
hs_json=(); rs_json=(); ka_json=(); mem_json=()
for contender in $contenders; do
  h=$(echo ${hs[$contender]} | tr ' ' '\n' | median); k=$(echo ${ka[$contender]} | tr ' ' '\n' | median)
  r=$(echo ${rs[$contender]} | tr ' ' '\n' | median)
  echo "median $contender: full handshakes per server CPU-s ${h:-0}, resumed ${r:-0}, keep-alive requests per server CPU-s ${k:-0}"
  hs_json+=("\"$contender\": ${h:-0}"); rs_json+=("\"$contender\": ${r:-0}"); ka_json+=("\"$contender\": ${k:-0}")
  mem_json+=("\"$contender\": ${mem[$contender]:-0}")
done
join() { local IFS=,; echo "$*"; }
cat > "$out" <<JSON
{"title": "TLS 1.3 termination, X25519 + ECDSA P-256, one server core (median of $ROUNDS)",
 "machine": "$(nproc) CPUs, $(uname -r); server on CPU $SERVER_CPU, clients (openssl s_time, h2load) and nginx backend on CPU $CLIENT_CPU",
 "metrics": [
  {"name": "full handshakes per server CPU-s", "unit": "handshakes", "higher_is_better": true, "values": {$(join "${hs_json[@]}")}},
  {"name": "resumed handshakes per server CPU-s", "unit": "handshakes", "higher_is_better": true, "values": {$(join "${rs_json[@]}")}},
  {"name": "keep-alive requests per server CPU-s", "unit": "requests", "higher_is_better": true, "values": {$(join "${ka_json[@]}")}},
  {"name": "memory per idle TLS connection ($CONNS held)", "unit": "KiB", "higher_is_better": false, "values": {$(join "${mem_json[@]}")}}
 ]}
JSON
"$chart" "$out" "${out%.json}.svg" && echo "results: $out, chart: ${out%.json}.svg"
