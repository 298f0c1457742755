//! The pump: moves bytes both ways between a client and a backend, through the forwarding-
//! header injector when the backend gets one, until both directions end, an error, or a
//! deadline (idle, request head).

use std::{
    cell::Cell,
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
    /// Close when no bytes move either way for this long.
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
                    if self.out.capacity() == 0 {
                        self.out = borrow_out();
                    }
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
                    return_out(std::mem::take(&mut self.out));
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
        metrics,
        silent_flush,
    } = options;
    let mut requests_counted = 0u64;
    let head_timeout = head_timeout.filter(|_| injector.is_some());
    // When the request head being received began (with a head deadline only).
    let head_since: Cell<Option<Instant>> = Cell::new(None);
    let mut up = Flow::new(Role::Rewrite);
    let mut down = Flow::new(Role::Observe);
    let mut first_closed: Option<Side> = None;
    // The flush of a client that has said nothing (see SILENT_FLUSH_AFTER): when it is due,
    // whether it is under way (the transport may take it later), and whether it is over (or
    // not needed).
    let mut greeted = silent_flush.is_none();
    let mut flushing = false;
    let silent_flush_at: Cell<Option<Instant>> = Cell::new(None);
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
        if let (Some(metrics), Some(injector)) = (metrics, injector.as_deref()) {
            let seen = injector.requests();
            if seen > requests_counted {
                metrics.requests(seen - requests_counted);
                requests_counted = seen;
            }
        }
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
            return Poll::Ready(Ok(()));
        }
        if (flushing || !greeted) && (up.read_done || down.read_done) {
            // Closing has begun (the client's side is closed, or will be, after what is
            // queued): no flush of our own.
            flushing = false;
            greeted = true;
            silent_flush_at.set(None);
        }
        if !greeted && !flushing {
            if up.bytes > 0 || down.bytes > 0 {
                // Bytes came from a side (the answer to the client will carry what TLS
                // queued): nothing to flush.
                greeted = true;
                silent_flush_at.set(None);
            } else {
                let now = fastedge_runtime::now();
                match (silent_flush_at.get(), silent_flush) {
                    (None, Some(after)) => silent_flush_at.set(Some(now + after)),
                    (Some(at), _) if now >= at => {
                        flushing = true;
                        silent_flush_at.set(None);
                    }
                    _ => {}
                }
            }
        }
        if flushing {
            match Pin::new(&mut *client).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    flushing = false;
                    greeted = true;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err((Side::Client, "flush", error))),
                // Retried on the next wake until it is done.
                Poll::Pending => {}
            }
        }
        Poll::Pending
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
            // A silent client's flush wakes the connection too (the mover does it).
            let flush_at = silent_flush_at.get();
            let wake_at = match (at, flush_at.filter(|f| *f > now)) {
                (Some(a), Some(f)) => Some(a.min(f)),
                (a, f) => a.or(f),
            };
            let mut timer = std::pin::pin!(async {
                match wake_at {
                    Some(at) => fastedge_runtime::sleep(at - now).await,
                    None => std::future::pending().await,
                }
            });
            // Polled on every wake of the connection: a request head that began since may
            // bring the deadline forward, and the mover may have armed or done its flush.
            std::future::poll_fn(|cx| {
                let earlier = deadline().is_some_and(|(next, _)| at.is_none_or(|at| next < at));
                if earlier || silent_flush_at.get() != flush_at {
                    return Poll::Ready(());
                }
                if flush_at.is_some_and(|f| f <= now) {
                    // Due but not done: the mover does it when next polled.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                std::future::Future::poll(timer.as_mut(), cx)
            })
            .await;
        }
    };
    // Both polled in place (not as `async` blocks awaiting them, which would store each twice):
    // this state lives as long as the connection.
    let mut moving = std::pin::pin!(moving);
    let mut watchdog = std::pin::pin!(watchdog);
    let result = std::future::poll_fn(|cx| {
        if let Poll::Ready(moved) = std::future::Future::poll(moving.as_mut(), cx) {
            return Poll::Ready(Ok(moved));
        }
        std::future::Future::poll(watchdog.as_mut(), cx).map(Err)
    })
    .await;
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

#[cfg(test)]
mod tests {

    use fastedge_wire::forwarded::{ClientFacts, ForwardedConfig};
    use futures_lite::future::block_on;

    use super::*;

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

    #[test]
    fn an_idle_connection_ends_at_the_idle_timeout() {
        let (reason, took, written) = on_engine(|| async {
            let mut client = Peer::sending(b"one", 64).held_open();
            let mut backend = Peer::default().held_open();
            let started = Instant::now();
            let options = PumpOptions {
                idle_timeout: Some(Duration::from_millis(50)),
                ..half_open()
            };
            let outcome = pump(&mut client, &mut backend, options).await;
            (
                outcome.reason.to_string(),
                started.elapsed(),
                backend.written,
            )
        });
        assert_eq!(reason, "idle for 0.05 s");
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert_eq!(written, b"one");
    }
}
