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
use fastedge_ebpf::XdpMode;
use fastedge_rings::{
    shm::Consumer,
    split::{self, SplitConfig, SplitStats},
};
use fastedge_wire::packet::HashMode;
use nix::sys::signal::{SigSet, Signal};

use crate::Failure;

/// Distribute an interface's traffic over N ways, flow-aware.
///
/// fastedge attaches its XDP program to IFACE (native mode, else SKB mode), opens an AF_XDP
/// socket on every receive queue, and puts each frame into way `hash(flow) mod N`: both
/// directions of a flow, and every fragment of a datagram, land on the same way. Ways are
/// shared-memory rings, /dev/shm/fastedge-IFACE-0 … N-1, read by consumer applications with the
/// `fastedge-rings` consumer API or by `fastedge tap IFACE:WAY`. A slow or absent consumer only
/// costs drops on its own way, counted. Runs until SIGINT/SIGTERM; prints a line per second on
/// a terminal and a summary at exit.
#[derive(Debug, Args)]
pub struct SplitArgs {
    /// Interface to read, e.g. eth1.
    interface: String,

    /// Number of ways (consumer rings).
    #[arg(long, default_value_t = 4)]
    ways: u32,

    /// Flow hash: `2-tuple` (addresses), `3-tuple` (+ protocol), `5-tuple` (+ ports).
    /// Fragments always hash on the addresses.
    #[arg(long, value_enum, default_value_t = HashArg::Five)]
    hash: HashArg,

    /// XDP attach mode; default: native, falling back to SKB.
    #[arg(long, value_enum)]
    xdp_mode: Option<ModeArg>,

    /// Way that frames which are not IP go to.
    #[arg(long, default_value_t = 0)]
    non_ip_way: u32,

    /// Ring size of each way, in KiB (a power of two).
    #[arg(long, default_value_t = 4096)]
    way_kib: usize,

    /// Hash tunnels (IP-in-IP, GRE, VXLAN) on the outer flow instead of the inner one.
    #[arg(long)]
    no_decap: bool,
}

/// Copy an interface's traffic to N ways: every frame to every way.
///
/// Like `fastedge split` (same XDP + AF_XDP input, same ways, same counters), but each way gets
/// all the traffic — e.g. several IDS instances that must each see everything. A slow consumer
/// only loses frames on its own way.
#[derive(Debug, Args)]
pub struct DupArgs {
    /// Interface to read, e.g. eth1.
    interface: String,

    /// Number of ways (consumer rings), each getting every frame.
    #[arg(long, default_value_t = 2)]
    ways: u32,

    /// XDP attach mode; default: native, falling back to SKB.
    #[arg(long, value_enum)]
    xdp_mode: Option<ModeArg>,

    /// Ring size of each way, in KiB (a power of two).
    #[arg(long, default_value_t = 4096)]
    way_kib: usize,
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

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    Native,
    Skb,
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
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .context("blocking SIGINT/SIGTERM")
        .map_err(Failure::runtime)?;
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
    let ways: Vec<String> = stats
        .ways
        .iter()
        .enumerate()
        .map(|(i, (delivered, dropped))| format!("{i}:{delivered}/{dropped}"))
        .collect();
    format!(
        "received {} ({} bytes), non-IP {}, parse errors {}; kernel drops: ring full {}, fill ring empty {}, other {}, invalid {}; ways delivered/dropped-full {}",
        stats.received,
        stats.bytes,
        stats.non_ip,
        stats.parse_errors,
        stats.kernel.rx_ring_full,
        stats.kernel.rx_fill_ring_empty,
        stats.kernel.rx_dropped,
        stats.kernel.rx_invalid,
        ways.join(" ")
    )
}

fn check_way_kib(way_kib: usize) -> Result<(), Failure> {
    if !way_kib.is_power_of_two() || way_kib < 64 {
        return Err(Failure::config(anyhow!(
            "--way-kib {way_kib} must be a power of two, at least 64"
        )));
    }
    Ok(())
}

fn xdp_mode(mode: Option<ModeArg>) -> Option<XdpMode> {
    mode.map(|m| match m {
        ModeArg::Native => XdpMode::Native,
        ModeArg::Skb => XdpMode::Skb,
    })
}

pub fn run_dup(args: DupArgs) -> Result<(), Failure> {
    check_way_kib(args.way_kib)?;
    run_engine(SplitConfig {
        interface: args.interface,
        ways: args.ways,
        hash: HashMode::FiveTuple,
        mode: xdp_mode(args.xdp_mode),
        way_capacity: args.way_kib * 1024,
        non_ip_way: 0,
        decapsulate: true,
        duplicate: true,
    })
}

pub fn run_split(args: SplitArgs) -> Result<(), Failure> {
    check_way_kib(args.way_kib)?;
    run_engine(SplitConfig {
        interface: args.interface.clone(),
        ways: args.ways,
        hash: match args.hash {
            HashArg::Two => HashMode::TwoTuple,
            HashArg::Three => HashMode::ThreeTuple,
            HashArg::Five => HashMode::FiveTuple,
        },
        mode: xdp_mode(args.xdp_mode),
        way_capacity: args.way_kib * 1024,
        non_ip_way: args.non_ip_way,
        decapsulate: !args.no_decap,
        duplicate: false,
    })
}

fn run_engine(config: SplitConfig) -> Result<(), Failure> {
    let stop = stop_on_signals()?;
    let live = std::io::stderr().is_terminal();
    let mut previous = 0u64;
    let stats = split::run(&config, &stop, |stats| {
        if live {
            eprintln!("{} pps | {}", stats.received - previous, describe(stats));
        }
        previous = stats.received;
    })
    .map_err(|e| match e {
        split::SplitError::NoInterface(_)
        | split::SplitError::NoWays
        | split::SplitError::NonIpWay { .. } => Failure::config(e),
        other => Failure::runtime(other),
    })?;
    tracing::info!(
        mode = %stats.mode.map_or("-".to_owned(), |m| m.to_string()),
        queues = stats.queues,
        "split stopped: {}",
        describe(&stats)
    );
    Ok(())
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
                std::thread::sleep(std::time::Duration::from_millis(2));
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
