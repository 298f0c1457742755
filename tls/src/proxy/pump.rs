//! The pump: moves bytes both ways between a client and a backend, through the forwarding-
//! header injector when the backend gets one, until both directions end, an error, or a
//! deadline (idle, request head).

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::{Duration, Instant},
};

use fastedge_wire::forwarded::Injector;
use futures_io::{AsyncRead, AsyncWrite};

use super::{
    buffers::{borrow_buffer, borrow_out, return_buffer, return_out},
    CloseReason, PumpOutcome, Side,
};

/// How long a client that has sent nothing, and was sent nothing, waits before the pump flushes
/// it: what the TLS layer queued at the end of the handshake (BoringSSL holds TLS 1.3 session
/// tickets, 0.6 KiB, until the connection's first write) then goes out, so an idle connection
/// does not keep it and a client waiting for the server gets its tickets. Clients that speak
/// first get them with the answer, in the same segments; ones that leave at once (handshake
/// floods) are not sent them at all.
pub const SILENT_FLUSH_AFTER: Duration = Duration::from_millis(100);

/// Settings of one [`pump`].
#[derive(Debug, Default)]
pub struct PumpOptions<'a> {
    /// Rewrites the client → backend stream (forwarding headers).
    pub injector: Option<&'a mut Injector>,
    /// Keep the other direction open after one side closes its sending direction.
    pub half_open: bool,
    /// Close when no bytes move either way for this long. The pump keeps its limits as whole
    /// milliseconds, rounded up, up to [`crate::config::TIMEOUT_MAX`] (a longer one is cut).
    pub idle_timeout: Option<Duration>,
    /// With an injector: close when a request head is not complete this long after its first
    /// byte (the idle timer alone lets a client hold a connection with a byte now and then).
    pub head_timeout: Option<Duration>,
    /// Set by the client stream after each read: whether those bytes may have been TLS early
    /// data (the injector then marks requests completed by them with `Early-Data: 1`).
    pub early: Option<Arc<AtomicBool>>,
    /// Where requests the injector saw are counted as they pass (live, not at close).
    pub metrics: Option<&'a crate::metrics::CoreMetrics>,
    /// Flush the client once when nothing came from either side this long after the pump
    /// started (see [`SILENT_FLUSH_AFTER`], what the proxy uses): a TLS client then gets what
    /// the handshake left queued. Needs a fastedge executor (a timer).
    pub silent_flush: Option<Duration>,
}

/// One of the pump's time limits in 4 bytes, where an `Option<Duration>` takes 16 (the pump
/// lives as long as its connection): whole milliseconds, rounded up (so a limit never ends
/// early), at most ~49 days; 0 for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limit(u32);

impl Limit {
    fn new(limit: Option<Duration>) -> Self {
        Self(limit.map_or(0, |limit| {
            let millis = limit.as_nanos().div_ceil(1_000_000);
            u32::try_from(millis).unwrap_or(u32::MAX).max(1)
        }))
    }

    fn get(self) -> Option<Duration> {
        (self.0 > 0).then(|| Duration::from_millis(self.0.into()))
    }
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
    role: Role,
    /// `buf[start..end]`: read and not yet written (or, when rewriting, not yet fed to the
    /// injector, which may hold off taking bytes until the backend answers). `u32`: a pool
    /// buffer is far smaller, and the pump lives as long as its connection.
    start: u32,
    end: u32,
    /// Whether the bytes in `buf` may have been TLS early data.
    early_read: bool,
    read_done: bool,
    unflushed: bool,
    done: bool,
    bytes: u64,
}

