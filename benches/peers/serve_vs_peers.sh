#!/usr/bin/env bash
# fastedge serve beside haproxy (mode tcp, ssl, one thread), nginx (stream module, one worker)
# and hitch (one worker), same machine, same run.
#
# All terminate TLS 1.3 (X25519) with the same certificates on one core (SERVER_CPU) and forward
# to the same nginx backend (a static 1 KiB answer, and a 100 MiB file for bulk); the clients and
# the backend run on the other core (CLIENT_CPU). Server CPU time is the server's utime+stime
# from /proc. Every peer is told to prefer TLS_AES_128_GCM_SHA256, as fastedge does by
# following the client. Measured per contender, ROUNDS times in turn (medians reported):
#   - full handshakes (ECDSA P-256, and RSA-2048): benches/src/bin/tls_flood.rs, FLOOD
#     connections in flight (a BoringSSL client, cheap enough for one core to keep a server
#     core busy): handshakes per server CPU-second, and per second;
#   - resumed handshakes: `tls_flood --resume` (FLOOD in flight, each offering the session of
#     one first handshake) and `openssl s_time -reuse` (one at a time, the server mostly idle
#     and woken for each), per server CPU-second;
#   - keep-alive requests: h2load --h1, 64 connections, per server CPU-second and per second;
#   - bulk: a 100 MiB body through curl with AES-128-GCM, then ChaCha20-Poly1305: MB per server
#     CPU-second;
#   - latency: wrk --latency with 1 and with 8 keep-alive connections: p50 and p99 in µs;
# and once, first (after a warm-up of WARMUP connections, before any load): resident memory per
# idle TLS connection with CONNS held open (benches/src/bin/tls_hold.rs), from the server's
# VmRSS before and after; and `openssl speed`
# on the server core for the same primitives, the physical ceiling (OpenSSL 3.0's figures).
#
# Usage: benches/peers/serve_vs_peers.sh   (as root; needs haproxy, nginx-light with
# libnginx-mod-stream, hitch, nghttp2-client, wrk, curl, openssl; builds fastedge release)
#   DURATION=5 REQUESTS=100000 ROUNDS=3 SERVER_CPU=0 CLIENT_CPU=1 FLOOD=16 CONNS=9000 WARMUP=200
#   RESULTS=benches/results
# Writes RESULTS/tls.json (medians) and an SVG chart beside it. A progress bar goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
DURATION=${DURATION:-5}
REQUESTS=${REQUESTS:-100000}
ROUNDS=${ROUNDS:-3}
FLOOD=${FLOOD:-16}
# The hard open-file limit here is 20,000 per process; a proxy needs two per connection.
CONNS=${CONNS:-9000}
WARMUP=${WARMUP:-200}
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d /tmp/fastedge-bench.XXXXXX)
pids=()
cleanup() {
  exec 9>&- # the holding client's stdin: it exits on EOF
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in haproxy nginx hitch h2load wrk curl openssl; do
  command -v "$tool" >/dev/null || { echo "needs $tool: apt-get install haproxy nginx-light libnginx-mod-stream hitch nghttp2-client wrk curl openssl (or run make bench-peers)" >&2; exit 1; }
done
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || { echo "needs nginx's stream module: apt-get install libnginx-mod-stream" >&2; exit 1; }
echo "building fastedge and the bench tools (release)..." >&2
cargo build --release -p fastedge -p fastedge-benches --bins >/dev/null
bin=$PWD/target/release/fastedge
chart=$PWD/target/release/bench_chart
hold=$PWD/target/release/tls_hold
flood=$PWD/target/release/tls_flood
RESULTS=${RESULTS:-$PWD/benches/results}

# Progress bar on stderr: progress DONE TOTAL WHAT.
progress() {
  local done=$1 total=$2 what=$3 width=30 filled
  filled=$(( done * width / total ))
  if [ -t 2 ]; then
    printf '\r[%-*s] %3d/%d %-50.50s' "$width" "$(printf '%*s' "$filled" '' | tr ' ' '#')" "$done" "$total" "$what" >&2
    [ "$done" -lt "$total" ] || echo >&2
  else
    printf '[%d/%d] %s\n' "$done" "$total" "$what" >&2
  fi
}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=bench.test -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 1 \
  -subj /CN=bench.test -keyout "$work/rsa-key.pem" -out "$work/rsa-cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" > "$work/ec.pem"
cat "$work/rsa-cert.pem" "$work/rsa-key.pem" > "$work/rsa.pem"
head -c $((100 * 1024 * 1024)) /dev/urandom > "$work/big.bin"
suites=TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256

backend_port=18080
declare -A port_of rsa_port_of pid_of rsa_pid_of
port_of=([fastedge]=18443 [fastedge-glommio]=18447 [haproxy]=18444 [nginx]=18445 [hitch]=18446)
rsa_port_of=([fastedge]=18453 [fastedge-glommio]=18457 [haproxy]=18454 [nginx]=18455 [hitch]=18456)
# fastedge on its io_uring engine (the default), and on glommio (`engine = "glommio"`).
contenders=${CONTENDERS:-"fastedge fastedge-glommio haproxy nginx hitch"}
for c in $contenders; do
  if [ -z "${port_of[$c]:-}" ]; then
    echo "CONTENDERS: unknown contender '$c' (known: ${!port_of[*]})" >&2
    exit 2
  fi
done
ncontenders=$(echo $contenders | wc -w)

mkdir -p "$work/nginx/logs"
cat > "$work/nginx/nginx.conf" <<NGINX
daemon off; master_process off; worker_processes 1; pid $work/nginx/nginx.pid; error_log stderr error;
worker_rlimit_nofile 20000;
events { worker_connections 19000; }
http { access_log off; client_body_temp_path $work/nginx/b; proxy_temp_path $work/nginx/p;
  fastcgi_temp_path $work/nginx/f; uwsgi_temp_path $work/nginx/u; scgi_temp_path $work/nginx/s;
  keepalive_requests 1000000; sendfile on;
  server { listen 127.0.0.1:$backend_port;
    location = /big { alias $work/big.bin; default_type application/octet-stream; }
    location / { return 200 "$(head -c 1024 /dev/zero | tr '\0' x)"; } } }
NGINX
taskset -c "$CLIENT_CPU" /usr/sbin/nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" & pids+=($!)

for variant in fastedge fastedge-glommio; do
  case " $contenders " in *" $variant "*) ;; *) continue ;; esac
  engine=uring; [ $variant = fastedge-glommio ] && engine=glommio
  for kind in ec rsa; do
    if [ $kind = ec ]; then port=${port_of[$variant]}; cert=cert.pem; key=key.pem
    else port=${rsa_port_of[$variant]}; cert=rsa-cert.pem; key=rsa-key.pem; fi
    cat > "$work/$variant-$kind.toml" <<TOML
