//! The boring ⇄ futures-io adapter: a BoringSSL stream driven by an async byte stream.
//!
//! BoringSSL reads and writes through a BIO. Ours (`crate::bio`, where all of the adapter's unsafe
//! code is) is pointed, for the duration of each BoringSSL call, at the connection's transport
//! and at the `Context` of the task polling us: the transport's `Poll::Pending` becomes
//! BoringSSL's `WANT_READ`/`WANT_WRITE`, which we turn into `Poll::Pending` again, and the
//! transport registered the caller's waker before it said so, so a pending operation is always
//! woken. Between calls a connection holds only the `SSL` (with its BIO) and the transport.

use std::{
    fmt, io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use boring::ssl::{ErrorCode, ShutdownResult, Ssl, SslRef};
use futures_io::{AsyncRead, AsyncWrite};

use crate::bio::{self, SslFailure, Transport};
use crate::TlsError;

/// How much one read from the transport may take: a whole TLS record (16 KiB of plaintext plus
/// the header and AEAD expansion).
const READ_AHEAD: usize = 5 + 16 * 1024 + 256;

/// Plaintext per record while a connection starts sending again: with TLS 1.3's or
/// AES-GCM's overhead (22 or 29 bytes) a record of this fills at most 1,398 bytes, so it fits
/// one TCP segment and the client can decrypt each segment as it arrives instead of waiting
/// for a whole 16 KiB record to cross a slow or lossy path.
pub const SMALL_RECORD: usize = 1369;
/// Bytes sent in small records after a start or a pause: about TCP's initial congestion window
/// (ten segments), the flight whose latency the client sees first. Bulk transfers then go
/// on in full 16 KiB records (least CPU and framing per byte).
pub const SMALL_RECORD_WINDOW: usize = 16 * 1024;
/// A pause in writing this long starts the small records again (the congestion window may
/// have shrunk, and a new response is the likely next write).
pub const SMALL_RECORD_AFTER_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

thread_local! {
    /// This thread's scratch buffer for reads from the transport (see [`Shim`]).
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; READ_AHEAD].into_boxed_slice());
}

/// The transport as BoringSSL's BIO sees it.
///
/// BoringSSL reads a record in two steps (the 5-byte header, then the body), which would be two
/// `recv` calls per record. The shim reads up to a whole record at once into a per-thread
/// scratch buffer and keeps what BoringSSL did not ask for yet, so one `recv` usually serves a
/// record; the kept bytes are freed as soon as they are taken, so an idle connection holds none.
/// On the io_uring engine there is no system call to save (the engine's multishot receive has
/// the bytes in its buffer pool already), so BoringSSL reads from those buffers directly.
#[derive(Debug)]
struct Shim<S> {
    stream: S,
    /// Bytes read from the transport that BoringSSL has not asked for yet. Boxed: held only
    /// between two reads of BoringSSL's, and never on the io_uring engine.
    ahead: Option<Box<Ahead>>,
}

/// Bytes read ahead of BoringSSL (see [`Shim`]); `taken` of them are handed out.
#[derive(Debug)]
struct Ahead {
    bytes: Vec<u8>,
    taken: usize,
}

