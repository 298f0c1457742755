//! The split engine: the inputs of a pipeline (interfaces through fastedge's XDP program and
//! AF_XDP sockets on every queue, or AF_PACKET TPACKET_V3 rings, or capture files), merged, and
//! every frame pushed through the pipeline's bricks into shared-memory ways and capture files.
//!
//! One engine thread serves all inputs (so each way has exactly one producer), optionally
//! pinned to a core; it polls the inputs in batches and never waits on a consumer: a full way
//! drops the packet and counts it. With capture files as the only inputs, the engine stops
//! when they are read to the end.

use std::{
    os::fd::{AsRawFd, BorrowedFd},
    sync::atomic::{AtomicBool, Ordering},
    sync::Arc,
    time::{Duration, Instant},
};

use fastedge_ebpf::{
    fast::{FastMode, SplitFast},
    rules::Prefilter,
    XdpMode, XskRedirect,
};
use fastedge_wire::packet::HashKey;

use crate::{
    afpacket::{InterfaceStats, PacketReceiver, PacketStatistics, RingConfig},
    pcap::{PcapSinkStats, PcapSource, ReplaySpeed},
    pipeline::{
        BrickConfig, HashName, InputConfig, InputMode, Pipeline, PipelineConfig, SpeedName,
        ValidPipeline, WayStats,
    },
    xdp::{XskBindMode, XskConfig, XskError, XskReceiver, XskStatistics},
};

/// How an input is read, as shown in logs and statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// XDP in this mode, redirecting to AF_XDP sockets.
    Xdp(XdpMode),
    /// An AF_PACKET TPACKET_V3 ring.
    AfPacket,
    /// A capture file.
    Pcap,
}

impl std::fmt::Display for InputKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputKind::Xdp(mode) => write!(f, "AF_XDP, XDP {mode} mode"),
            InputKind::AfPacket => write!(f, "AF_PACKET TPACKET_V3"),
            InputKind::Pcap => write!(f, "capture file"),
        }
    }
}

fn kind_text<S: serde::Serializer>(kind: &Option<InputKind>, s: S) -> Result<S::Ok, S::Error> {
    match kind {
        Some(k) => s.serialize_str(&k.to_string()),
        None => s.serialize_none(),
    }
}

/// Counters of one input; kernel drops by cause.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct InputStats {
    /// Interface name or file path.
    pub name: String,
    /// How it is read; `None` before it is opened.
    #[serde(serialize_with = "kind_text")]
    pub kind: Option<InputKind>,
    /// Receive queues read through XDP (an AF_XDP socket each), or AF_PACKET rings (one ring
    /// reads every queue when there is one engine thread).
    pub queues: u32,
    /// Frames received.
    pub received: u64,
    /// Bytes of those frames.
    pub bytes: u64,
    /// AF_XDP: XDP_STATISTICS summed over queues.
    pub xsk: XskStatistics,
    /// AF_PACKET: PACKET_STATISTICS.
    pub packet: PacketStatistics,
    /// Frames the XDP pre-filter dropped (`drop` rules).
    pub prefilter_dropped: u64,
    /// Frames the XDP pre-filter handed to the kernel instead of the ways (`bypass` rules).
    pub prefilter_bypassed: u64,
    /// With the in-kernel path: frames it sent to outputs without userspace.
    pub in_kernel: Option<u64>,
}

/// Counters of a running split; every drop has a named cause.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SplitStats {
    /// Per input, in configuration order.
    pub inputs: Vec<InputStats>,
    /// Frames that are not IP.
    pub non_ip: u64,
    /// Frames whose headers did not parse.
    pub parse_errors: u64,
    /// Per way, in way order.
    pub ways: Vec<WayStats>,
    /// Per capture-file output.
    pub pcaps: Vec<PcapSinkStats>,
    /// Per interface or TAP output.
    pub interfaces: Vec<InterfaceStats>,
}

impl SplitStats {
    /// Frames received over every input.
    pub fn received(&self) -> u64 {
        self.inputs.iter().map(|i| i.received).sum()
    }
}

