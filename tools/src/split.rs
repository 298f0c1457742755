//! `fastedge split` and `fastedge tap`: flow-aware distribution of an interface's traffic to N
//! shared-memory ways, and a way as a pcap stream.

use std::{
    io::{IsTerminal, Write},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use anyhow::{anyhow, Context as _};
use clap::{Args, ValueEnum};
use fastedge_ebpf::rules::{Prefilter, RuleTable};
use fastedge_rings::{
    pipeline::{BrickConfig, HashName, InputConfig, InputMode, PipelineConfig, SpeedName},
    shm::Consumer,
    split::{self, EngineOptions, InputKind, SplitStats},
};
use fastedge_runtime::CpuList;
use nix::sys::signal::Signal;

use crate::Failure;

/// Distribute an interface's traffic over N ways, flow-aware.
///
/// fastedge attaches its XDP program to IFACE (native mode, else SKB mode, else it reads with
/// AF_PACKET), opens an AF_XDP socket on every receive queue, and puts each frame into way
/// `hash(flow) mod N`: both directions of a flow, and every fragment of a datagram, land on the
/// same way. Ways are shared-memory rings, /dev/shm/fastedge/NAME-0 … N-1 (NAME: the first
/// input), read by consumer applications with the `fastedge-rings` consumer API or by
/// `fastedge tap NAME:WAY`. A slow or absent consumer only costs drops on its own way, counted.
/// Several interfaces (and `--pcap` files) are merged into one split. For anything else
/// (duplicate to groups, balance within each, capture files as outputs) declare a pipeline in
/// TOML and pass `--config`. Runs until SIGINT/SIGTERM, or until its capture-file inputs end;
/// prints a line per second on a terminal and a summary at exit.
#[derive(Debug, Args)]
pub struct SplitArgs {
    /// Interfaces to read, e.g. eth1 (several: merged).
    interfaces: Vec<String>,

    /// Also read this pcap or pcapng file (repeatable).
    #[arg(long, value_name = "FILE")]
    pcap: Vec<PathBuf>,

    /// Replay `--pcap` files with their recorded timing instead of as fast as possible.
    #[arg(long)]
    recorded_speed: bool,

    /// A pipeline declared in TOML (inputs, bricks, outputs); excludes the other options.
    /// SIGHUP or `fastedge ctl reload` reads it again; ways that exist in both keep their
    /// consumers.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["interfaces", "pcap", "ways", "hash", "hash_key", "way_group", "mode", "non_ip_way", "way_kib", "no_decap", "name", "rule"])]
    config: Option<PathBuf>,

    /// Number of ways (consumer rings).
    #[arg(long)]
    ways: Option<u32>,

    /// Flow hash: `2-tuple` (addresses, the default), `3-tuple` (+ protocol), `5-tuple`
    /// (+ ports). Only `2-tuple` keeps every packet of a flow on one way: fragments (and IPv6
    /// packets with very long extension-header chains) always hash on the addresses, so in
    /// the other modes they can land on another way than the rest of their flow.
    #[arg(long, value_enum)]
    hash: Option<HashArg>,

    /// Key of the flow hash, 32 hex digits (default: random at each start), for when another
    /// program must compute the same ways.
    #[arg(long, value_name = "HEX")]
    hash_key: Option<String>,

    #[command(flatten)]
    common: CommonArgs,

    /// Way that frames which are not IP go to.
    #[arg(long)]
    non_ip_way: Option<u32>,

    /// Hash tunnels (IP-in-IP, GRE, VXLAN) on the outer flow instead of the inner one.
    #[arg(long)]
    no_decap: bool,
}

/// Options of `split` and `dup` alike.
#[derive(Debug, Args)]
struct CommonArgs {
    /// How interfaces are read: `auto` (XDP native, else XDP SKB, else AF_PACKET),
    /// `xdp-native`, `xdp-skb`, `af-packet`.
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,

    /// Ring size of each way, in KiB (a power of two, at least 64).
    #[arg(long)]
    way_kib: Option<usize>,

    /// Name in the way files' names (default: the first interface or file).
    #[arg(long)]
    name: Option<String>,

    /// CPUs for the engine threads, e.g. `2-5` or `0,2`: one thread per receive queue of the
    /// interface (one for everything with several inputs or capture-file outputs), pinned to
    /// these CPUs in turn. Default: not pinned.
    #[arg(long, value_name = "LIST")]
    cores: Option<String>,

    /// Control socket (JSON lines, read by `fastedge ctl`); default
    /// /run/fastedge/split-NAME.sock.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,

    /// Permissions of the control socket, octal.
    #[arg(long, value_name = "MODE", default_value = "600")]
    control_mode: String,

    /// No control socket.
    #[arg(long, conflicts_with = "control")]
    no_control: bool,

    /// Where the ways go: `ways` (shared-memory rings), `veth` (fastedge creates a veth pair
    /// per way, PREFIX0/PREFIX0p …, sends each way's frames into PREFIXk, and unmodified
    /// applications capture on PREFIXkp; the pairs are deleted at exit) or `tap` (a TAP device
    /// per way, PREFIX0 …, on which applications capture; gone at exit).
    #[arg(long, value_enum, default_value_t = ToArg::Ways)]
    to: ToArg,

    /// Keep frames in userspace even when the pipeline could run in the kernel (one balance
    /// or duplicate stage whose outputs are all interfaces, one XDP input).
    #[arg(long)]
    no_fast_path: bool,

    /// Name prefix of the veth pairs of `--to veth` and the TAP devices of `--to tap`.
    #[arg(long, default_value = "few")]
    veth_prefix: String,

    /// An XDP pre-filter rule (repeatable), e.g. "drop src 203.0.113.0/24 proto udp dport 53";
    /// see README, "Pre-filter". With --config, rules go in its `rules` list.
    #[arg(long, value_name = "RULE")]
    rule: Vec<String>,

    /// Most pre-filter rules at once (config, ctl, NetControl).
    #[arg(long, value_name = "N", default_value_t = 65_536)]
    rule_capacity: u32,

    /// A group whose members may consume the ways (name or id); default: the ways are
    /// private to this user (mode 0600). With --config: `way_group`.
    #[arg(long, value_name = "GROUP")]
    way_group: Option<String>,

    /// Detach into the background (logs: use --syslog); the pid goes to --pid-file.
    #[arg(long)]
    daemon: bool,

    /// Write the process id here (removed at exit).
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
}

/// Copy an interface's traffic to N ways: every frame to every way.
///
/// Like `fastedge split` (same inputs, same ways, same counters), but each way gets all the
/// traffic — e.g. several IDS instances that must each see everything. A slow consumer only
/// loses frames on its own way.
#[derive(Debug, Args)]
pub struct DupArgs {
    /// Interfaces to read, e.g. eth1 (several: merged).
    #[arg(required = true)]
    interfaces: Vec<String>,

    /// Number of ways (consumer rings), each getting every frame.
    #[arg(long, default_value_t = 2)]
    ways: u32,

    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum HashArg {
    #[value(name = "2-tuple")]
    Two,
    #[value(name = "3-tuple")]
    Three,
    #[value(name = "5-tuple")]
    Five,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ToArg {
    Ways,
    Veth,
    Tap,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    Auto,
    XdpNative,
    XdpSkb,
    AfPacket,
}

/// Write one way of a running split as a pcap stream (nanosecond timestamps), to standard
/// output or a file: `fastedge tap eth1:3 | tcpdump -r -`.
#[derive(Debug, Args)]
pub struct TapArgs {
    /// The way, as NAME:WAY (NAME is the interface given to `fastedge split`).
    way: String,

    /// Write to this file instead of standard output.
    #[arg(long, short = 'w', value_name = "FILE")]
    output: Option<PathBuf>,

    /// Stop after this many packets.
    #[arg(long, short = 'c')]
    count: Option<u64>,
}

/// Blocks SIGINT/SIGTERM here and sets `stop` when one arrives (on a thread of its own).
pub(crate) fn stop_on_signals() -> Result<Arc<AtomicBool>, Failure> {
    let signals = crate::block_signals(&[Signal::SIGINT, Signal::SIGTERM])?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            flag.store(true, Ordering::Relaxed);
        }
    });
    Ok(stop)
}

