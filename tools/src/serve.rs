//! `fastedge serve`: TLS termination in front of TCP backends.

use std::{
    cell::RefCell,
    io::Read,
    net::SocketAddr,
    path::{Path, PathBuf},
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;

use anyhow::{anyhow, Context as _};
use clap::Args;
use fastedge_runtime::{
    bind_reuseport, drop_privileges, raise_nofile_limit, BoundListener, ConnectionLimit, CpuList,
    Executors, Shutdown,
};
use fastedge_tls::{
    config::{BackendAddr, BackendSpec, CertificateSpec, ProxyPrefix, ServeConfig, DEFAULT_CONFIG},
    proxy::{probe_backends, serve_connection, CoreBackends, Frontend},
    SelfSigned, ServerContext,
};
use nix::sys::signal::Signal;

use crate::Failure;

/// Terminate TLS and forward the plain bytes to TCP backends.
///
/// One executor per CPU of `--cores`, each pinned to its CPU with its own SO_REUSEPORT listener
/// per listen address. The backend connect starts in parallel with the TLS handshake and is
/// retried over the backends; backends can be told about the client with PROXY v1/v2, bud's
/// JSON line, or X-Forwarded-* headers in every request. Each connection ends with one log line
/// giving the bytes moved and why it closed.
///
/// Settings come from `--config` (TOML; `--print-default-config` shows every key with its
/// default; a bud JSON configuration is also read, unchanged); the options below override it. With no backend configured, fastedge starts a
/// built-in demo backend on loopback that answers every request with the request head as it
/// reached the backend; with no certificate, it uses a self-signed one created once in the
/// state directory. So `fastedge serve` alone answers `curl -k https://127.0.0.1:8443/`.
///
/// SIGTERM or SIGINT: stop accepting, let open connections finish for `drain_timeout`, exit 0;
/// a second signal exits at once.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML, or bud's JSON), or `-` for standard input.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,

    /// Print the default configuration, every key documented, and exit.
    #[arg(long)]
    print_default_config: bool,

    /// CPUs to run on, one executor each, as a Linux CPU list: `0-7`, `0,2,4`, `1-3,6`.
    /// Overrides `cores` of the config. Default: every CPU this process may run on.
    #[arg(long, value_name = "LIST")]
    cores: Option<String>,

    /// Executor engine: `uring` (fastedge's io_uring engine, the default) or `glommio`.
    /// Overrides `engine` of the config.
    #[arg(long, value_name = "ENGINE", env = "FASTEDGE_ENGINE")]
    engine: Option<fastedge_runtime::Engine>,

    /// Address to accept TLS connections on; repeat for several. Overrides `frontend.listen`
    /// (default 127.0.0.1:8443).
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,

    /// Backend to forward to, `host:port`; replaces the config's backends with this one.
    /// Default: the built-in demo backend.
    #[arg(long, value_name = "HOST:PORT")]
    backend: Option<String>,

    /// PEM certificate chain, leaf first; needs `--key`. Overrides `tls.cert`.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,

    /// PEM private key of `--cert`. Overrides `tls.key`.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,

    /// ALPN protocols to accept, most preferred first, comma-separated (e.g. `h2,http/1.1`).
    /// Overrides `tls.alpn`.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    alpn: Option<Vec<String>>,

    /// Where the demo certificate is kept. Default: $FASTEDGE_STATE_DIR, else
    /// $XDG_STATE_HOME/fastedge, else ~/.local/state/fastedge.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

/// Check a configuration file and exit: 0 if `fastedge serve` would start with it, 2 with the
/// reason if not. Certificates are loaded (and keys decrypted) and backend names resolved. A
/// bud JSON configuration is shown as the TOML it amounts to, with what was not carried over.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// Configuration file (TOML, or bud's JSON), or `-` for standard input.
    #[arg(value_name = "FILE")]
    config: PathBuf,
}

/// What each executor takes for itself at start.
struct CoreSetup {
    frontends: Vec<BoundListener>,
    demo: Option<BoundListener>,
}

