//! The traffic generator behind `fastedge gen`: frames of many flows (from
//! [`fastedge_wire::synth`]) sent in batches over an AF_PACKET socket, at a given rate or as
//! fast as the interface takes them.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use fastedge_wire::synth::TrafficSpec;

use crate::{
    afpacket::{PacketError, PacketSender},
    xdp::XskSender,
};

/// What to send and how fast.
#[derive(Debug, Clone)]
pub struct GenConfig {
    /// The interface to send on.
    pub interface: String,
    /// The flows and frames to generate.
    pub spec: TrafficSpec,
    /// Frames per second; `None`: as fast as possible.
    pub rate: Option<u64>,
    /// Frames to send; `None`: until stopped.
    pub count: Option<u64>,
    /// First sequence number (so that several runs can be told apart).
    pub first_seq: u64,
    /// Frames per `sendmmsg` (or per AF_XDP TX ring batch).
    pub batch: usize,
    /// The socket kind to send with.
    pub transmit: Transmit,
}

/// How the generator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transmit {
    /// An AF_PACKET socket, `sendmmsg` batches, qdisc bypassed.
    AfPacket,
    /// An AF_XDP socket (copy mode) on queue 0, TX ring.
    AfXdp,
}

enum GenSender {
    Packet(PacketSender),
    Xsk(Box<XskSender>),
}

impl GenSender {
    /// Sends a prefix of `frames`; returns how many went (0: the queue is full, try again).
    fn send(&mut self, frames: &[&[u8]]) -> Result<usize, GenError> {
        match self {
            GenSender::Packet(p) => p.send_batch(frames).map_err(GenError::Send),
            GenSender::Xsk(x) => {
                let mut queued = 0;
                for frame in frames {
                    if !x.push(frame) {
                        break;
                    }
                    queued += 1;
                }
                // Frames the TX ring had no room for are not sent: the caller sends them again.
                let sent = x.flush().map_err(GenError::Xsk)?;
                Ok(sent.min(queued))
            }
        }
    }
}

/// What a generator run did.
#[derive(Debug, Clone, Copy, Default)]
pub struct GenStats {
    /// Frames the kernel took.
    pub sent: u64,
    /// Bytes of those frames (without the FCS).
    pub bytes: u64,
    /// Times the kernel's queue was full and the generator had to wait.
    pub backoffs: u64,
    /// Time since the run started (at the end: its whole length).
    pub elapsed: Duration,
}

impl GenStats {
    /// The run in one line: frames, bytes, time, frame and bit rates, queue-full waits.
    pub fn summary(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        format!(
            "sent {} frames ({} bytes) in {:.3} s: {:.0} frames/s, {:.1} Mbit/s; queue-full waits {}",
            self.sent,
            self.bytes,
            secs,
            self.sent as f64 / secs,
            self.bytes as f64 * 8.0 / secs / 1e6,
            self.backoffs
        )
    }
}

/// Why a generator run could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// The traffic spec cannot be generated.
    #[error(transparent)]
    Spec(#[from] fastedge_wire::synth::SpecError),
    /// The AF_PACKET socket could not be set up.
    #[error(transparent)]
    Socket(#[from] PacketError),
    /// `sendmmsg` failed with an error other than a full queue.
    #[error("sending: {0}")]
    Send(std::io::Error),
    /// A rate of 0 frames per second.
    #[error("--rate must be at least 1 frame per second")]
    ZeroRate,
    /// The AF_XDP socket could not be set up or send.
    #[error(transparent)]
    Xsk(crate::xdp::XskError),
    /// Frames longer than the AF_XDP sender takes (without multi-buffer mode, one UMEM frame).
    #[error("AF_XDP on {interface} sends frames of at most {max} bytes here (multi-buffer mode refused); use --tx af-packet for {frame_len}-byte frames")]
    TooLongForAfXdp {
        /// The interface.
        interface: String,
        /// The longest frame the sender takes.
        max: usize,
        /// The frame length asked for.
        frame_len: usize,
    },
    /// Frames longer than the interface's MTU allows (the kernel would drop every one).
    #[error("{interface} has an MTU of {mtu} bytes: a frame of {frame_len} bytes (FCS excluded) needs {needed}; raise it with `ip link set {interface} mtu {needed}`", needed = .frame_len - 14)]
    AboveMtu {
        /// The interface.
        interface: String,
        /// Its MTU.
        mtu: usize,
        /// The frame length asked for, without the FCS.
        frame_len: usize,
    },
}

impl GenError {
    /// Whether the request (spec, rate, interface name) is at fault, as opposed to the system.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            GenError::Spec(_)
                | GenError::ZeroRate
                | GenError::AboveMtu { .. }
                | GenError::TooLongForAfXdp { .. }
                | GenError::Socket(PacketError::NoInterface(_))
        )
    }
}

