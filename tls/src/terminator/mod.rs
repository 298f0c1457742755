//! The terminator: TLS termination in front of TCP backends, as `fastedge serve` runs it, for
//! any program to embed.
//!
//! A [`Terminator`] is built from a validated [`ServeConfig`] (or a TOML string,
//! [`Terminator::from_toml`]) and started on a CPU list ([`Terminator::on_cpus`], else the
//! config's `cores`, else every CPU the process may use). [`Terminator::start`] binds every
//! listener (one SO_REUSEPORT socket per CPU and address), loads the certificates, drops
//! privileges when the config names a user, and starts one pinned executor per CPU; each runs
//! the accept loops, the active health checks and its own balancers. The returned
//! [`TerminatorHandle`] reloads the configuration for new connections, drains, stops, and
//! reads the metrics.
//!
//! With no backend configured, a built-in demo backend on loopback answers every request with
//! the request head as it reached it; with no certificate, a self-signed one is created once in
//! the state directory ([`Terminator::state_dir`]).
//!
//! Owns: the supervisor of `serve` (start-up order, accept, health, reload, drain, stop).
//! Does not own: signals, reading files or the environment ([`crate::service`] does, on top of
//! it), printing (the embedder's or the
//! binary's), nor what happens on one connection ([`crate::proxy`]).

mod demo;
mod executor;
mod ticket_ipc;
mod upgrade;

pub use upgrade::UpgradeError;

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{atomic::AtomicBool, Arc, Mutex, PoisonError},
    time::Duration,
};

use arc_swap::ArcSwap;
use fastedge_runtime::{
    bind_reuseport, drop_privileges, handover::HandoverSocket, metrics::Registry,
    raise_nofile_limit, BoundListener, CpuList, CpuListError, Executors, ProcessError,
    RuntimeError, Shutdown,
};

use crate::{
    config::{
        BackendAddr, BackendSpec, CertificateSpec, ConfigError, ProxyPrefix, ServeConfig,
        TlsSettings,
    },
    metrics::ServeMetrics,
    proxy::Frontend,
    SelfSigned, ServerContext, TlsError,
};

use executor::CoreSetup;

/// Why a terminator could not start, check or reload its configuration. Each variant names
/// what it was doing; [`TerminatorError::is_config`] tells bad configuration from failures of
/// the system.
#[derive(Debug, thiserror::Error)]
pub enum TerminatorError {
    /// The configuration document is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The CPU list names CPUs this process may not run on, or the process's CPUs could not be
    /// read.
    #[error("cores {cpus}: {error}")]
    Cores {
        /// The CPU list asked for (`all` for every available CPU).
        cpus: String,
        /// Why it cannot be used.
        error: CpuListError,
    },
    /// A certificate, key, CA bundle or other TLS setting could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// An SNI context, checked on its own, could not be loaded.
    #[error("context[{index}]: {error}")]
    Context {
        /// Its position among the `[[context]]` tables.
        index: usize,
        /// Why it could not be loaded.
        error: TlsError,
    },
    /// A reload lists no backend, but the demo backend runs only when the terminator starts
    /// without backends.
    #[error(
        "no [[backend]] configured (the demo backend runs only when fastedge starts without backends)"
    )]
    NoBackend,
    /// No certificate is configured and no state directory was given to keep the demo
    /// certificate in.
    #[error("no certificate configured and no state directory for the demo certificate")]
    NoStateDir,
    /// The demo certificate could not be created.
    #[error("demo certificate in {dir}: {error}")]
    DemoCertificate {
        /// The state directory.
        dir: PathBuf,
        /// What failed.
        error: String,
    },
    /// A listen address could not be bound.
    #[error(transparent)]
    Listen(RuntimeError),
    /// The demo backend's loopback listener could not be bound.
    #[error("demo backend: {0}")]
    DemoBackend(RuntimeError),
    /// `metrics_listen` could not be bound.
    #[error("metrics_listen {addr}: {error}")]
    MetricsListen {
        /// The configured address.
        addr: SocketAddr,
        /// Why binding failed.
        error: io::Error,
    },
    /// The metrics thread could not start.
    #[error("starting the metrics thread: {0}")]
    MetricsThread(io::Error),
    /// Privileges could not be dropped to the configured user and group.
    #[error(transparent)]
    Privileges(ProcessError),
    /// An executor could not start or ended abnormally.
    #[error(transparent)]
    Executors(RuntimeError),
    /// Taking the listening sockets over from a running process, or listening for a process
    /// that takes them over, failed.
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
    /// The upgrade listener's thread could not start.
    #[error("starting the upgrade thread: {0}")]
    UpgradeThread(io::Error),
}