fn describe(stats: &SplitStats) -> String {
    let mut parts = Vec::new();
    for input in &stats.inputs {
        let kind = input.kind.map_or("-".to_owned(), |k| k.to_string());
        let drops = match input.kind {
            Some(InputKind::Xdp(_)) => format!(
                "; pre-filter dropped {}, bypassed {}; kernel drops: ring full {}, fill ring empty {}, other {}, invalid {}",
                input.prefilter_dropped,
                input.prefilter_bypassed,
                input.xsk.rx_ring_full,
                input.xsk.rx_fill_ring_empty,
                input.xsk.rx_dropped,
                input.xsk.rx_invalid
            ),
            Some(InputKind::AfPacket) => format!(
                "; kernel drops: ring full {} (ring frozen {} times)",
                input.packet.drops, input.packet.freezes
            ),
            _ => String::new(),
        };
        let kernel = input.in_kernel.map_or(String::new(), |n| {
            format!("; in-kernel fast path: {n} frames")
        });
        parts.push(format!(
            "{} ({kind}, {} queue(s)): received {} ({} bytes){kernel}{drops}",
            input.name, input.queues, input.received, input.bytes
        ));
    }
    parts.push(format!(
        "non-IP {}, parse errors {}",
        stats.non_ip, stats.parse_errors
    ));
    if !stats.ways.is_empty() {
        let ways: Vec<String> = stats
            .ways
            .iter()
            .enumerate()
            .map(|(i, w)| {
                format!(
                    "{i}:{}/{}{}{}",
                    w.delivered,
                    w.dropped_full,
                    if w.consumer.is_some() {
                        ""
                    } else {
                        "(no consumer)"
                    },
                    if w.bad_positions > 0 {
                        format!("(bad consumer positions {})", w.bad_positions)
                    } else {
                        String::new()
                    }
                )
            })
            .collect();
        parts.push(format!("ways delivered/dropped-full {}", ways.join(" ")));
    }
    for iface in &stats.interfaces {
        parts.push(format!(
            "output {} ({}): sent {} (+{} in the kernel), dropped (queue full) {}",
            iface.name, iface.transmit, iface.sent, iface.sent_in_kernel, iface.dropped
        ));
    }
    for pcap in &stats.pcaps {
        parts.push(format!(
            "{}: written {} ({} bytes) in {} file(s), write errors {}",
            pcap.path.display(),
            pcap.written,
            pcap.bytes,
            pcap.files,
            pcap.errors
        ));
    }
    parts.join("; ")
}

