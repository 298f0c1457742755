//! The proxy connection driver: TLS client in front, plain TCP backend behind.
//!
//! The backend connect starts as soon as the ClientHello has been processed, in parallel with
//! the rest of the TLS handshake (cut-through), so the backend's connect latency hides behind
//! the handshake's round trips, while a bare TCP connect that never says hello costs no
//! backend connection; client bytes are not read until the backend is connected, so nothing
//! the client sends meanwhile is lost (it waits in the socket). Failed connects are retried
//! over the backends as the balancer decides. Then the backend learns about the client (PROXY
//! v1/v2, bud's JSON line, and/or `X-Forwarded-*` injected into every request), [`pump`] moves
//! bytes both ways, and the connection ends with one log line that says why it closed, and a
//! lingering close.

use std::{
    cell::{Cell, RefCell},
    fmt, io,
    net::SocketAddr,
    ops::Range,
    pin::Pin,
    rc::Rc,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::{Duration, Instant},
};

use boring::{
    nid::Nid,
    ssl::{NameType, SslVerifyMode},
    x509::X509,
};
use fastedge_runtime::{
    metrics::{CloseClass, CoreMetrics},
    net::{TcpStream, UnixStream},
};
use fastedge_wire::{
    balance::{Balancer, HealthChange},
    forwarded::{ClientCertHeaders, ClientFacts, ForwardedConfig, Injector},
    http1::DEFAULT_MAX_HEAD,
    logtext::Untrusted,
    proxy::{encode_bud_json, encode_v1, encode_v2, ConnectionAddrs, TlsFacts},
};
use futures_io::{AsyncRead, AsyncWrite};
use futures_lite::AsyncWriteExt;

use crate::{
    accept_observed,
    config::{
        BackendAddr, BackendSpec, BalanceSettings, FrontendSettings, ProxyPrefix, SniContext,
    },
    HelloChoice, ServerContext, TlsError, TlsStream,
};

/// Bytes buffered per direction of a proxied connection while bytes move.
const PUMP_BUFFER: usize = 32 * 1024;
/// Pump buffers a core keeps for reuse; more are freed when they come back.
const POOL_KEEP: usize = 256;

thread_local! {
    /// This core's spare pump buffers: a direction borrows one to read and gives it back as soon
    /// as it is empty and the reader has nothing more, so an idle connection holds none.
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A pump buffer from this core's pool, or a new one.
fn borrow_buffer() -> Box<[u8]> {
    POOL.with(|pool| pool.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; PUMP_BUFFER].into_boxed_slice())
}

/// Returns a pump buffer to this core's pool.
fn return_buffer(buf: Box<[u8]>) {
    // `try_with`: a connection dropped while the thread's locals are torn down frees its buffer.
    let _ = POOL.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOL_KEEP {
            pool.push(buf);
        }
    });
}

/// How long a connection we close keeps reading what the client still sends (see [`linger`]).
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
/// How much a lingering connection reads at most before it closes anyway.
const LINGER_MAX_BYTES: usize = 256 * 1024;
/// The shortest wait before a client picks again while every backend is being probed.
const MIN_PROBE_WAIT: Duration = Duration::from_millis(20);
/// How long a client gets to take our close_notify after a backend failure.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// One side of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Backend => "backend",
        })
    }
}

/// Why a proxied connection ended: the text of the `reason` field of the close log line.
#[derive(Debug)]
pub enum CloseReason {
    /// Both directions ended with an orderly close; `first` closed first.
    Closed { first: Side },
    /// Reading from or writing to `side` failed.
    Failed {
        side: Side,
        op: &'static str,
        error: io::Error,
    },
    /// A client request could not be parsed for header injection.
    BadRequest(String),
    /// No bytes moved either way for this long.
    Idle(Duration),
    /// A request head (to a backend that gets forwarding headers) did not arrive whole
    /// within this long of its first byte.
    HeadTimeout(Duration),
    /// The TLS handshake did not complete.
    Handshake(TlsError),
    /// The TLS handshake did not complete in time.
    HandshakeTimeout(Duration),
    /// Every connect attempt failed; the last failure is named.
    BackendsFailed {
        attempts: u32,
        backend: String,
        failure: String,
    },
    /// Every backend is dead and none is due for a probe.
    NoLiveBackend,
}