impl TerminatorError {
    /// Whether the configuration (or what it names: files, addresses, users) is at fault, as
    /// opposed to the system the terminator runs on. `fastedge serve` exits with 2 for these,
    /// 1 for the others.
    pub fn is_config(&self) -> bool {
        match self {
            TerminatorError::Config(_)
            | TerminatorError::Tls(_)
            | TerminatorError::Context { .. }
            | TerminatorError::NoBackend
            | TerminatorError::NoStateDir
            | TerminatorError::Listen(_)
            | TerminatorError::MetricsListen { .. }
            | TerminatorError::Privileges(_) => true,
            TerminatorError::Cores { error, .. } => !matches!(error, CpuListError::Affinity(_)),
            TerminatorError::DemoCertificate { .. }
            | TerminatorError::DemoBackend(_)
            | TerminatorError::MetricsThread(_)
            | TerminatorError::Executors(_)
            | TerminatorError::Upgrade(_)
            | TerminatorError::UpgradeThread(_) => false,
        }
    }
}

/// A TLS terminator, configured and not yet started.
#[derive(Debug)]
pub struct Terminator {
    config: ServeConfig,
    cpus: Option<CpuList>,
    state_dir: Option<PathBuf>,
    upgrade: UpgradeSettings,
}

/// How a terminator takes part in binary upgrades.
#[derive(Default)]
struct UpgradeSettings {
    /// Where it listens for a successor.
    socket: Option<PathBuf>,
    /// Where the predecessor whose sockets it takes listens.
    take_over: Option<PathBuf>,
    /// Called when a successor took the sockets over.
    handed_over: Option<upgrade::HandedOver>,
}

impl std::fmt::Debug for UpgradeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpgradeSettings")
            .field("socket", &self.socket)
            .field("take_over", &self.take_over)
            .field("handed_over", &self.handed_over.is_some())
            .finish()
    }
}

impl Terminator {
    /// A terminator for `config`. Where backends get forwarding headers (HTTP/1 only), `h2` is
    /// left out of the ALPN lists ([`ServeConfig::leave_out_h2_where_injecting`]), with a
    /// warning logged for each list.
    pub fn new(mut config: ServeConfig) -> Self {
        warn_h2_left_out(&mut config);
        Self {
            config,
            cpus: None,
            state_dir: None,
            upgrade: UpgradeSettings::default(),
        }
    }

    /// A terminator for a TOML configuration document (see [`crate::config::DEFAULT_CONFIG`]).
    pub fn from_toml(text: &str) -> Result<Self, TerminatorError> {
        Ok(Self::new(ServeConfig::parse(text)?))
    }

    /// Runs on `cpus`, one executor each, instead of the configuration's `cores`.
    pub fn on_cpus(mut self, cpus: CpuList) -> Self {
        self.cpus = Some(cpus);
        self
    }