fn read_config(path: &Path) -> Result<ServeConfig, Failure> {
    let (name, text) = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the configuration from standard input")
            .map_err(Failure::config)?;
        ("standard input".to_owned(), text)
    } else {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading configuration {}", path.display()))
            .map_err(Failure::config)?;
        (path.display().to_string(), text)
    };
    let (config, translation) = ServeConfig::parse_any(&text)
        .map_err(|e| Failure::config(anyhow!("configuration {name}: {e}")))?;
    if let Some(translation) = &translation {
        tracing::info!(config = %name, "read as a bud JSON configuration");
        for note in &translation.notes {
            tracing::warn!(config = %name, "bud key not carried over: {note}");
        }
    }
    Ok(config)
}

/// The TOML equivalent of a bud JSON configuration and its notes, for check-config.
fn bud_translation(path: &Path) -> Option<fastedge_tls::bud::Translation> {
    let text = if path == Path::new("-") {
        return None;
    } else {
        std::fs::read_to_string(path).ok()?
    };
    if !fastedge_tls::bud::is_bud_json(&text) {
        return None;
    }
    fastedge_tls::bud::translate(&text).ok()
}

pub fn check_config(args: CheckConfigArgs) -> Result<(), Failure> {
    let mut config = read_config(&args.config)?;
    for key in config.leave_out_h2_where_injecting() {
        eprintln!("note: {key}: h2 left out, its backends get forwarding headers (HTTP/1 only)");
    }
    if !config.tls.certificates.is_empty() {
        ServerContext::from_settings(&config.tls).map_err(Failure::config)?;
    } else {
        // The default context will be the demo certificate; check each SNI context alone.
        for (i, c) in config.tls.contexts.iter().enumerate() {
            let alone = fastedge_tls::config::TlsSettings {
                certificates: c.certificates.clone(),
                ciphers: c.ciphers.clone(),
                alpn: c.alpn.clone(),
                client_auth: c.client_auth.clone(),
                contexts: Vec::new(),
                ..config.tls.clone()
            };
            ServerContext::from_settings(&alone)
                .map_err(|e| Failure::config(anyhow!("context[{i}]: {e}")))?;
        }
    }
    if let Some(text) = &config.cores {
        text.parse::<CpuList>()
            .map_err(|e| Failure::config(anyhow!("cores {text:?}: {e}")))?;
    }
    println!(
        "{}: OK ({} listen address(es), {} backend(s){}, {} SNI context(s))",
        args.config.display(),
        config.frontend.listen.len(),
        config.backends.len(),
        if config.backends.is_empty() {
            ": the demo backend"
        } else {
            ""
        },
        config.tls.contexts.len(),
    );
    if let Some(dynamic) = &config.tls.dynamic_sni {
        println!(
            "  dynamic SNI: {} (timeout {} ms, cache {} names per core)",
            dynamic.url,
            dynamic.timeout.as_millis(),
            dynamic.cache_size
        );
    }
    if let Some(translation) = bud_translation(&args.config) {
        println!("  read as a bud JSON configuration; in fastedge's TOML it reads:\n");
        for line in translation.toml.lines() {
            println!("    {line}");
        }
        println!();
        for note in &translation.notes {
            println!("  not carried over: {note}");
        }
    }
    for c in &config.tls.contexts {
        println!(
            "  context {}: {} certificate(s), alpn {:?}, client certificates {:?}, {}",
            c.names.join(" "),
            c.certificates.len(),
            c.alpn,
            c.client_auth.verify,
            if c.backends.is_empty() {
                "global backends".to_owned()
            } else {
                format!("{} own backend(s)", c.backends.len())
            }
        );
    }
    Ok(())
}