/// The live line: rates per second since the last one, and drops by cause.
fn live_line(stats: &SplitStats, previous: &SplitStats) -> String {
    let rate = stats.received() - previous.received();
    let ways: Vec<String> = stats
        .ways
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let before = previous.ways.get(i).copied().unwrap_or_default();
            format!("{}", w.delivered - before.delivered)
        })
        .collect();
    let full: u64 = stats.ways.iter().map(|w| w.dropped_full).sum();
    let kernel: u64 = stats
        .inputs
        .iter()
        .map(|i| i.xsk.rx_ring_full + i.xsk.rx_fill_ring_empty + i.xsk.rx_dropped + i.packet.drops)
        .sum();
    let filtered: u64 = stats
        .inputs
        .iter()
        .map(|i| i.prefilter_dropped + i.prefilter_bypassed)
        .sum();
    format!(
        "{rate} pps | per way/s [{}] | drops: way full {full}, kernel {kernel}, pre-filter {filtered}, non-IP {}, parse errors {}",
        ways.join(" "),
        stats.non_ip,
        stats.parse_errors
    )
}

fn inputs(
    interfaces: &[String],
    pcaps: &[PathBuf],
    mode: InputMode,
    recorded: bool,
) -> Vec<InputConfig> {
    let mut inputs: Vec<InputConfig> = interfaces
        .iter()
        .map(|i| InputConfig {
            interface: Some(i.clone()),
            pcap: None,
            mode,
            speed: SpeedName::Fast,
        })
        .collect();
    inputs.extend(pcaps.iter().map(|p| InputConfig {
        interface: None,
        pcap: Some(p.clone()),
        mode: InputMode::Auto,
        speed: if recorded {
            SpeedName::Recorded
        } else {
            SpeedName::Fast
        },
    }));
    inputs
}

