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
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use fastedge_ebpf::{XdpMode, XskRedirect};

use crate::{
    afpacket::{PacketReceiver, PacketStatistics, RingConfig},
    pcap::{PcapSinkStats, PcapSource, ReplaySpeed},
    pipeline::{InputConfig, InputMode, Pipeline, PipelineConfig, SpeedName, WayStats},
    xdp::{XskBindMode, XskConfig, XskReceiver, XskStatistics},
};

/// How an input is read, as shown in logs and statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Xdp(XdpMode),
    AfPacket,
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

/// Counters of one input; kernel drops by cause.
#[derive(Debug, Clone, Default)]
pub struct InputStats {
    /// Interface name or file path.
    pub name: String,
    pub kind: Option<InputKind>,
    pub queues: u32,
    pub received: u64,
    pub bytes: u64,
    /// AF_XDP: XDP_STATISTICS summed over queues.
    pub xsk: XskStatistics,
    /// AF_PACKET: PACKET_STATISTICS.
    pub packet: PacketStatistics,
}

/// Counters of a running split; every drop has a named cause.
#[derive(Debug, Clone, Default)]
pub struct SplitStats {
    pub inputs: Vec<InputStats>,
    pub non_ip: u64,
    pub parse_errors: u64,
    pub ways: Vec<WayStats>,
    pub pcaps: Vec<PcapSinkStats>,
}

impl SplitStats {
    pub fn received(&self) -> u64 {
        self.inputs.iter().map(|i| i.received).sum()
    }
}

/// Errors of the split engine.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error("interface {0:?} not found")]
    NoInterface(String),
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    #[error(transparent)]
    Ebpf(#[from] fastedge_ebpf::EbpfError),
    #[error(transparent)]
    Xsk(#[from] crate::xdp::XskError),
    #[error(transparent)]
    Packet(#[from] crate::afpacket::PacketError),
    #[error(transparent)]
    Pcap(#[from] crate::pcap::PcapError),
    #[error("polling the inputs: {0}")]
    Poll(std::io::Error),
    #[error("reading {input}: {source}")]
    Receive {
        input: String,
        source: std::io::Error,
    },
    #[error("pinning the engine to core {core}: {source}")]
    Pin { core: usize, source: nix::Error },
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
        )
    }
}

/// Receive queues of `interface`, from sysfs.
fn rx_queues(interface: &str) -> u32 {
    let dir = PathBuf::from(format!("/sys/class/net/{interface}/queues"));
    let count = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count()
        })
        .unwrap_or(1);
    count.max(1) as u32
}

enum Source {
    Xdp {
        program: XskRedirect,
        sockets: Vec<XskReceiver>,
    },
    Packet(PacketReceiver),
    Pcap(PcapSource),
}

struct Input {
    source: Source,
    stats: InputStats,
}

fn open_xdp(interface: &str, mode: XdpMode) -> Result<(Source, u32), SplitError> {
    let ifindex = nix::net::if_::if_nametoindex(interface)
        .map_err(|_| SplitError::NoInterface(interface.to_owned()))?;
    let mut program = XskRedirect::load()?;
    program.attach(ifindex, mode)?;
    let queues = rx_queues(interface);
    let socket_config = XskConfig::new(2048, 2048, 1024, XskBindMode::Copy)?;
    let mut sockets = Vec::with_capacity(queues as usize);
    for queue in 0..queues {
        let socket = XskReceiver::open(interface, queue, &socket_config)?;
        program.register_socket(queue, socket.fd())?;
        sockets.push(socket);
    }
    Ok((Source::Xdp { program, sockets }, queues))
}

fn open_input(config: &InputConfig) -> Result<Input, SplitError> {
    if let Some(path) = &config.pcap {
        let speed = match config.speed {
            SpeedName::Fast => ReplaySpeed::Fast,
            SpeedName::Recorded => ReplaySpeed::Recorded,
        };
        return Ok(Input {
            source: Source::Pcap(PcapSource::open(path, speed)?),
            stats: InputStats {
                name: path.display().to_string(),
                kind: Some(InputKind::Pcap),
                queues: 1,
                ..InputStats::default()
            },
        });
    }
    let interface = config.interface.clone().unwrap_or_default();
    if nix::net::if_::if_nametoindex(interface.as_str()).is_err() {
        return Err(SplitError::NoInterface(interface));
    }
    let af_packet = |interface: &str| -> Result<(Source, InputKind, u32), SplitError> {
        let receiver = PacketReceiver::open(interface, RingConfig::default(), None)?;
        Ok((Source::Packet(receiver), InputKind::AfPacket, 1))
    };
    let (source, kind, queues) = match config.mode {
        InputMode::XdpNative => {
            let (s, q) = open_xdp(&interface, XdpMode::Native)?;
            (s, InputKind::Xdp(XdpMode::Native), q)
        }
        InputMode::XdpSkb => {
            let (s, q) = open_xdp(&interface, XdpMode::Skb)?;
            (s, InputKind::Xdp(XdpMode::Skb), q)
        }
        InputMode::AfPacket => af_packet(&interface)?,
        InputMode::Auto => match open_xdp(&interface, XdpMode::Native) {
            Ok((s, q)) => (s, InputKind::Xdp(XdpMode::Native), q),
            Err(native) => {
                tracing::info!(%interface, error = %native, "native XDP unavailable; trying SKB mode");
                match open_xdp(&interface, XdpMode::Skb) {
                    Ok((s, q)) => (s, InputKind::Xdp(XdpMode::Skb), q),
                    Err(skb) => {
                        tracing::warn!(%interface, error = %skb, "XDP unavailable; reading with AF_PACKET");
                        af_packet(&interface)?
                    }
                }
            }
        },
    };
    tracing::info!(%interface, mode = %kind, queues, "input open");
    Ok(Input {
        source,
        stats: InputStats {
            name: interface,
            kind: Some(kind),
            queues,
            ..InputStats::default()
        },
    })
}