pub fn run(args: ServeArgs) -> Result<(), Failure> {
    if args.print_default_config {
        print!("{DEFAULT_CONFIG}");
        return Ok(());
    }
    let mut config = match &args.config {
        Some(path) => read_config(path)?,
        None => ServeConfig::default(),
    };
    apply_overrides(&mut config, &args)?;

    match raise_nofile_limit() {
        Ok(limit) => tracing::debug!(limit, "open-files limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open-files limit"),
    }
    let available = CpuList::available().map_err(Failure::runtime)?;
    let cpus = match &config.cores {
        Some(text) => {
            let list: CpuList = text
                .parse()
                .map_err(|e| Failure::config(anyhow!("cores {text:?}: {e}")))?;
            list.check_within(&available)
                .map_err(|e| Failure::config(anyhow!("cores {text:?}: {e}")))?;
            list
        }
        None => available,
    };
    // Bind everything before starting any executor or dropping privileges.
    let cores = cpus.len();
    let mut demo = None;
    let mut demo_addr = None;
    if config.backends.is_empty() {
        let listeners = bind_reuseport(
            "127.0.0.1:0".parse().map_err(Failure::runtime)?,
            cores,
            config.frontend.backlog,
        )
        .map_err(Failure::runtime)?;
        let addr = listeners[0].local_addr();
        tracing::info!(%addr, "demo backend listening (no backend configured)");
        demo_addr = Some(addr);
        demo = Some(listeners);
    }
    let frontend = build_frontend(&config, &args, demo_addr, 0, None)?;
    let mut per_frontend = Vec::new();
    for addr in &config.frontend.listen {
        let listeners =
            bind_reuseport(*addr, cores, config.frontend.backlog).map_err(Failure::config)?;
        tracing::info!(addr = %listeners[0].local_addr(), cores = %cpus, "listening");
        per_frontend.push(listeners);
    }
    for backend in &frontend.backends {
        tracing::info!(
            backend = %backend.name,
            addr = %backend.addr,
            proxy_protocol = ?backend.proxy_protocol,
            x_forwarded = backend.x_forwarded,
            forwarded = backend.forwarded,
            balance = ?config.balance.mode,
            "backend"
        );
    }
    let registry = fastedge_runtime::metrics::Registry::new();
    if let Some(addr) = config.metrics_listen {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("metrics_listen {addr}"))
            .map_err(Failure::config)?;
        tracing::info!(addr = %listener.local_addr().map_err(Failure::runtime)?, "metrics listening (GET /metrics)");
        fastedge_runtime::metrics::serve_http(listener, registry.clone())
            .map_err(Failure::runtime)?;
    }
    if let Some(user) = &config.user {
        let (uid, gid) = drop_privileges(user, config.group.as_deref()).map_err(Failure::config)?;
        tracing::info!(%user, uid = uid.as_raw(), gid = gid.as_raw(), "dropped privileges");
    }
    let mut setups = Vec::with_capacity(cores);
    for _ in 0..cores {
        setups.push(CoreSetup {
            frontends: per_frontend.iter_mut().filter_map(|l| l.pop()).collect(),
            demo: demo.as_mut().and_then(|d: &mut Vec<BoundListener>| d.pop()),
        });
    }
    let mut setups = setups.into_iter();

    // Executors inherit the signal mask: block the signals so only `sigwait` below sees them.
    let signals = crate::block_signals(&[Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP])?;

    let shutdown = Shutdown::new();
    let max_connections = frontend.settings.max_connections;
    let current = Arc::new(ArcSwap::from_pointee(frontend));
    if config.tls.resumption.ticket_key_stdin {
        if !config.tls.resumption.tickets {
            return Err(Failure::config(anyhow!(
                "tls.ticket_key_stdin needs tls.tickets = true"
            )));
        }
        read_ticket_keys_from_stdin(current.clone());
    }
    tracing::info!(engine = %config.engine, "starting executors");
    let executors = Executors::spawn_on(config.engine, "fastedge", &cpus, |core| {
        let setup = setups.next();
        let current = current.clone();
        let shutdown = shutdown.clone();
        let metrics = registry.core();
        move || async move {
            let Some(setup) = setup else { return };
            let demo_open = ConnectionLimit::new(u32::MAX);
            if let Some(demo) = setup.demo {
                match demo.into_listener() {
                    Ok(demo) => {
                        let (stop, open) = (shutdown.clone(), demo_open.clone());
                        fastedge_runtime::spawn_detached(crate::demo::run(demo, core, stop, open));
                    }
                    Err(error) => tracing::error!(%error, "demo backend listener"),
                }
            }
            let limit = ConnectionLimit::new(max_connections);
            let backends = Rc::new(RefCell::new(None));
            fastedge_runtime::spawn_detached(health_check_loop(
                current.clone(),
                backends.clone(),
                metrics.clone(),
                shutdown.clone(),
            ));
            let mut accepting = Vec::new();
            for listener in setup.frontends {
                accepting.push(fastedge_runtime::spawn(accept_loop(
                    listener,
                    current.clone(),
                    backends.clone(),
                    metrics.clone(),
                    limit.clone(),
                    shutdown.clone(),
                )));
            }
            for task in accepting {
                task.await;
            }
            let drain_timeout = current.load().settings.drain_timeout;
            let deadline = std::time::Instant::now() + drain_timeout;
            let open = limit.open();
            if open > 0 {
                tracing::info!(cpu = core.cpu, open, "draining open connections");
                let left = limit.drain(drain_timeout).await;
                if left > 0 {
                    tracing::warn!(cpu = core.cpu, left, "drain timeout: closing connections");
                }
            }
            // Demo backend connections of this core may serve other cores' clients: they go
            // last, within the same deadline.
            let remaining = deadline.saturating_duration_since(std::time::Instant::now());
            demo_open.drain(remaining).await;
        }
    })
    .map_err(Failure::runtime)?;

    let mut generation = 0;
    let signal = loop {
        let signal = signals
            .wait()
            .context("waiting for signals")
            .map_err(Failure::runtime)?;
        if signal != Signal::SIGHUP {
            break signal;
        }
        generation += 1;
        reload(&args, &config, demo_addr, generation, &current);
    };
    tracing::info!(
        signal = %signal,
        drain_ms = current.load().settings.drain_timeout.as_millis() as u64,
        "stopping: no new connections accepted"
    );
    shutdown.trigger();
    std::thread::spawn(move || loop {
        match signals.wait() {
            Ok(Signal::SIGHUP) => tracing::info!("SIGHUP while stopping: ignored"),
            Ok(signal) => {
                tracing::warn!(signal = %signal, "second signal: exiting without draining");
                std::process::exit(1);
            }
            Err(_) => return,
        }
    });
    executors.join().map_err(Failure::runtime)?;
    tracing::info!("stopped");
    Ok(())
}