    /// Keeps the demo certificate (used when no certificate is configured) in `dir`, creating
    /// it there on first use.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// Listens on the UNIX socket `path` (created mode 0600, replacing a stale one; removed
    /// when handed over) for a new process that takes the listening sockets over
    /// ([`Terminator::take_over`]): that one gets every listening socket, and once it serves,
    /// this terminator stops accepting and drains. The socket's directory must be writable by
    /// the user the terminator runs as (after a privilege drop, for the next upgrade).
    pub fn upgrade_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.upgrade.socket = Some(path.into());
        self
    }

    /// Starts on the listening sockets of the terminator listening at the upgrade socket
    /// `path` instead of binding its own: every socket it has, for every address (addresses
    /// of `frontend.listen` it does not have are bound; its sockets for addresses no longer
    /// configured are served all the same, so no accept queue is dropped). The sockets are
    /// spread over this terminator's cores; where it has more cores than the old one had
    /// sockets, more are bound on the same address. Once this one serves,
    /// [`TerminatorHandle::release_predecessor`] tells the old one to drain; the upgrade
    /// socket of [`Terminator::upgrade_socket`] is listened on from then.
    pub fn take_over(mut self, path: impl Into<PathBuf>) -> Self {
        self.upgrade.take_over = Some(path.into());
        self
    }

    /// Calls `hook` once, on the upgrade thread, when a new process has taken the listening
    /// sockets over and this terminator started draining ([`TerminatorHandle::join`] then
    /// returns when it is done).
    pub fn on_handed_over(mut self, hook: impl FnOnce() + Send + 'static) -> Self {
        self.upgrade.handed_over = Some(Box::new(hook));
        self
    }

    /// The configuration it will start with.
    pub fn config(&self) -> &ServeConfig {
        &self.config
    }

    /// Loads everything the configuration names that can be loaded without starting:
    /// certificates and keys (decrypting them), CA bundles, ticket keys. Without a configured
    /// certificate (the demo certificate will be the default), each SNI context is loaded on
    /// its own.
    pub fn check(&self) -> Result<(), TerminatorError> {
        let tls = &self.config.tls;
        if !tls.certificates.is_empty() {
            ServerContext::from_settings(tls)?;
            return Ok(());
        }
        for (index, c) in tls.contexts.iter().enumerate() {
            let alone = TlsSettings {
                certificates: c.certificates.clone(),
                ciphers: c.ciphers.clone(),
                alpn: c.alpn.clone(),
                client_auth: c.client_auth.clone(),
                contexts: Vec::new(),
                ..tls.clone()
            };
            ServerContext::from_settings(&alone)
                .map_err(|error| TerminatorError::Context { index, error })?;
        }
        Ok(())
    }

    /// Starts serving: binds every listener (and the demo backend's, without backends), loads
    /// the certificates, serves metrics on `metrics_listen`, drops privileges to the
    /// configured user, starts reading ticket keys from standard input when
    /// `tls.ticket_key_stdin` asks for it, and starts one executor per CPU. Also raises the
    /// process's open-files limit to its hard limit (a proxy needs two descriptors per
    /// connection). Executors inherit the calling thread's signal mask.
    pub fn start(self) -> Result<TerminatorHandle, TerminatorError> {
        let Terminator {
            config,
            cpus,
            state_dir,
            upgrade,
        } = self;
        match raise_nofile_limit() {
            Ok(limit) => tracing::debug!(limit, "open-files limit"),
            Err(error) => tracing::warn!(%error, "could not raise the open-files limit"),
        }
        let available = CpuList::available().map_err(|error| TerminatorError::Cores {
            cpus: "all".into(),
            error,
        })?;
        let cpus = match cpus.or_else(|| config.cores.clone()) {
            Some(list) => {
                list.check_within(&available)
                    .map_err(|error| TerminatorError::Cores {
                        cpus: list.to_string(),
                        error,
                    })?;
                list
            }
            None => available,
        };
        // Bind everything before starting any executor or dropping privileges.
        let cores = cpus.len();
        let mut demo = None;
        let mut demo_addr = None;
        if config.backends.is_empty() {
            let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
            let listeners = bind_reuseport(loopback, cores, config.frontend.backlog)
                .map_err(TerminatorError::DemoBackend)?;
            let addr = listeners[0].local_addr();
            tracing::info!(%addr, "demo backend listening (no backend configured)");
            demo_addr = Some(addr);
            demo = Some(listeners);
        }
        let loader = Loader {
            state_dir,
            demo_addr,
        };
        // A shared session store's client thread runs beside the cores that ask it.
        crate::session_store::keep_on_cpus(cpus.cpus());
        let frontend = loader.frontend(&config, 0, None)?;
        let mut groups: Vec<Vec<BoundListener>> = Vec::new();
        // How many sockets at the start of each group came from the predecessor (shared with
        // it until it is released); the rest this process bound.
        let mut taken_counts: Vec<usize> = Vec::new();
        let mut predecessor = None;
        if let Some(path) = &upgrade.take_over {
            let (old, taken) = upgrade::receive(path)?;
            let sockets: usize = taken.iter().map(|(_, l)| l.len()).sum();
            tracing::info!(pid = old.pid, sockets, socket = %path.display(), "took the listening sockets over");
            predecessor = Some(old);
            for (addr, mut listeners) in taken {
                if !config.frontend.listen.contains(&addr) {
                    tracing::warn!(%addr, "not in frontend.listen, served all the same (its accept queues came with it)");
                }
                taken_counts.push(listeners.len());
                if listeners.len() < cores {
                    let more =
                        bind_reuseport(addr, cores - listeners.len(), config.frontend.backlog)
                            .map_err(TerminatorError::Listen)?;
                    listeners.extend(more);
                }
                groups.push(listeners);
            }
        }
        for addr in &config.frontend.listen {
            if groups.iter().any(|g| g[0].local_addr() == *addr) {
                continue;
            }
            groups.push(
                bind_reuseport(*addr, cores, config.frontend.backlog)
                    .map_err(TerminatorError::Listen)?,
            );
            taken_counts.push(0);
        }
        let mut listening = Vec::new();
        for group in &groups {
            let local = group[0].local_addr();
            tracing::info!(addr = %local, cores = %cpus, sockets = group.len(), "listening");
            listening.push(local);
        }
        // Second descriptors of every socket, for a successor.
        let mut copies = None;
        if upgrade.socket.is_some() {
            let mut all = Vec::with_capacity(groups.len());
            for group in &groups {
                let copy: Result<Vec<_>, _> = group.iter().map(BoundListener::try_clone).collect();
                all.push(copy.map_err(|source| {
                    TerminatorError::Listen(RuntimeError::Listen {
                        addr: group[0].local_addr(),
                        source,
                    })
                })?);
            }
            copies = Some(all);
        }
        // Bound before privileges are dropped (unless the predecessor still holds the path).
        let upgrade_listener = match (&upgrade.socket, &predecessor) {
            (Some(path), None) => Some(HandoverSocket::bind(path).map_err(UpgradeError::from)?),
            _ => None,
        };
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
        let registry = Registry::new();
        let serve_metrics = ServeMetrics::register(&registry);
        let mut metrics_addr = None;
        if let Some(addr) = config.metrics_listen {
            let metrics_error = |error| TerminatorError::MetricsListen { addr, error };
            match std::net::TcpListener::bind(addr) {
                Ok(listener) => {
                    let local = listener.local_addr().map_err(metrics_error)?;
                    tracing::info!(addr = %local, "metrics listening (GET /metrics)");
                    fastedge_runtime::metrics::serve_http(listener, registry.clone())
                        .map_err(TerminatorError::MetricsThread)?;
                    metrics_addr = Some(local);
                }
                // The process whose sockets were taken serves its metrics there until it
                // exits: bind it then.
                Err(error) if error.kind() == io::ErrorKind::AddrInUse && predecessor.is_some() => {
                    upgrade::serve_metrics_when_free(addr, registry.clone())
                        .map_err(TerminatorError::MetricsThread)?;
                    metrics_addr = Some(addr);
                }
                Err(error) => return Err(metrics_error(error)),
            }
        }
        if let Some(user) = &config.user {
            let (uid, gid) = drop_privileges(user, config.group.as_deref())
                .map_err(TerminatorError::Privileges)?;
            tracing::info!(%user, uid = uid.as_raw(), gid = gid.as_raw(), "dropped privileges");
        }
        let mut setups = Vec::with_capacity(cores);
        for _ in 0..cores {
            setups.push(CoreSetup {
                frontends: Vec::new(),
                demo: demo.as_mut().and_then(|d: &mut Vec<BoundListener>| d.pop()),
            });
        }
        // Socket j of an address goes to core j mod cores: every socket is served.
        for (group, taken) in groups.into_iter().zip(taken_counts) {
            for (j, listener) in group.into_iter().enumerate() {
                setups[j % cores].frontends.push(executor::FrontendSocket {
                    listener,
                    taken: j < taken,
                });
            }
        }
        let mut setups = setups.into_iter();

        let shutdown = Shutdown::new();
        // Set by the upgrade thread before it triggers the drain.
        let released = Arc::new(AtomicBool::new(false));
        // Whether another process may accept on the listening sockets too: the predecessor
        // until it is released, a successor from the moment they are sent. A stop then leaves
        // them listening (see `executor::stop_accepting`).
        let predecessor_accepts = Arc::new(AtomicBool::new(predecessor.is_some()));
        let sent = Arc::new(AtomicBool::new(false));
        let max_connections = frontend.settings.max_connections;
        let current = Arc::new(ArcSwap::from_pointee(frontend));
        if config.tls.resumption.ticket_key_stdin {
            ticket_ipc::spawn_reader(io::stdin(), current.clone());
        }
        tracing::info!(engine = %config.engine, "starting executors");
        let executors = Executors::spawn_on(config.engine, "fastedge", &cpus, |core| {
            let setup = setups.next();
            let current = current.clone();
            let shutdown = shutdown.clone();
            let sockets = executor::SocketFate {
                handed_over: released.clone(),
                predecessor_accepts: predecessor_accepts.clone(),
                sent: sent.clone(),
            };
            let metrics = serve_metrics.core();
            move || async move {
                let Some(setup) = setup else { return };
                executor::run_core(
                    core,
                    setup,
                    current,
                    metrics,
                    max_connections,
                    shutdown,
                    sockets,
                )
                .await;
            }
        })
        .map_err(TerminatorError::Executors)?;
        let mut pending_upgrade = None;
        if let Some(copies) = copies {
            match upgrade_listener {
                Some(socket) => upgrade::spawn_upgrade_listener(
                    socket,
                    copies,
                    shutdown.clone(),
                    upgrade.handed_over,
                    released.clone(),
                    sent.clone(),
                )
                .map_err(TerminatorError::UpgradeThread)?,
                None => {
                    pending_upgrade = upgrade
                        .socket
                        .map(|path| (path, copies, upgrade.handed_over))
                }
            }
        }
        Ok(TerminatorHandle {
            predecessor,
            pending_upgrade,
            released,
            predecessor_accepts,
            sent,
            current,
            started: config,
            loader,
            generation: Mutex::new(0),
            shutdown,
            executors: Some(executors),
            registry,
            listening,
            metrics_addr,
            cpus,
        })
    }
}