/// Plain words for an I/O error on `side`.
fn describe_io(side: Side, op: &str, error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::ConnectionReset => format!("{side} reset the connection"),
        io::ErrorKind::BrokenPipe => format!("{side} went away while we were writing to it"),
        io::ErrorKind::UnexpectedEof if side == Side::Client => {
            "client closed the connection without TLS close_notify (truncated)".to_owned()
        }
        _ => format!("{side} {op} failed: {error}"),
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Closed { first } => write!(f, "{first} closed first, then the other side"),
            CloseReason::Failed { side, op, error } => f.write_str(&describe_io(*side, op, error)),
            CloseReason::BadRequest(why) => write!(f, "bad request from client: {why}"),
            CloseReason::Idle(after) => write!(f, "idle for {} s", after.as_secs_f64()),
            CloseReason::HeadTimeout(after) => write!(
                f,
                "request head not complete within {} s of its first byte",
                after.as_secs_f64()
            ),
            CloseReason::Handshake(error) => write!(f, "{error}"),
            CloseReason::HandshakeTimeout(after) => {
                write!(f, "TLS handshake timed out after {} ms", after.as_millis())
            }
            CloseReason::BackendsFailed {
                attempts,
                backend,
                failure,
            } => write!(
                f,
                "backend {backend} {failure} (after {attempts} connect attempts)"
            ),
            CloseReason::NoLiveBackend => f.write_str("no live backend (all marked dead)"),
        }
    }
}

/// Bytes moved and the reason a pumped connection ended.
#[derive(Debug)]
pub struct PumpOutcome {
    /// Client → backend bytes (as read from the client).
    pub upstream: u64,
    /// Backend → client bytes.
    pub downstream: u64,
    pub reason: CloseReason,
}

/// What every core serves a frontend with: read-only, shared by all cores.
#[derive(Debug)]
pub struct Frontend {
    /// Counts configuration loads: a core rebuilds its balancer when this changes.
    pub generation: u64,
    pub context: ServerContext,
    pub settings: FrontendSettings,
    pub balance: BalanceSettings,
    /// Every backend: the global ones (at least one) first, then each SNI context's own.
    pub backends: Vec<BackendSpec>,
    /// Backend groups as ranges of `backends`; group 0 is the global one.
    pub groups: Vec<Range<usize>>,
    /// The group of each SNI context (0 for a context without backends of its own).
    pub context_groups: Vec<usize>,
}

impl Frontend {
    /// A frontend over the global `backends` (at least one) and the SNI `contexts`' own.
    pub fn new(
        generation: u64,
        context: ServerContext,
        settings: FrontendSettings,
        balance: BalanceSettings,
        mut backends: Vec<BackendSpec>,
        contexts: &[SniContext],
    ) -> Self {
        let mut groups = Vec::with_capacity(contexts.len() + 1);
        groups.push(0..backends.len());
        let mut context_groups = Vec::with_capacity(contexts.len());
        for c in contexts {
            if c.backends.is_empty() {
                context_groups.push(0);
            } else {
                let start = backends.len();
                backends.extend(c.backends.iter().cloned());
                context_groups.push(groups.len());
                groups.push(start..backends.len());
            }
        }
        Self {
            generation,
            context,
            settings,
            balance,
            backends,
            groups,
            context_groups,
        }
    }

    /// The backend group for a connection whose ClientHello chose `choice`.
    fn group_of(&self, choice: Option<HelloChoice>) -> usize {
        choice
            .and_then(|c| c.context)
            .and_then(|i| self.context_groups.get(i).copied())
            .unwrap_or(0)
    }
}

/// One core's view of the backends: its own balancer per group and health, shared by that
/// core's connections only.
#[derive(Debug, Clone)]
pub struct CoreBackends {
    balancers: Vec<Rc<RefCell<Balancer>>>,
    metrics: Arc<CoreMetrics>,
}

impl CoreBackends {
    /// Fresh balancers (all backends alive) over `frontend`'s backend groups, counting into
    /// `metrics`, this core's metrics.
    pub fn new(frontend: &Frontend, metrics: Arc<CoreMetrics>) -> Self {
        for backend in &frontend.backends {
            metrics.backend_health(&backend.name, true);
        }
        let balancers = frontend
            .groups
            .iter()
            .map(|range| {
                Rc::new(RefCell::new(Balancer::new(
                    frontend.balance.mode,
                    frontend.balance.health,
                    range.len(),
                )))
            })
            .collect();
        Self { balancers, metrics }
    }
}

impl CloseReason {
    /// The metrics class of this reason.
    pub fn class(&self) -> CloseClass {
        match self {
            CloseReason::Closed { .. } => CloseClass::Closed,
            CloseReason::Failed {
                side: Side::Client, ..
            } => CloseClass::ClientError,
            CloseReason::Failed {
                side: Side::Backend,
                ..
            } => CloseClass::BackendError,
            CloseReason::BadRequest(_) => CloseClass::BadRequest,
            CloseReason::Idle(_) | CloseReason::HeadTimeout(_) => CloseClass::Idle,
            CloseReason::Handshake(_) => CloseClass::HandshakeFailed,
            CloseReason::HandshakeTimeout(_) => CloseClass::HandshakeTimeout,
            CloseReason::BackendsFailed { .. } | CloseReason::NoLiveBackend => {
                CloseClass::BackendUnavailable
            }
        }
    }
}

