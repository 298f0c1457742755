//! Sans-IO wire formats and decisions of fastedge: pure functions over byte slices.
//!
//! Owns: HTTP/1.x request- and response-head framing ([`http1`]); following a backend's responses
//! to learn whether it switched protocols ([`response`]); PROXY v1/v2 and bud's JSON line
//! ([`proxy`]); bud's JSON configuration as TOML ([`bud_config`]); bud's ticket-key message
//! ([`bud_ipc`]); keyless signing frames ([`keyless`]); control-socket request lines ([`control`]);
//! IP prefixes for trust lists ([`net`]); `X-Forwarded-*`/`Forwarded` injection into every request
//! of a stream ([`forwarded`]); backend choice and passive health ([`balance`]); peer-chosen text
//! made safe for log lines ([`logtext`]); server-name matching for SNI ([`sni`]); the dynamic SNI
//! service's answer ([`sni_answer`]); OCSP requests and responses for stapling ([`ocsp`], over a
//! minimal DER reader, [`der`]); packet headers down to the innermost flow, and the symmetric flow
//! hash ([`packet`]); synthetic flows for the traffic generator ([`synth`]); pre-filter rules as
//! text ([`rules`]), Zeek NetControl rules as pre-filter rules ([`netcontrol`]), and a metrics
//! endpoint's Prometheus text as samples ([`prometheus`]); the binary-upgrade handover's
//! description of the listening sockets passed ([`takeover`]); Redis's protocol for the session
//! store ([`resp`]). Every parser
//! answers "complete, with the bytes used", "partial", or a typed error, and has a fuzz entry point
//! in [`fuzzing`].
//!
//! Never does: sockets, clocks, threads, or allocation in per-packet paths; no I/O at all.
//! The runtimes (`fastedge-tls`, `fastedge-rings`) read and write the bytes and pass the time
//! in.
//!
//! # Example
//!
//! Which way a frame goes: its innermost flow, hashed symmetrically under a key, mapped onto
//! N ways. Both directions of a flow land on the same way.
//!
//! ```
//! use fastedge_wire::{
//!     packet::{flow_hash, parse, way_of, HashKey, HashMode, Parsed},
//!     synth::{TrafficSpec, Transport, MAX_FRAME},
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Two frames of one UDP flow: client → server, then server → client.
//! let spec = TrafficSpec {
//!     src_mac: [2, 0, 0, 0, 0, 1],
//!     dst_mac: [2, 0, 0, 0, 0, 2],
//!     client_base: "192.0.2.10".parse()?,
//!     server: "198.51.100.1".parse()?,
//!     server_port: 53,
//!     transport: Transport::Udp,
//!     flows: 1,
//!     frame_len: 60,
//!     both_directions: true,
//! };
//! let key = HashKey::from_bytes(*b"sixteen byte key");
//! let mut ways = Vec::new();
//! for seq in 0..2 {
//!     let mut frame = [0u8; MAX_FRAME];
//!     let len = spec.write(seq, &mut frame);
//!     let Parsed::Ip(flow) = parse(&frame[..len], true)? else {
//!         return Err("not an IP frame".into());
//!     };
//!     ways.push(way_of(flow_hash(&flow, HashMode::default(), &key), 4));
//! }
//! assert_eq!(ways[0], ways[1]);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod balance;
pub mod bud_config;
pub mod bud_ipc;
mod chunked;
pub mod control;
pub mod der;
pub mod forwarded;
pub mod fuzzing;
pub mod http1;
pub mod keyless;
pub mod logtext;
pub mod net;
pub mod netcontrol;
pub mod ocsp;
pub mod packet;
pub mod prometheus;
pub mod proxy;
pub mod resp;
pub mod response;
pub mod rules;
pub mod sealed_session;
pub mod sni;
pub mod sni_answer;
pub mod synth;
pub mod takeover;