/// A running terminator. Dropping it stops the terminator as [`TerminatorHandle::stop`] does
/// (ignoring how the executors ended).
pub struct TerminatorHandle {
    current: Arc<ArcSwap<Frontend>>,
    /// The configuration it started with: settings fixed at start are compared against it.
    started: ServeConfig,
    loader: Loader,
    /// Configuration loads so far; held while one is loaded, so reloads happen one at a time.
    generation: Mutex<u64>,
    shutdown: Shutdown,
    executors: Option<Executors<()>>,
    registry: Registry,
    listening: Vec<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    cpus: CpuList,
    /// The process whose sockets were taken, until it is told to drain.
    predecessor: Option<upgrade::Predecessor>,
    /// The upgrade socket to listen on once the predecessor let go of it.
    pending_upgrade: Option<(PathBuf, upgrade::Sockets, Option<upgrade::HandedOver>)>,
    /// Whether a successor took the sockets over.
    released: Arc<AtomicBool>,
    /// Whether the predecessor may still accept on the listening sockets.
    predecessor_accepts: Arc<AtomicBool>,
    /// Whether the sockets were sent to a successor (or began to be).
    sent: Arc<AtomicBool>,
}

impl std::fmt::Debug for TerminatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminatorHandle")
            .field("listening", &self.listening)
            .field("metrics_addr", &self.metrics_addr)
            .field("cpus", &self.cpus)
            .field("generation", &self.generation)
            .field("predecessor", &self.predecessor)
            .field("handed_over", &self.handed_over())
            .finish_non_exhaustive()
    }
}

