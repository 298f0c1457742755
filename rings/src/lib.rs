//! Packet I/O of fastedge, and the split built on it.
//!
//! Owns: AF_XDP sockets over xsk-rs ([`xdp::XskReceiver`]), AF_PACKET rings ([`afpacket`]),
//! capture files ([`pcap`]); shared-memory ways between the distributor and consumer
//! applications ([`shm`]), and a way as a pcap stream ([`tap`]); netmap bindings behind the
//! `netmap` feature (off by default: no netmap module on common kernels); pipelines of bricks
//! ([`pipeline`]) and the engine that runs them ([`split`]); the split supervisor
//! ([`supervisor`]: reloads, the control socket's commands ([`control`]), pre-filter rule
//! bookkeeping ([`rules`]), veth outputs ([`veth`])); a running split's counters as per-second
//! rows for `fastedge top` ([`top`]); the traffic generator ([`gen`]). Raw system calls go
//! through one private module, `sys` (one safe wrapper per call, its `unsafe` kept there):
//! AF_PACKET's calls, shm's futexes, sigbus's handler and the engine's poll go through it;
//! the AF_XDP sockets' unsafe calls are xsk-rs's API, not system calls.
//!
//! This is split's engine: `fastedge split`, `dup`, `tap` and `gen` are thin shells over
//! [`supervisor::Supervisor`], [`tap`] and [`gen`].
//!
//! Never does: eBPF program source or loading (`fastedge-ebpf`), header parsing, flow
//! hashing and the control socket's request lines (`fastedge-wire`), the control socket
//! itself and signals (`fastedge-runtime`), TLS; a command line.
//!
//! # Reading a way
//!
//! A consumer application attaches to one way and reads its frames; when the way is empty it
//! sleeps in the kernel until the distributor brings more ([`shm::Consumer::wait_readable`]).
//! Here the producer side is played by this process, on a way in a directory of its own; a
//! consumer of a running `fastedge split` opens `Consumer::open("eth1", 3)` instead (way 3 of
//! the split named `eth1`, `/dev/shm/fastedge/eth1-3`).
//!
//! ```
//! use std::time::Duration;
//!
//! use fastedge_rings::shm::{Consumer, Producer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = std::env::temp_dir().join(format!("fastedge-doc-way-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?; // mode 0755: a consumer refuses a directory others may write
//! let path = dir.join("demo-0");
//! let mut producer = Producer::create(&path, 64 * 1024)?; // what split does for each way
//!
//! let mut way = Consumer::open_path(&path)?; // reads from the newest data on
//! producer.push(b"first frame", 1_000, 0xfeed); // (frame, capture time ns, flow hash)
//! producer.push(b"second frame", 2_000, 0xbeef);
//! producer.publish(); // end of a batch: wakes the consumer if it sleeps
//!
//! let mut seen = Vec::new();
//! while seen.len() < 2 {
//!     let read = way.read_batch(256, |record| {
//!         seen.push((record.timestamp_ns, record.flow_hash, record.data.to_vec()));
//!     });
//!     if read == 0 {
//!         way.wait_readable(Duration::from_millis(200)); // asleep until the next frame
//!     }
//! }
//! assert_eq!(seen[0], (1_000, 0xfeed, b"first frame".to_vec()));
//! assert_eq!(way.counters(), (2, 0)); // (delivered, dropped because the way was full)
//! # drop((way, producer));
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
//!
//! # Running a split
//!
//! The distributor in-process, on a pipeline that needs no privileges: a capture file in, each
//! flow to one of two capture files out (a LoadBalancer over two PcapWriters). With interfaces
//! as inputs and ways as outputs, the same calls run `fastedge split`.
//!
//! ```
//! use fastedge_rings::{
//!     pcap::{CaptureFormat, PcapSink, Rotation},
//!     pipeline::PipelineConfig,
//!     supervisor::{Supervisor, SupervisorOptions},
//! };
//! use fastedge_wire::synth::{TrafficSpec, Transport, MAX_FRAME};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = std::env::temp_dir().join(format!("fastedge-doc-split-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//!
//! // 200 frames of 50 UDP flows, both directions, into a capture file.
//! let spec = TrafficSpec {
//!     src_mac: [2, 0, 0, 0, 0, 1],
//!     dst_mac: [2, 0, 0, 0, 0, 2],
//!     client_base: "10.1.0.1".parse()?,
//!     server: "10.0.0.1".parse()?,
//!     server_port: 53,
//!     transport: Transport::Udp,
//!     flows: 50,
//!     frame_len: 60,
//!     both_directions: true,
//! };
//! let input = dir.join("in.pcap");
//! let mut writer = PcapSink::create(&input, CaptureFormat::Pcap, Rotation::default())?;
//! let mut frame = [0u8; MAX_FRAME];
//! for seq in 0..200 {
//!     let len = spec.write(seq, &mut frame);
//!     writer.write(&frame[..len], seq * 1_000);
//! }
//! drop(writer); // flushed and closed
//!
//! let config = PipelineConfig::from_toml(&format!(
//!     r#"
//!     [[input]]
//!     pcap = {input:?}
//!
//!     [output]
//!     type = "balance"
//!     [[output.to]]
//!     type = "pcap"
//!     path = {a:?}
//!     [[output.to]]
//!     type = "pcap"
//!     path = {b:?}
//!     "#,
//!     a = dir.join("a.pcap"),
//!     b = dir.join("b.pcap"),
//! ))?;
//! let supervisor = Supervisor::new(config, SupervisorOptions::default());
//! let _handle = supervisor.handle(); // reload() and shutdown() from any thread
//! // Runs until the file is read (an interface input: until a shutdown).
//! let stats = supervisor.run(|now, before| eprintln!("{}", now.live_line(before)))?;
//! assert_eq!(stats.received(), 200);
//! let written: Vec<u64> = stats.pcaps.iter().map(|p| p.written).collect();
//! assert_eq!(written.iter().sum::<u64>(), 200);
//! assert!(written.iter().all(|&n| n > 0), "both outputs get flows: {written:?}");
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod afpacket;
pub mod control;
pub mod fuzzing;
pub mod gen;
pub mod pcap;
pub mod pipeline;
pub mod rules;
pub mod shm;
mod sigbus;
pub mod split;
pub mod supervisor;
mod sys;
pub mod tap;
pub mod top;
pub mod veth;
pub mod xdp;

/// netmap's C structures and ioctls (`netmap_sys`), compiled only with `--features netmap`.
#[cfg(feature = "netmap")]
pub mod netmap {
    pub use netmap_sys::netmap::*;
}