type FlowError = (Side, &'static str, io::Error);

/// The rewritten bytes of the direction that rewrites (one per pump, not per direction: the
/// other never has any). Borrowed from the core's spares while bytes move; empty while idle.
#[derive(Default)]
struct Rewritten {
    bytes: Vec<u8>,
    /// `bytes[start..]`: rewritten and not yet written.
    start: usize,
}

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
            role,
            start: 0,
            end: 0,
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

    /// `buf`'s bytes read and not yet written (or fed to the injector).
    fn unsent(&self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }

    /// `n` more bytes of `buf` are written (or fed).
    fn advance(&mut self, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.start = self.start.saturating_add(n).min(self.end);
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
        (mut injector, out): (Option<&mut Injector>, &mut Rewritten),
        early: Option<&AtomicBool>,
        activity: &mut Instant,
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
                    _ if rewrites => &out.bytes[out.start..],
                    Some(buf) => buf.get(self.unsent()).unwrap_or_default(),
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
                            out.start += n;
                        } else {
                            self.advance(n);
                        }
                        self.unflushed = true;
                        *activity = fastedge_runtime::now();
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err((to, "write", error))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if rewrites {
                out.bytes.clear();
                out.start = 0;
                if let (Some(injector), Some(buf), true) =
                    (injector.as_deref_mut(), &self.buf, self.start < self.end)
                {
                    injector.set_early(self.early_read);
                    if out.bytes.capacity() == 0 {
                        out.bytes = borrow_out();
                    }
                    let used = injector
                        .feed(buf.get(self.unsent()).unwrap_or_default(), &mut out.bytes)
                        .map_err(|e| {
                            let error = io::Error::new(io::ErrorKind::InvalidData, e);
                            (from, "request", error)
                        })?;
                    self.advance(used);
                    if used == 0 && out.bytes.is_empty() {
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
                    *activity = fastedge_runtime::now();
                    self.bytes += n as u64;
                    self.start = 0;
                    self.end = u32::try_from(n).unwrap_or(u32::MAX);
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
                    if rewrites {
                        return_out(std::mem::take(&mut out.bytes));
                    }
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
pub fn pump<'a, C, B>(
    client: &'a mut C,
    backend: &'a mut B,
    options: PumpOptions<'a>,
) -> Pump<'a, C, B>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let PumpOptions {
        injector,
        half_open,
        idle_timeout,
        head_timeout,
        early,
        metrics,
        silent_flush,
    } = options;
    Pump {
        client,
        backend,
        head_timeout: Limit::new(head_timeout.filter(|_| injector.is_some())),
        rewritten: injector.is_some().then(Box::default),
        injector,
        early,
        metrics,
        idle_timeout: Limit::new(idle_timeout),
        silent_flush: Limit::new(silent_flush),
        up: Flow::new(Role::Rewrite),
        down: Flow::new(Role::Observe),
        requests_counted: 0,
        head_since: None,
        activity: fastedge_runtime::now(),
        silent_flush_at: None,
        timer: None,
        half_open,
        first_closed: None,
        greeted: silent_flush.is_none(),
        flushing: false,
    }
}

/// The future of [`pump`], written by hand rather than as an `async fn`: it lives as long as
/// the connection, and an `async` body keeps its arguments and locals twice and every awaited
/// future's state beside them (904 bytes against 296 for this).
#[must_use = "futures do nothing unless polled"]
pub struct Pump<'a, C: ?Sized, B: ?Sized> {
    client: &'a mut C,
    backend: &'a mut B,
    injector: Option<&'a mut Injector>,
    early: Option<Arc<AtomicBool>>,
    metrics: Option<&'a crate::metrics::CoreMetrics>,
    idle_timeout: Limit,
    /// Only with an injector.
    head_timeout: Limit,
    silent_flush: Limit,
    up: Flow,
    down: Flow,
    /// Only with an injector (boxed: most connections have none).
    rewritten: Option<Box<Rewritten>>,
    /// Requests of the injector already counted in `metrics`.
    requests_counted: u64,
    /// When the request head being received began (with a head deadline only).
    head_since: Option<Instant>,
    /// When bytes last moved either way.
    activity: Instant,
    /// When a client that said nothing is flushed (see [`SILENT_FLUSH_AFTER`]).
    silent_flush_at: Option<Instant>,
    /// The timer armed for the next deadline or flush. It is re-armed when it fires or an
    /// earlier time comes up, not each time bytes move.
    timer: Option<fastedge_runtime::Sleep>,
    half_open: bool,
    first_closed: Option<Side>,
    /// The silent client's flush is over (or not needed); `flushing`: it is under way (the
    /// transport may take it later).
    greeted: bool,
    flushing: bool,
}