/// Settings of the engine thread itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineOptions {
    /// Pin the calling thread to this CPU.
    pub core: Option<usize>,
}

/// Runs `config` on the calling thread until `stop` is set (or every input, all capture
/// files, is read to the end); calls `tick` about once a second with the counters.
pub fn run(
    config: &PipelineConfig,
    options: EngineOptions,
    stop: &AtomicBool,
    mut tick: impl FnMut(&SplitStats),
) -> Result<SplitStats, SplitError> {
    config.validate()?;
    if let Some(core) = options.core {
        let mut set = nix::sched::CpuSet::new();
        set.set(core)
            .map_err(|source| SplitError::Pin { core, source })?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
            .map_err(|source| SplitError::Pin { core, source })?;
    }
    let mut pipeline = Pipeline::build(config)?;
    let mut inputs = config
        .inputs
        .iter()
        .map(open_input)
        .collect::<Result<Vec<_>, _>>()?;
    tracing::info!(
        name = %config.name(),
        inputs = inputs.len(),
        ways = config.way_count(),
        core = ?options.core,
        "split running"
    );
    let all_files = inputs.iter().all(|i| matches!(i.source, Source::Pcap(_)));
    let mut last_tick = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut got = 0;
        let mut next_due: Option<Duration> = None;
        for input in &mut inputs {
            let stats = &mut input.stats;
            let mut take = |frame: &[u8], ts: u64| {
                stats.received += 1;
                stats.bytes += frame.len() as u64;
                pipeline.push(frame, ts);
            };
            match &mut input.source {
                Source::Xdp { sockets, .. } => {
                    for socket in sockets.iter_mut() {
                        got += socket.receive(Duration::ZERO, |frame| take(frame, now_ns))?;
                    }
                }
                Source::Packet(receiver) => {
                    got += receiver
                        .receive(Duration::ZERO, &mut take)
                        .map_err(|source| SplitError::Receive {
                            input: stats_name(&input.stats),
                            source,
                        })?;
                }
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
            && inputs
                .iter()
                .all(|i| matches!(&i.source, Source::Pcap(f) if f.finished()))
        {
            break;
        }
        if got == 0 {
            let timeout = next_due.map_or(Duration::from_millis(100), |d| {
                d.min(Duration::from_millis(100))
            });
            wait_readable(&inputs, timeout)?;
        }
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            pipeline.housekeeping();
            tick(&collect(&mut inputs, &pipeline));
        }
    }
    pipeline.housekeeping();
    let stats = collect(&mut inputs, &pipeline);
    for input in &mut inputs {
        if let Source::Xdp { program, .. } = &mut input.source {
            program.detach();
        }
    }
    Ok(stats)
}

fn stats_name(stats: &InputStats) -> String {
    stats.name.clone()
}

fn collect(inputs: &mut [Input], pipeline: &Pipeline) -> SplitStats {
    for input in inputs.iter_mut() {
        match &mut input.source {
            Source::Xdp { sockets, .. } => {
                let mut kernel = XskStatistics::default();
                for socket in sockets.iter() {
                    if let Ok(s) = socket.statistics() {
                        kernel.rx_dropped += s.rx_dropped;
                        kernel.rx_ring_full += s.rx_ring_full;
                        kernel.rx_fill_ring_empty += s.rx_fill_ring_empty;
                        kernel.rx_invalid += s.rx_invalid;
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
            Source::Xdp { sockets, .. } => sockets.iter().for_each(|s| add(s.fd())),
            Source::Packet(receiver) => add(receiver.fd()),
            Source::Pcap(_) => {}
        }
    }
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    if fds.is_empty() {
        std::thread::sleep(timeout);
        return Ok(());
    }
    // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfd structs for
    // the duration of the call, and every fd in it is open (owned by `inputs`).
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
    if rc < 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(SplitError::Poll(error));
        }
    }
    Ok(())
}
