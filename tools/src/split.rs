//! `fastedge split` and `fastedge tap`: flow-aware distribution of an interface's traffic to N
//! shared-memory ways, and a way as a pcap stream.

use std::{
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context as _};
use clap::{Args, ValueEnum};
use fastedge_rings::{
    pipeline::{
        BrickConfig, HashName, InputConfig, InputMode, OutputKind, PipelineConfig, SpeedName,
        ValidPipeline,
    },
    shm::{self, Consumer},
    supervisor::{ControlSocket, Supervisor, SupervisorOptions},
    tap,
};
use fastedge_runtime::{control::parse_mode, signals, CpuList, CpuListError};

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
    /// How interfaces are read: `auto` (from the driver's XDP features: native XDP with
    /// zero-copy AF_XDP where offered, else native XDP in copy mode; without native XDP, SKB
    /// mode if the pre-filter or the in-kernel path needs XDP, else AF_PACKET; the log says
    /// which and why), `xdp-native`,
    /// `xdp-skb`, `af-packet`, or `netmap` (only in builds with the `netmap` feature, off by
    /// default; refused with the reason otherwise).
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,

    /// Ring size of each way, in KiB (a power of two, at least 64).
    #[arg(long)]
    way_kib: Option<usize>,

    /// Entries of each AF_XDP socket's receive ring, a power of two from 64 to 16384 (default
    /// 1024); its fill ring and UMEM hold twice as many (2 KiB frames: 4 MiB of locked memory
    /// per receive queue by default; without CAP_IPC_LOCK it must fit in RLIMIT_MEMLOCK).
    #[arg(long, value_name = "ENTRIES", value_parser = parse_xdp_ring)]
    xdp_ring: Option<u32>,

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
    #[arg(long, value_name = "MODE", default_value = "600", value_parser = parse_mode)]
    control_mode: u32,

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
    /// see docs/split.md, "Pre-filter". With --config, rules go in its `rules` list.
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
    Netmap,
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

impl CommonArgs {
    /// The pipeline these options declare over `inputs` (interfaces read in `--mode`, then
    /// capture files at `speed`) with `output` as its root brick.
    fn pipeline(
        &self,
        (interfaces, pcaps, speed): (&[String], &[PathBuf], SpeedName),
        output: BrickConfig,
        decapsulate: bool,
        hash_key: Option<String>,
    ) -> PipelineConfig {
        let mode = match self.mode {
            None | Some(ModeArg::Auto) => InputMode::Auto,
            Some(ModeArg::XdpNative) => InputMode::XdpNative,
            Some(ModeArg::XdpSkb) => InputMode::XdpSkb,
            Some(ModeArg::AfPacket) => InputMode::AfPacket,
            Some(ModeArg::Netmap) => InputMode::Netmap,
        };
        let interfaces = interfaces.iter().map(|i| InputConfig::interface(i, mode));
        PipelineConfig {
            name: self.name.clone(),
            inputs: interfaces
                .chain(pcaps.iter().map(|p| InputConfig::pcap(p, speed)))
                .collect(),
            output,
            decapsulate,
            way_kib: self.way_kib.unwrap_or(4096),
            rules: self.rule.clone(),
            rule_capacity: self.rule_capacity,
            hash_key,
            way_group: self.way_group.clone(),
        }
    }

    /// `count` outputs where `--to` sends them.
    fn outputs(&self, count: u32) -> (Option<u32>, Vec<BrickConfig>) {
        let prefix = self.veth_prefix.clone();
        match self.to {
            ToArg::Ways => OutputKind::Ways,
            ToArg::Veth => OutputKind::Veth(prefix),
            ToArg::Tap => OutputKind::Tap(prefix),
        }
        .outputs(count)
    }
}