fn mode_of(common: &CommonArgs) -> InputMode {
    match common.mode {
        None | Some(ModeArg::Auto) => InputMode::Auto,
        Some(ModeArg::XdpNative) => InputMode::XdpNative,
        Some(ModeArg::XdpSkb) => InputMode::XdpSkb,
        Some(ModeArg::AfPacket) => InputMode::AfPacket,
    }
}

pub fn run_dup(args: DupArgs) -> Result<(), Failure> {
    let config = PipelineConfig {
        name: args.common.name.clone(),
        inputs: inputs(&args.interfaces, &[], mode_of(&args.common), false),
        output: BrickConfig::Dup {
            ways: (args.common.to == ToArg::Ways).then_some(args.ways),
            to: veth_outputs(&args.common, args.ways),
        },
        decapsulate: true,
        way_kib: args.common.way_kib.unwrap_or(4096),
        rules: args.common.rule.clone(),
        rule_capacity: args.common.rule_capacity,
        hash_key: None,
        way_group: args.common.way_group.clone(),
    };
    run_engine(config, &args.common, None)
}

pub fn run_split(args: SplitArgs) -> Result<(), Failure> {
    let config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))
                .map_err(Failure::config)?;
            PipelineConfig::from_toml(&text)
                .with_context(|| path.display().to_string())
                .map_err(Failure::config)?
        }
        None => {
            if args.interfaces.is_empty() && args.pcap.is_empty() {
                return Err(Failure::config(anyhow!(
                    "give an interface (fastedge split eth1 --ways 4), --pcap FILE, or --config FILE"
                )));
            }
            PipelineConfig {
                name: args.common.name.clone(),
                inputs: inputs(
                    &args.interfaces,
                    &args.pcap,
                    mode_of(&args.common),
                    args.recorded_speed,
                ),
                output: BrickConfig::Balance {
                    hash: match args.hash {
                        Some(HashArg::Two) | None => HashName::Two,
                        Some(HashArg::Three) => HashName::Three,
                        Some(HashArg::Five) => HashName::Five,
                    },
                    ways: (args.common.to == ToArg::Ways).then_some(args.ways.unwrap_or(4)),
                    to: veth_outputs(&args.common, args.ways.unwrap_or(4)),
                    non_ip: args.non_ip_way.unwrap_or(0),
                },
                decapsulate: !args.no_decap,
                way_kib: args.common.way_kib.unwrap_or(4096),
                rules: args.common.rule.clone(),
                rule_capacity: args.common.rule_capacity,
                hash_key: args.hash_key.clone(),
                way_group: args.common.way_group.clone(),
            }
        }
    };
    run_engine(config, &args.common, args.config.as_deref())
}

/// Flags the signal thread and the control socket set; the engine stops on either.
#[derive(Debug, Default)]
struct Requests {
    /// Stop the engine now (for a shutdown or a reload).
    engine_stop: AtomicBool,
    shutdown: AtomicBool,
    reload: AtomicBool,
}

impl Requests {
    fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
        self.engine_stop.store(true, Ordering::Relaxed);
    }

    fn reload(&self) {
        self.reload.store(true, Ordering::Relaxed);
        self.engine_stop.store(true, Ordering::Relaxed);
    }
}

/// SIGINT/SIGTERM: shut down; SIGHUP: reload. Blocked here, taken by a thread of their own.
fn split_signals(requests: Arc<Requests>) -> Result<(), Failure> {
    let signals = crate::block_signals(&[Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP])?;
    std::thread::spawn(move || loop {
        match signals.wait() {
            Ok(Signal::SIGHUP) => {
                tracing::info!("SIGHUP: reloading the pipeline");
                requests.reload();
            }
            Ok(_) => {
                requests.shutdown();
                return;
            }
            Err(_) => return,
        }
    });
    Ok(())
}

/// What the control socket reads and changes.
struct Shared {
    requests: Arc<Requests>,
    config: std::sync::Mutex<PipelineConfig>,
    config_path: Option<PathBuf>,
    stats: std::sync::Mutex<SplitStats>,
    started: std::time::Instant,
    rules: Option<crate::rules::SharedRules>,
}

