#!/usr/bin/env bash
# fastedge split beside the kernel's AF_PACKET PACKET_FANOUT_HASH and the XDP_DROP ceiling, on
# the same veth, in the same run, at the same offered load.
#
# Namespace B runs `fastedge gen` (SIZE-byte UDP frames of 1,024 flows, both directions) pinned to
# GEN_CPU; namespace A receives on RX_CPU. Receive work is moved to RX_CPU: threaded NAPI with
# the napi/ thread pinned there for native XDP paths, RPS for SKB-mode and AF_PACKET paths (veth has no NAPI without
# XDP). Contenders:
#   xdp-drop        an XDP program that drops everything (the ceiling of this veth and pinning)
#   split-kernel    fastedge split --to veth: the in-kernel path (XDP hash + DEVMAP) to WAYS veths
#   split-xdp       fastedge split --mode xdp-native, WAYS ways, drained by a consumer app
#   split-skb       the same with --mode xdp-skb
#   split-afpacket  fastedge split --mode af-packet, WAYS ways, drained by a consumer app
#   fanout          WAYS AF_PACKET TPACKET_V3 sockets in one PACKET_FANOUT_HASH group
# The consumer app (way_drain) and the fanout readers run on RX_CPU too: each contender does the
# whole job, delivery to N readers included, on that core.
# Reported per contender (median of ROUNDS): frames offered (sent minus the sender veth's
# tx_dropped), delivered, loss, and RX_CPU busy time per million delivered frames (/proc/stat:
# user+nice+system+irq+softirq of that CPU, which other tenants may share: compare in one run);
# and drops by cause over all rounds: the sender's veth (tx_dropped), the kernel (XDP socket
# or AF_PACKET ring statistics, as fastedge split or fanout_reader report them), full ways,
# full output queues.
#
# With SEARCH=1 it finds instead, per contender, the highest offered rate delivered with less
# than LOSS_PCT % loss (0.1): first the generator's own ceiling (`fastedge gen` with no rate
# limit, into a veth nothing listens on: reported beside), then a bisection between 0 and that
# ceiling, STEPS steps of STEP_SECONDS each, then ROUNDS confirmation rounds at the rate found
# (backing off 10 % while their median loses more); receive-CPU per frame is reported only at
# that rate, with ratios to fanout and to the XDP_DROP ceiling. Writes
# RESULTS/split-search-WAYS-ways-SIZEB.json and its chart.
#
# Usage: benches/peers/split_vs_fanout.sh   (as root; needs clang, iproute2; builds release)
#   RATE=300000 DURATION=5 WAYS=4 SIZE=64 ROUNDS=3 RX_CPU=0 GEN_CPU=1 RESULTS=benches/results
#   SEARCH=1 STEPS=7 STEP_SECONDS=3 LOSS_PCT=0.1
#   SPLIT_ARGS="..." (more arguments for every fastedge split run, e.g. "--way-kib 4096")
# Writes RESULTS/split-WAYS-ways.json (split-WAYS-ways-SIZEB.json for other sizes than 64) and
# an SVG chart beside it.
set -euo pipefail
cd "$(dirname "$0")/../.."
RX_CPU=${RX_CPU:-0}
GEN_CPU=${GEN_CPU:-1}
RATE=${RATE:-300000}
DURATION=${DURATION:-5}
WAYS=${WAYS:-4}
SIZE=${SIZE:-64}
SPLIT_ARGS=${SPLIT_ARGS:-}
read -ra split_args <<< "$SPLIT_ARGS"
ROUNDS=${ROUNDS:-3}
CONTENDERS=${CONTENDERS:-"xdp-drop split-kernel split-xdp split-skb split-afpacket fanout"}
ns_a=febench-$$-a
ns_b=febench-$$-b
name=febench$$
work=$(mktemp -d /tmp/fastedge-split-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$ns_a" 2>/dev/null || true
  ip netns del "$ns_b" 2>/dev/null || true
  rm -f /dev/shm/fastedge/$name-*
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cargo build --release -p fastedge -p fastedge-benches --bins >/dev/null 2>&1
bin=$PWD/target/release/fastedge
drain=$PWD/target/release/way_drain
fanout=$PWD/target/release/fanout_reader
chart=$PWD/target/release/bench_chart
RESULTS=${RESULTS:-$PWD/benches/results}

cat > "$work/drop.c" <<'C'
#include <linux/bpf.h>
__attribute__((section("xdp"), used)) int drop_all(struct xdp_md *ctx) { return XDP_DROP; }
char LICENSE[] __attribute__((section("license"), used)) = "GPL";
C
clang -O2 -target bpf -I/usr/include/x86_64-linux-gnu -c "$work/drop.c" -o "$work/drop.o"

ip netns add "$ns_a"; ip netns add "$ns_b"
ip link add va netns "$ns_a" numtxqueues 1 numrxqueues 1 type veth peer name vb netns "$ns_b" numtxqueues 1 numrxqueues 1
for ns in "$ns_a" "$ns_b"; do ip netns exec "$ns" sh -c 'echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6'; done
ip -n "$ns_a" link set va up; ip -n "$ns_b" link set vb up
sleep 1

# Frames the far ends of split-kernel's veth outputs received.
peer_rx() {
  ip netns exec "$ns_a" sh -c 'total=0; for f in /sys/class/net/fbk*p/statistics/rx_packets; do [ -e "$f" ] && total=$((total + $(cat "$f"))); done; echo $total'
}
busy() { awk -v c="cpu$RX_CPU" '$1==c {print $2+$3+$4+$7+$8}' /proc/stat; }
tx_dropped() { ip netns exec "$ns_b" cat /sys/class/net/vb/statistics/tx_dropped; }
rps() { ip netns exec "$ns_a" sh -c "echo $1 > /sys/class/net/va/queues/rx-0/rps_cpus"; }
# Threaded NAPI for va, its kernel thread pinned to RX_CPU (recreated on every XDP attach).
napi_on_rx_cpu() {
  # Retried: right after an XDP attach the write can fail with EIO while NAPI is set up.
  for _ in 1 2 3 4 5; do
    ip netns exec "$ns_a" sh -c 'echo 1 > /sys/class/net/va/threaded' 2>/dev/null && break
    sleep 0.2
  done
  sleep 0.3
  for pid in $(pgrep -f '^napi/va' || true); do taskset -pc "$RX_CPU" "$pid" >/dev/null; done
}
# The drops by cause in fastedge split's exit summary: "kernel ways outputs" ("0 0 0" when
# there is no summary). "fill ring empty" counts events whose drops are already in "other"
# (copy mode), so it is left out of the sum.
split_drops() {
  { grep 'split stopped' "$1" || true; } | tail -1 | awk 'END { if (NR == 0) print 0, 0, 0 } {
    k = 0; w = 0; o = 0; line = $0
    if (match(line, /kernel drops: [^;]*/)) {
      s = substr(line, RSTART, RLENGTH); sub(/\(ring frozen[^)]*\)/, "", s)
      sub(/fill ring empty [0-9]+/, "", s)
      n = split(s, a, /[^0-9]+/); for (i = 1; i <= n; i++) k += a[i]
    }
    if (match(line, /ways delivered\/dropped-full [^;]*/)) {
      s = substr(line, RSTART + 28, RLENGTH - 28); n = split(s, a, " ")
      for (i = 1; i <= n; i++) { split(a[i], b, "/"); w += b[2] + 0 }
    }
    while (match(line, /dropped \(queue full\) [0-9]+/)) {
      s = substr(line, RSTART, RLENGTH); sub(/.* /, "", s); o += s; line = substr(line, RSTART + RLENGTH)
    }
    print k, w, o
  }'
}
wait_ready() { for _ in $(seq 100); do grep -q ready "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "not ready: $(cat "$1")" >&2; return 1; }

count=$((RATE * DURATION))
# Runs in this shell (not a subshell), so every process it starts is in `pids` for the cleanup.
run_round() { # contender → ROUND="offered delivered busy_jiffies sender kernel ways outputs"
  local c=$1 out=$work/out.txt delivered
  : > "$out"
  case $c in
    xdp-drop)
      ip -n "$ns_a" link set va xdpdrv obj "$work/drop.o" sec xdp; napi_on_rx_cpu ;;
    split-xdp)
      taskset -c "$RX_CPU" ip netns exec "$ns_a" "$bin" split va --ways "$WAYS" --mode xdp-native --name "$name" --cores "$RX_CPU" --no-control "${split_args[@]}" 2>"$work/split.log" & pids+=($!)
      for _ in $(seq 100); do grep -q "split running" "$work/split.log" && break; sleep 0.1; done
      napi_on_rx_cpu
      taskset -c "$RX_CPU" "$drain" "$name" "$WAYS" $((DURATION + 4)) > "$out" & pids+=($!)
      wait_ready "$out" ;;
    split-skb)
      taskset -c "$RX_CPU" ip netns exec "$ns_a" "$bin" split va --ways "$WAYS" --mode xdp-skb --name "$name" --cores "$RX_CPU" --no-control "${split_args[@]}" 2>"$work/split.log" & pids+=($!)
      for _ in $(seq 100); do grep -q "split running" "$work/split.log" && break; sleep 0.1; done
      rps $(printf %x $((1 << RX_CPU)))
      taskset -c "$RX_CPU" "$drain" "$name" "$WAYS" $((DURATION + 4)) > "$out" & pids+=($!)
      wait_ready "$out" ;;
    split-kernel)
      taskset -c "$RX_CPU" ip netns exec "$ns_a" "$bin" split va --ways "$WAYS" --to veth --veth-prefix fbk --cores "$RX_CPU" --no-control "${split_args[@]}" 2>"$work/split.log" & pids+=($!)
      for _ in $(seq 100); do grep -q "split running" "$work/split.log" && break; sleep 0.1; done
      grep -q "in-kernel fast path: XDP hashes" "$work/split.log" || { echo "split-kernel: fast path not taken: $(cat "$work/split.log")" >&2; }
      napi_on_rx_cpu
      kernel_rx0=$(peer_rx) ;;
    split-afpacket)
      rps $(printf %x $((1 << RX_CPU)))
      taskset -c "$RX_CPU" ip netns exec "$ns_a" "$bin" split va --ways "$WAYS" --mode af-packet --name "$name" --cores "$RX_CPU" --no-control "${split_args[@]}" 2>"$work/split.log" & pids+=($!)
      for _ in $(seq 100); do grep -q "split running" "$work/split.log" && break; sleep 0.1; done
      taskset -c "$RX_CPU" "$drain" "$name" "$WAYS" $((DURATION + 4)) > "$out" & pids+=($!)
      wait_ready "$out" ;;
    fanout)
      rps $(printf %x $((1 << RX_CPU)))
      taskset -c "$RX_CPU" ip netns exec "$ns_a" "$fanout" va "$WAYS" $((DURATION + 4)) > "$out" & pids+=($!)
      wait_ready "$out" ;;
  esac
  sleep 0.5
  local d0 b0 b1 d1 drops="0 0 0"
  d0=$(tx_dropped); b0=$(busy)
  taskset -c "$GEN_CPU" ip netns exec "$ns_b" "$bin" gen vb --flows 1024 --size "$SIZE" --rate "$RATE" --count "$count" 2>>"$work/gen.log"
  sleep 0.3
  b1=$(busy); d1=$(tx_dropped)
  case $c in
    xdp-drop)
      ip -n "$ns_a" link set va xdpdrv off
      delivered=$((count - (d1 - d0))) ;;
    split-kernel)
      delivered=$(( $(peer_rx) - kernel_rx0 ))
      kill -TERM "${pids[-1]}" 2>/dev/null || true; wait "${pids[-1]}" 2>/dev/null || true
      drops=$(split_drops "$work/split.log") ;;
    split-*|fanout)
      wait "${pids[-1]}" 2>/dev/null || true
      delivered=$(sed -n 's/.*received=\([0-9]*\).*/\1/p' "$out")
      if [ "$c" != fanout ]; then
        kill -TERM "${pids[-2]}" 2>/dev/null || true; wait "${pids[-2]}" 2>/dev/null || true
        drops=$(split_drops "$work/split.log")
      else
        drops="$(sed -n 's/.*kernel_drops=\([0-9]*\).*/\1/p' "$out") 0 0"
      fi
      rm -f /dev/shm/fastedge/$name-* ;;
  esac
  # Every process of this round has been waited for: none is left for the cleanup to signal
  # (its pid could belong to something else by then).
  pids=()
  rps 0
  ROUND="$((count - (d1 - d0))) ${delivered:-0} $((b1 - b0)) $((d1 - d0)) $drops"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