cores = "$SERVER_CPU"
engine = "$engine"
[frontend]
listen = ["127.0.0.1:$port"]
[tls]
cert = "$work/$cert"
key = "$work/$key"
min_version = "1.3"
groups = ["X25519"]
[[backend]]
address = "127.0.0.1:$backend_port"
TOML
    FASTEDGE_LOG=warn "$bin" serve --config "$work/$variant-$kind.toml" & pids+=($!)
    if [ $kind = ec ]; then pid_of[$variant]=$!; else rsa_pid_of[$variant]=$!; fi
  done
done

cat > "$work/haproxy.cfg" <<HAP
global
  nbthread 1
  cpu-map 1/1 $SERVER_CPU
  maxconn 9500
  ssl-default-bind-options ssl-min-ver TLSv1.3
  ssl-default-bind-curves X25519
  ssl-default-bind-ciphersuites $suites
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend tls
  bind 127.0.0.1:${port_of[haproxy]} ssl crt $work/ec.pem
  bind 127.0.0.1:${rsa_port_of[haproxy]} ssl crt $work/rsa.pem
  default_backend app
backend app
  server nginx 127.0.0.1:$backend_port
HAP
taskset -c "$SERVER_CPU" haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 & pids+=($!)
pid_of[haproxy]=$!; rsa_pid_of[haproxy]=$!

