//! `fastedge serve`: TLS termination in front of a plain TCP backend.

use std::{
    net::{SocketAddr, ToSocketAddrs},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{anyhow, Context as _};
use clap::Args;
use fastedge_runtime::{
    bind_reuseport, BoundListener, CpuList, Executors, Shutdown, DEFAULT_BACKLOG,
};
use fastedge_tls::{
    proxy::{serve_connection, ProxySettings},
    SelfSigned, ServerContext,
};
use nix::sys::signal::{SigSet, Signal};

use crate::Failure;

/// Terminate TLS and forward the plain bytes to a TCP backend.
///
/// One executor per CPU of `--cores`, each pinned to its CPU with its own SO_REUSEPORT listener
/// per `--listen` address. The backend connect starts in parallel with the TLS handshake. Each
/// connection ends with one log line giving the bytes moved and why it closed.
///
/// With no `--backend`, fastedge starts a built-in demo backend on loopback that answers every
/// request with the request head as it reached the backend; with no `--cert`/`--key`, it uses a
/// self-signed certificate created once in the state directory. So `fastedge serve` alone
/// answers `curl -k https://127.0.0.1:8443/`.
///
/// Stops on SIGINT or SIGTERM.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// CPUs to run on, one executor each, as a Linux CPU list: `0-7`, `0,2,4`, `1-3,6`.
    /// Default: every CPU this process may run on.
    #[arg(long, value_name = "LIST")]
    cores: Option<String>,

    /// Address to accept TLS connections on; repeat for several (IPv4 and IPv6).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    listen: Vec<SocketAddr>,

    /// Backend to forward to, `host:port` (the name is resolved once, at start).
    /// Default: the built-in demo backend.
    #[arg(long, value_name = "HOST:PORT")]
    backend: Option<String>,

    /// PEM certificate chain, leaf first. Needs `--key`. Default: a self-signed demo
    /// certificate for localhost and 127.0.0.1 in the state directory.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,

    /// PEM private key of `--cert`.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,

    /// Where the demo certificate is kept. Default: $FASTEDGE_STATE_DIR, else
    /// $XDG_STATE_HOME/fastedge, else ~/.local/state/fastedge.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// ALPN protocols to accept, most preferred first, comma-separated (e.g. `h2,http/1.1`).
    /// List only what the backend speaks.
    #[arg(
        long,
        value_name = "LIST",
        default_value = "http/1.1",
        value_delimiter = ','
    )]
    alpn: Vec<String>,

    /// Seconds a client has to complete the TLS handshake.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    handshake_timeout: f64,
}

/// What each executor takes for itself at start.
struct CoreSetup {
    frontends: Vec<BoundListener>,
    demo: Option<BoundListener>,
}

pub fn run(args: ServeArgs) -> Result<(), Failure> {
    let available = CpuList::available().map_err(Failure::runtime)?;
    let cpus = match &args.cores {
        Some(text) => {
            let list: CpuList = text
                .parse()
                .map_err(|e| Failure::config(anyhow!("--cores {text:?}: {e}")))?;
            list.check_within(&available)
                .map_err(|e| Failure::config(anyhow!("--cores {text:?}: {e}")))?;
            list
        }
        None => available,
    };
    if !(args.handshake_timeout.is_finite() && args.handshake_timeout > 0.0) {
        return Err(Failure::config(anyhow!(
            "--handshake-timeout must be a positive number of seconds"
        )));
    }
    let handshake_timeout = Duration::from_secs_f64(args.handshake_timeout);
    let context = load_context(&args)?;

    // Bind everything before starting any executor: bad addresses fail here, at once.
    let cores = cpus.len();
    let (backend, mut demo) = match &args.backend {
        Some(text) => (resolve_backend(text)?, None),
        None => {
            let demo = bind_reuseport(
                "127.0.0.1:0".parse().map_err(Failure::runtime)?,
                cores,
                DEFAULT_BACKLOG,
            )
            .map_err(Failure::runtime)?;
            let addr = demo[0].local_addr();
            tracing::info!(%addr, "demo backend listening (no --backend given)");
            (addr, Some(demo))
        }
    };
    let mut per_frontend = Vec::new();
    for addr in &args.listen {
        let listeners = bind_reuseport(*addr, cores, DEFAULT_BACKLOG).map_err(Failure::config)?;
        tracing::info!(addr = %listeners[0].local_addr(), cores = %cpus, "listening");
        per_frontend.push(listeners);
    }
    let mut setups = Vec::with_capacity(cores);
    for _ in 0..cores {
        setups.push(CoreSetup {
            frontends: per_frontend.iter_mut().filter_map(|l| l.pop()).collect(),
            demo: demo.as_mut().and_then(|d| d.pop()),
        });
    }
    let mut setups = setups.into_iter();

    // Executors inherit the signal mask: block the stop signals so only `sigwait` below sees them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .context("blocking SIGINT/SIGTERM")
        .map_err(Failure::runtime)?;

    let shutdown = Shutdown::new();
    let settings = ProxySettings {
        backend,
        handshake_timeout,
    };
    let executors = Executors::spawn("fastedge", &cpus, |core| {
        let setup = setups.next();
        let context = Arc::new(context.clone());
        let settings = Arc::new(settings.clone());
        let shutdown = shutdown.clone();
        move || async move {
            let Some(setup) = setup else { return };
            if let Some(demo) = setup.demo {
                let demo = demo.into_glommio();
                fastedge_runtime::spawn_detached(crate::demo::run(demo, core, shutdown.clone()));
            }
            let mut accepting = Vec::new();
            for frontend in setup.frontends {
                let listener = frontend.into_glommio();
                accepting.push(fastedge_runtime::spawn(accept_loop(
                    listener,
                    context.clone(),
                    settings.clone(),
                    shutdown.clone(),
                )));
            }
            for task in accepting {
                task.await;
            }
        }
    })
    .map_err(Failure::runtime)?;

    let signal = signals
        .wait()
        .context("waiting for signals")
        .map_err(Failure::runtime)?;
    tracing::info!(signal = %signal, "stopping: no new connections accepted");
    shutdown.trigger();
    executors.join().map_err(Failure::runtime)?;
    Ok(())
}