fn control_answer(
    shared: &Shared,
    cmd: &str,
    request: &serde_json::Map<String, serde_json::Value>,
) -> fastedge_runtime::control::Answer {
    use serde_json::{json, Value};
    let to_map = |v: Value| match v {
        Value::Object(m) => m,
        other => {
            let mut m = serde_json::Map::new();
            m.insert("value".into(), other);
            m
        }
    };
    let stats = || shared.stats.lock().map(|s| s.clone()).unwrap_or_default();
    let config = || {
        shared
            .config
            .lock()
            .map(|c| c.clone())
            .map_err(|_| "state lock".to_owned())
    };
    match cmd {
        "help" => Ok(to_map(json!({
            "commands": {
                "status": "name, pid, uptime, inputs and their modes, ways",
                "stats": "every counter: per input (kernel drops by cause), per way, per capture file",
                "ways": "per way: delivered, dropped because full, attached consumer",
                "pipeline": "the pipeline in use, as TOML",
                "reload": "read the --config file again (ways of the same size keep their consumers)",
                "shutdown": "stop",
                "rules": "pre-filter rules: list; add RULE; del ID",
                "netcontrol": "add or remove a rule shaped like Zeek NetControl's (JSON)",
            }
        }))),
        "status" => {
            let stats = stats();
            let config = config()?;
            Ok(to_map(json!({
                "name": config.name(),
                "pid": std::process::id(),
                "uptime_s": shared.started.elapsed().as_secs(),
                "config": shared.config_path.as_ref().map(|p| p.display().to_string()),
                "inputs": stats.inputs.iter().map(|i| json!({
                    "name": i.name,
                    "mode": i.kind.map(|k| k.to_string()),
                    "queues": i.queues,
                    "received": i.received,
                })).collect::<Vec<_>>(),
                "ways": config.way_count(),
                "consumers": stats.ways.iter().filter(|w| w.consumer.is_some()).count(),
            })))
        }
        "stats" => Ok(to_map(json!({ "stats": stats() }))),
        "ways" => Ok(to_map(json!({
            "ways": stats().ways.iter().enumerate().map(|(i, w)| json!({
                "way": i,
                "delivered": w.delivered,
                "dropped_full": w.dropped_full,
                "consumer_pid": w.consumer,
            })).collect::<Vec<_>>()
        }))),
        "pipeline" => {
            let config = config()?;
            let text = toml::to_string(&config).map_err(|e| format!("rendering TOML: {e}"))?;
            Ok(to_map(json!({ "toml": text })))
        }
        "reload" => {
            if let Some(path) = &shared.config_path {
                // Refuse a bad file here, with the reason, rather than after stopping.
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                PipelineConfig::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            shared.requests.reload();
            Ok(to_map(json!({ "reload": "started" })))
        }
        "shutdown" => {
            shared.requests.shutdown();
            Ok(to_map(json!({ "shutdown": "started" })))
        }
        "rules" | "netcontrol" => {
            let rules = shared
                .rules
                .as_ref()
                .ok_or("rules: the XDP pre-filter could not be set up (see the log)")?;
            let mut rules = rules.lock().map_err(|_| "rules lock".to_owned())?;
            if cmd == "rules" {
                rules.control(request)
            } else {
                Ok(rules.netcontrol(request))
            }
        }
        other => Err(format!("unknown command {other:?}; try \"help\"")),
    }
}

fn parse_cores(cores: Option<&str>) -> Result<Vec<usize>, Failure> {
    match cores {
        None => Ok(Vec::new()),
        Some(text) => {
            let list: CpuList = text
                .parse()
                .map_err(|e| Failure::config(anyhow!("--cores {text:?}: {e}")))?;
            let available = CpuList::available().map_err(Failure::runtime)?;
            list.check_within(&available)
                .map_err(|e| Failure::config(anyhow!("--cores {text:?}: {e}")))?;
            Ok(list.cpus().to_vec())
        }
    }
}

/// The pre-filter's maps and rule table, with the config's rules installed and a thread that
/// removes expired rules. `None` when BPF maps cannot be made (no CAP_BPF) and no rule is
/// configured: then the split runs without a pre-filter, and says so.
#[allow(clippy::type_complexity)]
fn set_up_rules(
    config: &PipelineConfig,
) -> Result<(Option<Arc<Prefilter>>, Option<crate::rules::SharedRules>), Failure> {
    let prefilter = match Prefilter::create(config.rule_capacity) {
        Ok(p) => Arc::new(p),
        Err(error) if config.rules.is_empty() => {
            tracing::warn!(%error, "no XDP pre-filter: rules cannot be added");
            return Ok((None, None));
        }
        Err(error) => return Err(Failure::runtime(error)),
    };
    let mut rules = crate::rules::Rules::new(RuleTable::new(prefilter.clone()));
    rules
        .set_config_rules(&config.rules)
        .map_err(|e| Failure::config(anyhow!(e)))?;
    if !config.rules.is_empty() {
        tracing::info!(rules = config.rules.len(), "pre-filter rules installed");
    }
    let rules = Arc::new(std::sync::Mutex::new(rules));
    let sweeper = Arc::downgrade(&rules);
    std::thread::spawn(move || {
        while let Some(rules) = sweeper.upgrade() {
            if let Ok(mut rules) = rules.lock() {
                let gone = rules.expire();
                if gone > 0 {
                    tracing::info!(rules = gone, "pre-filter rules expired");
                }
            }
            drop(rules);
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    });
    Ok((Some(prefilter), Some(rules)))
}

/// Removes the pid file at exit.
struct PidFile(PathBuf);

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Interface outputs of the pipeline.
fn veth_count(config: &PipelineConfig) -> u32 {
    match &config.output {
        BrickConfig::Balance { to, .. } | BrickConfig::Dup { to, .. } => {
            to.iter()
                .filter(|b| matches!(b, BrickConfig::Interface { .. }))
                .count() as u32
        }
        _ => 0,
    }
}

/// Output bricks for `--to veth` (interfaces PREFIX0 … PREFIX(n-1)) and `--to tap` (TAP
/// devices of those names).
fn veth_outputs(common: &CommonArgs, ways: u32) -> Vec<BrickConfig> {
    let name = |k: u32| format!("{}{k}", common.veth_prefix);
    match common.to {
        ToArg::Ways => Vec::new(),
        ToArg::Veth => (0..ways)
            .map(|k| BrickConfig::Interface { name: name(k) })
            .collect(),
        ToArg::Tap => (0..ways)
            .map(|k| BrickConfig::Tap { name: name(k) })
            .collect(),
    }
}

/// veth pairs made for `--to veth`, deleted when dropped.
struct VethPairs(Vec<String>);

fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip {}: {e} (iproute2 installed?)", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl VethPairs {
    fn create(prefix: &str, ways: u32) -> Result<Self, Failure> {
        let mut made = Self(Vec::new());
        for k in 0..ways {
            let name = format!("{prefix}{k}");
            let peer = format!("{name}p");
            if peer.len() > 15 {
                return Err(Failure::config(anyhow!(
                    "--veth-prefix {prefix:?}: {peer} is longer than an interface name may be (15)"
                )));
            }
            if std::path::Path::new("/sys/class/net").join(&name).exists() {
                return Err(Failure::config(anyhow!(
                    "interface {name} exists already: remove it or pick another --veth-prefix"
                )));
            }
            ip(&["link", "add", &name, "type", "veth", "peer", "name", &peer])
                .map_err(|e| Failure::runtime(anyhow!(e)))?;
            made.0.push(name.clone());
            for dev in [&name, &peer] {
                // No IPv6 chatter (router solicitations, DAD) on capture interfaces.
                let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"), "1");
                ip(&["link", "set", dev, "up"]).map_err(|e| Failure::runtime(anyhow!(e)))?;
            }
        }
        tracing::info!(
            pairs = made.0.len(),
            "veth outputs: frames of way k leave on {prefix}k; capture on {prefix}kp"
        );
        Ok(made)
    }
}

impl Drop for VethPairs {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = ip(&["link", "del", name]);
        }
    }
}