if [ "${SEARCH:-0}" = 1 ]; then
  STEPS=${STEPS:-7}
  STEP_SECONDS=${STEP_SECONDS:-3}
  LOSS_PCT=${LOSS_PCT:-0.1}
  # Loss of one round, in % of the frames the generator was asked to send.
  round_loss() { awk -v c="$count" -v d="$1" 'BEGIN { printf "%.4f", (c - d) * 100 / c }'; }
  below() { awk -v l="$1" -v m="$LOSS_PCT" 'BEGIN { exit !(l < m) }'; }
  # The generator's ceiling: as fast as it can, nothing attached on the receiving side.
  ceiling_count=$((2000000))
  t0=$(date +%s%N)
  taskset -c "$GEN_CPU" ip netns exec "$ns_b" "$bin" gen vb --flows 1024 --size "$SIZE" --count "$ceiling_count" 2>>"$work/gen.log"
  t1=$(date +%s%N)
  gen_ceiling=$(( ceiling_count * 1000000000 / (t1 - t0) ))
  printf 'rate search: %d-byte frames, %d ways, loss < %s %%, %d steps of %d s, %d confirmation rounds; rx CPU %s, gen CPU %s\n' \
    "$SIZE" "$WAYS" "$LOSS_PCT" "$STEPS" "$STEP_SECONDS" "$ROUNDS" "$RX_CPU" "$GEN_CPU"
  printf 'generator ceiling (fastedge gen, no rate limit): %d frames/s\n' "$gen_ceiling"
  printf '%-16s %14s %22s   %s\n' contender "sustained f/s" "rx-CPU ms per Mframe" "confirmation rounds (loss %)"
  declare -A sustained=() at_cost=()
  DURATION=$STEP_SECONDS
  for c in $CONTENDERS; do
    lo=0; hi=$gen_ceiling
    for _ in $(seq "$STEPS"); do
      RATE=$(( (lo + hi) / 2 )); count=$((RATE * DURATION))
      [ "$count" -gt 0 ] || { hi=$RATE; continue; }
      printf '  %s: %d frames/s ...\r' "$c" "$RATE" >&2
      run_round "$c"
      read -r _ d _ _ _ _ _ <<< "$ROUND"
      if below "$(round_loss "$d")"; then lo=$RATE; else hi=$RATE; fi
    done
    # Confirm at the rate found: the median of ROUNDS rounds must lose less than LOSS_PCT.
    RATE=$lo; losses=(); cost=()
    for _ in 1 2 3; do
      [ "$RATE" -gt 0 ] || break
      count=$((RATE * DURATION)); losses=(); cost=()
      for _ in $(seq "$ROUNDS"); do
        run_round "$c"
        read -r _ d j _ _ _ _ <<< "$ROUND"
        losses+=("$(round_loss "$d")")
        cost+=("$(awk -v j="$j" -v d="$d" 'BEGIN { if (d > 0) printf "%.0f", j * 10 * 1e6 / d; else print "inf" }')")
      done
      below "$(printf '%s\n' "${losses[@]}" | median)" && break
      RATE=$(( RATE * 9 / 10 ))
    done
    [ -t 2 ] && printf '\r%60s\r' '' >&2
    sustained[$c]=$RATE
    at_cost[$c]=$(printf '%s\n' "${cost[@]:-inf}" | median)
    printf '%-16s %14d %22s   %s\n' "$c" "$RATE" "${at_cost[$c]}" "${losses[*]:-}"
  done
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
  echo
  printf '%-16s %14s %12s %12s\n' contender "sustained f/s" "x fanout" "x xdp-drop"
  json_rate=(); json_cost=()
  for c in $CONTENDERS; do
    printf '%-16s %14d %12s %12s\n' "$c" "${sustained[$c]}" "$(ratio "${sustained[$c]}" "${sustained[fanout]:-0}")" "$(ratio "${sustained[$c]}" "${sustained[xdp-drop]:-0}")"
    json_rate+=("\"$c\": ${sustained[$c]}")
    [ "${at_cost[$c]}" != inf ] && json_cost+=("\"$c\": ${at_cost[$c]}")
  done
  mkdir -p "$RESULTS"
  join() { local IFS=,; echo "$*"; }
  out=$RESULTS/split-search-$WAYS-ways-${SIZE}B.json
  cat > "$out" <<JSON
{"title": "split, $WAYS ways, $SIZE-byte frames: highest rate with < $LOSS_PCT % loss (generator ceiling $gen_ceiling frames/s)",
 "machine": "$(nproc) CPUs, $(uname -r); receive work and readers on CPU $RX_CPU, generator on CPU $GEN_CPU; $STEPS bisection steps of $STEP_SECONDS s, median of $ROUNDS confirmation rounds",
 "generator_ceiling": $gen_ceiling,
 "metrics": [
  {"name": "sustained rate", "unit": "frames/s", "higher_is_better": true, "values": {$(join "${json_rate[@]}")}},
  {"name": "receive-CPU time per Mframe at that rate", "unit": "ms", "higher_is_better": false, "values": {$(join "${json_cost[@]}")}}
 ]}
