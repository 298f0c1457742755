//! Runnable examples of fastedge used as a library (see the `examples` of this package):
//!
//! - `tokio_hyper`: a hyper HTTP/1.1 server on tokio whose TLS is fastedge's acceptor (a
//!   `fastedge_tls` context: certificates, SNI, tickets, ALPN) through `tokio-boring`;
//! - `glommio_echo`: a TLS echo server on glommio with the same acceptor and fastedge's own
//!   futures-io adapter;
//! - `count_flows`: a consumer of a `fastedge split` way that counts the flows it sees.
//!
//! The package has no library code of its own; `tests/tests/examples.rs` runs each example
//! against real clients.

/// docs/library.md, whose Rust examples run (or, marked `no_run`, compile) as this crate's
/// doctests, with the crates above as dev-dependencies: a guide whose code no longer builds
/// fails `cargo test --workspace`.
#[cfg(doctest)]
#[doc = include_str!("../docs/library.md")]
pub struct LibraryGuide;