mkdir -p "$work/nginx-tls/logs"
cat > "$work/nginx-tls/nginx.conf" <<NGINX
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off; master_process off; worker_processes 1; pid $work/nginx-tls/nginx.pid; error_log stderr error;
worker_rlimit_nofile 20000;
events { worker_connections 19500; }
stream {
  ssl_protocols TLSv1.3; ssl_ecdh_curve X25519; ssl_conf_command Ciphersuites $suites;
  server { listen 127.0.0.1:${port_of[nginx]} ssl; ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem; proxy_pass 127.0.0.1:$backend_port; }
  server { listen 127.0.0.1:${rsa_port_of[nginx]} ssl; ssl_certificate $work/rsa-cert.pem;
    ssl_certificate_key $work/rsa-key.pem; proxy_pass 127.0.0.1:$backend_port; } }
NGINX
taskset -c "$SERVER_CPU" /usr/sbin/nginx -p "$work/nginx-tls" -c "$work/nginx-tls/nginx.conf" & pids+=($!)
pid_of[nginx]=$!; rsa_pid_of[nginx]=$!

cat > "$work/hitch.conf" <<HITCH
frontend = "[127.0.0.1]:${port_of[hitch]}"
frontend = {
  host = "127.0.0.1"
  port = "${rsa_port_of[hitch]}"
  pem-file = "$work/rsa.pem"
}
backend = "[127.0.0.1]:$backend_port"
pem-file = "$work/ec.pem"
workers = 1
tls-protos = TLSv1.3
ciphersuites = "$suites"
user = "nobody"
HITCH
taskset -c "$SERVER_CPU" hitch --config="$work/hitch.conf" >"$work/hitch.log" 2>&1 & pids+=($!)
hitch_pid=$!
sleep 1
# hitch's worker is a child of its manager, beside other helpers (OCSP): CPU time and memory
# are summed over the manager and all its children (only differences are reported).
hitch_children=$(pgrep -P "$hitch_pid" | tr '\n' ' ' || true)
[ -n "$hitch_children" ] || { echo "hitch did not start: $(cat "$work/hitch.log")" >&2; exit 1; }
pid_of[hitch]="$hitch_pid $hitch_children"; rsa_pid_of[hitch]=${pid_of[hitch]}
for c in $contenders; do
  for p in "${port_of[$c]}" "${rsa_port_of[$c]}"; do
    for _ in $(seq 50); do ss -ltn "sport = :$p" | grep -q LISTEN && break; sleep 0.1; done
    ss -ltn "sport = :$p" | grep -q LISTEN || { echo "$c is not listening on $p" >&2; exit 1; }
  done
done

# Rescheduling interrupts (IPIs) taken by the server core so far.
res_interrupts() { awk -v col=$((SERVER_CPU + 2)) '$1 == "RES:" {print $col}' /proc/interrupts; }
# CPU-seconds (utime + stime) of the processes listed in $1.
cpu_seconds() { local p; for p in $1; do cat "/proc/$p/stat"; done | awk '{s += $14 + $15} END {print s / 100}'; }
per_cpu() { awk -v n="$1" -v c="$2" 'BEGIN { if (c > 0) printf "%d", n / c; else print 0 }'; }
# measured PID COMMAND...: runs COMMAND on the client core; OUT gets its output, CPU the server
# CPU-seconds used meanwhile.
measured() {
  local pid=$1 before after; shift
  before=$(cpu_seconds "$pid")
  OUT=$(taskset -c "$CLIENT_CPU" "$@" 2>&1 || true)
  after=$(cpu_seconds "$pid")
  CPU=$(awk -v a="$before" -v b="$after" 'BEGIN { printf "%.2f", b - a }')
}
# wrk's latency (50% 68.00us / 1.20ms / 1.00s) in µs.
wrk_us() { awk -v p="$1" '$1 == p { v = $2; m = 1; if (v ~ /ms$/) m = 1000; else if (v ~ /us$/) m = 1; else if (v ~ /s$/) m = 1000000; sub(/[a-z]+$/, "", v); printf "%.0f", v * m; exit }'; }