/// Errors of the split engine.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// No interface has this name.
    #[error("interface {0:?} not found")]
    NoInterface(String),
    /// The pipeline could not be built.
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    /// The XDP program could not be loaded or attached.
    #[error(transparent)]
    Ebpf(#[from] fastedge_ebpf::EbpfError),
    /// An AF_XDP socket could not be set up.
    #[error(transparent)]
    Xsk(#[from] crate::xdp::XskError),
    /// An AF_PACKET socket could not be set up.
    #[error(transparent)]
    Packet(#[from] crate::afpacket::PacketError),
    /// A capture file could not be read.
    #[error(transparent)]
    Pcap(#[from] crate::pcap::PcapError),
    /// `poll` on the inputs failed.
    #[error("polling the inputs: {0}")]
    Poll(std::io::Error),
    /// Receiving from an input failed.
    #[error("reading {input}: {source}")]
    Receive {
        /// The input's name.
        input: String,
        /// The error of the call.
        source: std::io::Error,
    },
    /// An engine thread could not be pinned to its CPU.
    #[error("pinning the engine to core {core}: {source}")]
    Pin {
        /// The CPU.
        core: usize,
        /// The error of `sched_setaffinity`.
        source: nix::Error,
    },
}

impl SplitError {
    /// True when the configuration (not the system) is at fault: bad pipeline, unknown
    /// interface, a capture file that cannot be read or created.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            SplitError::NoInterface(_)
                | SplitError::Pipeline(crate::pipeline::PipelineError::Toml(_))
                | SplitError::Pipeline(crate::pipeline::PipelineError::Invalid(_))
                | SplitError::Pcap(_)
                | SplitError::Pipeline(crate::pipeline::PipelineError::Pcap(_))
                | SplitError::Pipeline(crate::pipeline::PipelineError::Interface(_))
        )
    }
}

enum Source {
    /// AF_XDP sockets of some receive queues of one interface, and (for one worker per
    /// interface) the program, whose counters it reports.
    Xdp(Vec<XskReceiver>, Option<Arc<XdpProgram>>),
    Packet(PacketReceiver),
    Pcap(PcapSource),
}

struct Input {
    source: Source,
    stats: InputStats,
}

/// An interface read through XDP: the attached program and one socket per receive queue.
struct XdpInput {
    program: Arc<XdpProgram>,
    sockets: Vec<XskReceiver>,
}

/// The XDP program on an input: the AF_XDP redirect, or the in-kernel split.
enum XdpProgram {
    Redirect(XskRedirect),
    Fast(Box<SplitFast>),
}

impl XdpProgram {
    fn register_socket(&self, queue: u32, socket: BorrowedFd<'_>) -> Result<(), SplitError> {
        match self {
            XdpProgram::Redirect(p) => p.register_socket(queue, socket)?,
            XdpProgram::Fast(p) => p.register_socket(queue, socket)?,
        }
        Ok(())
    }

    fn attach(&mut self, ifindex: u32, mode: XdpMode) -> Result<(), SplitError> {
        match self {
            XdpProgram::Redirect(p) => p.attach(ifindex, mode)?,
            XdpProgram::Fast(p) => p.attach(ifindex, mode)?,
        }
        Ok(())
    }
}

/// The in-kernel path for a pipeline whose one stage sends only to interfaces.
#[derive(Debug, Clone)]
pub struct FastPlan {
    /// Output interface indexes, in output order.
    outputs: Vec<u32>,
    /// Far ends of veth outputs, which need an XDP program to receive redirected frames.
    peers: Vec<u32>,
    mode: FastMode,
}

fn ifindex_of(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// The interface in this namespace with index `index`.
fn name_of(index: u32) -> Option<String> {
    std::fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .find_map(|e| {
            let i: u32 = std::fs::read_to_string(e.path().join("ifindex"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            (i == index).then(|| e.file_name().to_string_lossy().into_owned())
        })
}

/// Whether `config` can run in the kernel, and how (hashing under `hash_key`, the key the
/// userspace engine uses); the reason when not.
pub fn fast_plan(config: &PipelineConfig, hash_key: HashKey) -> Result<FastPlan, String> {
    let input = match config.inputs.as_slice() {
        [one] => one,
        _ => return Err("several inputs".into()),
    };
    if input.interface.is_none() || input.mode == InputMode::AfPacket {
        return Err("the input is not read through XDP".into());
    }
    let (outputs, mode) = match &config.output {
        BrickConfig::Balance {
            hash, to, non_ip, ..
        } => (
            to,
            FastMode::Balance {
                hash_tuple: match hash {
                    HashName::Two => 2,
                    HashName::Three => 3,
                    HashName::Five => 5,
                },
                non_ip: *non_ip,
                hash_key,
            },
        ),
        BrickConfig::Dup { to, .. } => (to, FastMode::Duplicate),
        _ => return Err("the pipeline is not one balance or duplicate stage".into()),
    };
    if !config.decapsulate {
        return Err("decapsulate = false (the kernel path hashes inner flows of tunnels in userspace only when decapsulating)".into());
    }
    let mut plan = FastPlan {
        outputs: Vec::new(),
        peers: Vec::new(),
        mode,
    };
    if outputs.is_empty() || outputs.len() > fastedge_ebpf::fast::MAX_OUTPUTS as usize {
        return Err("the stage's outputs are not all interfaces".into());
    }
    for output in outputs {
        let BrickConfig::Interface { name } = output else {
            return Err("the stage's outputs are not all interfaces".into());
        };
        let index = ifindex_of(name).ok_or_else(|| format!("output {name} not found"))?;
        plan.outputs.push(index);
        let link: u32 = std::fs::read_to_string(format!("/sys/class/net/{name}/iflink"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(index);
        if link != index {
            // A veth (or similar pair): its far end must be here to get an XDP program.
            let peer = name_of(link)
                .filter(|peer| {
                    std::fs::read_to_string(format!("/sys/class/net/{peer}/iflink"))
                        .ok()
                        .and_then(|t| t.trim().parse::<u32>().ok())
                        == Some(index)
                })
                .ok_or_else(|| format!("output {name}'s far end is in another namespace"))?;
            plan.peers.push(ifindex_of(&peer).unwrap_or(link));
        }
    }
    Ok(plan)
}

fn open_xdp(
    interface: &str,
    mode: XdpMode,
    bind: XskBindMode,
    prefilter: Option<&Prefilter>,
    fast: Option<&FastPlan>,
    ring: Option<u32>,
) -> Result<XdpInput, SplitError> {
    let ifindex = nix::net::if_::if_nametoindex(interface)
        .map_err(|_| SplitError::NoInterface(interface.to_owned()))?;
    let mut program = match fast {
        None => XdpProgram::Redirect(XskRedirect::load_with(prefilter)?),
        Some(plan) => {
            let mut fast = SplitFast::load(prefilter, &plan.outputs, plan.mode)?;
            let peers = plan
                .peers
                .iter()
                .try_for_each(|&peer| fast.attach_pass(peer));
            match peers {
                Ok(()) => {
                    tracing::info!(
                        %interface,
                        outputs = plan.outputs.len(),
                        "in-kernel fast path: XDP hashes and redirects to the output interfaces (DEVMAP); frames it cannot parse as userspace does go through userspace"
                    );
                    XdpProgram::Fast(Box::new(fast))
                }
                Err(error) => {
                    // E.g. a veth output's far end runs an XDP program of its own already.
                    tracing::warn!(%error, "in-kernel fast path not possible; frames go through userspace");
                    XdpProgram::Redirect(XskRedirect::load_with(prefilter)?)
                }
            }
        }
    };
    let queues = crate::sys::rx_queues(interface);
    let socket_config = XskConfig::with_ring(ring.unwrap_or(crate::xdp::DEFAULT_RING), bind)?;
    let mut sockets = Vec::with_capacity(queues as usize);
    for queue in 0..queues {
        let socket = XskReceiver::open(interface, queue, &socket_config)?;
        program.register_socket(queue, socket.fd())?;
        sockets.push(socket);
    }
    tracing::info!(
        %interface,
        ring = socket_config.ring_size(),
        umem_mib = socket_config.umem_bytes() >> 20,
        "AF_XDP rings ({})",
        if ring.is_some() { "--xdp-ring" } else { "default" }
    );
    // Attach last: every queue has its socket before the first frame is redirected.
    program.attach(ifindex, mode)?;
    Ok(XdpInput {
        program: Arc::new(program),
        sockets,
    })
}

/// An input opened, before it is handed to engine threads.
enum Opened {
    Xdp(XdpInput, InputStats),
    /// AF_PACKET rings in one fanout group by receive queue: one per queue.
    PacketQueues(Vec<PacketReceiver>, InputStats),
    Other(Box<Input>),
}

impl Opened {
    /// The receive queues it can give an engine thread each (1: it takes one thread).
    fn queues(&self) -> usize {
        match self {
            Opened::Xdp(xdp, _) => xdp.sockets.len(),
            Opened::PacketQueues(receivers, _) => receivers.len(),
            Opened::Other(_) => 1,
        }
    }
}

/// Opens one input. `threads`: how many engine threads its receive queues may get (`None`:
/// one, as with several inputs or capture-file outputs); AF_PACKET opens a ring for each.
fn open_input(
    config: &InputConfig,
    prefilter: Option<&Prefilter>,
    prefilter_wanted: bool,
    fast: Option<&FastPlan>,
    threads: Option<u32>,
    ring: Option<u32>,
) -> Result<Opened, SplitError> {
    if let Some(path) = &config.pcap {
        let speed = match config.speed {
            SpeedName::Fast => ReplaySpeed::Fast,
            SpeedName::Recorded => ReplaySpeed::Recorded,
        };
        return Ok(Opened::Other(Box::new(Input {
            source: Source::Pcap(PcapSource::open(path, speed)?),
            stats: InputStats {
                name: path.display().to_string(),
                kind: Some(InputKind::Pcap),
                queues: 1,
                ..InputStats::default()
            },
        })));
    }
    let interface = config.interface.clone().unwrap_or_default();
    if nix::net::if_::if_nametoindex(interface.as_str()).is_err() {
        return Err(SplitError::NoInterface(interface));
    }
    let stats = |kind: InputKind, queues: u32| InputStats {
        name: interface.clone(),
        kind: Some(kind),
        queues,
        ..InputStats::default()
    };
    let xdp = |input: XdpInput, mode: XdpMode| {
        let queues = input.sockets.len() as u32;
        let multi_buffer = input.sockets.iter().all(XskReceiver::multi_buffer);
        tracing::info!(
            %interface,
            mode = %InputKind::Xdp(mode),
            queues,
            multi_buffer,
            "input open{}",
            if multi_buffer {
                ""
            } else {
                " (AF_XDP without multi-buffer: frames longer than 1,792 bytes are dropped by the kernel)"
            }
        );
        Opened::Xdp(input, stats(InputKind::Xdp(mode), queues))
    };
    let af_packet = || -> Result<Opened, SplitError> {
        let queues = crate::sys::rx_queues(&interface);
        let rings = threads.map_or(1, |threads| queues.min(threads));
        if rings > 1 {
            let receivers = PacketReceiver::open_group(
                &interface,
                RingConfig::default(),
                libc::PACKET_FANOUT_QM,
                rings,
            )?;
            tracing::info!(
                %interface,
                mode = %InputKind::AfPacket,
                queues,
                rings,
                "input open: rings in a PACKET_FANOUT_QM group (receive queue k to ring k mod {rings}), an engine thread each"
            );
            return Ok(Opened::PacketQueues(
                receivers,
                stats(InputKind::AfPacket, rings),
            ));
        }
        let receiver = PacketReceiver::open(&interface, RingConfig::default(), None)?;
        tracing::info!(%interface, mode = %InputKind::AfPacket, "input open");
        Ok(Opened::Other(Box::new(Input {
            source: Source::Packet(receiver),
            stats: stats(InputKind::AfPacket, 1),
        })))
    };
    match config.mode {
        InputMode::XdpNative => Ok(xdp(
            open_xdp(
                &interface,
                XdpMode::Native,
                XskBindMode::Copy,
                prefilter,
                fast,
                ring,
            )?,
            XdpMode::Native,
        )),
        InputMode::XdpSkb => Ok(xdp(
            open_xdp(
                &interface,
                XdpMode::Skb,
                XskBindMode::Copy,
                prefilter,
                fast,
                ring,
            )?,
            XdpMode::Skb,
        )),
        InputMode::AfPacket => af_packet(),
        InputMode::Netmap => Err(SplitError::Pipeline(
            crate::pipeline::PipelineError::Invalid(format!(
                "{interface}: netmap: {}",
                crate::pipeline::NETMAP_UNAVAILABLE
            )),
        )),
        InputMode::Auto => {
            let features = nix::net::if_::if_nametoindex(interface.as_str())
                .ok()
                .and_then(|ifindex| match fastedge_ebpf::xdp_features(ifindex) {
                    Ok(features) => features,
                    Err(error) => {
                        tracing::info!(%interface, %error, "XDP features unknown");
                        None
                    }
                });
            let needs_xdp = if fast.is_some() {
                Some("the in-kernel fast path")
            } else if prefilter.is_some() && prefilter_wanted {
                Some("the pre-filter (rules in the pipeline, or a control socket to add them)")
            } else {
                None
            };
            let (choice, why) = auto_choice(features, needs_xdp);
            tracing::info!(%interface, choice = ?choice, "mode auto: {why}");
            match choice {
                AutoChoice::AfPacket => af_packet(),
                AutoChoice::XdpZeroCopy => {
                    match open_xdp(
                        &interface,
                        XdpMode::Native,
                        XskBindMode::ZeroCopy,
                        prefilter,
                        fast,
                        ring,
                    ) {
                        Ok(input) => Ok(xdp(input, XdpMode::Native)),
                        Err(error) => {
                            tracing::warn!(%interface, %error, "zero-copy AF_XDP refused; copy mode");
                            native_else(
                                &interface, prefilter, fast, ring, needs_xdp, &xdp, &af_packet,
                            )
                        }
                    }
                }
                AutoChoice::XdpCopy | AutoChoice::FirstThatOpens => native_else(
                    &interface, prefilter, fast, ring, needs_xdp, &xdp, &af_packet,
                ),
                AutoChoice::XdpSkb => skb_else(&interface, prefilter, fast, ring, &xdp, &af_packet),
            }
        }
    }
}

/// Native XDP with AF_XDP in copy mode; if it does not attach, SKB mode where `needs_xdp`,
/// else AF_PACKET.
fn native_else(
    interface: &str,
    prefilter: Option<&Prefilter>,
    fast: Option<&FastPlan>,
    ring: Option<u32>,
    needs_xdp: Option<&str>,
    xdp: &dyn Fn(XdpInput, XdpMode) -> Opened,
    af_packet: &dyn Fn() -> Result<Opened, SplitError>,
) -> Result<Opened, SplitError> {
    match open_xdp(
        interface,
        XdpMode::Native,
        XskBindMode::Copy,
        prefilter,
        fast,
        ring,
    ) {
        Ok(input) => Ok(xdp(input, XdpMode::Native)),
        Err(error @ SplitError::Xsk(XskError::Umem { .. })) if ring.is_some() => Err(error),
        Err(native) if needs_xdp.is_some() => {
            tracing::info!(%interface, error = %native, "native XDP unavailable; trying SKB mode");
            skb_else(interface, prefilter, fast, ring, xdp, af_packet)
        }
        Err(native) => {
            tracing::info!(%interface, error = %native, "native XDP unavailable; reading with AF_PACKET");
            af_packet()
        }
    }
}

/// SKB-mode XDP; if even that does not attach, AF_PACKET, saying what is lost.
fn skb_else(
    interface: &str,
    prefilter: Option<&Prefilter>,
    fast: Option<&FastPlan>,
    ring: Option<u32>,
    xdp: &dyn Fn(XdpInput, XdpMode) -> Opened,
    af_packet: &dyn Fn() -> Result<Opened, SplitError>,
) -> Result<Opened, SplitError> {
    match open_xdp(
        interface,
        XdpMode::Skb,
        XskBindMode::Copy,
        prefilter,
        fast,
        ring,
    ) {
        Ok(input) => Ok(xdp(input, XdpMode::Skb)),
        Err(error @ SplitError::Xsk(XskError::Umem { .. })) if ring.is_some() => Err(error),
        Err(skb) => {
            tracing::warn!(%interface, error = %skb, "XDP unavailable; reading with AF_PACKET: pre-filter rules and the in-kernel path do not apply to this input");
            af_packet()
        }
    }
}

/// What `mode = "auto"` reads an interface with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoChoice {
    /// Native XDP with zero-copy AF_XDP: the driver offers it.
    XdpZeroCopy,
    /// Native XDP with AF_XDP in copy mode: the driver runs XDP but offers no zero-copy.
    XdpCopy,
    /// Generic (SKB-mode) XDP: no native XDP here, but something needs XDP.
    XdpSkb,
    /// AF_PACKET: no native XDP here and nothing needs XDP.
    AfPacket,
    /// The kernel does not say what the driver offers: native XDP if it attaches, else SKB
    /// mode when something needs XDP, else AF_PACKET.
    FirstThatOpens,
}

/// The path `mode = "auto"` takes on a driver offering `features` (`None`: the kernel does not
/// tell, before Linux 6.3), when `needs_xdp` names what needs XDP (the pre-filter, the
/// in-kernel path), and why, in words for the log.
///
/// Measured on veth (BENCHMARKS.md, rate search): native XDP with AF_XDP in copy mode sustains
/// the highest rate without loss (1.38 M 64-byte frames/s against 1.11 M for AF_PACKET), though
/// at moderate rates it costs more CPU per frame; SKB-mode XDP sustains far less (0.15 M), so it
/// is only taken when XDP is needed and there is no native XDP.
pub fn auto_choice(
    features: Option<fastedge_ebpf::XdpFeatures>,
    needs_xdp: Option<&str>,
) -> (AutoChoice, String) {
    match (features, needs_xdp) {
        (None, _) => (
            AutoChoice::FirstThatOpens,
            "the kernel does not report the driver's XDP features: native XDP if it attaches, \
             else SKB mode where XDP is needed, else AF_PACKET"
                .into(),
        ),
        (Some(f), _) if f.native() && f.zero_copy() => (
            AutoChoice::XdpZeroCopy,
            "the driver offers native XDP with zero-copy AF_XDP: frames land in the UMEM without \
             a copy"
                .into(),
        ),
        (Some(f), _) if f.native() => (
            AutoChoice::XdpCopy,
            "native XDP without zero-copy AF_XDP: XDP with AF_XDP in copy mode, which sustains \
             the highest rate without loss here (AF_PACKET costs less CPU per frame at \
             moderate rates: --mode af-packet)"
                .into(),
        ),
        (Some(_), Some(what)) => (
            AutoChoice::XdpSkb,
            format!(
                "no native XDP on this driver, but {what} needs XDP: SKB-mode XDP (it sustains \
                 far lower rates than AF_PACKET)"
            ),
        ),
        (Some(_), None) => (
            AutoChoice::AfPacket,
            "no native XDP on this driver and nothing needs XDP (no pre-filter rules, no control \
             socket, no in-kernel path): AF_PACKET, which sustains higher rates than SKB-mode XDP"
                .into(),
        ),
    }
}

/// Settings of the engine threads.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// CPUs to pin engine threads to, in turn (thread k on `cores[k % len]`); empty: no
    /// pinning.
    pub cores: Vec<usize>,
    /// Keep way files of the same geometry (and their consumers): set on a reload.
    pub reuse_ways: bool,
    /// Pre-filter rule maps for the XDP programs (shared, kept across reloads); `None`: the
    /// programs filter nothing.
    pub prefilter: Option<Arc<Prefilter>>,
    /// Run the pipeline in the kernel when it can ([`fast_plan`]).
    pub fast_path: bool,
    /// The flow-hash key when the pipeline configures none (`hash_key`); `None`: a random
    /// key for this run. A supervisor sets one random key at start to keep flows on their
    /// ways across reloads.
    pub hash_key: Option<HashKey>,
    /// Whether a pre-filter may get rules (the pipeline has some, or a control socket can add
    /// them): then `mode = "auto"` keeps XDP even where AF_PACKET would cost less, since rules
    /// run in the XDP program.
    pub prefilter_wanted: bool,
    /// Where the pipeline's TAP devices come from: a supervisor keeps them across reloads.
    pub taps: crate::afpacket::TapDevices,
    /// Rules aimed at single ways (NetControl rules with a way), applied by every engine
    /// thread; `None`: none.
    pub way_filters: Option<Arc<crate::rules::WayFilters>>,
    /// Entries of each AF_XDP socket's receive ring; the fill ring and UMEM hold twice as many
    /// ([`XskConfig::with_ring`]). `None`: [`crate::xdp::DEFAULT_RING`].
    pub xdp_ring: Option<u32>,
}

fn pin(core: usize) -> Result<(), SplitError> {
    let mut set = nix::sched::CpuSet::new();
    set.set(core)
        .map_err(|source| SplitError::Pin { core, source })?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|source| SplitError::Pin { core, source })
}

/// What one engine thread owns: its inputs and its copy of the pipeline.
struct Worker {
    inputs: Vec<Input>,
    pipeline: Pipeline,
}

/// Runs `config` until `stop` is set (or every input, all capture files, is read to the end);
/// calls `tick` about once a second with the counters.
///
/// With a single interface on several receive queues (and no capture-file outputs), there is
/// one engine thread per queue, at most one per CPU of `options.cores` (else of the
/// machine): through XDP a thread serves one or more queues' AF_XDP sockets, through AF_PACKET
/// one ring of a PACKET_FANOUT_QM group; each thread writes its own lane of every way.
/// Otherwise one engine thread serves every input. Threads are pinned to `options.cores` in
/// turn.
pub fn run(
    config: &ValidPipeline,
    options: &EngineOptions,
    stop: &AtomicBool,
    mut tick: impl FnMut(&SplitStats),
) -> Result<SplitStats, SplitError> {
    let hash_key = match (config.hash_key(), options.hash_key) {
        (Some(key), _) | (None, Some(key)) => key,
        (None, None) => crate::pipeline::random_hash_key()?,
    };
    let plan = if options.fast_path {
        match fast_plan(config, hash_key) {
            Ok(plan) => Some(plan),
            Err(why) => {
                tracing::debug!("in-kernel fast path not used: {why}");
                None
            }
        }
    } else {
        None
    };
    // A ring size the sockets cannot take is an error before anything opens (in auto mode a
    // failing AF_XDP socket would otherwise fall back to AF_PACKET).
    if let Some(ring) = options.xdp_ring {
        XskConfig::with_ring(ring, XskBindMode::Copy)?;
    }
    // One input and no capture-file outputs: its receive queues may get a thread each, as
    // many as there are CPUs to run them (`--cores`, else the machine's).
    let cpus = if options.cores.is_empty() {
        std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
    } else {
        options.cores.len() as u32
    };
    let threads =
        (config.inputs.len() == 1 && !Pipeline::has_capture_files(config)).then_some(cpus);
    let mut opened = config
        .inputs
        .iter()
        .map(|input| {
            open_input(
                input,
                options.prefilter.as_deref(),
                options.prefilter_wanted,
                plan.as_ref(),
                threads,
                options.xdp_ring,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut programs = Vec::new();
    let per_queue = match opened.as_slice() {
        [one] if one.queues() > 1 => {
            if threads.is_none() {
                tracing::info!("capture-file outputs: one engine thread serves every queue");
            }
            threads.is_some()
        }
        _ => false,
    };
    let mut workers = Vec::new();
    if per_queue {
        let Some(one) = opened.pop() else {
            unreachable!("matched above");
        };
        // As many threads as queues, at most one per CPU: a thread with several AF_XDP
        // queues serves their sockets in turn (AF_PACKET opened no more rings than that).
        let cap = threads.map_or(1, |t| t.max(1) as usize);
        let (sources, stats): (Vec<(Source, u32)>, InputStats) = match one {
            Opened::Xdp(xdp, stats) => {
                let queues = xdp.sockets.len();
                let n = queues.min(cap);
                let mut groups: Vec<Vec<XskReceiver>> = (0..n).map(|_| Vec::new()).collect();
                for (k, socket) in xdp.sockets.into_iter().enumerate() {
                    groups[k % n].push(socket);
                }
                if n < queues {
                    tracing::info!(
                        queues,
                        cpus = n,
                        "more receive queues than CPUs to run them: an engine thread serves several"
                    );
                }
                let sources = groups
                    .into_iter()
                    .enumerate()
                    .map(|(k, sockets)| {
                        let program = (k == 0).then(|| xdp.program.clone());
                        let queues = sockets.len() as u32;
                        (Source::Xdp(sockets, program), queues)
                    })
                    .collect();
                programs.push(xdp.program);
                (sources, stats)
            }
            Opened::PacketQueues(receivers, stats) => (
                receivers
                    .into_iter()
                    .map(|r| (Source::Packet(r), 1))
                    .collect(),
                stats,
            ),
            Opened::Other(_) => unreachable!("one queue only"),
        };
        let lanes = sources.len() as u32;
        let pipelines =
            Pipeline::build_lanes_with(config, lanes, options.reuse_ways, hash_key, &options.taps)?;
        for ((source, queues), pipeline) in sources.into_iter().zip(pipelines) {
            workers.push(Worker {
                inputs: vec![Input {
                    source,
                    stats: InputStats {
                        queues,
                        ..stats.clone()
                    },
                }],
                pipeline,
            });
        }
    } else {
        let mut inputs = Vec::new();
        for input in opened {
            match input {
                Opened::Xdp(xdp, stats) => {
                    inputs.push(Input {
                        source: Source::Xdp(xdp.sockets, Some(xdp.program.clone())),
                        stats,
                    });
                    programs.push(xdp.program);
                }
                Opened::PacketQueues(..) => {
                    unreachable!("rings per queue are opened only when each gets a thread")
                }
                Opened::Other(input) => inputs.push(*input),
            }
        }
        workers.push(Worker {
            inputs,
            pipeline: Pipeline::build_lanes_with(
                config,
                1,
                options.reuse_ways,
                hash_key,
                &options.taps,
            )?
            .pop()
            .ok_or_else(|| SplitError::Poll(std::io::Error::other("no pipeline")))?,
        });
    }
    for worker in &mut workers {
        worker.pipeline.set_way_filters(options.way_filters.clone());
    }
    tracing::info!(
        name = %config.name(),
        inputs = config.inputs.len(),
        ways = config.way_count(),
        threads = workers.len(),
        cores = ?options.cores,
        "split running"
    );
    let result = if workers.len() == 1 {
        let mut worker = workers.pop().expect("one worker");
        if let Some(&core) = options.cores.first() {
            pin(core)?;
        }
        worker.run(stop, &mut tick)
    } else {
        run_threads(workers, options, stop, &mut tick)
    };
    // The programs detach when the last reference goes (here, the workers having ended).
    drop(programs);
    result
}

/// Runs one worker per thread; merges their counters once a second for `tick`.
fn run_threads(
    workers: Vec<Worker>,
    options: &EngineOptions,
    stop: &AtomicBool,
    tick: &mut impl FnMut(&SplitStats),
) -> Result<SplitStats, SplitError> {
    // Each thread's latest counters; `None` until it has reported once.
    let latest: Vec<std::sync::Mutex<Option<SplitStats>>> = workers
        .iter()
        .map(|_| std::sync::Mutex::new(None))
        .collect();
    let failed = AtomicBool::new(false);
    let results = std::thread::scope(|scope| {
        let handles: std::io::Result<Vec<_>> = workers
            .into_iter()
            .enumerate()
            .map(|(k, mut worker)| {
                let core =
                    (!options.cores.is_empty()).then(|| options.cores[k % options.cores.len()]);
                let slot = &latest[k];
                let failed = &failed;
                std::thread::Builder::new()
                    .name(format!("split-q{k}"))
                    .spawn_scoped(scope, move || {
                        if let Some(core) = core {
                            pin(core)?;
                        }
                        let stop_all = StopEither(stop, failed);
                        let result = worker.run_until(&stop_all, &mut |stats: &SplitStats| {
                            if let Ok(mut slot) = slot.lock() {
                                *slot = Some(stats.clone());
                            }
                        });
                        if result.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                        result
                    })
            })
            .collect();
        let handles = match handles {
            Ok(h) => h,
            Err(error) => {
                failed.store(true, Ordering::Relaxed);
                return vec![Err(SplitError::Poll(error))];
            }
        };
        // The first merged snapshot goes out as soon as every thread has reported.
        let mut last_tick = Instant::now() - Duration::from_secs(1);
        while !stop.load(Ordering::Relaxed)
            && !failed.load(Ordering::Relaxed)
            && !handles.iter().all(|h| h.is_finished())
        {
            std::thread::sleep(Duration::from_millis(100));
            let now: Option<Vec<SplitStats>> = latest
                .iter()
                .map(|m| m.lock().ok().and_then(|s| s.clone()))
                .collect();
            if let Some(now) = now.filter(|_| last_tick.elapsed() >= Duration::from_secs(1)) {
                last_tick = Instant::now();
                tick(&merge(&now));
            }
        }
        failed.store(true, Ordering::Relaxed); // tells the threads to stop too
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(SplitError::Poll(std::io::Error::other(
                        "engine thread panicked",
                    )))
                })
            })
            .collect::<Vec<_>>()
    });
    let mut all = Vec::new();
    for result in results {
        all.push(result?);
    }
    Ok(merge(&all))
}

/// A stop flag that is set when either of two flags is.
struct StopEither<'a>(&'a AtomicBool, &'a AtomicBool);

impl StopEither<'_> {
    fn load(&self) -> bool {
        self.0.load(Ordering::Relaxed) || self.1.load(Ordering::Relaxed)
    }
}

/// Sums the counters of engine threads: inputs by name, ways by index.
fn merge(parts: &[SplitStats]) -> SplitStats {
    let mut total = SplitStats::default();
    for part in parts {
        for input in &part.inputs {
            match total.inputs.iter_mut().find(|i| i.name == input.name) {
                Some(sum) if parts.len() > 1 => {
                    sum.queues += input.queues;
                    sum.received += input.received;
                    sum.bytes += input.bytes;
                    sum.xsk.rx_dropped += input.xsk.rx_dropped;
                    sum.xsk.rx_ring_full += input.xsk.rx_ring_full;
                    sum.xsk.rx_fill_ring_empty += input.xsk.rx_fill_ring_empty;
                    sum.xsk.rx_invalid += input.xsk.rx_invalid;
                    sum.xsk.rx_too_long += input.xsk.rx_too_long;
                    sum.packet.packets += input.packet.packets;
                    sum.packet.drops += input.packet.drops;
                    sum.packet.freezes += input.packet.freezes;
                    sum.prefilter_dropped += input.prefilter_dropped;
                    sum.prefilter_bypassed += input.prefilter_bypassed;
                    sum.in_kernel = match (sum.in_kernel, input.in_kernel) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    };
                }
                _ => total.inputs.push(input.clone()),
            }
        }
        total.non_ip += part.non_ip;
        total.parse_errors += part.parse_errors;
        if total.ways.len() < part.ways.len() {
            total.ways.resize(part.ways.len(), WayStats::default());
        }
        for (sum, way) in total.ways.iter_mut().zip(&part.ways) {
            sum.delivered += way.delivered;
            sum.dropped_full += way.dropped_full;
            sum.bad_positions += way.bad_positions;
            sum.filtered += way.filtered;
            sum.consumer = sum.consumer.or(way.consumer);
        }
        total.pcaps.extend(part.pcaps.iter().cloned());
        for iface in &part.interfaces {
            match total.interfaces.iter_mut().find(|i| i.name == iface.name) {
                Some(sum) => {
                    sum.sent += iface.sent;
                    sum.dropped += iface.dropped;
                    sum.sent_in_kernel += iface.sent_in_kernel;
                    // Threads that send differently (one queue each, too few queues) all say so.
                    if !sum.transmit.split('+').any(|t| t == iface.transmit) {
                        sum.transmit = format!("{}+{}", sum.transmit, iface.transmit);
                    }
                }
                None => total.interfaces.push(iface.clone()),
            }
        }
    }
    total
}