impl<C, B> std::fmt::Debug for Pump<'_, C, B>
where
    C: ?Sized,
    B: ?Sized,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pump")
            .field("upstream", &self.up.bytes)
            .field("downstream", &self.down.bytes)
            .field("first_closed", &self.first_closed)
            .finish_non_exhaustive()
    }
}

impl<C, B> Pump<'_, C, B>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    /// Moves what can move both ways; `Ready` when both directions have ended or one failed.
    fn poll_moving(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), FlowError>> {
        // Without an injector nothing is rewritten: an empty stand-in (no allocation).
        let mut unused = Rewritten::default();
        let up_poll = self.up.poll_move(
            cx,
            (Side::Client, &mut *self.client),
            (Side::Backend, &mut *self.backend),
            (
                self.injector.as_deref_mut(),
                self.rewritten.as_deref_mut().unwrap_or(&mut unused),
            ),
            self.early.as_deref(),
            &mut self.activity,
        );
        if let (Some(metrics), Some(injector)) = (self.metrics, self.injector.as_deref()) {
            let seen = injector.requests();
            if seen > self.requests_counted {
                metrics.requests(seen - self.requests_counted);
                self.requests_counted = seen;
            }
        }
        if let Poll::Ready(Err(e)) = up_poll {
            return Poll::Ready(Err(e));
        }
        if let (Some(_), Some(injector)) = (self.head_timeout.get(), self.injector.as_deref()) {
            if !injector.in_head() {
                self.head_since = None;
            } else if self.head_since.is_none() {
                self.head_since = Some(fastedge_runtime::now());
            }
        }
        let waited = self
            .injector
            .as_deref()
            .is_some_and(Injector::waits_for_backend);
        let down_poll = self.down.poll_move(
            cx,
            (Side::Backend, &mut *self.backend),
            (Side::Client, &mut *self.client),
            (self.injector.as_deref_mut(), &mut unused),
            None,
            &mut self.activity,
        );
        if let Poll::Ready(Err(e)) = down_poll {
            return Poll::Ready(Err(e));
        }
        if waited
            && !self
                .injector
                .as_deref()
                .is_some_and(Injector::waits_for_backend)
        {
            // The backend's answer came: the client's held bytes may move on.
            cx.waker().wake_by_ref();
        }
        let (up, down) = (&mut self.up, &mut self.down);
        if self.first_closed.is_none() {
            if up.read_done {
                self.first_closed = Some(Side::Client);
            } else if down.read_done {
                self.first_closed = Some(Side::Backend);
            }
            if self.first_closed.is_some() && !self.half_open && !(up.read_done && down.read_done) {
                // Stop reading the other side too; what was read still gets written.
                up.read_done = true;
                down.read_done = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        if up.done && down.done {
            return Poll::Ready(Ok(()));
        }
        if (self.flushing || !self.greeted) && (up.read_done || down.read_done) {
            // Closing has begun (the client's side is closed, or will be, after what is
            // queued): no flush of our own.
            self.flushing = false;
            self.greeted = true;
            self.silent_flush_at = None;
        }
        if !self.greeted && !self.flushing {
            if up.bytes > 0 || down.bytes > 0 {
                // Bytes came from a side (the answer to the client will carry what TLS
                // queued): nothing to flush.
                self.greeted = true;
                self.silent_flush_at = None;
            } else {
                let now = fastedge_runtime::now();
                match (self.silent_flush_at, self.silent_flush.get()) {
                    (None, Some(after)) => self.silent_flush_at = Some(now + after),
                    (Some(at), _) if now >= at => {
                        self.flushing = true;
                        self.silent_flush_at = None;
                    }
                    _ => {}
                }
            }
        }
        if self.flushing {
            match Pin::new(&mut *self.client).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.flushing = false;
                    self.greeted = true;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err((Side::Client, "flush", error))),
                // Retried on the next wake until it is done.
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    /// The next deadline: the idle timer's, or a request head's if that comes first.
    fn deadline(&self) -> Option<(Instant, CloseReason)> {
        let idle = self
            .idle_timeout
            .get()
            .map(|d| (self.activity + d, CloseReason::Idle(d)));
        let head = self
            .head_timeout
            .get()
            .zip(self.head_since)
            .map(|(d, since)| (since + d, CloseReason::HeadTimeout(d)));
        match (idle, head) {
            (Some(i), Some(h)) => Some(if h.0 < i.0 { h } else { i }),
            (i, h) => i.or(h),
        }
    }

    /// Checks the deadlines and arms the timer for the next one (or the silent client's
    /// flush): `Ready` with the reason when a deadline has passed.
    fn poll_deadlines(&mut self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        loop {
            let now = fastedge_runtime::now();
            let at = match self.deadline() {
                Some((at, reason)) if now >= at => return Poll::Ready(reason),
                Some((at, _)) => Some(at),
                None => None,
            };
            if self.silent_flush_at.is_some_and(|f| f <= now) {
                // Due but not done: the mover does it when next polled.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let wake_at = match (at, self.silent_flush_at) {
                (Some(a), Some(f)) => a.min(f),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => {
                    self.timer = None;
                    return Poll::Pending;
                }
            };
            // A timer set for later than needed is replaced; one set for earlier fires and is
            // re-armed then (bytes moving push the idle deadline on without touching it).
            let timer = match &mut self.timer {
                Some(armed) if armed.deadline() > wake_at => {
                    self.timer.insert(fastedge_runtime::sleep_until(wake_at))
                }
                Some(armed) => armed,
                None => self.timer.insert(fastedge_runtime::sleep_until(wake_at)),
            };
            match Pin::new(timer).poll(cx) {
                Poll::Pending => return Poll::Pending,
                // Fired: look at the deadlines again (they may have moved since it was set).
                Poll::Ready(()) => self.timer = None,
            }
        }
    }

    fn outcome(&self, ended: Result<Result<(), FlowError>, CloseReason>) -> PumpOutcome {
        let reason = match ended {
            Err(expired) => expired,
            Ok(Ok(())) => CloseReason::Closed {
                first: self.first_closed.unwrap_or(Side::Client),
            },
            Ok(Err((Side::Client, "request", error))) => CloseReason::BadRequest(error.to_string()),
            Ok(Err((side, op, error))) => CloseReason::Failed { side, op, error },
        };
        PumpOutcome {
            upstream: self.up.bytes,
            downstream: self.down.bytes,
            reason,
        }
    }
}

impl<C, B> Future for Pump<'_, C, B>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = PumpOutcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PumpOutcome> {
        let this = self.get_mut();
        if let Poll::Ready(moved) = this.poll_moving(cx) {
            return Poll::Ready(this.outcome(Ok(moved)));
        }
        // Checked on every wake of the connection: a request head that began since may bring
        // the deadline forward, and the mover may have armed or done its flush.
        this.poll_deadlines(cx)
            .map(|expired| this.outcome(Err(expired)))
    }
}