impl<S> Shim<S> {
    /// Hands out kept bytes, if any are kept; frees them when they are drained.
    fn take_ahead(&mut self, buf: &mut [u8]) -> Option<usize> {
        let ahead = self.ahead.as_mut()?;
        let kept = &ahead.bytes[ahead.taken..];
        let n = kept.len().min(buf.len());
        buf[..n].copy_from_slice(&kept[..n]);
        ahead.taken += n;
        if ahead.taken >= ahead.bytes.len() {
            self.ahead = None;
        }
        Some(n)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Transport for Shim<S> {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if let Some(n) = self.take_ahead(buf) {
            return Poll::Ready(Ok(n));
        }
        // On the io_uring engine received bytes already wait in user-space buffers, so a read
        // is a copy, not a system call: read what BoringSSL asks for straight from them.
        if buf.len() >= READ_AHEAD
            || fastedge_runtime::current_engine() == Some(fastedge_runtime::Engine::Uring)
        {
            return Pin::new(&mut self.stream).poll_read(cx, buf);
        }
        SCRATCH.with(|scratch| {
            // A TLS stream over a TLS stream on this thread finds the scratch taken: it reads
            // straight into BoringSSL's buffer instead.
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                return Pin::new(&mut self.stream).poll_read(cx, buf);
            };
            let n = std::task::ready!(Pin::new(&mut self.stream).poll_read(cx, &mut scratch[..]))?;
            let given = n.min(buf.len());
            buf[..given].copy_from_slice(&scratch[..given]);
            if given < n {
                self.ahead = Some(Box::new(Ahead {
                    bytes: scratch[given..n].to_vec(),
                    taken: 0,
                }));
            }
            Poll::Ready(Ok(given))
        })
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
}

/// Runs the server side of a TLS handshake over `stream`.
///
/// Cancel-safe only in the sense that dropping the future drops the connection.
pub async fn accept<S>(ssl: Ssl, stream: S) -> Result<TlsStream<S>, TlsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    accept_observed(ssl, stream, |_| {}).await
}

/// As [`accept`], calling `progress` with the connection each time the handshake has to wait
/// for the client: after the ClientHello was processed, callbacks' decisions (such as the SNI
/// context) can be read there, while the handshake goes on.
pub async fn accept_observed<S>(
    mut ssl: Ssl,
    stream: S,
    mut progress: impl FnMut(&SslRef),
) -> Result<TlsStream<S>, TlsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    bio::attach_server(&mut ssl).map_err(TlsError::Setup)?;
    let mut io = Shim {
        stream,
        ahead: None,
    };
    std::future::poll_fn(|cx| {
        // Asynchronous callbacks (keyless signing) wake this task when they are done.
        ssl.set_task_waker(Some(cx.waker().clone()));
        match bio::handshake(&mut ssl, &mut io, cx) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(failure) if failure.would_block() => {
                progress(&ssl);
                Poll::Pending
            }
            Err(failure) => Poll::Ready(Err(TlsError::server_handshake(&ssl, &failure))),
        }
    })
    .await?;
    Ok(TlsStream {
        ssl,
        io,
        close: CloseState::Open,
        early: None,
        small_left: SMALL_RECORD_WINDOW as u32,
        last_write: None,
        pending_write: None,
        write_failed: None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseState {
    Open,
    /// close_notify is queued in BoringSSL; the transport still has to be flushed and shut.
    NotifySent,
    Closed,
}

/// An established TLS connection over an async stream; implements futures-io.
///
/// * `poll_read` returns `Ok(0)` only on a clean close (the peer's close_notify); a transport EOF
///   without close_notify is `ErrorKind::UnexpectedEof`, so a truncation is never mistaken for
///   the end of the data.
/// * `poll_close` sends close_notify, flushes, and shuts the transport's write side, leaving the
///   read side open for the peer's answer (half-close).
pub struct TlsStream<S> {
    ssl: Ssl,
    io: Shim<S>,
    close: CloseState,
    /// Boxed: few connections have early data, and this lives as long as the connection.
    early: Option<Box<EarlyData>>,
    /// Dynamic record sizing: plaintext still to send in small records, and when the last
    /// write happened.
    small_left: u32,
    last_write: Option<std::time::Instant>,
    /// Length of a write BoringSSL could not finish: the retry must offer at least as much.
    pending_write: Option<std::num::NonZeroUsize>,
    /// The kind of the transport error a write failed with: BoringSSL keeps that write
    /// pending, and any other write or flush would get its complaint about a write not
    /// retried instead.
    write_failed: Option<io::ErrorKind>,
}

/// Early data (0-RTT) handling of one connection: how much may pass before the handshake
/// completes, and what waits for it.
#[derive(Debug)]
struct EarlyData {
    cap: usize,
    passed: usize,
    held: Vec<u8>,
    /// Whether the bytes of the last read may have been early data.
    last_read_early: Arc<AtomicBool>,
}

impl<S: fmt::Debug> fmt::Debug for TlsStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("stream", &self.io.stream)
            .field("close", &self.close)
            .finish()
    }
}