impl Worker {
    fn run(
        &mut self,
        stop: &AtomicBool,
        tick: &mut impl FnMut(&SplitStats),
    ) -> Result<SplitStats, SplitError> {
        let never = AtomicBool::new(false);
        self.run_until(&StopEither(stop, &never), tick)
    }

    /// The engine loop: batches from every input through the pipeline, until stopped or every
    /// input (all capture files) is read to the end.
    fn run_until(
        &mut self,
        stop: &StopEither<'_>,
        tick: &mut impl FnMut(&SplitStats),
    ) -> Result<SplitStats, SplitError> {
        let all_files = self
            .inputs
            .iter()
            .all(|i| matches!(i.source, Source::Pcap(_)));
        let pipeline = &mut self.pipeline;
        // A first snapshot at once (what runs, in which mode), then about once a second.
        tick(&collect(&mut self.inputs, pipeline));
        let mut last_tick = Instant::now();
        while !stop.load() {
            pipeline.refresh_way_filters();
            let now_ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let mut got = 0;
            let mut next_due: Option<Duration> = None;
            for input in &mut self.inputs {
                let stats = &mut input.stats;
                let mut take = |frame: &[u8], ts: u64| {
                    stats.received += 1;
                    stats.bytes += frame.len() as u64;
                    pipeline.push(frame, ts);
                };
                match &mut input.source {
                    Source::Xdp(sockets, _) => {
                        for socket in sockets.iter_mut() {
                            got += socket.receive(Duration::ZERO, |frame| take(frame, now_ns))?;
                        }
                    }
                    Source::Packet(receiver) => match receiver.receive(Duration::ZERO, &mut take) {
                        Ok(n) => got += n,
                        Err(source) => {
                            return Err(SplitError::Receive {
                                input: input.stats.name.clone(),
                                source,
                            })
                        }
                    },
                    Source::Pcap(file) => {
                        let (n, due) = file.receive(256, &mut take)?;
                        got += n;
                        if let Some(due) = due {
                            next_due = Some(next_due.map_or(due, |d| d.min(due)));
                        }
                    }
                }
            }
            if all_files
                && self
                    .inputs
                    .iter()
                    .all(|i| matches!(&i.source, Source::Pcap(f) if f.finished()))
            {
                break;
            }
            if got > 0 {
                pipeline.flush_outputs();
            } else {
                pipeline.kick_outputs();
                let timeout = next_due.map_or(Duration::from_millis(100), |d| {
                    d.min(Duration::from_millis(100))
                });
                wait_readable(&self.inputs, timeout)?;
            }
            if last_tick.elapsed() >= Duration::from_secs(1) {
                last_tick = Instant::now();
                pipeline.housekeeping();
                tick(&collect(&mut self.inputs, pipeline));
            }
        }
        pipeline.housekeeping();
        Ok(collect(&mut self.inputs, pipeline))
    }
}