#[cfg(test)]
mod tests {

    use fastedge_wire::forwarded::{ClientFacts, ForwardedConfig};
    use futures_lite::future::block_on;

    use super::*;

    #[test]
    fn a_limit_keeps_whole_milliseconds_rounded_up_and_none_as_none() {
        assert_eq!(Limit::new(None).get(), None);
        assert_eq!(
            Limit::new(Some(Duration::from_secs(60))).get(),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            Limit::new(Some(Duration::from_micros(1_500))).get(),
            Some(Duration::from_millis(2))
        );
        // Never none, never shorter than asked for.
        assert_eq!(
            Limit::new(Some(Duration::ZERO)).get(),
            Some(Duration::from_millis(1))
        );
        assert_eq!(
            Limit::new(Some(Duration::from_secs(u64::MAX))).get(),
            Some(Duration::from_millis(u32::MAX.into()))
        );
    }

    /// The pump lives as long as its connection.
    #[test]
    fn the_pump_stays_small() {
        type Tls<'a> = crate::TlsStream<&'a mut fastedge_runtime::net::TcpStream>;
        let size = std::mem::size_of::<Pump<'_, Tls<'_>, super::super::backends::BackendStream>>();
        assert!(size <= 232, "{size}");
    }

    /// One end of a connection, in memory: reads give `input` in pieces of at most `chunk`
    /// bytes, then the end of the stream (or, `hold_open`, nothing more for good); what is
    /// written is kept.
    #[derive(Debug, Default)]
    struct Peer {
        input: Vec<u8>,
        read_at: usize,
        chunk: usize,
        hold_open: bool,
        /// Writes fail with this.
        refuse: Option<io::ErrorKind>,
        written: Vec<u8>,
        closed: bool,
    }