/// The default control socket of split `name`.
pub(crate) fn default_control(name: &str) -> PathBuf {
    PathBuf::from(format!("/run/fastedge/split-{name}.sock"))
}

fn run_engine(
    config: PipelineConfig,
    common: &CommonArgs,
    config_path: Option<&std::path::Path>,
) -> Result<(), Failure> {
    config.validate().map_err(Failure::config)?;
    let cores = parse_cores(common.cores.as_deref())?;
    let mode = u32::from_str_radix(&common.control_mode, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            Failure::config(anyhow!(
                "--control-mode {:?} is not an octal mode like 600",
                common.control_mode
            ))
        })?;
    if common.daemon {
        // Before any thread exists: fork, new session, stdio to /dev/null.
        nix::unistd::daemon(false, false)
            .context("detaching (--daemon)")
            .map_err(Failure::runtime)?;
    }
    let _pid_file = match &common.pid_file {
        Some(path) => {
            std::fs::write(path, format!("{}\n", std::process::id()))
                .with_context(|| format!("writing the pid file {}", path.display()))
                .map_err(Failure::config)?;
            Some(PidFile(path.clone()))
        }
        None => None,
    };
    let _veths = match common.to {
        ToArg::Veth if config_path.is_none() => Some(VethPairs::create(
            &common.veth_prefix,
            config.way_count().max(veth_count(&config)),
        )?),
        _ => None,
    };
    let requests = Arc::new(Requests::default());
    split_signals(requests.clone())?;
    let (prefilter, rules) = set_up_rules(&config)?;
    let shared = Arc::new(Shared {
        requests: requests.clone(),
        config: std::sync::Mutex::new(config.clone()),
        config_path: config_path.map(ToOwned::to_owned),
        stats: std::sync::Mutex::new(SplitStats::default()),
        started: std::time::Instant::now(),
        rules: rules.clone(),
    });
    let _control = if common.no_control {
        None
    } else {
        let path = common
            .control
            .clone()
            .unwrap_or_else(|| default_control(&config.name()));
        let state = shared.clone();
        Some(
            fastedge_runtime::control::ControlServer::start(&path, mode, move |cmd, request| {
                control_answer(&state, cmd, request)
            })
            .map_err(Failure::config)?,
        )
    };
    let live = std::io::stderr().is_terminal();
    let mut config = config;
    let mut reuse_ways = false;
    // One random key for the whole run (a pipeline's own `hash_key` wins), so that a reload
    // keeps flows on their ways.
    let hash_key = fastedge_rings::pipeline::random_hash_key().map_err(Failure::config)?;
    // The pipeline that ran before a reload, to go back to if the new one cannot start.
    let mut fallback: Option<PipelineConfig> = None;
    loop {
        let mut previous = SplitStats::default();
        let options = EngineOptions {
            cores: cores.clone(),
            reuse_ways,
            prefilter: prefilter.clone(),
            fast_path: !common.no_fast_path,
            hash_key: Some(hash_key),
        };
        let result = split::run(&config, &options, &requests.engine_stop, |stats| {
            if live {
                eprintln!("{}", live_line(stats, &previous));
            }
            previous = stats.clone();
            if let Ok(mut latest) = shared.stats.lock() {
                *latest = stats.clone();
            }
        });
        let stats = match result {
            Ok(stats) => stats,
            Err(error) => match fallback.take() {
                // The reloaded pipeline cannot start: run the one before it again.
                Some(previous) if !requests.shutdown.load(Ordering::Relaxed) => {
                    tracing::error!(%error, "reload: the new pipeline cannot start; going back to the previous one");
                    if let Ok(mut current) = shared.config.lock() {
                        *current = previous.clone();
                    }
                    config = previous;
                    requests.engine_stop.store(false, Ordering::Relaxed);
                    continue;
                }
                _ if error.is_config() && !reuse_ways => return Err(Failure::config(error)),
                _ => return Err(Failure::runtime(error)),
            },
        };
        fallback = None;
        if !requests.reload.swap(false, Ordering::Relaxed)
            || requests.shutdown.load(Ordering::Relaxed)
        {
            tracing::info!("split stopped: {}", describe(&stats));
            fastedge_rings::shm::remove_ways(&config.name(), config.way_count());
            return Ok(());
        }
        tracing::info!("reload: pipeline stopped: {}", describe(&stats));
        if let Some(path) = config_path {
            match std::fs::read_to_string(path)
                .map_err(anyhow::Error::from)
                .and_then(|text| PipelineConfig::from_toml(&text).map_err(anyhow::Error::from))
            {
                Ok(new) => {
                    if new.rule_capacity != config.rule_capacity {
                        tracing::warn!(
                            "reload: rule_capacity changes on restart only; keeping {}",
                            config.rule_capacity
                        );
                    }
                    if let Some(rules) = &rules {
                        let synced = rules
                            .lock()
                            .map_err(|_| "rules lock".to_owned())
                            .and_then(|mut r| r.set_config_rules(&new.rules));
                        if let Err(error) = synced {
                            tracing::error!("reload: rules: {error}");
                        }
                    }
                    fallback = Some(std::mem::replace(&mut config, new));
                }
                Err(error) => tracing::error!(
                    path = %path.display(),
                    "reload: {error:#}; keeping the pipeline in use"
                ),
            }
        }
        if let Ok(mut current) = shared.config.lock() {
            *current = config.clone();
        }
        requests.engine_stop.store(false, Ordering::Relaxed);
        if requests.shutdown.load(Ordering::Relaxed) {
            return Ok(());
        }
        reuse_ways = true;
        tracing::info!("reload: starting the pipeline again");
    }
}