JSON
  "$chart" "$out" "${out%.json}.svg" && echo "results: $out, chart: ${out%.json}.svg"
  exit 0
fi
printf 'offered %d frames/round of %d bytes at %d frames/s, %d ways, rx CPU %s, gen CPU %s, %d rounds (median)\n' \
  "$count" "$SIZE" "$RATE" "$WAYS" "$RX_CPU" "$GEN_CPU" "$ROUNDS"
printf '%-16s %12s %12s %8s %22s   %s\n' contender offered delivered loss% "rx-CPU ms per Mframe" "drops over all rounds: sender/kernel/ways full/outputs full"
json_loss=(); json_cost=(); json_delivered=(); json_drops=()
total_steps=$(( $(echo $CONTENDERS | wc -w) * ROUNDS )); step=0
for c in $CONTENDERS; do
  offered=(); delivered=(); cost=(); by_cause=(0 0 0 0)
  for r in $(seq "$ROUNDS"); do
    step=$((step + 1))
    if [ -t 2 ]; then
      printf '\r[%-30s] %d/%d %-30s' "$(printf '%*s' $((step * 30 / total_steps)) '' | tr ' ' '#')" "$step" "$total_steps" "$c round $r" >&2
    else
      printf '[%d/%d] %s round %d\n' "$step" "$total_steps" "$c" "$r" >&2
    fi
    run_round "$c"
    read -r o d j ds dk dw dout <<< "$ROUND"
    offered+=("$o"); delivered+=("$d")
    by_cause=($((by_cause[0] + ds)) $((by_cause[1] + ${dk:-0})) $((by_cause[2] + ${dw:-0})) $((by_cause[3] + ${dout:-0})))
    # jiffies are 10 ms: ms per million delivered frames.
    cost+=("$(awk -v j="$j" -v d="$d" 'BEGIN { if (d > 0) printf "%.0f", j * 10 * 1e6 / d; else print "inf" }')")
  done
  o=$(printf '%s\n' "${offered[@]}" | median)
  d=$(printf '%s\n' "${delivered[@]}" | median)
  m=$(printf '%s\n' "${cost[@]}" | median)
  loss=$(awk -v o="$count" -v d="$d" 'BEGIN { printf "%.3f", (o - d) * 100 / o }')
  [ -t 2 ] && printf '\r%80s\r' '' >&2
  printf '%-16s %12s %12s %8s %22s   %s   (rounds: %s)\n' "$c" "$o" "$d" "$loss" "$m" "$(IFS=/; echo "${by_cause[*]}")" "${cost[*]}"
  json_loss+=("\"$c\": $loss"); json_delivered+=("\"$c\": $d")
  json_drops+=("\"$c\": {\"sender\": ${by_cause[0]}, \"kernel\": ${by_cause[1]}, \"ways_full\": ${by_cause[2]}, \"outputs_full\": ${by_cause[3]}}")
  [ "$m" != inf ] && json_cost+=("\"$c\": $m")