/// bud's ticket IPC: reads key messages from standard input on a thread of its own and makes
/// each the current ticket key. A malformed message ends the reading (the stream cannot be
/// resynchronized), with the reason logged; so does the end of input.
fn read_ticket_keys_from_stdin(current: Arc<ArcSwap<Frontend>>) {
    let spawned = std::thread::Builder::new()
        .name("fastedge-ticket-ipc".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 512];
            loop {
                match fastedge_wire::bud_ipc::parse(&buf) {
                    Ok(fastedge_wire::http1::Status::Complete((message, used))) => {
                        buf.drain(..used);
                        let key = fastedge_tls::tickets::TicketKey::from_bytes(&message.key);
                        match current.load().context.ticket_keys() {
                            Some(keys) => keys.install(key),
                            None => tracing::warn!("ticket key message ignored: tickets are off"),
                        }
                        continue;
                    }
                    Ok(fastedge_wire::http1::Status::Partial) => {}
                    Err(error) => {
                        tracing::error!(%error, "ticket key IPC on standard input: stopped reading");
                        return;
                    }
                }
                match std::io::Read::read(&mut stdin, &mut chunk) {
                    Ok(0) => {
                        tracing::info!("ticket key IPC: standard input closed");
                        return;
                    }
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(error) => {
                        tracing::error!(%error, "ticket key IPC: reading standard input failed");
                        return;
                    }
                }
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "could not start the ticket key IPC thread");
    }
}

/// The context and backends a configuration describes, with the demo backend standing in when
/// it lists none.
fn build_frontend(
    config: &ServeConfig,
    args: &ServeArgs,
    demo_addr: Option<SocketAddr>,
    generation: u64,
    previous: Option<&ServerContext>,
) -> Result<Frontend, Failure> {
    let context = load_context(config, args, previous)?;
    let mut backends = config.backends.clone();
    if backends.is_empty() {
        let addr = demo_addr.ok_or_else(|| {
            Failure::config(anyhow!(
                "no [[backend]] configured (the demo backend runs only when fastedge starts without backends)"
            ))
        })?;
        backends.push(BackendSpec {
            name: addr.to_string(),
            addr: BackendAddr::Tcp(addr),
            proxy_protocol: ProxyPrefix::None,
            x_forwarded: false,
            forwarded: false,
            send_client_cert: false,
        });
    }
    Ok(Frontend::new(
        generation,
        context,
        config.frontend.clone(),
        config.balance,
        backends,
        &config.tls.contexts,
    ))
}