fn collect(inputs: &mut [Input], pipeline: &Pipeline) -> SplitStats {
    let mut interfaces = pipeline.interface_stats();
    let mut fast_outputs = vec![0u64; interfaces.len()];
    for input in inputs.iter_mut() {
        match &mut input.source {
            Source::Xdp(sockets, program) => {
                match program.as_deref() {
                    Some(XdpProgram::Redirect(p)) => {
                        if let Ok(counters) = p.counters() {
                            input.stats.prefilter_dropped = counters.dropped;
                            input.stats.prefilter_bypassed = counters.bypassed;
                        }
                    }
                    Some(XdpProgram::Fast(p)) => {
                        if let Ok(counters) = p.counters() {
                            input.stats.prefilter_dropped = counters.dropped;
                            input.stats.prefilter_bypassed = counters.bypassed;
                            input.stats.in_kernel = Some(counters.in_kernel);
                        }
                        for (index, iface) in (0u32..).zip(fast_outputs.iter_mut()) {
                            *iface = p.output_frames(index).unwrap_or(0);
                        }
                    }
                    None => {}
                }
                let mut kernel = XskStatistics::default();
                for socket in sockets.iter() {
                    if let Ok(s) = socket.statistics() {
                        kernel.rx_dropped += s.rx_dropped;
                        kernel.rx_ring_full += s.rx_ring_full;
                        kernel.rx_fill_ring_empty += s.rx_fill_ring_empty;
                        kernel.rx_invalid += s.rx_invalid;
                        kernel.rx_too_long += s.rx_too_long;
                    }
                }
                input.stats.xsk = kernel;
            }
            Source::Packet(receiver) => {
                if let Ok(s) = receiver.statistics() {
                    input.stats.packet = s;
                }
            }
            Source::Pcap(_) => {}
        }
    }
    SplitStats {
        inputs: inputs.iter().map(|i| i.stats.clone()).collect(),
        non_ip: pipeline.non_ip,
        parse_errors: pipeline.parse_errors,
        ways: pipeline.way_stats(),
        pcaps: pipeline.pcap_stats(),
        interfaces: {
            for (iface, kernel) in interfaces.iter_mut().zip(fast_outputs) {
                iface.sent_in_kernel = kernel;
            }
            interfaces
        },
    }
}

