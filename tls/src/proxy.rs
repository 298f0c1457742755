//! The proxy connection driver: TLS client in front, plain TCP backend behind.
//!
//! The backend connect starts when the connection is accepted, in parallel with the TLS
//! handshake (cut-through), so the backend's connect latency hides behind the handshake's round
//! trips. Then [`pump`] moves bytes both ways until both directions are done, honouring
//! half-close, and the connection ends with one log line that says why it closed.

use std::{
    fmt, io,
    net::SocketAddr,
    pin::Pin,
    task::{ready, Context, Poll},
    time::{Duration, Instant},
};

use fastedge_runtime::net::TcpStream;
use futures_io::{AsyncRead, AsyncWrite};

use crate::{accept, ServerContext, TlsError};

/// Bytes buffered per direction of a proxied connection.
const PUMP_BUFFER: usize = 32 * 1024;

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
    /// The TLS handshake did not complete.
    Handshake(TlsError),
    /// The TLS handshake did not complete in time.
    HandshakeTimeout(Duration),
    /// The backend could not be reached.
    BackendConnect { addr: SocketAddr, error: io::Error },
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Closed { first } => write!(f, "{first} closed first, then the other side"),
            CloseReason::Failed { side, op, error } => write!(f, "{side} {op} failed: {error}"),
            CloseReason::Handshake(error) => write!(f, "{error}"),
            CloseReason::HandshakeTimeout(after) => {
                write!(f, "TLS handshake timed out after {} ms", after.as_millis())
            }
            CloseReason::BackendConnect { addr, error } => {
                write!(f, "backend {addr} connect failed: {error}")
            }
        }
    }
}

/// Bytes moved and the reason a pumped connection ended.
#[derive(Debug)]
pub struct PumpOutcome {
    /// Client → backend bytes.
    pub upstream: u64,
    /// Backend → client bytes.
    pub downstream: u64,
    pub reason: CloseReason,
}

/// Settings of the proxy driver.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub backend: SocketAddr,
    pub handshake_timeout: Duration,
}

/// Serves one accepted client connection: TLS handshake and backend connect in parallel, then
/// the byte pump; logs one line when it ends.
pub async fn serve_connection(
    client: TcpStream,
    peer: SocketAddr,
    context: &ServerContext,
    settings: &ProxySettings,
) {
    let started = Instant::now();
    let outcome = run(client, context, settings).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match outcome {
        Ok((outcome, session)) => tracing::info!(
            %peer,
            backend = %settings.backend,
            tls = session.version,
            cipher = session.cipher,
            alpn = session.alpn.as_deref().unwrap_or("-"),
            upstream = outcome.upstream,
            downstream = outcome.downstream,
            elapsed_ms,
            reason = %outcome.reason,
            "connection closed"
        ),
        Err(reason) => tracing::info!(
            %peer,
            backend = %settings.backend,
            elapsed_ms,
            %reason,
            "connection closed"
        ),
    }
}

/// What the close log line tells about the TLS session.
#[derive(Debug)]
struct SessionInfo {
    version: &'static str,
    cipher: &'static str,
    alpn: Option<String>,
}

async fn run(
    client: TcpStream,
    context: &ServerContext,
    settings: &ProxySettings,
) -> Result<(PumpOutcome, SessionInfo), CloseReason> {
    let ssl = context.new_session().map_err(CloseReason::Handshake)?;
    let handshake = fastedge_runtime::timeout(settings.handshake_timeout, accept(ssl, client));
    let connect = TcpStream::connect(settings.backend);
    let (handshake, backend) = futures_lite::future::zip(handshake, connect).await;
    let mut tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => return Err(CloseReason::Handshake(error)),
        Err(_) => return Err(CloseReason::HandshakeTimeout(settings.handshake_timeout)),
    };
    let mut backend = backend.map_err(|error| CloseReason::BackendConnect {
        addr: settings.backend,
        error: error.into(),
    })?;
    let ssl = tls.ssl();
    let session = SessionInfo {
        version: ssl.version_str(),
        cipher: ssl.current_cipher().map_or("-", |c| c.name()),
        alpn: ssl
            .selected_alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
    };
    let outcome = pump(&mut tls, &mut backend).await;
    Ok((outcome, session))
}

/// One direction of the pump: a buffer between a reader and a writer.
struct Flow {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    read_done: bool,
    unflushed: bool,
    done: bool,
    bytes: u64,
}

type FlowError = (Side, &'static str, io::Error);

impl Flow {
    fn new() -> Self {
        Self {
            buf: vec![0; PUMP_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            read_done: false,
            unflushed: false,
            done: false,
            bytes: 0,
        }
    }

    /// Moves bytes from `reader` to `writer` until the reader is pending or done; after the
    /// reader's EOF, flushes and closes the writer's sending side (half-close).
    fn poll_move<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        (from, reader): (Side, &mut R),
        (to, writer): (Side, &mut W),
    ) -> Poll<Result<(), FlowError>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            while self.start < self.end {
                match Pin::new(&mut *writer).poll_write(cx, &self.buf[self.start..self.end]) {
                    Poll::Ready(Ok(0)) => {
                        let error = io::Error::new(io::ErrorKind::WriteZero, "wrote zero bytes");
                        return Poll::Ready(Err((to, "write", error)));
                    }
                    Poll::Ready(Ok(n)) => {
                        self.start += n;
                        self.bytes += n as u64;
                        self.unflushed = true;
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err((to, "write", error))),
                    Poll::Pending => return Poll::Pending,
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
            match Pin::new(&mut *reader).poll_read(cx, &mut self.buf) {
                Poll::Ready(Ok(0)) => self.read_done = true,
                Poll::Ready(Ok(n)) => {
                    self.start = 0;
                    self.end = n;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err((from, "read", error))),
                Poll::Pending => {
                    if self.unflushed {
                        let flushed = ready!(Pin::new(&mut *writer).poll_flush(cx));
                        flushed.map_err(|error| (to, "flush", error))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Copies bytes both ways between `client` and `backend` until both directions have ended.
///
/// When one side's read ends, the other side's write is closed (half-close) and the opposite
/// direction goes on until it ends too. The first error ends the whole connection.
pub async fn pump<C, B>(client: &mut C, backend: &mut B) -> PumpOutcome
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut up = Flow::new();
    let mut down = Flow::new();
    let mut first_closed: Option<Side> = None;
    let result = std::future::poll_fn(|cx| {
        let up_poll = up.poll_move(
            cx,
            (Side::Client, &mut *client),
            (Side::Backend, &mut *backend),
        );
        if let Poll::Ready(Err(e)) = up_poll {
            return Poll::Ready(Err(e));
        }
        let down_poll = down.poll_move(
            cx,
            (Side::Backend, &mut *backend),
            (Side::Client, &mut *client),
        );
        if let Poll::Ready(Err(e)) = down_poll {
            return Poll::Ready(Err(e));
        }
        if first_closed.is_none() {
            if up.read_done {
                first_closed = Some(Side::Client);
            } else if down.read_done {
                first_closed = Some(Side::Backend);
            }
        }
        if up.done && down.done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await;
    let reason = match result {
        Ok(()) => CloseReason::Closed {
            first: first_closed.unwrap_or(Side::Client),
        },
        Err((side, op, error)) => CloseReason::Failed { side, op, error },
    };
    PumpOutcome {
        upstream: up.bytes,
        downstream: down.bytes,
        reason,
    }
}