/// Serves one accepted client connection and logs one line when it ends.
pub async fn serve_connection(
    mut client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    frontend: Arc<Frontend>,
    core: CoreBackends,
) {
    let started = Instant::now();
    let mut log = ConnectionLog::default();
    core.metrics.connection_opened();
    // Boxed: the connection's task then holds only what every phase needs, and the phases'
    // own state (sized by the largest of them) lives in one allocation of its own.
    let reason = Box::pin(run(&mut client, peer, local, &frontend, &core, &mut log)).await;
    core.metrics
        .connection_closed(reason.class(), log.upstream, log.downstream);
    tracing::info!(
        %peer,
        sni = %Untrusted(log.sni.as_deref().unwrap_or("-")),
        alpn = %Untrusted(log.alpn.as_deref().unwrap_or("-")),
        tls = log.version.as_deref().unwrap_or("-"),
        backend = log.backend.as_deref().unwrap_or("-"),
        upstream = log.upstream,
        downstream = log.downstream,
        ms = started.elapsed().as_millis() as u64,
        %reason,
        "connection closed"
    );
    Box::pin(linger(&mut client)).await;
}

/// Ends our side of a client connection the way nginx's lingering close does: what we queued
/// last (an alert, close_notify) goes out, then a FIN; what the client still sends is read and
/// dropped for a short bounded time, and only then is the socket closed. Closing a socket with
/// unread input makes the kernel answer with a reset, which can overtake the alert or fail the
/// client's next write (broken pipe), so the client never learns why it was closed.
async fn linger(client: &mut TcpStream) {
    use futures_lite::AsyncReadExt;
    // An error here means the client is gone already (reset): nothing left to drain.
    if client.close().await.is_err() {
        return;
    }
    let mut buf = borrow_buffer();
    let drain = async {
        let mut left = LINGER_MAX_BYTES;
        while left > 0 {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = fastedge_runtime::timeout(LINGER_TIMEOUT, drain).await;
    return_buffer(buf);
}

/// What the close log line tells about a connection.
#[derive(Debug, Default)]
struct ConnectionLog {
    sni: Option<String>,
    alpn: Option<String>,
    /// Protocol version, with ` 0-RTT` when early data was accepted.
    version: Option<String>,
    backend: Option<String>,
    upstream: u64,
    downstream: u64,
}

async fn run(
    client: &mut TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    frontend: &Arc<Frontend>,
    core: &CoreBackends,
    log: &mut ConnectionLog,
) -> CloseReason {
    let ssl = match frontend.context.new_session() {
        Ok(ssl) => ssl,
        Err(error) => return CloseReason::Handshake(error),
    };
    // Cut-through: the backend connect runs as its own task while the handshake goes on, from
    // when the ClientHello has been processed (it chose the context, and so the backend
    // group): not at accept, so that connects which never send a ClientHello cost no backend
    // connection each.
    let mut connecting = None;
    let timeout = frontend.settings.handshake_timeout;
    // Whether a client certificate is asked for when no SNI selection ran (the context's own
    // setting): read now, since the connection's configuration is freed after the handshake.
    let default_cert_requested = ssl.verify_mode() != SslVerifyMode::NONE;
    let handshake = accept_observed(ssl, client, |ssl| {
        if connecting.is_none() {
            if let Some(choice) = ServerContext::hello_choice(ssl) {
                let group = frontend.group_of(Some(choice));
                connecting = Some(fastedge_runtime::spawn(connect_backend(
                    frontend.clone(),
                    core.clone(),
                    group,
                )));
            }
        }
    });
    // Boxed: the handshake's state is large and lives only until it completes, while the
    // connection's own future stays allocated for as long as the connection (idle ones too).
    let mut tls = match Box::pin(fastedge_runtime::timeout(timeout, handshake)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            if let TlsError::Handshake { server_name, .. } = &error {
                log.sni = server_name.clone();
            }
            return CloseReason::Handshake(error);
        }
        Err(_) => return CloseReason::HandshakeTimeout(timeout),
    };
    let connecting = connecting.unwrap_or_else(|| {
        let group = frontend.group_of(ServerContext::hello_choice(tls.ssl()));
        fastedge_runtime::spawn(connect_backend(frontend.clone(), core.clone(), group))
    });
    core.metrics.handshake_ok();
    let early = frontend.context.early_data_cap().and_then(|cap| {
        let flag = Arc::new(AtomicBool::new(false));
        tls.track_early_data(cap, flag.clone());
        tls.early_data_accepted().then_some(flag)
    });
    let mut facts = tls_facts(&tls);
    log.sni = facts.server_name.clone();
    log.alpn = facts
        .alpn
        .as_ref()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    log.version = Some(if early.is_some() {
        format!("{} 0-RTT", tls.ssl().version_str())
    } else {
        tls.ssl().version_str().to_owned()
    });
    let (mut backend, lease) = match connecting.await {
        Ok(connected) => connected,
        Err(reason) => {
            let _ = fastedge_runtime::timeout(GOODBYE_TIMEOUT, tls.close()).await;
            return reason;
        }
    };
    let spec = &frontend.backends[lease.index];
    log.backend = Some(spec.name.clone());
    let peer_cert = tls.ssl().peer_certificate();
    if spec.send_client_cert {
        facts.client_cert_der = peer_cert.as_ref().and_then(|c| c.to_der().ok());
    }

    let addrs = ConnectionAddrs {
        client: peer,
        local,
    };
    let mut prefix = Vec::new();
    match spec.proxy_protocol {
        ProxyPrefix::None => {}
        ProxyPrefix::V1 => encode_v1(&addrs, &mut prefix),
        ProxyPrefix::V2 => encode_v2(&addrs, Some(&facts), &mut prefix),
        ProxyPrefix::BudJson => {
            let dn = peer_cert.as_ref().and_then(subject_dn);
            encode_bud_json(
                &addrs,
                facts.client_cn.as_deref(),
                dn.as_deref(),
                &mut prefix,
            )
        }
    }
    if !prefix.is_empty() {
        if let Err(error) = backend.write_all(&prefix).await {
            return CloseReason::Failed {
                side: Side::Backend,
                op: "write",
                error,
            };
        }
    }
    let mut injector = None;
    if spec.x_forwarded || spec.forwarded {
        if facts.alpn.as_deref() == Some(b"h2") {
            static WARNED: AtomicBool = AtomicBool::new(false);
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    backend = %spec.name,
                    "HTTP/2 connections pass through without X-Forwarded-* headers; use \
                     proxy_protocol = \"v2\" to tell the backend about clients (logged once)"
                );
            }
        } else {
            let config = ForwardedConfig {
                x_forwarded: spec.x_forwarded,
                forwarded: spec.forwarded,
                max_head: DEFAULT_MAX_HEAD,
            };
            let trusted = frontend
                .settings
                .trusted_proxies
                .iter()
                .any(|p| p.contains(peer.ip()));
            let facts = ClientFacts {
                client: peer.ip(),
                local_port: local.port(),
                trusted,
            };
            let mut new = Injector::new(config, facts);
            let cert_requested = ServerContext::hello_choice(tls.ssl())
                .map_or(default_cert_requested, |choice| choice.cert_requested);
            if spec.x_forwarded && cert_requested {
                new = new.with_client_cert(ClientCertHeaders {
                    verified: peer_cert.is_some(),
                    subject: peer_cert.as_ref().and_then(subject_dn),
                    cert_pem: peer_cert
                        .as_ref()
                        .filter(|_| spec.send_client_cert)
                        .and_then(|c| c.to_pem().ok())
                        .and_then(|pem| String::from_utf8(pem).ok()),
                });
            }
            injector = Some(new);
        }
    }
    let options = PumpOptions {
        injector: injector.as_mut(),
        half_open: frontend.settings.allow_half_open,
        idle_timeout: Some(frontend.settings.idle_timeout),
        head_timeout: Some(frontend.settings.request_head_timeout),
        early,
    };
    // Boxed: the pump is what an idle connection waits in; its state alone stays allocated,
    // not the larger state of the phases before it.
    let outcome = Box::pin(pump(&mut tls, &mut backend, options)).await;
    log.upstream = outcome.upstream;
    log.downstream = outcome.downstream;
    drop(lease);
    outcome.reason
}