/// Sends until `count` frames went out or `stop` is set; calls `tick` about once a second.
pub fn run(
    config: &GenConfig,
    stop: &AtomicBool,
    mut tick: impl FnMut(&GenStats),
) -> Result<GenStats, GenError> {
    config.spec.validate()?;
    if config.rate == Some(0) {
        return Err(GenError::ZeroRate);
    }
    if let Some(mtu) = crate::sys::mtu(&config.interface) {
        if config.spec.frame_len > mtu + 14 {
            return Err(GenError::AboveMtu {
                interface: config.interface.clone(),
                mtu,
                frame_len: config.spec.frame_len,
            });
        }
    }
    let mut sender = match config.transmit {
        Transmit::AfPacket => GenSender::Packet(PacketSender::open(&config.interface, 4 << 20)?),
        Transmit::AfXdp => {
            let sender = XskSender::open(&config.interface, 2048).map_err(GenError::Xsk)?;
            if config.spec.frame_len > sender.max_frame() {
                return Err(GenError::TooLongForAfXdp {
                    interface: config.interface.clone(),
                    max: sender.max_frame(),
                    frame_len: config.spec.frame_len,
                });
            }
            GenSender::Xsk(Box::new(sender))
        }
    };
    let batch = config.batch.clamp(1, 1024);
    let mut buffers = vec![vec![0u8; config.spec.frame_len]; batch];
    let mut lengths = vec![0usize; batch];
    let mut stats = GenStats::default();
    let start = Instant::now();
    let mut last_tick = start;
    let total = config.count.unwrap_or(u64::MAX);
    while stats.sent < total && !stop.load(Ordering::Relaxed) {
        // Pace: how many frames are due by now.
        let due = match config.rate {
            Some(rate) => {
                let elapsed = start.elapsed();
                let due = (elapsed.as_nanos() * u128::from(rate) / 1_000_000_000) as u64 + 1;
                if due <= stats.sent {
                    let wait_ns = ((stats.sent + 1) as u128 * 1_000_000_000 / u128::from(rate))
                        .saturating_sub(elapsed.as_nanos());
                    std::thread::sleep(Duration::from_nanos(wait_ns.min(10_000_000) as u64));
                    continue;
                }
                due
            }
            None => u64::MAX,
        };
        let n = (due - stats.sent).min(total - stats.sent).min(batch as u64) as usize;
        for i in 0..n {
            let seq = config.first_seq + stats.sent + i as u64;
            lengths[i] = config.spec.write(seq, &mut buffers[i]);
        }
        let frames: Vec<&[u8]> = (0..n).map(|i| &buffers[i][..lengths[i]]).collect();
        let mut done = 0;
        while done < n && !stop.load(Ordering::Relaxed) {
            let took = sender.send(&frames[done..])?;
            if took == 0 {
                stats.backoffs += 1;
                std::thread::sleep(Duration::from_micros(50));
            }
            for length in &lengths[done..done + took] {
                stats.bytes += *length as u64;
            }
            done += took;
            stats.sent += took as u64;
        }
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            stats.elapsed = start.elapsed();
            tick(&stats);
        }
    }
    // AF_XDP: frames on the TX ring are only sent once the kernel is woken for them.
    if let GenSender::Xsk(x) = &mut sender {
        x.drain(Duration::from_secs(2)).map_err(GenError::Xsk)?;
    }
    stats.elapsed = start.elapsed();
    Ok(stats)
}