declare -A result
record() { result[$1,$2]+="$3 "; } # metric contender value

measure_round() { # contender
  local c=$1 port=${port_of[$1]} pid=${pid_of[$1]} n bytes i missed
  measured "$pid" "$flood" "127.0.0.1:$port" "$DURATION" "$FLOOD"
  n=$(echo "$OUT" | awk '/^handshakes/ {print $2; exit}')
  printf '%-9s full handshakes P-256: %s in %ss (%s), server CPU %ss -> %s per server CPU-s\n' \
    "$c" "${n:-0}" "$DURATION" "$(echo "$OUT" | grep -o 'cipher.*' | head -1)" "$CPU" "$(per_cpu "${n:-0}" "$CPU")"
  record hs "$c" "$(per_cpu "${n:-0}" "$CPU")"; record hs_rate "$c" "$(per_cpu "${n:-0}" "$DURATION")"
  measured "${rsa_pid_of[$c]}" "$flood" "127.0.0.1:${rsa_port_of[$c]}" "$DURATION" "$FLOOD"
  n=$(echo "$OUT" | awk '/^handshakes/ {print $2; exit}')
  printf '%-9s full handshakes RSA-2048: %s in %ss, server CPU %ss -> %s per server CPU-s\n' \
    "$c" "${n:-0}" "$DURATION" "$CPU" "$(per_cpu "${n:-0}" "$CPU")"
  record hs_rsa "$c" "$(per_cpu "${n:-0}" "$CPU")"
  measured "$pid" "$flood" --resume "127.0.0.1:$port" "$DURATION" "$FLOOD"
  n=$(echo "$OUT" | awk '/^handshakes/ {print $2; exit}')
  missed=$(echo "$OUT" | awk '/^handshakes/ {print $6; exit}')
  printf '%-9s resumed handshakes: %s in %ss (%s not resumed), server CPU %ss -> %s per server CPU-s\n' \
    "$c" "${n:-0}" "$DURATION" "${missed:-?}" "$CPU" "$(per_cpu "${n:-0}" "$CPU")"
  [ -n "$n" ] || echo "  WARNING: $c: tls_flood --resume failed: $OUT" >&2
  [ "${missed:-0}" = 0 ] || echo "  WARNING: $c did not resume $missed handshakes: its server CPU includes full handshakes" >&2
  record rs "$c" "$(per_cpu "${n:-0}" "$CPU")"
  measured "$pid" openssl s_time -connect "127.0.0.1:$port" -reuse -time "$DURATION" -ciphersuites TLS_AES_128_GCM_SHA256
  n=$(echo "$OUT" | awk '/connections in [0-9.]+s/ {print $1; exit}')
  printf '%-9s resumed handshakes one at a time (s_time): %s in %ss, server CPU %ss -> %s per server CPU-s\n' \
    "$c" "${n:-0}" "$DURATION" "$CPU" "$(per_cpu "${n:-0}" "$CPU")"
  record rs_one "$c" "$(per_cpu "${n:-0}" "$CPU")"
  # Rescheduling interrupts on the server core and the server's system calls, per request.
  local res_before res_after syscalls
  res_before=$(res_interrupts)
  perf stat -x, -e raw_syscalls:sys_enter -o "$work/perf-$c.txt" -p "$(echo $pid | tr ' ' ',')" 2>/dev/null & local perf_pid=$!
  measured "$pid" h2load --h1 -n "$REQUESTS" -c 64 -t 1 "https://127.0.0.1:$port/"
  kill -INT "$perf_pid" 2>/dev/null || true; wait "$perf_pid" 2>/dev/null || true
  res_after=$(res_interrupts)
  syscalls=$(awk -F, '/raw_syscalls:sys_enter/ {print $1; exit}' "$work/perf-$c.txt" 2>/dev/null)
  n=$(echo "$OUT" | awk '/^requests:/ {print $8; exit}')
  printf '%-9s keep-alive (64 connections): %s req/s (%s succeeded), server CPU %ss -> %s per server CPU-s\n' \
    "$c" "$(echo "$OUT" | awk '/^finished in/ {print $4; exit}')" "${n:-0}" "$CPU" "$(per_cpu "${n:-0}" "$CPU")"
  record ka "$c" "$(per_cpu "${n:-0}" "$CPU")"
  record ka_res "$c" "$(awk -v a="$res_before" -v b="$res_after" -v n="${n:-0}" 'BEGIN { if (n > 0) printf "%.4f", (b - a) / n; else print 0 }')"
  record ka_sys "$c" "$(awk -v s="${syscalls:-0}" -v n="${n:-0}" 'BEGIN { if (n > 0 && s ~ /^[0-9]+$/) printf "%.2f", s / n; else print 0 }')"
  printf '%-9s keep-alive: %s rescheduling interrupts on CPU %s, %s server system calls\n' \
    "$c" "$((res_after - res_before))" "$SERVER_CPU" "${syscalls:-?}"
  for cipher in TLS_AES_128_GCM_SHA256 TLS_CHACHA20_POLY1305_SHA256; do
    measured "$pid" bash -c "for i in 1 2 3; do curl -sk --tls13-ciphers $cipher -o /dev/null -w '%{size_download}\n' https://127.0.0.1:$port/big; done"
    bytes=$(echo "$OUT" | awk '{s += $1} END {print s + 0}')
    printf '%-9s bulk %s: %s MB, server CPU %ss -> %s MB per server CPU-s\n' \
      "$c" "$cipher" "$((bytes / 1000000))" "$CPU" "$(per_cpu "$((bytes / 1000000))" "$CPU")"
    [ "$bytes" -eq $((3 * 100 * 1024 * 1024)) ] || echo "$c: bulk $cipher moved $bytes bytes, not 3 x 100 MiB" >&2
    record "bulk_$cipher" "$c" "$(per_cpu "$((bytes / 1000000))" "$CPU")"
  done
  for clients in 1 8 64; do
    measured "$pid" wrk -t 1 -c "$clients" -d "${DURATION}s" --latency "https://127.0.0.1:$port/"
    printf '%-9s latency with %s clients: p50 %s µs, p99 %s µs (%s)\n' "$c" "$clients" \
      "$(echo "$OUT" | wrk_us 50%)" "$(echo "$OUT" | wrk_us 99%)" "$(echo "$OUT" | awk '/Requests\/sec/ {print $2 " req/s"}')"
    record "p50_$clients" "$c" "$(echo "$OUT" | wrk_us 50%)"
    record "p99_$clients" "$c" "$(echo "$OUT" | wrk_us 99%)"
  done
}