fn tls_facts<S>(tls: &TlsStream<S>) -> TlsFacts {
    let ssl = tls.ssl();
    // A handshake that completed with a peer certificate verified it (verification failures
    // abort the handshake).
    let peer = ssl.peer_certificate();
    TlsFacts {
        alpn: ssl.selected_alpn_protocol().map(<[u8]>::to_vec),
        server_name: ssl.servername(NameType::HOST_NAME).map(str::to_owned),
        version: Some(ssl.version_str().to_owned()),
        cipher: ssl.current_cipher().map(|c| c.name().to_owned()),
        client_cn: peer.as_ref().and_then(|c| {
            let entry = c.subject_name().entries_by_nid(Nid::COMMONNAME).next()?;
            Some(entry.data().as_utf8().ok()?.to_string())
        }),
        client_cert: peer.is_some(),
        verify_result: match ssl.verify_result() {
            Ok(()) => 0,
            Err(error) => u32::try_from(error.as_raw()).unwrap_or(u32::MAX),
        },
        client_cert_der: None,
    }
}

/// A certificate's subject as an RFC 2253 string (`CN=alice,O=Example`).
fn subject_dn(cert: &X509) -> Option<String> {
    cert.subject_name()
        .print_ex(boring_sys::XN_FLAG_RFC2253)
        .filter(|dn| !dn.is_empty())
}