pub fn run_dup(args: DupArgs) -> Result<(), Failure> {
    let (ways, to) = args.common.outputs(args.ways);
    let inputs = (args.interfaces.as_slice(), &[][..], SpeedName::Fast);
    let config = args
        .common
        .pipeline(inputs, BrickConfig::Dup { ways, to }, true, None)
        .validate()
        .map_err(Failure::config)?;
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
            let (ways, to) = args.common.outputs(args.ways.unwrap_or(4));
            let hash = match args.hash {
                Some(HashArg::Two) | None => HashName::Two,
                Some(HashArg::Three) => HashName::Three,
                Some(HashArg::Five) => HashName::Five,
            };
            let non_ip = args.non_ip_way.unwrap_or(0);
            let speed = match args.recorded_speed {
                true => SpeedName::Recorded,
                false => SpeedName::Fast,
            };
            let output = BrickConfig::Balance {
                hash,
                ways,
                to,
                non_ip,
            };
            let inputs = (args.interfaces.as_slice(), args.pcap.as_slice(), speed);
            let (decapsulate, key) = (!args.no_decap, args.hash_key.clone());
            args.common
                .pipeline(inputs, output, decapsulate, key)
                .validate()
                .map_err(Failure::config)?
        }
    };
    run_engine(config, &args.common, args.config.as_deref())
}

fn parse_cores(cores: Option<&str>) -> Result<Vec<usize>, Failure> {
    let Some(text) = cores else {
        return Ok(Vec::new());
    };
    match CpuList::parse_available(text) {
        Ok(list) => Ok(list.cpus().to_vec()),
        Err(e @ CpuListError::Affinity(_)) => Err(Failure::runtime(e)),
        Err(e) => Err(Failure::config(anyhow!("--cores {text:?}: {e}"))),
    }
}

/// Runs `config` under the split supervisor until a signal, `fastedge ctl shutdown`, or the end
/// of its capture-file inputs; a live line per second on a terminal.
fn run_engine(
    config: ValidPipeline,
    common: &CommonArgs,
    config_path: Option<&Path>,
) -> Result<(), Failure> {
    let options = SupervisorOptions {
        cores: parse_cores(common.cores.as_deref())?,
        fast_path: !common.no_fast_path,
        config_path: config_path.map(ToOwned::to_owned),
        control: (!common.no_control).then(|| ControlSocket {
            path: common.control.clone(),
            mode: common.control_mode,
        }),
        veth_prefix: (common.to == ToArg::Veth && config_path.is_none())
            .then(|| common.veth_prefix.clone()),
        xdp_ring: common.xdp_ring,
    };
    let supervisor = Supervisor::new(config, options);
    let detached = fastedge_runtime::detach(common.daemon, common.pid_file.as_deref());
    let _pid_file = detached.map_err(|e| Failure::of(e.is_config(), e))?;
    supervisor
        .handle()
        .handle_signals()
        .map_err(Failure::runtime)?;
    let live = std::io::stderr().is_terminal();
    supervisor
        .run(|now, before| {
            if live {
                eprintln!("{}", now.live_line(before));
            }
        })
        .map_err(|e| Failure::of(e.is_config(), e))?;
    Ok(())
}

pub fn run_tap(args: TapArgs) -> Result<(), Failure> {
    let (name, way) = shm::parse_way(&args.way).map_err(|e| Failure::config(anyhow!(e)))?;
    let mut consumer = Consumer::open(name, way).map_err(Failure::config)?;
    let stop = signals::stop_flag().map_err(Failure::runtime)?;
    let out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))
                .map_err(Failure::config)?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    tap::stream_way(&mut consumer, out, args.count, &stop)
        .context("writing the pcap stream")
        .map_err(Failure::runtime)?;
    Ok(())
}

/// `--xdp-ring`: a size the AF_XDP sockets take (the library's own check).
fn parse_xdp_ring(text: &str) -> Result<u32, String> {
    let ring: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of ring entries"))?;
    fastedge_rings::xdp::XskConfig::with_ring(ring, fastedge_rings::xdp::XskBindMode::Copy)
        .map_err(|error| error.to_string())?;
    Ok(ring)
}
