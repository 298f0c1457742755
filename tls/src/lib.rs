//! TLS for fastedge on BoringSSL, in two layers.
//!
//! **The TLS layer**, usable on its own from any async runtime: the configuration types of a
//! `[tls]` table ([`config::TlsSettings`]) turned into BoringSSL contexts with certificate
//! sets, SNI contexts, client certificates, session tickets ([`tickets`]), OCSP stapling and
//! keyless keys ([`keyless`]) ([`ServerContext`]); the boring ⇄ futures-io adapter that runs a
//! handshake and the records over any `AsyncRead + AsyncWrite` stream ([`accept`],
//! [`TlsStream`]: glommio, fastedge's own io_uring engine, or tokio through `tokio-boring`
//! with the same context); self-signed certificates for demos and tests ([`SelfSigned`]).
//!
//! **The terminator** built on it, what `fastedge serve` runs: the `serve` configuration
//! ([`config`]: TOML, defaults, validated once), the proxy connection driver that pumps bytes
//! between a TLS client and a plain backend ([`proxy`]), serve's metrics ([`metrics`],
//! registered with the runtime's registry, and [`scrape`], their reader for `fastedge top`),
//! bud's configuration and ticket messages ([`bud`]), and the supervisor ([`Terminator`]:
//! accept loops, health checks, reload, drain, binary upgrade), embeddable in any program;
//! and on top of it [`service`], the terminator as a system service, which is all `fastedge
//! serve` does: the configuration file read at start and on SIGHUP, signals, the service
//! manager's notifications, binary upgrades on SIGUSR2.
//!
//! Never does: parse or write wire formats itself (PROXY headers, HTTP rewriting, OCSP DER:
//! `fastedge-wire`), own executors or listeners (`fastedge-runtime`), read the command line.
//! The terminator itself reads no signals or environment ([`service`] does, for who wants
//! them).
//!
//! # Embedding the terminator
//!
//! A terminator from a TOML string, on one CPU, in front of the built-in demo backend (no
//! `[[backend]]`) with a self-signed certificate (no `tls.cert`): one HTTPS request through it,
//! a reload, its metrics, and a stop.
//!
//! ```
//! use std::io::{Read, Write};
//!
//! use fastedge_runtime::CpuList;
//! use fastedge_tls::{
//!     boring::ssl::{SslConnector, SslMethod, SslVerifyMode},
//!     Terminator,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let one_cpu: CpuList = CpuList::available()?.cpus()[0].to_string().parse()?;
//! let state = std::env::temp_dir().join(format!("fastedge-doc-{}", std::process::id()));
//! let terminator = Terminator::from_toml(
//!     r#"
//!     [frontend]
//!     listen = ["127.0.0.1:0"]     # the kernel picks the port
//!     drain_timeout = "1s"
//!     "#,
//! )?
//! .on_cpus(one_cpu)
//! .state_dir(&state) // where the demo certificate is made once
//! .start()?; // binds, loads certificates, starts the executors
//! let addr = terminator.listen_addrs()[0];
//!
//! // A client (the certificate is self-signed: not verified here).
//! let mut connector = SslConnector::builder(SslMethod::tls())?;
//! connector.set_verify(SslVerifyMode::NONE);
//! let tcp = std::net::TcpStream::connect(addr)?;
//! let mut tls = connector.build().connect("localhost", tcp)?;
//! tls.write_all(b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
//! let mut answer = Vec::new();
//! let _ = tls.read_to_end(&mut answer); // the demo backend closes after answering
//! let answer = String::from_utf8_lossy(&answer);
//! assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
//! assert!(answer.contains("GET /hello HTTP/1.1"), "{answer}"); // the request as it arrived
//! drop(tls); // (half-open connections are kept: `frontend.allow_half_open`)
//!
//! // New connections use a new configuration; open ones keep theirs.
//! terminator.reload_toml("[frontend]\nlisten = [\"127.0.0.1:0\"]\ndrain_timeout = \"1s\"\n")?;
//! assert!(terminator.metrics().contains("fastedge_handshakes_completed_total 1"));
//! terminator.stop()?; // drains for drain_timeout at most, then joins the executors
//! # std::fs::remove_dir_all(&state)?;
//! # Ok(())
//! # }
//! ```
//!
//! # The TLS acceptor on its own
//!
//! A [`ServerContext`] from the same `[tls]` table `fastedge serve` reads, and one TLS
//! connection accepted with it over a `futures-io` stream (here the runtime's `TcpStream` on
//! fastedge's io_uring engine; a glommio `TcpStream` works the same way, and under tokio the
//! context's sessions go to `tokio-boring`: see `examples/` in the repository).
//!
//! ```
//! use std::io::{Read, Write};
//!
//! use fastedge_runtime::{bind_reuseport, CpuList, Executors};
//! use fastedge_tls::{
//!     boring::ssl::{SslConnector, SslMethod, SslVerifyMode},
//!     config::ServeConfig,
//!     SelfSigned, ServerContext,
//! };
//! use futures_lite::{AsyncReadExt, AsyncWriteExt};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A certificate in files, as a configuration names them.
//! let dir = std::env::temp_dir().join(format!("fastedge-doc-acceptor-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
//! SelfSigned::generate(&["localhost"], 1)?.write_pem(&cert, &key)?;
//! let config = ServeConfig::parse(&format!(
//!     "[tls]\ncert = {:?}\nkey = {:?}\nalpn = [\"echo\"]\nmin_version = \"1.3\"\n",
//!     cert, key
//! ))?;
//! let context = ServerContext::from_settings(&config.tls)?;
//!
//! // One executor on one CPU, accepting one connection and echoing one message.
//! let one_cpu: CpuList = CpuList::available()?.cpus()[0].to_string().parse()?;
//! let mut listeners = bind_reuseport("127.0.0.1:0".parse()?, 1, 16)?;
//! let addr = listeners[0].local_addr();
//! let mut listener = listeners.pop();
//! let server = Executors::spawn("echo", &one_cpu, |_core| {
//!     let listener = listener.take();
//!     let context = context.clone();
//!     move || async move {
//!         let listener = listener.ok_or("one executor")?.into_listener().map_err(|e| e.to_string())?;
//!         let stream = listener.accept().await.map_err(|e| e.to_string())?;
//!         let session = context.new_session().map_err(|e| e.to_string())?;
//!         let mut tls = fastedge_tls::accept(session, stream).await.map_err(|e| e.to_string())?;
//!         let mut message = [0u8; 5];
//!         tls.read_exact(&mut message).await.map_err(|e| e.to_string())?;
//!         tls.write_all(&message).await.map_err(|e| e.to_string())?;
//!         tls.close().await.map_err(|e| e.to_string())?; // close_notify
//!         Ok::<_, String>(())
//!     }
//! })?;
//!
//! let mut connector = SslConnector::builder(SslMethod::tls())?;
//! connector.set_verify(SslVerifyMode::NONE);
//! connector.set_alpn_protos(b"\x04echo")?;
//! let mut tls = connector.build().connect("localhost", std::net::TcpStream::connect(addr)?)?;
//! tls.write_all(b"hello")?;
//! let mut echoed = [0u8; 5];
//! tls.read_exact(&mut echoed)?;
//! assert_eq!(&echoed, b"hello");
//! assert_eq!(tls.ssl().selected_alpn_protocol(), Some(&b"echo"[..]));
//! for (_core, result) in server.join()? {
//!     result?;
//! }
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod adapter;
mod bio;
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
pub mod service;
pub mod session_store;
mod store_link;
mod store_state;
pub mod terminator;
pub mod tickets;

pub use adapter::{accept, accept_observed, TlsStream};
pub use boring;
pub use certset::KeyKind;
pub use context::{choose_certificate, HelloChoice, ServerContext};
pub use error::TlsError;
pub use selfsigned::SelfSigned;
pub use terminator::{Terminator, TerminatorError, TerminatorHandle, UpgradeError};