# The physical ceiling: OpenSSL 3.0 on the server core.
speed_of() { awk -v what="$1" '$0 ~ what { print $0 }'; }
progress 0 $((ROUNDS * ncontenders + ncontenders + 1)) "openssl speed on CPU $SERVER_CPU"
sig=$(taskset -c "$SERVER_CPU" openssl speed -seconds 2 ecdsap256 2>/dev/null | awk '/256 bits ecdsa \(nistp256\)/ {print $(NF-1); exit}')
rsa=$(taskset -c "$SERVER_CPU" openssl speed -seconds 2 rsa2048 2>/dev/null | awk '/^rsa 2048 bits/ {print $(NF-1); exit}')
x25519=$(taskset -c "$SERVER_CPU" openssl speed -seconds 2 ecdhx25519 2>/dev/null | awk '/253 bits ecdh \(X25519\)/ {print $NF; exit}')
aes=$(taskset -c "$SERVER_CPU" openssl speed -seconds 2 -bytes 16384 -evp aes-128-gcm 2>/dev/null | awk '/^AES-128-GCM/ {sub(/k$/, "", $NF); printf "%.0f", $NF * 1000 / 1e6; exit}')
chacha=$(taskset -c "$SERVER_CPU" openssl speed -seconds 2 -bytes 16384 -evp chacha20-poly1305 2>/dev/null | awk '/^ChaCha20-Poly1305/ {sub(/k$/, "", $NF); printf "%.0f", $NF * 1000 / 1e6; exit}')
ceiling=$(awk -v s="$sig" -v x="$x25519" 'BEGIN { if (s > 0 && x > 0) printf "%d", 1 / (1 / s + 1 / x); else print 0 }')
ceiling_rsa=$(awk -v s="$rsa" -v x="$x25519" 'BEGIN { if (s > 0 && x > 0) printf "%d", 1 / (1 / s + 1 / x); else print 0 }')
echo "ceiling on CPU $SERVER_CPU (openssl speed): ECDSA P-256 sign ${sig:-?}/s, RSA-2048 sign ${rsa:-?}/s, X25519 ${x25519:-?}/s -> ${ceiling} P-256 handshakes/s, ${ceiling_rsa} RSA; AES-128-GCM ${aes:-?} MB/s, ChaCha20-Poly1305 ${chacha:-?} MB/s (16 KiB)"