    impl Peer {
        fn sending(input: &[u8], chunk: usize) -> Self {
            Self {
                input: input.to_vec(),
                chunk,
                ..Self::default()
            }
        }

        fn held_open(mut self) -> Self {
            self.hold_open = true;
            self
        }
    }

    impl AsyncRead for Peer {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let left = self.input.len() - self.read_at;
            if left == 0 {
                // Held open: the pump's own wakes (or its timers) must carry it on.
                return if self.hold_open {
                    Poll::Pending
                } else {
                    Poll::Ready(Ok(0))
                };
            }
            let n = left.min(self.chunk).min(buf.len());
            let at = self.read_at;
            buf[..n].copy_from_slice(&self.input[at..at + n]);
            self.read_at += n;
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Peer {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if let Some(kind) = self.refuse {
                return Poll::Ready(Err(kind.into()));
            }
            assert!(!self.closed, "written after its close");
            self.written.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.closed = true;
            Poll::Ready(Ok(()))
        }
    }

    fn injector() -> Injector {
        Injector::new(
            ForwardedConfig {
                x_forwarded: true,
                forwarded: false,
                max_head: fastedge_wire::http1::DEFAULT_MAX_HEAD,
            },
            ClientFacts {
                client: "192.0.2.7".parse().unwrap(),
                local_port: 8443,
                trusted: false,
            },
        )
    }

