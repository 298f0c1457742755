//! Packet I/O of fastedge, and the split built on it.
//!
//! Owns: AF_XDP sockets over xsk-rs ([`xdp::XskReceiver`]), AF_PACKET rings ([`afpacket`]),
//! capture files ([`pcap`]); shared-memory ways between the distributor and consumer
//! applications ([`shm`]), and a way as a pcap stream ([`tap`]); netmap bindings behind the
//! `netmap` feature (off by default: no netmap module on common kernels); pipelines of bricks
//! ([`pipeline`]) and the engine that runs them ([`split`]); the split supervisor
//! ([`supervisor`]: reloads, the control socket's commands ([`control`]), pre-filter rule
//! bookkeeping ([`rules`]), veth outputs ([`veth`])); a running split's counters as per-second
//! rows for `fastedge top` ([`top`]); the traffic generator ([`gen`]).
//!
//! Does not own: eBPF program source or loading (`fastedge-ebpf`), header parsing, flow
//! hashing and the control socket's request lines (`fastedge-wire`), the control socket
//! itself and signals (`fastedge-runtime`); a command line.

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
pub mod tap;
pub mod top;
pub mod veth;
pub mod xdp;

/// netmap's C structures and ioctls (`netmap_sys`), compiled only with `--features netmap`.
#[cfg(feature = "netmap")]
pub mod netmap {
    pub use netmap_sys::netmap::*;
}