/// SIGHUP: reads the configuration again (and the certificates it names); swaps it in for new
/// connections if it is valid, keeps the running one otherwise. Open connections keep the
/// configuration they started with. Settings fixed at start are reported, not changed.
fn reload(
    args: &ServeArgs,
    started: &ServeConfig,
    demo_addr: Option<SocketAddr>,
    generation: u64,
    current: &ArcSwap<Frontend>,
) {
    let attempt = || -> Result<Frontend, Failure> {
        let mut config = match &args.config {
            Some(path) if path != Path::new("-") => read_config(path)?,
            _ => started.clone(),
        };
        apply_overrides(&mut config, args)?;
        let fixed = [
            ("cores", config.cores != started.cores),
            ("engine", config.engine != started.engine),
            (
                "user/group",
                config.user != started.user || config.group != started.group,
            ),
            (
                "frontend.listen",
                config.frontend.listen != started.frontend.listen,
            ),
            (
                "frontend.backlog",
                config.frontend.backlog != started.frontend.backlog,
            ),
            (
                "frontend.max_connections",
                config.frontend.max_connections != started.frontend.max_connections,
            ),
        ];
        for (key, changed) in fixed {
            if changed {
                tracing::warn!(
                    key,
                    "changed in the configuration; takes effect at the next restart"
                );
            }
        }
        build_frontend(
            &config,
            args,
            demo_addr,
            generation,
            Some(&current.load().context),
        )
    };
    match attempt() {
        Ok(frontend) => {
            let backends = frontend.backends.len();
            current.store(Arc::new(frontend));
            tracing::info!(
                generation,
                backends,
                "reloaded: new connections use the new configuration"
            );
        }
        Err(failure) => tracing::error!(
            "reload failed, keeping the running configuration: {:#}",
            failure.error
        ),
    }
}

fn apply_overrides(config: &mut ServeConfig, args: &ServeArgs) -> Result<(), Failure> {
    if let Some(cores) = &args.cores {
        config.cores = Some(cores.clone());
    }
    if let Some(engine) = args.engine {
        config.engine = engine;
    }
    if !args.listen.is_empty() {
        config.frontend.listen = args.listen.clone();
    }
    if let Some(text) = &args.backend {
        let config_text = format!("[[backend]]\naddress = {text:?}\n");
        let parsed = ServeConfig::parse(&config_text)
            .map_err(|e| Failure::config(anyhow!("--backend {text:?}: {e}")))?;
        config.backends = parsed.backends;
    }
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        // Replaces the configured pairs: one certificate, unencrypted or via the config's
        // passphrase of the shorthand pair.
        let passphrase = config
            .tls
            .certificates
            .first()
            .and_then(|c| c.passphrase.clone());
        config.tls.certificates = vec![CertificateSpec {
            cert: cert.clone(),
            key: key.clone(),
            passphrase,
            key_server: None,
            ocsp_staple: None,
        }];
    }
    if let Some(alpn) = &args.alpn {
        let alpn: Vec<String> = alpn.iter().filter(|p| !p.is_empty()).cloned().collect();
        if let Some(bad) = alpn.iter().find(|p| p.len() > 255) {
            return Err(Failure::config(anyhow!(
                "--alpn: protocol name {bad:?} is longer than 255 bytes"
            )));
        }
        config.tls.alpn = alpn;
    }
    for key in config.leave_out_h2_where_injecting() {
        tracing::warn!(
            "{key}: h2 left out, its backends get forwarding headers (HTTP/1 only); use \
             proxy_protocol = \"v2\" to tell HTTP/2 backends about clients"
        );
    }
    Ok(())
}

/// How long accepting pauses after a failure such as EMFILE.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);
/// How long after its last failure an accept pause counts as over.
const ACCEPT_CALM: Duration = Duration::from_secs(1);