/// A backend chosen by the balancer for one connection; tells the balancer how the pick ended,
/// on every path: dropped while connecting (the connect task was cancelled) it is abandoned, so
/// a probe it carried does not stay in flight for good.
struct Lease {
    balancer: Rc<RefCell<Balancer>>,
    /// Index in the group's balancer.
    slot: usize,
    /// Index in `Frontend::backends`.
    index: usize,
    state: LeaseState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseState {
    Connecting,
    Connected,
    /// The balancer was told already (a failed connect).
    Settled,
}

impl Lease {
    /// Picked `slot` (index `index` in `Frontend::backends`) of `balancer`; connecting.
    fn new(balancer: &Rc<RefCell<Balancer>>, slot: usize, index: usize) -> Self {
        Self {
            balancer: balancer.clone(),
            slot,
            index,
            state: LeaseState::Connecting,
        }
    }

    /// The connect succeeded: the balancer learns it; the lease now ends with a close.
    fn connected(&mut self) -> Option<HealthChange> {
        self.state = LeaseState::Connected;
        self.balancer.borrow_mut().connected(self.slot)
    }

    /// The connect failed at `now`: the balancer learns it (instead of a close).
    fn failed(mut self, now: Instant) -> Option<HealthChange> {
        self.state = LeaseState::Settled;
        self.balancer.borrow_mut().connect_failed(self.slot, now)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut balancer = self.balancer.borrow_mut();
        match self.state {
            LeaseState::Connecting => balancer.abandoned(self.slot),
            LeaseState::Connected => balancer.closed(self.slot),
            LeaseState::Settled => {}
        }
    }
}

/// Logs a health change of backend `slot` of the group starting at `base`.
fn log_health(
    frontend: &Frontend,
    metrics: &CoreMetrics,
    base: usize,
    change: Option<HealthChange>,
) {
    let change = change.map(|c| match c {
        HealthChange::Died(slot) => HealthChange::Died(base + slot),
        HealthChange::Revived(slot) => HealthChange::Revived(base + slot),
    });
    match change {
        Some(HealthChange::Died(i)) => {
            metrics.backend_health(&frontend.backends[i].name, false);
            tracing::warn!(
            backend = %frontend.backends[i].name,
            revive_in_ms = frontend.balance.health.revive_interval.as_millis() as u64,
            "backend marked dead on this core"
            )
        }
        Some(HealthChange::Revived(i)) => {
            metrics.backend_health(&frontend.backends[i].name, true);
            tracing::info!(backend = %frontend.backends[i].name, "backend alive again on this core")
        }
        None => {}
    }
}

/// A connected backend: TCP or a UNIX stream socket.
#[derive(Debug)]
pub enum BackendStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl BackendStream {
    /// Connects to `addr`.
    pub async fn connect(addr: &BackendAddr) -> io::Result<Self> {
        match addr {
            BackendAddr::Tcp(addr) => {
                let stream = TcpStream::connect(*addr).await?;
                let _ = stream.set_nodelay(true);
                Ok(Self::Tcp(stream))
            }
            BackendAddr::Unix(path) => Ok(Self::Unix(UnixStream::connect(path).await?)),
        }
    }
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_close(cx),
            BackendStream::Unix(s) => Pin::new(s).poll_close(cx),
        }
    }
}

/// Active health check: connects to every backend once (with the connect timeout) and tells
/// this core's balancer how it went.
pub async fn probe_backends(frontend: &Frontend, core: &CoreBackends) {
    for (group, range) in frontend.groups.iter().enumerate() {
        let balancer = &core.balancers[group];
        for (slot, spec) in frontend.backends[range.clone()].iter().enumerate() {
            let ok = matches!(
                fastedge_runtime::timeout(
                    frontend.balance.connect_timeout,
                    BackendStream::connect(&spec.addr)
                )
                .await,
                Ok(Ok(_))
            );
            let change = if ok {
                balancer.borrow_mut().probe_succeeded(slot)
            } else {
                core.metrics.backend_connect_failed(&spec.name);
                balancer.borrow_mut().probe_failed(slot, Instant::now())
            };
            log_health(frontend, &core.metrics, range.start, change);
        }
    }
}