impl<S> TlsStream<S> {
    /// The BoringSSL session state: version, cipher, SNI, ALPN, peer certificate.
    pub fn ssl(&self) -> &SslRef {
        &self.ssl
    }

    /// The transport under TLS.
    pub fn get_ref(&self) -> &S {
        &self.io.stream
    }

    /// Reads early data (TLS 1.3 0-RTT) when the handshake accepted it: up to `cap` bytes are
    /// handed out while the handshake is still incomplete (they could be a replay); the rest
    /// is held until the client's Finished arrives. `last_read_early` tells, after each read,
    /// whether its bytes may have been early data. No effect when early data was not accepted.
    pub fn track_early_data(&mut self, cap: usize, last_read_early: Arc<AtomicBool>) {
        if crate::ffi::in_early_data(&self.ssl) {
            self.early = Some(Box::new(EarlyData {
                cap,
                passed: 0,
                held: Vec::new(),
                last_read_early,
            }));
        }
    }

    /// Whether the client sent early data and it was accepted.
    pub fn early_data_accepted(&self) -> bool {
        crate::ffi::early_data_accepted(&self.ssl)
    }

    /// Whether the peer's close_notify has arrived (also true once a fatal alert or a failed
    /// read ended reading: BoringSSL reads nothing more then either).
    pub fn peer_closed_cleanly(&self) -> bool {
        crate::ffi::received_close_notify(&self.ssl)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Whether the peer ended its side (close_notify, a fatal alert, or the transport closed
    /// or failed) with no application data left to read, as far as it can be told without
    /// waiting: `Ready(true)` it did, `Ready(false)` data is there to read (it stays there:
    /// this takes none), `Pending` nothing has come yet (the waker in `cx` is woken when
    /// something does). While early data is being read it answers `Ready(false)`.
    pub fn poll_ended_before_data(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if self.early.is_some() || crate::ffi::in_early_data(&self.ssl) {
            return Poll::Ready(false);
        }
        let mut byte = [0u8; 1];
        match bio::peek(&mut self.ssl, &mut self.io, cx, &mut byte) {
            Ok(_) => Poll::Ready(false),
            Err(SslFailure {
                code: ErrorCode::WANT_READ | ErrorCode::WANT_WRITE,
                io: None,
                ..
            }) => Poll::Pending,
            Err(_) => Poll::Ready(true),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Reads until the 0-RTT handshake has completed (the client's Finished), keeping the
    /// bytes for later reads (delivered as the over-cap early data is, once the handshake is
    /// done): `Ready(true)` completed, `Ready(false)` it never will (the client ended or
    /// failed first). What it keeps is bounded by the early data BoringSSL accepts; once it
    /// keeps anything, later early data is held behind it.
    fn poll_finish_early_handshake(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let early = self.early.get_or_insert_with(|| {
            Box::new(EarlyData {
                cap: 0,
                passed: 0,
                held: Vec::new(),
                last_read_early: Arc::default(),
            })
        });
        let mut chunk = [0u8; 4096];
        while crate::ffi::in_early_data(&self.ssl) {
            match bio::read(&mut self.ssl, &mut self.io, cx, &mut chunk) {
                Ok(n) => {
                    early.held.extend_from_slice(&chunk[..n]);
                    // Later early data must not pass what is held now: reads hold it all
                    // until the handshake completes.
                    early.passed = early.cap;
                }
                // The read that completed the handshake found nothing after it.
                Err(SslFailure {
                    code: ErrorCode::WANT_READ | ErrorCode::WANT_WRITE,
                    io: None,
                    ..
                }) if !crate::ffi::in_early_data(&self.ssl) => break,
                Err(SslFailure {
                    code: ErrorCode::WANT_READ | ErrorCode::WANT_WRITE,
                    io: None,
                    ..
                }) => return Poll::Pending,
                // The client ended (close_notify, or the transport's end): a Finished that
                // came just before still completed the handshake, and close_notify can go.
                Err(SslFailure {
                    code: ErrorCode::ZERO_RETURN | ErrorCode::SYSCALL,
                    io: None,
                    ..
                }) => return Poll::Ready(!crate::ffi::in_early_data(&self.ssl)),
                // It failed: no close_notify after a fatal alert.
                Err(_) => return Poll::Ready(false),
            }
        }
        Poll::Ready(true)
    }
}

/// What writing, flushing or closing answers after a write failed with `kind`.
fn earlier_write_failed(kind: io::ErrorKind) -> io::Error {
    io::Error::new(kind, "an earlier write on this connection failed")
}

/// Maps a BoringSSL call's failure to futures-io: WANT_* become `Pending`.
fn map_failure<T>(failure: SslFailure) -> Poll<io::Result<T>> {
    match failure {
        SslFailure {
            code: ErrorCode::WANT_READ | ErrorCode::WANT_WRITE,
            io: None,
            ..
        } => Poll::Pending,
        SslFailure {
            code: ErrorCode::SYSCALL,
            io: None,
            ..
        } => Poll::Ready(Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "peer closed the transport without TLS close_notify",
        ))),
        SslFailure { io: Some(io), .. } => Poll::Ready(Err(io)),
        other => Poll::Ready(Err(io::Error::other(TlsError::handshake(&other)))),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if let Some(early) = &mut this.early {
            loop {
                if !crate::ffi::in_early_data(&this.ssl) {
                    // The handshake completed: what was held goes first, then normal reads.
                    early.last_read_early.store(false, Ordering::Relaxed);
                    if early.held.is_empty() {
                        this.early = None;
                        break;
                    }
                    let n = early.held.len().min(buf.len());
                    buf[..n].copy_from_slice(&early.held[..n]);
                    early.held.drain(..n);
                    return Poll::Ready(Ok(n));
                }
                if early.passed < early.cap {
                    let limit = buf.len().min(early.cap - early.passed);
                    early.last_read_early.store(true, Ordering::Relaxed);
                    return match bio::read(&mut this.ssl, &mut this.io, cx, &mut buf[..limit]) {
                        Ok(n) => {
                            early.passed += n;
                            Poll::Ready(Ok(n))
                        }
                        Err(error) if error.code == ErrorCode::ZERO_RETURN => Poll::Ready(Ok(0)),
                        Err(error) => map_failure(error),
                    };
                }
                // Over the cap: keep reading (the handshake completes through reads) but hold
                // the bytes until it has.
                let mut chunk = [0u8; 4096];
                match bio::read(&mut this.ssl, &mut this.io, cx, &mut chunk) {
                    Ok(n) => early.held.extend_from_slice(&chunk[..n]),
                    // The read that completes the handshake may find no data after it: deliver
                    // what is held now rather than wait for more from the client.
                    Err(error)
                        if !crate::ffi::in_early_data(&this.ssl)
                            && matches!(
                                error.code,
                                ErrorCode::WANT_READ | ErrorCode::WANT_WRITE
                            ) =>
                    {
                        continue
                    }
                    Err(error) if error.code == ErrorCode::ZERO_RETURN => {
                        // The client closed before finishing the handshake: what is held
                        // beyond the cap was never confirmed (it could be a replay) and is
                        // dropped. After the handshake, the loop delivers it above.
                        if crate::ffi::in_early_data(&this.ssl) {
                            early.held.clear();
                            return Poll::Ready(Ok(0));
                        }
                        continue;
                    }
                    Err(error) => return map_failure(error),
                }
            }
        }
        match bio::read(&mut this.ssl, &mut this.io, cx, buf) {
            Ok(n) => Poll::Ready(Ok(n)),
            Err(error) if error.code == ErrorCode::ZERO_RETURN => Poll::Ready(Ok(0)),
            Err(error) => map_failure(error),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if let Some(kind) = this.write_failed {
            return Poll::Ready(Err(earlier_write_failed(kind)));
        }
        let now = fastedge_runtime::now();
        let len = match this.pending_write {
            // BoringSSL finishes the record it started: offer it the same bytes again.
            Some(len) => len.get().min(buf.len()),
            None => {
                if this
                    .last_write
                    .is_some_and(|last| now.duration_since(last) >= SMALL_RECORD_AFTER_IDLE)
                {
                    this.small_left = SMALL_RECORD_WINDOW as u32;
                }
                if this.small_left > 0 {
                    buf.len().min(SMALL_RECORD)
                } else {
                    buf.len()
                }
            }
        };
        match bio::write(&mut this.ssl, &mut this.io, cx, &buf[..len]) {
            Ok(n) => {
                this.pending_write = None;
                this.small_left = this
                    .small_left
                    .saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
                this.last_write = Some(now);
                Poll::Ready(Ok(n))
            }
            Err(error) => {
                // Only the transport's own failure stays: BoringSSL's refusals (after
                // close_notify, say) are answered afresh each time.
                let transport = error
                    .io
                    .as_ref()
                    .map(io::Error::kind)
                    .filter(|kind| *kind != io::ErrorKind::Interrupted);
                let result = map_failure(error);
                match &result {
                    Poll::Pending => this.pending_write = std::num::NonZeroUsize::new(len),
                    Poll::Ready(Err(_)) => this.write_failed = transport,
                    Poll::Ready(Ok(_)) => {}
                }
                result
            }
        }
    }

    /// Writes what BoringSSL queued on its own first (TLS 1.3 session tickets wait in it until
    /// the connection's first write), then flushes the transport.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(kind) = this.write_failed {
            return Poll::Ready(Err(earlier_write_failed(kind)));
        }
        // Not while a write is unfinished (BoringSSL wants that write retried first), after
        // close_notify, or before the handshake completed (early data).
        if this.close == CloseState::Open
            && this.pending_write.is_none()
            && !crate::ffi::in_early_data(&this.ssl)
        {
            match bio::write(&mut this.ssl, &mut this.io, cx, &[]) {
                Ok(_) => {}
                // The transport's own error (no waker waits for it).
                Err(SslFailure {
                    io: Some(error), ..
                }) => return Poll::Ready(Err(error)),
                // The transport registered our waker.
                Err(SslFailure {
                    code: ErrorCode::WANT_WRITE,
                    ..
                }) => return Poll::Pending,
                Err(failure) => {
                    return Poll::Ready(Err(io::Error::other(format!(
                        "writing TLS handshake messages: {failure}"
                    ))));
                }
            }
        }
        Pin::new(&mut this.io.stream).poll_flush(cx)
    }

    /// Sends close_notify, flushes and shuts the transport's sending side. While the client's
    /// 0-RTT handshake is unfinished, BoringSSL cannot send close_notify (`SSL_shutdown`
    /// "succeeds" without it), so the close first waits for the client's Finished, holding
    /// what arrives meanwhile for later reads; a client that ends or fails before its Finished
    /// gets the transport's close alone.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(kind) = this.write_failed {
            return Poll::Ready(Err(earlier_write_failed(kind)));
        }
        if this.close == CloseState::Open && crate::ffi::in_early_data(&this.ssl) {
            match this.poll_finish_early_handshake(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(true) => {}
                Poll::Ready(false) => this.close = CloseState::NotifySent,
            }
        }
        if this.close == CloseState::Open {
            match bio::shutdown(&mut this.ssl, &mut this.io, cx) {
                Ok(ShutdownResult::Sent | ShutdownResult::Received) => {
                    this.close = CloseState::NotifySent
                }
                Err(error) => match map_failure::<()>(error) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => this.close = CloseState::NotifySent,
                },
            }
        }
        if this.close == CloseState::NotifySent {
            let stream = &mut this.io.stream;
            std::task::ready!(Pin::new(&mut *stream).poll_flush(cx))?;
            std::task::ready!(Pin::new(stream).poll_close(cx))?;
            this.close = CloseState::Closed;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    /// A connection's TLS stream lives as long as the connection.
    #[test]
    fn a_tls_stream_over_a_borrowed_transport_stays_within_64_bytes() {
        let size = std::mem::size_of::<super::TlsStream<&mut fastedge_runtime::net::TcpStream>>();
        assert!(size <= 64, "{size}");
    }
}
