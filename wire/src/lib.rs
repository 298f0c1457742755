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
//! description of the listening sockets passed ([`takeover`]). Every parser
//! answers "complete, with the bytes used", "partial", or a typed error, and has a fuzz entry point
//! in [`fuzzing`].
//!
//! Never does: sockets, clocks, threads, or allocation in per-packet paths.
#![forbid(unsafe_code)]

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
pub mod response;
pub mod rules;
pub mod sealed_session;
pub mod sni;
pub mod sni_answer;
pub mod synth;
pub mod takeover;