/// Connects to a backend of `group`, retrying over its backends as the balancer picks them;
/// while every backend is dead and being probed, waits for a verdict within `connect_timeout`
/// (counted from the start) rather than failing the client at once.
async fn connect_backend(
    frontend: Arc<Frontend>,
    core: CoreBackends,
    group: usize,
) -> Result<(BackendStream, Lease), CloseReason> {
    let settings = &frontend.balance;
    let base = frontend.groups[group].start;
    let balancer = &core.balancers[group];
    let mut tried = Vec::new();
    let mut last = None;
    let attempts = settings.max_retries.saturating_add(1);
    let started = Instant::now();
    let mut attempt = 0;
    let mut after_failure = false;
    while attempt < attempts {
        if after_failure && !settings.retry_interval.is_zero() {
            fastedge_runtime::sleep(settings.retry_interval).await;
        }
        after_failure = true;
        let now = Instant::now();
        let picked = {
            let mut balancer = balancer.borrow_mut();
            balancer.pick(now, &tried).or_else(|| {
                // Every backend failed for this connection once already: go round again.
                tried.clear();
                balancer.pick(now, &[])
            })
        };
        let Some(slot) = picked else {
            // Every backend is dead and being probed: wait for a probe's verdict (a success
            // revives the backend for us too) while the connect budget lasts, instead of
            // failing the client at once.
            let wait = settings.retry_interval.max(MIN_PROBE_WAIT);
            let budget_left = settings
                .connect_timeout
                .saturating_sub(now.saturating_duration_since(started));
            if !frontend.groups[group].is_empty() && wait < budget_left {
                fastedge_runtime::sleep(wait).await;
                after_failure = false;
                continue;
            }
            return Err(match last {
                None => CloseReason::NoLiveBackend,
                Some((backend, failure)) => CloseReason::BackendsFailed {
                    attempts: attempt,
                    backend,
                    failure,
                },
            });
        };
        let mut lease = Lease::new(balancer, slot, base + slot);
        let spec = &frontend.backends[base + slot];
        let failure = match fastedge_runtime::timeout(
            settings.connect_timeout,
            BackendStream::connect(&spec.addr),
        )
        .await
        {
            Ok(Ok(stream)) => {
                let change = lease.connected();
                log_health(&frontend, &core.metrics, base, change);
                return Ok((stream, lease));
            }
            Ok(Err(error)) => describe_connect_error(error),
            Err(_) => format!(
                "did not accept the connection within {} ms",
                settings.connect_timeout.as_millis()
            ),
        };
        tracing::debug!(backend = %spec.name, attempt, %failure, "backend connect failed");
        core.metrics.backend_connect_failed(&spec.name);
        log_health(&frontend, &core.metrics, base, lease.failed(Instant::now()));
        tried.push(slot);
        last = Some((spec.name.clone(), failure));
        attempt += 1;
    }
    let (backend, failure) = last.unwrap_or_else(|| ("-".into(), "no attempt made".into()));
    Err(CloseReason::BackendsFailed {
        attempts,
        backend,
        failure,
    })
}

fn describe_connect_error(error: io::Error) -> String {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => "refused the connection".to_owned(),
        io::ErrorKind::TimedOut => "did not answer (connect timed out)".to_owned(),
        _ => format!("connect failed: {error}"),
    }
}

/// Settings of one [`pump`].
#[derive(Debug, Default)]
pub struct PumpOptions<'a> {
    /// Rewrites the client → backend stream (forwarding headers).
    pub injector: Option<&'a mut Injector>,
    /// Keep the other direction open after one side closes its sending direction.
    pub half_open: bool,
    /// Close when no bytes move either way for this long.
    pub idle_timeout: Option<Duration>,
    /// With an injector: close when a request head is not complete this long after its first
    /// byte (the idle timer alone lets a client hold a connection with a byte now and then).
    pub head_timeout: Option<Duration>,
    /// Set by the client stream after each read: whether those bytes may have been TLS early
    /// data (the injector then marks requests completed by them with `Early-Data: 1`).
    pub early: Option<Arc<AtomicBool>>,
}

/// What a direction of the pump does with the injector, if the connection has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Client → backend: bytes pass through the injector, which rewrites request heads.
    Rewrite,
    /// Backend → client: bytes pass unchanged; the injector observes them to learn whether
    /// the backend switched protocols.
    Observe,
}

/// One direction of the pump: a buffer between a reader and a writer.
struct Flow {
    /// Borrowed from the core's pool while bytes are in flight; `None` while idle.
    buf: Option<Box<[u8]>>,
    /// Rewritten bytes when the direction rewrites; otherwise unused (freed while idle).
    out: Vec<u8>,
    role: Role,
    /// `buf[start..end]`: read and not yet written (or, when rewriting, not yet fed to the
    /// injector, which may hold off taking bytes until the backend answers).
    start: usize,
    end: usize,
    /// `out[out_start..]`: rewritten and not yet written.
    out_start: usize,
    /// Whether the bytes in `buf` may have been TLS early data.
    early_read: bool,
    read_done: bool,
    unflushed: bool,
    done: bool,
    bytes: u64,
}