async fn accept_loop(
    listener: BoundListener,
    current: Arc<ArcSwap<Frontend>>,
    core_backends: Rc<RefCell<Option<(u64, CoreBackends)>>>,
    metrics: Arc<fastedge_runtime::metrics::CoreMetrics>,
    limit: ConnectionLimit,
    shutdown: Shutdown,
) {
    let listener = match listener.into_listener() {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "listener could not join this core's executor");
            return;
        }
    };
    let local_default = listener.local_addr().ok();
    let mut paused: Option<(Instant, u32)> = None;
    loop {
        // Take a slot first: at the cap, clients wait in the accept queue.
        let Some(permit) = shutdown.until(limit.acquire()).await else {
            return;
        };
        let accepted = shutdown.until(listener.accept()).await;
        let stream = match accepted {
            None => return,
            Some(Ok(stream)) => stream,
            Some(Err(error)) => {
                // EMFILE and friends: pause accepting (one log line), retry after a pause;
                // connections wait in the kernel's accept queue meanwhile.
                match &mut paused {
                    None => {
                        tracing::warn!(%error, "accept failed: pausing accepts until it succeeds");
                        paused = Some((Instant::now(), 1));
                    }
                    Some((last, failures)) => {
                        *last = Instant::now();
                        *failures += 1;
                    }
                }
                drop(permit);
                fastedge_runtime::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        // One pause is over once accepts have gone on failing for ACCEPT_CALM: a backlog that
        // refills the descriptor table in bursts is one episode, not a log line per burst.
        if let Some((last, failures)) = paused {
            if last.elapsed() >= ACCEPT_CALM {
                tracing::info!(failures, "accepting again");
                paused = None;
            }
        }
        let (Ok(peer), Some(local)) = (
            stream.peer_addr(),
            stream.local_addr().ok().or(local_default),
        ) else {
            // Reset before we looked (getpeername says ENOTCONN): still a connection accepted
            // and closed by a client error, as the metrics must say.
            tracing::debug!("connection gone before it could be served");
            metrics.connection_opened();
            metrics.connection_closed(fastedge_runtime::metrics::CloseClass::ClientError, 0, 0);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // The configuration of the moment; a reload builds this core a new balancer.
        let frontend = current.load_full();
        let backends = backends_for(&core_backends, &frontend, &metrics);
        fastedge_runtime::spawn_detached(async move {
            serve_connection(stream, peer, local, frontend, backends).await;
            drop(permit);
        });
    }
}

/// This core's balancer for `frontend`'s generation, made on first use after a reload.
fn backends_for(
    slot: &RefCell<Option<(u64, CoreBackends)>>,
    frontend: &Frontend,
    metrics: &Arc<fastedge_runtime::metrics::CoreMetrics>,
) -> CoreBackends {
    let mut slot = slot.borrow_mut();
    match &*slot {
        Some((generation, backends)) if *generation == frontend.generation => backends.clone(),
        _ => {
            let backends = CoreBackends::new(frontend, metrics.clone());
            *slot = Some((frontend.generation, backends.clone()));
            backends
        }
    }
}

/// Active health checks of this core, at the configured interval (followed across reloads).
async fn health_check_loop(
    current: Arc<ArcSwap<Frontend>>,
    core_backends: Rc<RefCell<Option<(u64, CoreBackends)>>>,
    metrics: Arc<fastedge_runtime::metrics::CoreMetrics>,
    shutdown: Shutdown,
) {
    loop {
        let interval = current
            .load()
            .balance
            .health_check_interval
            .unwrap_or(Duration::from_secs(1));
        if shutdown
            .until(fastedge_runtime::sleep(interval))
            .await
            .is_none()
        {
            return;
        }
        let frontend = current.load_full();
        if frontend.balance.health_check_interval.is_some() {
            let backends = backends_for(&core_backends, &frontend, &metrics);
            probe_backends(&frontend, &backends).await;
        }
    }
}

fn load_context(
    config: &ServeConfig,
    args: &ServeArgs,
    previous: Option<&ServerContext>,
) -> Result<ServerContext, Failure> {
    if !config.tls.certificates.is_empty() {
        return ServerContext::from_settings_keeping(&config.tls, previous)
            .map_err(Failure::config);
    }
    let dir = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => default_state_dir().map_err(Failure::config)?,
    };
    let (cert, key) = ensure_demo_certificate(&dir).map_err(Failure::runtime)?;
    let demo_tls = fastedge_tls::config::TlsSettings {
        certificates: vec![CertificateSpec {
            cert,
            key,
            passphrase: None,
            key_server: None,
            ocsp_staple: None,
        }],
        ..config.tls.clone()
    };
    ServerContext::from_settings_keeping(&demo_tls, previous).map_err(Failure::config)
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