async fn accept_loop(
    listener: fastedge_runtime::net::TcpListener,
    context: Arc<ServerContext>,
    settings: Arc<ProxySettings>,
    shutdown: Shutdown,
) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shutdown.wait().await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok(stream)) => stream,
            Some(Err(error)) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(%error, "accept failed");
                fastedge_runtime::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let peer = match stream.peer_addr() {
            Ok(peer) => peer,
            Err(error) => {
                tracing::debug!(%error, "connection gone before it could be served");
                continue;
            }
        };
        let (context, settings) = (context.clone(), settings.clone());
        fastedge_runtime::spawn_detached(async move {
            serve_connection(stream, peer, &context, &settings).await;
        });
    }
}

fn resolve_backend(text: &str) -> Result<SocketAddr, Failure> {
    let mut addrs = text
        .to_socket_addrs()
        .with_context(|| format!("--backend {text:?}: expected host:port"))
        .map_err(Failure::config)?;
    addrs
        .next()
        .ok_or_else(|| Failure::config(anyhow!("--backend {text:?} resolved to no address")))
}

fn load_context(args: &ServeArgs) -> Result<ServerContext, Failure> {
    let alpn: Vec<&str> = args
        .alpn
        .iter()
        .map(String::as_str)
        .filter(|p| !p.is_empty())
        .collect();
    if let Some(bad) = alpn.iter().find(|p| p.len() > 255) {
        return Err(Failure::config(anyhow!(
            "--alpn: protocol name {bad:?} is longer than 255 bytes"
        )));
    }
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        return ServerContext::from_pem_files(cert, key, &alpn).map_err(Failure::config);
    }
    let dir = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => default_state_dir().map_err(Failure::config)?,
    };
    let (cert, key) = ensure_demo_certificate(&dir).map_err(Failure::runtime)?;
    ServerContext::from_pem_files(&cert, &key, &alpn).map_err(Failure::runtime)
}

fn default_state_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FASTEDGE_STATE_DIR") {
        return Ok(dir.into());
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return Ok(Path::new(&dir).join("fastedge"));
    }
    let home = std::env::var_os("HOME")
        .ok_or_else(|| anyhow!("no --state-dir, $FASTEDGE_STATE_DIR, $XDG_STATE_HOME or $HOME"))?;
    Ok(Path::new(&home).join(".local/state/fastedge"))
}

/// The demo certificate in `dir`, created on first use.
fn ensure_demo_certificate(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert = dir.join("demo-cert.pem");
    let key = dir.join("demo-key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating state directory {}", dir.display()))?;
    SelfSigned::generate(&["localhost", "127.0.0.1", "::1"], 365)?.write_pem(&cert, &key)?;
    tracing::info!(cert = %cert.display(), "created a self-signed demo certificate");
    Ok((cert, key))
}
