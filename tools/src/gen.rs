//! `fastedge gen`: synthetic traffic of many flows, both directions, out of an interface.

use std::{
    io::IsTerminal,
    net::{IpAddr, SocketAddr},
};

use anyhow::anyhow;
use clap::{Args, ValueEnum};
use fastedge_rings::gen::{self, GenConfig, GenError, Transmit};
use fastedge_wire::synth::{parse_mac, SpecError, TrafficSpec, Transport};

use crate::Failure;

/// Send UDP or TCP frames of many flows out of an interface, to drive `fastedge split` and
/// benchmarks.
///
/// Flow k runs between client CLIENT+k (port 10000 + k mod 50000) and SERVER; by default the
/// frames alternate client→server and server→client, as a mirror port sees a flow. Each frame
/// carries a 16-byte marker after its UDP/TCP header: `FEGN`, the flow number and the frame's
/// sequence number (big-endian), so receivers can check what arrived. Frames go out through an
/// AF_PACKET socket in batches (`sendmmsg`, qdisc bypassed), or with `--tx af-xdp` an AF_XDP
/// socket's TX ring. The destination MAC defaults to a
/// locally administered address no host owns, so a receiver's IP stack leaves the frames alone.
#[derive(Debug, Args)]
pub struct GenArgs {
    /// Interface to send on.
    interface: String,

    /// Number of flows.
    #[arg(long, default_value_t = 1024)]
    flows: u32,

    /// Frame size in bytes as on the wire, FCS included (64 = the minimum Ethernet frame;
    /// 1518 = a 1500-byte MTU; at most 9018, a 9,000-byte jumbo MTU, which the interface's
    /// MTU must allow).
    #[arg(long, default_value_t = 64)]
    size: usize,

    /// Frames per second; default: as fast as the interface takes them.
    #[arg(long)]
    rate: Option<u64>,

    /// Frames to send; default: until SIGINT/SIGTERM.
    #[arg(long)]
    count: Option<u64>,

    /// Transport of the flows.
    #[arg(long, value_enum, default_value_t = ProtoArg::Udp)]
    proto: ProtoArg,

    /// Only client→server frames.
    #[arg(long)]
    one_way: bool,

    /// First client address (IPv4 or IPv6); flow k uses this address plus k.
    #[arg(long, default_value = "10.1.0.0")]
    client: IpAddr,

    /// Server address and port, e.g. `10.0.0.1:443` or `[fd00::1]:443`.
    #[arg(long, default_value = "10.0.0.1:443")]
    server: SocketAddr,

    /// Destination MAC address.
    #[arg(long, default_value = "02:fe:00:00:00:02", value_parser = parse_mac)]
    dst_mac: [u8; 6],

    /// Source MAC address.
    #[arg(long, default_value = "02:fe:00:00:00:01", value_parser = parse_mac)]
    src_mac: [u8; 6],

    /// Sequence number of the first frame.
    #[arg(long, default_value_t = 0)]
    first_seq: u64,

    /// Frames per sendmmsg call (or AF_XDP TX batch).
    #[arg(long, default_value_t = 64)]
    batch: usize,

    /// How frames leave: `af-packet` (sendmmsg, qdisc bypassed) or `af-xdp` (an AF_XDP socket
    /// in copy mode on queue 0, TX ring).
    #[arg(long, value_enum, default_value_t = TxArg::AfPacket)]
    tx: TxArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TxArg {
    AfPacket,
    AfXdp,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProtoArg {
    Udp,
    Tcp,
}

pub fn run(args: GenArgs) -> Result<(), Failure> {
    if !(64..=fastedge_wire::synth::MAX_FRAME + 4).contains(&args.size) {
        return Err(Failure::config(anyhow!(
            "--size {} must be between 64 and 9018 (bytes on the wire, FCS included)",
            args.size
        )));
    }
    let size = args.size;
    let config = GenConfig {
        interface: args.interface,
        spec: TrafficSpec {
            src_mac: args.src_mac,
            dst_mac: args.dst_mac,
            client_base: args.client,
            server: args.server.ip(),
            server_port: args.server.port(),
            transport: match args.proto {
                ProtoArg::Udp => Transport::Udp,
                ProtoArg::Tcp => Transport::Tcp,
            },
            flows: args.flows,
            frame_len: args.size - 4,
            both_directions: !args.one_way,
        },
        rate: args.rate,
        count: args.count,
        first_seq: args.first_seq,
        batch: args.batch,
        transmit: match args.tx {
            TxArg::AfPacket => Transmit::AfPacket,
            TxArg::AfXdp => Transmit::AfXdp,
        },
    };
    let stop = fastedge_runtime::signals::stop_flag().map_err(Failure::runtime)?;
    let live = std::io::stderr().is_terminal();
    let mut previous = 0;
    let stats = gen::run(&config, &stop, |stats| {
        if live {
            eprintln!("{} frames/s | sent {}", stats.sent - previous, stats.sent);
        }
        previous = stats.sent;
    })
    .map_err(|e| match e {
        GenError::Spec(SpecError::FrameTooSmall { min, .. }) => Failure::config(anyhow!(
            "--size {} is too small: these headers and the 16-byte marker need {} bytes on the wire",
            size,
            min + 4
        )),
        other => Failure::of(other.is_config(), other),
    })?;
    tracing::info!("gen done: {}", stats.summary());
    Ok(())
}
