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

mod backends;
mod buffers;
mod close;
mod introduce;
mod pump;

use std::{
    net::SocketAddr,
    sync::{atomic::AtomicBool, Arc},
    time::{Duration, Instant},
};

use boring::{
    nid::Nid,
    ssl::{NameType, SslVerifyMode, SslVersion},
};
use fastedge_runtime::net::TcpStream;
use fastedge_wire::{
    forwarded::Injector,
    logtext::Untrusted,
    proxy::{ConnectionAddrs, TlsFacts},
};
use futures_lite::AsyncWriteExt;

pub use backends::{probe_backends, BackendStream, CoreBackends, Frontend};
pub use close::{CloseReason, PumpOutcome, Side};
pub use pump::{pump, Pump, PumpOptions, SILENT_FLUSH_AFTER};

use crate::{accept_observed, config::ProxyPrefix, ServerContext, TlsError, TlsStream};
use backends::{connect_backend, Lease};
use buffers::{borrow_buffer, return_buffer};
use introduce::{introduce, Client};

/// How long a connection we close keeps reading what the client still sends (see [`linger`]).
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
/// How much a lingering connection reads at most before it closes anyway.
const LINGER_MAX_BYTES: usize = 256 * 1024;
/// How long a client gets to take our close_notify after a backend failure.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves one accepted client connection and logs one line when it ends.
///
/// Not an `async fn`: that would keep its arguments twice in the connection's task (as
/// arguments and as the body's locals) for as long as the connection lives.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice (see above)"
)]
pub fn serve_connection(
    mut client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    frontend: Arc<Frontend>,
    core: CoreBackends,
) -> impl std::future::Future<Output = ()> {
    async move {
        // In a block of its own: what the log line needs is dropped before the lingering
        // close, rather than kept in the task meanwhile (64 bytes for the close reason alone,
        // and the task is as large as its largest moment).
        {
            let started = Instant::now();
            let mut log = ConnectionLog::default();
            core.metrics().connection_opened();
            // Each phase is boxed: the connection's task then holds only what every phase
            // needs, and the handshake's, the backend connect's and the introduction's state is
            // freed before the pump, where an idle connection waits, starts with what it moves
            // bytes with.
            let reason = 'served: {
                let established = Box::pin(establish(
                    &mut client,
                    peer,
                    local,
                    &frontend,
                    &core,
                    &mut log,
                ));
                // The pump is awaited after this statement, not inside a `match`: a match's
                // scrutinee (the established connection, or a result holding the pump) would
                // keep its place in the task meanwhile.
                let pump = match established.await {
                    Ok(established) => Box::pin(forward(established, &frontend, &core, &mut log)),
                    Err(reason) => break 'served reason,
                };
                pump.await
            };
            core.metrics()
                .connection_closed(reason.class(), log.upstream, log.downstream);
            tracing::info!(
                %peer,
                sni = %Untrusted(log.sni.as_deref().unwrap_or("-")),
                alpn = %Untrusted(log.alpn.as_deref().unwrap_or("-")),
                tls = TlsVersion(log.version).to_string().as_str(),
                backend = log
                    .backend
                    .and_then(|index| frontend.backends.get(index.get() as usize - 1))
                    .map_or("-", |backend| backend.name.as_str()),
                upstream = log.upstream,
                downstream = log.downstream,
                ms = started.elapsed().as_millis() as u64,
                %reason,
                "connection closed"
            );
        }
        Box::pin(linger(&mut client)).await;
    }
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

/// What the close log line tells about a connection. Kept for the connection's whole life, so
/// nothing here is copied that can be pointed at.
#[derive(Debug, Default)]
struct ConnectionLog {
    sni: Option<Box<str>>,
    alpn: Option<Box<str>>,
    /// Protocol version, and whether early data was accepted.
    version: Option<(SslVersion, bool)>,
    /// Index of the backend in the connection's frontend, plus one. Narrow fields: this record
    /// is kept in the connection's task for the connection's whole life.
    backend: Option<std::num::NonZeroU32>,
    upstream: u64,
    downstream: u64,
}

/// The log line's `tls` field: the version, with ` 0-RTT` when early data was accepted.
struct TlsVersion(Option<(SslVersion, bool)>);

impl std::fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some((version, early)) = self.0 else {
            return f.write_str("-");
        };
        // BoringSSL's names (SSL_get_version).
        f.write_str(match version {
            SslVersion::TLS1_3 => "TLSv1.3",
            SslVersion::TLS1_2 => "TLSv1.2",
            SslVersion::TLS1_1 => "TLSv1.1",
            SslVersion::TLS1 => "TLSv1",
            SslVersion::SSL3 => "SSLv3",
            _ => "unknown",
        })?;
        if early {
            f.write_str(" 0-RTT")?;
        }
        Ok(())
    }
}