done

# Machine-readable results and a chart (benches/src/bin/bench_chart.rs).
mkdir -p "$RESULTS"
join() { local IFS=,; echo "$*"; }
out=$RESULTS/split-$WAYS-ways.json
[ "$SIZE" = 64 ] || out=$RESULTS/split-$WAYS-ways-${SIZE}B.json
cat > "$out" <<JSON
{"title": "split, $WAYS ways, $SIZE-byte frames, $RATE frames/s offered (median of $ROUNDS)",
 "machine": "$(nproc) CPUs, $(uname -r); receive work and readers on CPU $RX_CPU, generator on CPU $GEN_CPU${SPLIT_ARGS:+; fastedge split $SPLIT_ARGS}",
 "drops_over_all_rounds": {$(join "${json_drops[@]}")},
 "metrics": [
  {"name": "receive-CPU time per Mframe", "unit": "ms", "higher_is_better": false, "values": {$(join "${json_cost[@]}")}},
  {"name": "frames delivered", "unit": "frames", "higher_is_better": true, "values": {$(join "${json_delivered[@]}")}},
  {"name": "loss", "unit": "%", "higher_is_better": false, "values": {$(join "${json_loss[@]}")}}
 ]}
JSON
"$chart" "$out" "${out%.json}.svg" && echo "results: $out, chart: ${out%.json}.svg"