type FlowError = (Side, &'static str, io::Error);

impl Drop for Flow {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            return_buffer(buf);
        }
    }
}

impl Flow {
    fn new(role: Role) -> Self {
        Self {
            buf: None,
            out: Vec::new(),
            role,
            start: 0,
            end: 0,
            out_start: 0,
            early_read: false,
            read_done: false,
            unflushed: false,
            done: false,
            bytes: 0,
        }
    }

    /// Whether this direction rewrites through an injector.
    fn rewrites(&self, injector: &Option<&mut Injector>) -> bool {
        self.role == Role::Rewrite && injector.is_some()
    }

    /// Moves bytes from `reader` to `writer` until the reader is pending or done; after the
    /// reader's EOF, flushes and closes the writer's sending side (half-close). A rewriting
    /// direction reads nothing more while the injector waits for the backend's answer (after
    /// an upgrade request): the pump polls it again when the other direction brought one.
    fn poll_move<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        (from, reader): (Side, &mut R),
        (to, writer): (Side, &mut W),
        mut injector: Option<&mut Injector>,
        early: Option<&AtomicBool>,
        activity: &Cell<Instant>,
    ) -> Poll<Result<(), FlowError>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        let rewrites = self.rewrites(&injector);
        loop {
            loop {
                let pending: &[u8] = match &self.buf {
                    _ if rewrites => &self.out[self.out_start..],
                    Some(buf) => &buf[self.start..self.end],
                    None => &[],
                };
                if pending.is_empty() {
                    break;
                }
                match Pin::new(&mut *writer).poll_write(cx, pending) {
                    Poll::Ready(Ok(0)) => {
                        let error = io::Error::new(io::ErrorKind::WriteZero, "wrote zero bytes");
                        return Poll::Ready(Err((to, "write", error)));
                    }
                    Poll::Ready(Ok(n)) => {
                        if rewrites {
                            self.out_start += n;
                        } else {
                            self.start += n;
                        }
                        self.unflushed = true;
                        activity.set(fastedge_runtime::now());
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err((to, "write", error))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if rewrites {
                self.out.clear();
                self.out_start = 0;
                if let (Some(injector), Some(buf), true) =
                    (injector.as_deref_mut(), &self.buf, self.start < self.end)
                {
                    injector.set_early(self.early_read);
                    let used = injector
                        .feed(&buf[self.start..self.end], &mut self.out)
                        .map_err(|e| {
                            let error = io::Error::new(io::ErrorKind::InvalidData, e);
                            (from, "request", error)
                        })?;
                    self.start += used;
                    if used == 0 && self.out.is_empty() {
                        // Waiting for the backend's answer; what was written goes out now.
                        return self.poll_flush_pending(cx, to, writer);
                    }
                    continue;
                }
            }
            if self.read_done {
                match ready!(Pin::new(&mut *writer).poll_close(cx)) {
                    // The peer is fully gone already: nothing left to tell it.
                    Err(error) if error.kind() == io::ErrorKind::NotConnected => {}
                    closed => closed.map_err(|error| (to, "close", error))?,
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            if rewrites && injector.as_deref().is_some_and(Injector::waits_for_backend) {
                return self.poll_flush_pending(cx, to, writer);
            }
            let buf = self.buf.get_or_insert_with(borrow_buffer);
            match Pin::new(&mut *reader).poll_read(cx, buf) {
                Poll::Ready(Ok(0)) => {
                    self.read_done = true;
                    if let (Role::Observe, Some(injector)) = (self.role, injector.as_deref_mut()) {
                        injector.backend_closed();
                    }
                }
                Poll::Ready(Ok(n)) => {
                    activity.set(fastedge_runtime::now());
                    self.bytes += n as u64;
                    self.start = 0;
                    self.end = n;
                    self.early_read = early.is_some_and(|e| e.load(Ordering::Relaxed));
                    if let (Role::Observe, Some(injector)) = (self.role, injector.as_deref_mut()) {
                        injector.observe_response(&buf[..n]);
                    }
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err((from, "read", error))),
                Poll::Pending => {
                    // Nothing in flight: an idle direction holds no buffer.
                    if let Some(buf) = self.buf.take() {
                        return_buffer(buf);
                    }
                    self.out = Vec::new();
                    return self.poll_flush_pending(cx, to, writer);
                }
            }
        }
    }

    /// Flushes what was written, then answers `Pending` (the flush's error if it fails).
    fn poll_flush_pending<W>(
        &mut self,
        cx: &mut Context<'_>,
        to: Side,
        writer: &mut W,
    ) -> Poll<Result<(), FlowError>>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.unflushed {
            let flushed = ready!(Pin::new(&mut *writer).poll_flush(cx));
            flushed.map_err(|error| (to, "flush", error))?;
            self.unflushed = false;
        }
        Poll::Pending
    }
}

/// Copies bytes both ways between `client` and `backend` until both directions have ended.
///
/// With `half_open`, when one side's read ends, the other side's write is closed and the
/// opposite direction goes on until it ends too; without, the first close ends both
/// directions (after what was read is written). The first error ends the whole connection.
pub async fn pump<C, B>(client: &mut C, backend: &mut B, options: PumpOptions<'_>) -> PumpOutcome
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let PumpOptions {
        mut injector,
        half_open,
        idle_timeout,
        head_timeout,
        early,
    } = options;
    let head_timeout = head_timeout.filter(|_| injector.is_some());
    // When the request head being received began (with a head deadline only).
    let head_since: Cell<Option<Instant>> = Cell::new(None);
    let mut up = Flow::new(Role::Rewrite);
    let mut down = Flow::new(Role::Observe);
    let mut first_closed: Option<Side> = None;
    let activity = Cell::new(fastedge_runtime::now());
    let moving = std::future::poll_fn(|cx| {
        let up_poll = up.poll_move(
            cx,
            (Side::Client, &mut *client),
            (Side::Backend, &mut *backend),
            injector.as_deref_mut(),
            early.as_deref(),
            &activity,
        );
        if let Poll::Ready(Err(e)) = up_poll {
            return Poll::Ready(Err(e));
        }
        if let (Some(_), Some(injector)) = (head_timeout, injector.as_deref()) {
            if !injector.in_head() {
                head_since.set(None);
            } else if head_since.get().is_none() {
                head_since.set(Some(fastedge_runtime::now()));
            }
        }
        let waited = injector.as_deref().is_some_and(Injector::waits_for_backend);
        let down_poll = down.poll_move(
            cx,
            (Side::Backend, &mut *backend),
            (Side::Client, &mut *client),
            injector.as_deref_mut(),
            None,
            &activity,
        );
        if let Poll::Ready(Err(e)) = down_poll {
            return Poll::Ready(Err(e));
        }
        if waited && !injector.as_deref().is_some_and(Injector::waits_for_backend) {
            // The backend's answer came: the client's held bytes may move on.
            cx.waker().wake_by_ref();
        }
        if first_closed.is_none() {
            if up.read_done {
                first_closed = Some(Side::Client);
            } else if down.read_done {
                first_closed = Some(Side::Backend);
            }
            if first_closed.is_some() && !half_open && !(up.read_done && down.read_done) {
                // Stop reading the other side too; what was read still gets written.
                up.read_done = true;
                down.read_done = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        if up.done && down.done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    });
    // The next deadline: the idle timer's, or a request head's if that comes first.
    let deadline = || {
        let idle = idle_timeout.map(|d| (activity.get() + d, CloseReason::Idle(d)));
        let head = head_timeout
            .zip(head_since.get())
            .map(|(d, since)| (since + d, CloseReason::HeadTimeout(d)));
        match (idle, head) {
            (Some(i), Some(h)) => Some(if h.0 < i.0 { h } else { i }),
            (i, h) => i.or(h),
        }
    };
    let watchdog = async {
        loop {
            let armed = deadline();
            let now = fastedge_runtime::now();
            let at = match armed {
                Some((at, reason)) if now >= at => return reason,
                Some((at, _)) => Some(at),
                None => None,
            };
            let mut timer = std::pin::pin!(async {
                match at {
                    Some(at) => fastedge_runtime::sleep(at - now).await,
                    None => std::future::pending().await,
                }
            });
            // Polled on every wake of the connection: a request head that began since may
            // bring the deadline forward.
            std::future::poll_fn(|cx| {
                let earlier = deadline().is_some_and(|(next, _)| at.is_none_or(|at| next < at));
                if earlier {
                    return Poll::Ready(());
                }
                std::future::Future::poll(timer.as_mut(), cx)
            })
            .await;
        }
    };
    let result =
        futures_lite::future::or(async { Ok(moving.await) }, async { Err(watchdog.await) }).await;
    let reason = match result {
        Err(expired) => expired,
        Ok(Ok(())) => CloseReason::Closed {
            first: first_closed.unwrap_or(Side::Client),
        },
        Ok(Err((Side::Client, "request", error))) => CloseReason::BadRequest(error.to_string()),
        Ok(Err((side, op, error))) => CloseReason::Failed { side, op, error },
    };
    PumpOutcome {
        upstream: up.bytes,
        downstream: down.bytes,
        reason,
    }
}