/// A connection whose handshake completed and whose backend is connected and introduced: what
/// the pump needs, and nothing of the phases before it.
struct Established<'a> {
    tls: TlsStream<&'a mut TcpStream>,
    backend: BackendStream,
    /// The balancer's count of this connection on its backend, held until the pump ends.
    lease: Lease,
    /// Boxed: most connections have none, and this lives as long as the connection.
    injector: Option<Box<Injector>>,
    /// Whether the last read from the client may have been early data (0-RTT accepted).
    early: Option<Arc<AtomicBool>>,
}

/// The handshake, the backend connect (cut-through) and the backend's introduction.
async fn establish<'a>(
    client: &'a mut TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    frontend: &Arc<Frontend>,
    core: &CoreBackends,
    log: &mut ConnectionLog,
) -> Result<Established<'a>, CloseReason> {
    let ssl = match frontend.context.new_session() {
        Ok(ssl) => ssl,
        Err(error) => return Err(CloseReason::Handshake(error)),
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
                log.sni = server_name.as_deref().map(Box::from);
            }
            keep_if_connected(connecting, core);
            return Err(CloseReason::Handshake(error));
        }
        Err(_) => {
            keep_if_connected(connecting, core);
            return Err(CloseReason::HandshakeTimeout(timeout));
        }
    };
    core.metrics().handshake_ok(tls.ssl().session_reused());
    // With spares on, a client that cut its connection right after the handshake, before
    // sending a byte (a probe, a health check, an abandoned preconnect), needs no backend: the
    // connection made for it is kept, unused, for the next client.
    let spares = core.keeps_spares();
    if let Some(reason) = spares.then(|| left_before_data(&mut tls)).flatten() {
        log.sni = tls.ssl().servername(NameType::HOST_NAME).map(Box::from);
        log.version = tls.ssl().version2().map(|version| (version, false));
        keep_if_connected(connecting, core);
        return Err(reason);
    }
    let connecting = connecting.unwrap_or_else(|| {
        let group = frontend.group_of(ServerContext::hello_choice(tls.ssl()));
        fastedge_runtime::spawn(connect_backend(frontend.clone(), core.clone(), group))
    });
    let early = frontend.context.early_data_cap().and_then(|cap| {
        let flag = Arc::new(AtomicBool::new(false));
        tls.track_early_data(cap, flag.clone());
        tls.early_data_accepted().then_some(flag)
    });
    let facts = tls_facts(&tls);
    log.sni = facts.server_name.as_deref().map(Box::from);
    log.alpn = facts
        .alpn
        .as_ref()
        .map(|p| String::from_utf8_lossy(p).into());
    log.version = tls
        .ssl()
        .version2()
        .map(|version| (version, early.is_some()));
    let (mut backend, lease) = match connecting.await {
        Ok(connected) => connected,
        Err(reason) => {
            let _ = fastedge_runtime::timeout(GOODBYE_TIMEOUT, tls.close()).await;
            return Err(reason);
        }
    };
    log.backend = u32::try_from(lease.index())
        .ok()
        .and_then(|index| std::num::NonZeroU32::new(index.wrapping_add(1)));
    // Or it left while the backend connect went on: nothing has been written to the backend
    // yet either.
    if let Some(reason) = spares.then(|| left_before_data(&mut tls)).flatten() {
        core.keep_spare(backend, lease);
        return Err(reason);
    }
    let spec = &frontend.backends[lease.index()];
    let peer_cert = tls.ssl().peer_certificate();
    let client = Client {
        addrs: ConnectionAddrs {
            client: peer,
            local,
        },
        tls: facts,
        cert: peer_cert.as_deref(),
        trusted: frontend
            .settings
            .trusted_proxies
            .iter()
            .any(|p| p.contains(peer.ip())),
        cert_requested: ServerContext::hello_choice(tls.ssl())
            .map_or(default_cert_requested, |choice| choice.cert_requested),
    };
    let injector = introduce(&mut backend, spec, client).await?.map(Box::new);
    Ok(Established {
        tls,
        backend,
        lease,
        injector,
        early,
    })
}

/// Why the client's connection ended, if it was cut (its transport closed or failed without
/// TLS close_notify) before it sent a byte, as far as is known now. A close_notify is a TLS
/// half-close, not a cut: such a client may still read what a backend says first.
fn left_before_data(tls: &mut TlsStream<&mut TcpStream>) -> Option<CloseReason> {
    // The noop waker is registered only until the pump's first read registers its own.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if tls.poll_ended_before_data(&mut cx) != std::task::Poll::Ready(true) {
        return None;
    }
    // Nothing is left to read, so the read takes nothing; it says how the client ended.
    match futures_lite::AsyncRead::poll_read(std::pin::Pin::new(tls), &mut cx, &mut [0u8; 1]) {
        std::task::Poll::Ready(Err(error)) => Some(client_read_failed(error)),
        _ => None,
    }
}