pub fn run_tap(args: TapArgs) -> Result<(), Failure> {
    let (name, way) = args
        .way
        .rsplit_once(':')
        .and_then(|(n, w)| Some((n, w.parse::<u32>().ok()?)))
        .ok_or_else(|| {
            Failure::config(anyhow!("{:?}: expected NAME:WAY, e.g. eth1:3", args.way))
        })?;
    let mut consumer = Consumer::open(name, way).map_err(Failure::config)?;
    let stop = stop_on_signals()?;
    let out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))
                .map_err(Failure::config)?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = std::io::BufWriter::new(out);
    // pcap global header: nanosecond magic, version 2.4, snaplen 65535, Ethernet.
    let mut header = Vec::with_capacity(24);
    header.extend_from_slice(&0xa1b2_3c4d_u32.to_le_bytes());
    header.extend_from_slice(&2u16.to_le_bytes());
    header.extend_from_slice(&4u16.to_le_bytes());
    header.extend_from_slice(&[0; 8]);
    header.extend_from_slice(&65535u32.to_le_bytes());
    header.extend_from_slice(&1u32.to_le_bytes());
    let mut written = 0u64;
    let result: std::io::Result<()> = (|| {
        out.write_all(&header)?;
        out.flush()?;
        let limit = args.count.unwrap_or(u64::MAX);
        while written < limit && !stop.load(Ordering::Relaxed) {
            let mut failure = None;
            let max = usize::try_from(limit - written)
                .unwrap_or(usize::MAX)
                .min(1024);
            let n = consumer.read_batch(max, |record| {
                if failure.is_some() {
                    return;
                }
                let mut rec = Vec::with_capacity(16 + record.data.len());
                rec.extend_from_slice(
                    &((record.timestamp_ns / 1_000_000_000) as u32).to_le_bytes(),
                );
                rec.extend_from_slice(
                    &((record.timestamp_ns % 1_000_000_000) as u32).to_le_bytes(),
                );
                rec.extend_from_slice(&(record.data.len() as u32).to_le_bytes());
                rec.extend_from_slice(&(record.data.len() as u32).to_le_bytes());
                rec.extend_from_slice(record.data);
                if let Err(e) = out.write_all(&rec) {
                    failure = Some(e);
                }
            });
            if let Some(e) = failure {
                return Err(e);
            }
            written += n as u64;
            if n == 0 {
                out.flush()?;
                // Asleep until the distributor wakes us with the next frame; the timeout only
                // bounds how long a stop request waits.
                consumer.wait_readable(std::time::Duration::from_millis(200));
            }
        }
        out.flush()
    })();
    match result {
        // The reader (tcpdump -c, head) went away: a normal end for a tap.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other
            .with_context(|| "writing the pcap stream")
            .map_err(Failure::runtime),
    }
}