    fn half_open() -> PumpOptions<'static> {
        PumpOptions {
            half_open: true,
            ..PumpOptions::default()
        }
    }

    #[test]
    fn bytes_pass_both_ways_and_each_close_is_passed_on() {
        let mut client = Peer::sending(b"hello", 2);
        let mut backend = Peer::sending(b"world!", 4);
        let outcome = block_on(pump(&mut client, &mut backend, half_open()));
        assert_eq!(backend.written, b"hello");
        assert_eq!(client.written, b"world!");
        assert!(client.closed && backend.closed);
        assert_eq!((outcome.upstream, outcome.downstream), (5, 6));
        assert!(
            matches!(
                outcome.reason,
                CloseReason::Closed {
                    first: Side::Client
                }
            ),
            "{}",
            outcome.reason
        );
    }

    #[test]
    fn requests_split_across_reads_get_forwarding_headers_as_if_read_whole() {
        let requests: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n\
                                Content-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut whole = Vec::new();
        let used = injector().feed(requests, &mut whole).unwrap();
        assert_eq!(used, requests.len());
        for chunk in [1, 3, 7, requests.len()] {
            let mut client = Peer::sending(requests, chunk);
            let mut backend = Peer::sending(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 5);
            let mut injector = injector();
            let metrics = crate::metrics::CoreMetrics::default();
            let options = PumpOptions {
                injector: Some(&mut injector),
                metrics: Some(&metrics),
                ..half_open()
            };
            let outcome = block_on(pump(&mut client, &mut backend, options));
            assert_eq!(
                metrics.requests_seen(),
                2,
                "chunk {chunk}: requests counted"
            );
            assert!(
                matches!(outcome.reason, CloseReason::Closed { .. }),
                "chunk {chunk}: {}",
                outcome.reason
            );
            assert_eq!(injector.requests(), 2, "chunk {chunk}");
            assert_eq!(
                String::from_utf8_lossy(&backend.written),
                String::from_utf8_lossy(&whole),
                "chunk {chunk}"
            );
            assert_eq!(
                outcome.upstream,
                requests.len() as u64,
                "as read from the client"
            );
        }
        let text = String::from_utf8(whole).unwrap();
        assert_eq!(text.matches("X-Forwarded-For: 192.0.2.7\r\n").count(), 2);
        assert!(!text.contains("6.6.6.6"), "{text}");
        assert!(
            text.contains("\r\n\r\nhelloGET /b"),
            "the body untouched: {text}"
        );
    }

    #[test]
    fn a_request_that_is_not_http_ends_the_connection_as_a_bad_request() {
        let mut client = Peer::sending(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 64);
        let mut backend = Peer::default().held_open();
        let mut injector = injector();
        let options = PumpOptions {
            injector: Some(&mut injector),
            ..half_open()
        };
        let outcome = block_on(pump(&mut client, &mut backend, options));
        assert!(
            matches!(outcome.reason, CloseReason::BadRequest(_)),
            "{}",
            outcome.reason
        );
        assert!(
            backend.written.is_empty(),
            "nothing of it reached the backend"
        );
    }

    #[test]
    fn without_half_open_the_first_close_ends_both_directions() {
        let mut client = Peer::sending(b"abc", 64).held_open();
        let mut backend = Peer::sending(b"xyz", 64);
        let options = PumpOptions::default();
        let outcome = block_on(pump(&mut client, &mut backend, options));
        assert!(
            matches!(
                outcome.reason,
                CloseReason::Closed {
                    first: Side::Backend
                }
            ),
            "{}",
            outcome.reason
        );
        assert_eq!(backend.written, b"abc", "what was read still went out");
        assert_eq!(client.written, b"xyz");
        assert!(client.closed && backend.closed);
    }

    #[test]
    fn a_failed_write_names_the_side() {
        let mut client = Peer::sending(b"hello", 64).held_open();
        let mut backend = Peer {
            refuse: Some(io::ErrorKind::ConnectionReset),
            hold_open: true,
            ..Peer::default()
        };
        let outcome = block_on(pump(&mut client, &mut backend, half_open()));
        assert!(
            matches!(
                outcome.reason,
                CloseReason::Failed {
                    side: Side::Backend,
                    op: "write",
                    ..
                }
            ),
            "{}",
            outcome.reason
        );
        assert_eq!(outcome.reason.to_string(), "backend reset the connection");
        assert_eq!(outcome.upstream, 5);
    }

    /// Runs `make()`'s future on one io_uring executor (timers need an engine) on this
    /// process's first CPU and returns its output.
    fn on_engine<F, Fut>(make: F) -> Fut::Output
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future + 'static,
        Fut::Output: Send + 'static,
    {
        let cpu = fastedge_runtime::CpuList::available().unwrap().cpus()[0];
        let cpus = cpu.to_string().parse().unwrap();
        let make = std::sync::Arc::new(make);
        let executors = fastedge_runtime::Executors::spawn_on(
            fastedge_runtime::Engine::Uring,
            "pump-test",
            &cpus,
            move |_| {
                let make = make.clone();
                move || make()
            },
        )
        .unwrap();
        executors.join().unwrap().pop().unwrap().1
    }

    #[test]
    fn a_silent_client_is_flushed_once_and_still_ends_at_the_idle_timeout() {
        /// A peer that says nothing and counts the flushes it is asked for; the first
        /// `pending` of them answer `Pending` (and wake the task, as a transport would later).
        #[derive(Default)]
        struct Silent {
            flushes: usize,
            pending: usize,
        }
        impl AsyncRead for Silent {
            fn poll_read(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &mut [u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Pending
            }
        }
        impl AsyncWrite for Silent {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
            }
            fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                self.flushes += 1;
                if self.flushes <= self.pending {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Ok(()))
            }
            fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        // The second time, the client's transport takes the flush only when asked again.
        for pending in [0, 1] {
            let (reason, took, client, backend) = on_engine(move || async move {
                let mut client = Silent {
                    pending,
                    ..Silent::default()
                };
                let mut backend = Silent::default();
                let started = Instant::now();
                let options = PumpOptions {
                    idle_timeout: Some(Duration::from_millis(80)),
                    silent_flush: Some(Duration::from_millis(20)),
                    ..half_open()
                };
                let outcome = pump(&mut client, &mut backend, options).await;
                (
                    outcome.reason.to_string(),
                    started.elapsed(),
                    client.flushes,
                    backend.flushes,
                )
            });
            assert_eq!(reason, "idle for 0.08 s");
            assert!(took >= Duration::from_millis(80), "{took:?}");
            assert!(took < Duration::from_secs(2), "{took:?}");
            assert_eq!(
                (client, backend),
                (1 + pending, 0),
                "flushes of the client and the backend"
            );
        }
    }

    /// A client that sends one piece at each of its times (from when it is first read), then
    /// nothing more, holding the connection open; what it is sent is dropped.
    struct Trickle {
        pieces: std::collections::VecDeque<(Duration, &'static [u8])>,
        started: Option<Instant>,
        timer: Option<fastedge_runtime::Sleep>,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let started = *self.started.get_or_insert_with(Instant::now);
            let Some(&(at, piece)) = self.pieces.front() else {
                return Poll::Pending;
            };
            let timer = self
                .timer
                .get_or_insert_with(|| fastedge_runtime::sleep_until(started + at));
            ready!(Pin::new(timer).poll(cx));
            self.timer = None;
            self.pieces.pop_front();
            buf[..piece.len()].copy_from_slice(piece);
            Poll::Ready(Ok(piece.len()))
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Pumps between the client `make_client` gives and a backend that says nothing, on the
    /// engine, with an idle timeout: (why it closed, how long it took, what the backend got).
    fn until_idle<C>(make_client: fn() -> C, idle: Duration) -> (String, Duration, Vec<u8>)
    where
        C: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        on_engine(move || async move {
            let mut client = make_client();
            let mut backend = Peer::default().held_open();
            let started = Instant::now();
            let options = PumpOptions {
                idle_timeout: Some(idle),
                ..half_open()
            };
            // Bounded: a pump that lost its wake-ups would otherwise hang the test.
            let outcome = fastedge_runtime::timeout(
                Duration::from_secs(5),
                pump(&mut client, &mut backend, options),
            )
            .await
            .expect("the pump did not end within 5 s");
            (
                outcome.reason.to_string(),
                started.elapsed(),
                backend.written,
            )
        })
    }

    #[test]
    fn bytes_that_keep_coming_push_the_idle_deadline_on() {
        // Idle 80 ms; a byte every 50 ms until 200 ms: the timer armed at the start fires at
        // 80 ms, finds bytes moved since, and is armed again, until 80 ms after the last byte.
        let trickle = || Trickle {
            pieces: [0, 50, 100, 150, 200]
                .into_iter()
                .map(|ms| (Duration::from_millis(ms), &b"a"[..]))
                .collect(),
            started: None,
            timer: None,
        };
        let (reason, took, written) = until_idle(trickle, Duration::from_millis(80));
        assert_eq!(reason, "idle for 0.08 s");
        assert_eq!(written, b"aaaaa");
        assert!(took >= Duration::from_millis(280), "{took:?}");
        // Not only when something else (the test's own 5 s limit) happens to wake it.
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn an_idle_connection_ends_at_the_idle_timeout() {
        let client = || Peer::sending(b"one", 64).held_open();
        let (reason, took, written) = until_idle(client, Duration::from_millis(50));
        assert_eq!(reason, "idle for 0.05 s");
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert_eq!(written, b"one");
    }
}