step=1
# Resident memory per idle TLS connection: CONNS connections held open by tls_hold (one
# process on the client core), the contender's RSS before and after. Measured first, on
# contenders that served only a warm-up of WARMUP connections: after the load rounds, heap
# they freed (buffers of bulk transfers, of 64 busy connections) would hold the new
# connections without growing RSS, and the figure would come out low.
rss_kib() { local p; for p in $1; do cat "/proc/$p/status"; done | awk '/^VmRSS:/ {s += $2} END {print s}'; }
for contender in $contenders; do
  progress "$step" $((ROUNDS * ncontenders + ncontenders + 1)) "memory: $contender holding $CONNS connections"
  step=$((step + 1))
  port=${port_of[$contender]}; pid=${pid_of[$contender]}
  taskset -c "$CLIENT_CPU" "$hold" "127.0.0.1:$port" "$WARMUP" < /dev/null > /dev/null 2>&1 || true
  sleep 0.5
  before=$(rss_kib "$pid")
  mkfifo "$work/hold-$contender"
  taskset -c "$CLIENT_CPU" "$hold" "127.0.0.1:$port" "$CONNS" < "$work/hold-$contender" > "$work/hold-$contender.out" 2>&1 & holder=$!
  pids+=("$holder")
  exec 9>"$work/hold-$contender"
  for _ in $(seq 900); do grep -q ready "$work/hold-$contender.out" && break; kill -0 "$holder" 2>/dev/null || break; sleep 0.1; done
  sleep 1
  after=$(rss_kib "$pid")
  exec 9>&-
  wait "$holder" 2>/dev/null || true
  unset 'pids[-1]' # waited for: its pid must not be signalled by the cleanup
  if grep -q ready "$work/hold-$contender.out"; then
    result[mem,$contender]=$(awk -v a="$after" -v b="$before" -v n="$CONNS" 'BEGIN { printf "%.1f", (a - b) / n }')
  else
    result[mem,$contender]=0
    echo "$contender: could not hold $CONNS connections: $(tail -1 "$work/hold-$contender.out")" >&2
  fi
  printf '%-9s memory: RSS %s KiB -> %s KiB with %s idle TLS connections: %s KiB per connection\n' \
    "$contender" "$before" "$after" "$CONNS" "${result[mem,$contender]}"
  sleep 2
done

echo "server core $SERVER_CPU; clients and nginx backend on core $CLIENT_CPU; TLS 1.3, X25519; $ROUNDS rounds"
for r in $(seq "$ROUNDS"); do
  for contender in $contenders; do
    progress "$step" $((ROUNDS * ncontenders + ncontenders + 1)) "round $r: $contender"
    measure_round "$contender"
    step=$((step + 1))
  done
done
progress "$step" $((ROUNDS * ncontenders + ncontenders + 1)) "done"