fn wait_readable(inputs: &[Input], timeout: Duration) -> Result<(), SplitError> {
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut add = |fd: BorrowedFd<'_>| {
        fds.push(libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
    };
    for input in inputs {
        match &input.source {
            Source::Xdp(sockets, _) => sockets.iter().for_each(|s| add(s.fd())),
            Source::Packet(receiver) => add(receiver.fd()),
            Source::Pcap(_) => {}
        }
    }
    if fds.is_empty() {
        std::thread::sleep(timeout);
        return Ok(());
    }
    if let Err(error) = crate::sys::poll_many(&mut fds, timeout) {
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(SplitError::Poll(error));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{auto_choice, AutoChoice};
    use fastedge_ebpf::XdpFeatures;

    #[test]
    fn auto_takes_the_path_that_sustains_most_the_driver_allows() {
        // NETDEV_XDP_ACT_BASIC | REDIRECT | NDO_XMIT | RX_SG | NDO_XMIT_SG: veth.
        let veth = XdpFeatures::from_bits(0b111_0111);
        // …plus XSK_ZEROCOPY: a NIC such as ice or mlx5.
        let nic = XdpFeatures::from_bits(0b111_1111);
        // No native XDP at all (only generic XDP would run).
        let plain = XdpFeatures::from_bits(0b100_0000);
        assert_eq!(auto_choice(Some(nic), None).0, AutoChoice::XdpZeroCopy);
        assert_eq!(
            auto_choice(Some(nic), Some("the pre-filter")).0,
            AutoChoice::XdpZeroCopy
        );
        assert_eq!(auto_choice(Some(veth), None).0, AutoChoice::XdpCopy);
        assert_eq!(auto_choice(Some(plain), None).0, AutoChoice::AfPacket);
        let (choice, why) = auto_choice(Some(plain), Some("the in-kernel fast path"));
        assert_eq!(choice, AutoChoice::XdpSkb);
        assert!(why.contains("the in-kernel fast path needs XDP"), "{why}");
        assert_eq!(auto_choice(None, None).0, AutoChoice::FirstThatOpens);
        // Zero-copy bits without native XDP do not count.
        assert_eq!(
            auto_choice(Some(XdpFeatures::from_bits(0b1000)), None).0,
            AutoChoice::AfPacket
        );
    }
}