/// The close reason of a client whose read failed before a byte moved either way: a
/// transport that closed without close_notify is a client that left.
fn client_read_failed(error: std::io::Error) -> CloseReason {
    if error.kind() == std::io::ErrorKind::UnexpectedEof {
        CloseReason::ClientLeft
    } else {
        CloseReason::Failed {
            side: Side::Client,
            op: "read",
            error,
        }
    }
}

/// A backend connect running as its own task (cut-through).
type Connecting = fastedge_runtime::JoinHandle<Result<(BackendStream, Lease), CloseReason>>;

/// How long the cut-through connect of a client that is gone may still take to be kept (see
/// [`keep_if_connected`]): a connect on a working network takes far less.
const KEEP_CONNECT_WAIT: Duration = Duration::from_millis(100);

/// For a connection that will not use its cut-through connect: keeps the backend connection
/// for another client once the connect completes (see [`CoreBackends::keep_spare`]), or
/// cancels the connect if it takes longer than [`KEEP_CONNECT_WAIT`] (and with it any retry
/// or probe it would make for a client that is gone).
fn keep_if_connected(connecting: Option<Connecting>, core: &CoreBackends) {
    let Some(mut connecting) = connecting.filter(|_| core.keeps_spares()) else {
        // Dropped: the connect is cancelled.
        return;
    };
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::future::Future::poll(std::pin::Pin::new(&mut connecting), &mut cx) {
        std::task::Poll::Ready(Ok((backend, lease))) => core.keep_spare(backend, lease),
        std::task::Poll::Ready(Err(_)) => {}
        std::task::Poll::Pending => {
            let core = core.clone();
            fastedge_runtime::spawn_detached(async move {
                if let Ok(Ok((backend, lease))) =
                    fastedge_runtime::timeout(KEEP_CONNECT_WAIT, connecting).await
                {
                    core.keep_spare(backend, lease);
                }
            });
        }
    }
}

/// The pump over an established connection, which it takes whole. Not an `async fn`: that
/// would keep `established` twice in its state (as the argument and as the body's local),
/// and this state lives as long as the connection.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice (see above)"
)]
fn forward<'a>(
    mut established: Established<'a>,
    frontend: &'a Frontend,
    core: &'a CoreBackends,
    log: &'a mut ConnectionLog,
) -> impl std::future::Future<Output = CloseReason> + 'a {
    async move {
        let spec = &frontend.backends[established.lease.index()];
        // Nothing was written to the backend before the pump unless a prefix was. On glommio
        // a read the pump started may take the backend's bytes where no check sees them.
        let spare = spec.proxy_protocol == ProxyPrefix::None
            && matches!(established.backend, BackendStream::Tcp(TcpStream::Uring(_)))
            && core.keeps_spares();
        let options = PumpOptions {
            injector: established.injector.as_deref_mut(),
            half_open: frontend.settings.allow_half_open,
            idle_timeout: Some(frontend.settings.idle_timeout),
            head_timeout: Some(frontend.settings.request_head_timeout),
            early: established.early.take(),
            metrics: Some(core.metrics()),
            silent_flush: Some(SILENT_FLUSH_AFTER),
        };
        let outcome = pump(&mut established.tls, &mut established.backend, options).await;
        log.upstream = outcome.upstream;
        log.downstream = outcome.downstream;
        if outcome.upstream == 0 && outcome.downstream == 0 {
            // The client's connection was cut (or reset) before a byte moved either way: the
            // pump stopped at its failed read and left the backend as the connect made it.
            if let CloseReason::Failed {
                side: Side::Client,
                op: "read",
                error,
            } = outcome.reason
            {
                if spare {
                    let Established { backend, lease, .. } = established;
                    core.keep_spare(backend, lease);
                }
                return client_read_failed(error);
            }
        }
        drop(established);
        outcome.reason
    }
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

#[cfg(test)]
mod tests {
    use boring::ssl::SslVersion;

    use super::{ConnectionLog, TlsVersion};

    #[test]
    fn the_log_names_versions_as_boringssl_does() {
        let name = |version| TlsVersion(version).to_string();
        assert_eq!(name(None), "-");
        assert_eq!(name(Some((SslVersion::TLS1_3, false))), "TLSv1.3");
        assert_eq!(name(Some((SslVersion::TLS1_3, true))), "TLSv1.3 0-RTT");
        assert_eq!(name(Some((SslVersion::TLS1_2, false))), "TLSv1.2");
        assert_eq!(name(Some((SslVersion::TLS1_1, false))), "TLSv1.1");
        assert_eq!(name(Some((SslVersion::TLS1, false))), "TLSv1");
        assert_eq!(name(Some((SslVersion::DTLS1_2, false))), "unknown");
    }

    /// The record lives in the connection's task for the connection's whole life.
    #[test]
    fn the_close_log_record_stays_small() {
        assert!(std::mem::size_of::<ConnectionLog>() <= 56);
    }
}
