//! The split engine: every receive queue of an interface, through fastedge's XDP program and
//! AF_XDP sockets, parsed and hashed per flow, into N shared-memory ways.
//!
//! One engine thread serves all queues of the interface (so each way has exactly one
//! producer); it polls the sockets in batches, and never waits on a consumer: a full way drops
//! the packet and counts it.

use std::{
    os::fd::AsRawFd,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use fastedge_ebpf::{XdpMode, XskRedirect};
use fastedge_wire::packet::{flow_hash, parse, way_of, HashMode, Parsed};

use crate::{
    shm::{way_path, Producer},
    xdp::{XskBindMode, XskConfig, XskReceiver, XskStatistics},
};

/// Settings of one split.
#[derive(Debug, Clone)]
pub struct SplitConfig {
    pub interface: String,
    pub ways: u32,
    pub hash: HashMode,
    /// `None`: native XDP, falling back to SKB mode.
    pub mode: Option<XdpMode>,
    /// Bytes of ring per way (power of two).
    pub way_capacity: usize,
    /// Where frames that are not IP go.
    pub non_ip_way: u32,
    /// Hash tunnelled traffic on its inner flow.
    pub decapsulate: bool,
    /// Every frame to every way (Duplicator) instead of one way per flow (LoadBalancer).
    pub duplicate: bool,
}

/// Counters of a running split; every drop has a named cause.
#[derive(Debug, Clone, Default)]
pub struct SplitStats {
    pub mode: Option<XdpMode>,
    pub queues: u32,
    pub received: u64,
    pub bytes: u64,
    pub non_ip: u64,
    pub parse_errors: u64,
    /// Per way: (delivered, dropped because the way was full).
    pub ways: Vec<(u64, u64)>,
    /// Kernel-side drops, summed over queues (XDP_STATISTICS).
    pub kernel: XskStatistics,
}

/// Errors of the split engine.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error("interface {0:?} not found")]
    NoInterface(String),
    #[error("--ways must be at least 1")]
    NoWays,
    #[error("non-IP way {way} is beyond the {ways} ways")]
    NonIpWay { way: u32, ways: u32 },
    #[error(transparent)]
    Ebpf(#[from] fastedge_ebpf::EbpfError),
    #[error(transparent)]
    Xsk(#[from] crate::xdp::XskError),
    #[error(transparent)]
    Shm(#[from] crate::shm::ShmError),
    #[error("polling AF_XDP sockets: {0}")]
    Poll(std::io::Error),
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

/// Runs the split until `stop` is set; calls `tick` about once a second with the counters.
pub fn run(
    config: &SplitConfig,
    stop: &AtomicBool,
    mut tick: impl FnMut(&SplitStats),
) -> Result<SplitStats, SplitError> {
    if config.ways == 0 {
        return Err(SplitError::NoWays);
    }
    if config.non_ip_way >= config.ways {
        return Err(SplitError::NonIpWay {
            way: config.non_ip_way,
            ways: config.ways,
        });
    }
    let ifindex = nix::net::if_::if_nametoindex(config.interface.as_str())
        .map_err(|_| SplitError::NoInterface(config.interface.clone()))?;
    let mut program = XskRedirect::load()?;
    let mode = match config.mode {
        Some(mode) => {
            program.attach(ifindex, mode)?;
            mode
        }
        None => match program.attach(ifindex, XdpMode::Native) {
            Ok(()) => XdpMode::Native,
            Err(error) => {
                tracing::info!(%error, "native XDP unavailable; using SKB mode");
                program.attach(ifindex, XdpMode::Skb)?;
                XdpMode::Skb
            }
        },
    };
    let queues = rx_queues(&config.interface);
    let socket_config = XskConfig::new(2048, 2048, 1024, XskBindMode::Copy)?;
    let mut sockets = Vec::with_capacity(queues as usize);
    for queue in 0..queues {
        let socket = XskReceiver::open(&config.interface, queue, &socket_config)?;
        program.register_socket(queue, socket.fd())?;
        sockets.push(socket);
    }
    let mut producers = (0..config.ways)
        .map(|way| Producer::create(&way_path(&config.interface, way), config.way_capacity))
        .collect::<Result<Vec<_>, _>>()?;
    tracing::info!(
        interface = %config.interface,
        %mode,
        queues,
        ways = config.ways,
        duplicate = config.duplicate,
        "split running"
    );
    let mut stats = SplitStats {
        mode: Some(mode),
        queues,
        ways: vec![(0, 0); config.ways as usize],
        ..SplitStats::default()
    };
    let mut last_tick = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut got = 0;
        for socket in &mut sockets {
            got += socket.receive(Duration::ZERO, |frame| {
                stats.received += 1;
                stats.bytes += frame.len() as u64;
                let (way, hash) = match parse(frame, config.decapsulate) {
                    Ok(Parsed::Ip(key)) => {
                        let hash = flow_hash(&key, config.hash);
                        (way_of(hash, config.ways), hash)
                    }
                    Ok(Parsed::NonIp { .. }) => {
                        stats.non_ip += 1;
                        (config.non_ip_way, 0)
                    }
                    Err(_) => {
                        stats.parse_errors += 1;
                        (config.non_ip_way, 0)
                    }
                };
                if config.duplicate {
                    for producer in producers.iter_mut() {
                        producer.push(frame, now_ns, hash);
                    }
                } else {
                    producers[way as usize].push(frame, now_ns, hash);
                }
            })?;
        }
        if got == 0 {
            wait_readable(&sockets, Duration::from_millis(100))?;
        }
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            refresh(&mut stats, &producers, &sockets);
            tick(&stats);
        }
    }
    refresh(&mut stats, &producers, &sockets);
    program.detach();
    Ok(stats)
}

fn refresh(stats: &mut SplitStats, producers: &[Producer], sockets: &[XskReceiver]) {
    for (slot, producer) in stats.ways.iter_mut().zip(producers) {
        producer.heartbeat();
        *slot = producer.counters();
    }
    let mut kernel = XskStatistics::default();
    for socket in sockets {
        if let Ok(s) = socket.statistics() {
            kernel.rx_dropped += s.rx_dropped;
            kernel.rx_ring_full += s.rx_ring_full;
            kernel.rx_fill_ring_empty += s.rx_fill_ring_empty;
            kernel.rx_invalid += s.rx_invalid;
        }
    }
    stats.kernel = kernel;
}

fn wait_readable(sockets: &[XskReceiver], timeout: Duration) -> Result<(), SplitError> {
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfd structs for
    // the duration of the call, and every fd in it is open (owned by `sockets`).
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
    if rc < 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(SplitError::Poll(error));
        }
    }
    Ok(())
}