impl TerminatorHandle {
    /// The process id of the terminator whose sockets this one took over
    /// ([`Terminator::take_over`]), until [`TerminatorHandle::release_predecessor`].
    pub fn predecessor_pid(&self) -> Option<u32> {
        self.predecessor.as_ref().map(|p| p.pid)
    }

    /// After [`Terminator::take_over`], once this terminator serves (and the service manager
    /// was told): tells the old process to stop accepting and drain, waits until it let go of
    /// the upgrade socket, then listens there for the next upgrade when
    /// [`Terminator::upgrade_socket`] asks for it. Returns the old process's id; `None`
    /// without a predecessor.
    pub fn release_predecessor(&mut self) -> Result<Option<u32>, TerminatorError> {
        let Some(old) = self.predecessor.take() else {
            return Ok(None);
        };
        let pid = old.release()?;
        tracing::info!(pid, "the old process drains");
        // It stops accepting (within HANDOVER_LINGER, serving what it accepted): from here a
        // stop of ours may take the sockets out of listening; the old process stops too.
        self.predecessor_accepts
            .store(false, std::sync::atomic::Ordering::SeqCst);
        if let Some((path, copies, hook)) = self.pending_upgrade.take() {
            let socket = HandoverSocket::bind(&path).map_err(UpgradeError::from)?;
            upgrade::spawn_upgrade_listener(
                socket,
                copies,
                self.shutdown.clone(),
                hook,
                self.released.clone(),
                self.sent.clone(),
            )
            .map_err(TerminatorError::UpgradeThread)?;
        }
        Ok(Some(pid))
    }