# Medians, machine-readable results and a chart (benches/src/bin/bench_chart.rs).
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print 0}'; }
values() { # metric: {"fastedge": m, ...}
  local parts=() c
  for c in $contenders; do parts+=("\"$c\": $(echo "${result[$1,$c]:-}" | median)"); done
  local IFS=,; echo "{${parts[*]}}"
}
metric() { # key name unit higher_is_better
  echo "  {\"name\": \"$2\", \"unit\": \"$3\", \"higher_is_better\": $4, \"values\": $(values "$1")}"
}
# The table: one row per metric, one column per contender (medians).
rows=(hs "full handshakes/CPU-s, P-256" hs_rsa "full handshakes/CPU-s, RSA-2048"
  rs "resumed handshakes/CPU-s" rs_one "resumed one at a time/CPU-s" ka "keep-alive requests/CPU-s"
  bulk_TLS_AES_128_GCM_SHA256 "bulk MB/CPU-s, AES-128-GCM" bulk_TLS_CHACHA20_POLY1305_SHA256 "bulk MB/CPU-s, ChaCha20"
  ka_res "rescheduling IPIs per request" ka_sys "system calls per request"
  p50_1 "p50 latency us, 1 client" p99_1 "p99 latency us, 1 client" p50_8 "p50 latency us, 8 clients" p99_8 "p99 latency us, 8 clients"
  p50_64 "p50 latency us, 64 clients" p99_64 "p99 latency us, 64 clients"
  hs_rate "full handshakes/s, P-256" mem "KiB per idle connection")
echo
printf '%-34s' "median of $ROUNDS"; for c in $contenders; do printf '%17s' "$c"; done; echo
for ((i = 0; i < ${#rows[@]}; i += 2)); do
  printf '%-34s' "${rows[i + 1]}"
  for c in $contenders; do printf '%17s' "$(echo "${result[${rows[i]},$c]:-}" | median)"; done
  echo
done
mkdir -p "$RESULTS"
out=$RESULTS/tls.json
{
  echo "{\"title\": \"TLS 1.3 termination, X25519, one server core (median of $ROUNDS)\","
  echo " \"machine\": \"$(nproc) CPUs, $(uname -r); server on CPU $SERVER_CPU, clients (tls_flood, s_time, h2load, curl, wrk) and nginx backend on CPU $CLIENT_CPU\","
  echo " \"ceiling\": {\"ecdsa_p256_sign_per_s\": ${sig:-0}, \"rsa2048_sign_per_s\": ${rsa:-0}, \"x25519_per_s\": ${x25519:-0}, \"p256_handshakes_per_s\": $ceiling, \"rsa2048_handshakes_per_s\": $ceiling_rsa, \"aes128gcm_16k_mb_per_s\": ${aes:-0}, \"chacha20poly1305_16k_mb_per_s\": ${chacha:-0}},"
  echo " \"metrics\": ["
  metric hs "full handshakes per server CPU-s (P-256)" handshakes true; echo ","
  metric hs_rsa "full handshakes per server CPU-s (RSA-2048)" handshakes true; echo ","
  metric rs "resumed handshakes per server CPU-s" handshakes true; echo ","
  metric rs_one "resumed handshakes one at a time (s_time) per server CPU-s" handshakes true; echo ","
  metric ka "keep-alive requests per server CPU-s (64 conns)" requests true; echo ","
  metric bulk_TLS_AES_128_GCM_SHA256 "bulk MB per server CPU-s (AES-128-GCM)" MB true; echo ","
  metric bulk_TLS_CHACHA20_POLY1305_SHA256 "bulk MB per server CPU-s (ChaCha20)" MB true; echo ","
  metric p50_1 "p50 latency, 1 client" µs false; echo ","
  metric p99_8 "p99 latency, 8 clients" µs false; echo ","
  metric p99_1 "p99 latency, 1 client" µs false; echo ","
  metric p50_8 "p50 latency, 8 clients" µs false; echo ","
  metric p99_64 "p99 latency, 64 clients" µs false; echo ","
  metric p50_64 "p50 latency, 64 clients" µs false; echo ","
  metric ka_res "rescheduling interrupts per keep-alive request" IPIs false; echo ","
  metric ka_sys "system calls per keep-alive request" syscalls false; echo ","
  metric hs_rate "full handshakes per second (P-256)" handshakes true; echo ","
  metric mem "memory per idle TLS connection ($CONNS held)" KiB false
  echo " ]}"
} > "$out"
"$chart" "$out" "${out%.json}.svg" && echo "results: $out, chart: ${out%.json}.svg"
