//! TLS for fastedge on BoringSSL.
//!
//! Owns: the `serve` configuration ([`config`]: TOML, defaults, validation), server contexts
//! built from certificates and keys with SNI, client certificates and resumption
//! ([`ServerContext`]), session ticket keys ([`tickets`]), the boring ⇄ futures-io adapter ([`accept`], [`TlsStream`]), self-signed certificates for demos and tests
//! ([`SelfSigned`]), the proxy connection driver that pumps bytes between a TLS client and a
//! plain backend ([`proxy`]), its metrics ([`metrics`], registered with the runtime's
//! registry), and the terminator built on all of it ([`Terminator`]: accept
//! loops, health checks, reload, drain; what `fastedge serve` runs, embeddable).
//!
//! Does not own: wire formats (PROXY headers, HTTP rewriting: `fastedge-wire`), executors and
//! listeners (`fastedge-runtime`).

mod adapter;
pub mod bud;
mod certset;
pub mod config;
mod context;
mod dynsni;
mod error;
mod exdata;
mod ffi;
mod http;
pub mod keyless;
pub mod metrics;
mod ocsp;
mod oneshot;
mod passphrase;
mod pem;
pub mod proxy;
pub mod scrape;
mod selfsigned;
pub mod session_store;
pub mod terminator;
pub mod tickets;

pub use adapter::{accept, accept_observed, IoShim, TlsStream};
pub use boring;
pub use certset::KeyKind;
pub use context::{choose_certificate, HelloChoice, ServerContext};
pub use error::TlsError;
pub use selfsigned::SelfSigned;
pub use terminator::{Terminator, TerminatorError, TerminatorHandle, UpgradeError};