    /// Whether a new process took the listening sockets over (this one then drains).
    pub fn handed_over(&self) -> bool {
        self.released.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The addresses accepting TLS connections, in `frontend.listen` order (with the port the
    /// kernel chose where the configuration says port 0).
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listening
    }

    /// Where `GET /metrics` is served, when `metrics_listen` is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The demo backend's loopback address, when it runs (no backend configured at start).
    pub fn demo_backend(&self) -> Option<SocketAddr> {
        self.loader.demo_addr
    }

    /// The CPUs the executors run on.
    pub fn cpus(&self) -> &CpuList {
        &self.cpus
    }

    /// How many times the configuration was reloaded successfully.
    pub fn generation(&self) -> u64 {
        *self
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Every core's metrics, summed, as Prometheus text.
    pub fn metrics(&self) -> String {
        self.registry.render()
    }

    /// The metrics registry the executors count into.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Swaps in `config` for new connections: its certificates are loaded (ticket keys carry
    /// over) and each core builds new balancers. Open connections keep the configuration they
    /// started with. Settings fixed at start (`cores`, `engine`, `user`/`group`,
    /// `frontend.listen`, `frontend.backlog`, `frontend.max_connections`) are reported in the
    /// log, not changed. On failure the running configuration stays, and the reason is logged
    /// and returned. Returns the new generation.
    pub fn reload(&self, mut config: ServeConfig) -> Result<u64, TerminatorError> {
        let mut generation = self
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        warn_h2_left_out(&mut config);
        let started = &self.started;
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
        let next = *generation + 1;
        let loaded = self
            .loader
            .frontend(&config, next, Some(&self.current.load().context));
        match loaded {
            Ok(frontend) => {
                let backends = frontend.backends.len();
                self.current.store(Arc::new(frontend));
                *generation = next;
                tracing::info!(
                    generation = next,
                    backends,
                    "reloaded: new connections use the new configuration"
                );
                Ok(next)
            }
            Err(error) => {
                tracing::error!("reload failed, keeping the running configuration: {error}");
                Err(error)
            }
        }
    }

    /// [`TerminatorHandle::reload`] with a TOML configuration document.
    pub fn reload_toml(&self, text: &str) -> Result<u64, TerminatorError> {
        let config = ServeConfig::parse(text).inspect_err(|error| {
            tracing::error!("reload failed, keeping the running configuration: {error}");
        })?;
        self.reload(config)
    }

    /// How long open connections get to finish once draining starts (of the configuration
    /// now running).
    pub fn drain_timeout(&self) -> Duration {
        self.current.load().settings.drain_timeout
    }

    /// Stops accepting on every core; open connections get the drain timeout to finish, then
    /// are closed and the executors end. Returns at once; [`TerminatorHandle::join`] waits.
    pub fn drain(&self) {
        if !self.shutdown.is_triggered() {
            tracing::info!(
                drain_ms = self.drain_timeout().as_millis() as u64,
                "stopping: no new connections accepted"
            );
        }
        self.shutdown.trigger();
    }

    /// Whether [`TerminatorHandle::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.shutdown.is_triggered()
    }

    /// Waits for every executor to end (after [`TerminatorHandle::drain`]; without it, this
    /// waits for good).
    pub fn join(mut self) -> Result<(), TerminatorError> {
        self.join_executors()
    }

    /// Drains and waits for every executor to end. Once it returns nothing listens on the
    /// terminator's addresses any more (unless a new process took the sockets over), so they
    /// can be bound again.
    pub fn stop(self) -> Result<(), TerminatorError> {
        self.drain();
        self.join()
    }

    fn join_executors(&mut self) -> Result<(), TerminatorError> {
        if let Some(executors) = self.executors.take() {
            executors.join().map_err(TerminatorError::Executors)?;
            tracing::info!("stopped");
        }
        Ok(())
    }
}

impl Drop for TerminatorHandle {
    fn drop(&mut self) {
        if self.executors.is_some() {
            self.drain();
            let _ = self.join_executors();
        }
    }
}

/// Leaves `h2` out where backends get forwarding headers, with a warning for each ALPN list.
fn warn_h2_left_out(config: &mut ServeConfig) {
    for key in config.leave_out_h2_where_injecting() {
        tracing::warn!(
            "{key}: h2 left out, its backends get forwarding headers (HTTP/1 only); use \
             proxy_protocol = \"v2\" to tell HTTP/2 backends about clients"
        );
    }
}

/// Turns configurations into what the cores serve, the same way at start and at each reload.
#[derive(Debug, Clone)]
struct Loader {
    /// Where the demo certificate is kept.
    state_dir: Option<PathBuf>,
    /// The demo backend, when it runs.
    demo_addr: Option<SocketAddr>,
}

impl Loader {
    /// The context and backends `config` describes, with the demo backend standing in when it
    /// lists none.
    fn frontend(
        &self,
        config: &ServeConfig,
        generation: u64,
        previous: Option<&ServerContext>,
    ) -> Result<Frontend, TerminatorError> {
        let context = self.context(config, previous)?;
        let mut backends = config.backends.clone();
        if backends.is_empty() {
            let addr = self.demo_addr.ok_or(TerminatorError::NoBackend)?;
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

    /// The server context of `config`, with the demo certificate when it names none.
    fn context(
        &self,
        config: &ServeConfig,
        previous: Option<&ServerContext>,
    ) -> Result<ServerContext, TerminatorError> {
        if !config.tls.certificates.is_empty() {
            return Ok(ServerContext::from_settings_keeping(&config.tls, previous)?);
        }
        let dir = self
            .state_dir
            .as_deref()
            .ok_or(TerminatorError::NoStateDir)?;
        let (cert, key) = ensure_demo_certificate(dir)?;
        let demo_tls = TlsSettings {
            certificates: vec![CertificateSpec {
                cert,
                key,
                passphrase: None,
                key_server: None,
                ocsp_staple: None,
            }],
            ..config.tls.clone()
        };
        Ok(ServerContext::from_settings_keeping(&demo_tls, previous)?)
    }
}

/// The demo certificate in `dir`, created on first use.
fn ensure_demo_certificate(dir: &Path) -> Result<(PathBuf, PathBuf), TerminatorError> {
    let cert = dir.join("demo-cert.pem");
    let key = dir.join("demo-key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let failed = |error: String| TerminatorError::DemoCertificate {
        dir: dir.to_owned(),
        error,
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| failed(format!("creating the state directory: {e}")))?;
    SelfSigned::generate(&["localhost", "127.0.0.1", "::1"], 365)
        .and_then(|demo| demo.write_pem(&cert, &key))
        .map_err(|e| failed(e.to_string()))?;
    tracing::info!(cert = %cert.display(), "created a self-signed demo certificate");
    Ok((cert, key))
}
