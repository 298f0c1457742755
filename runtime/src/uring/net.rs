//! Sockets of the io_uring engine: a listener with multishot accept, and streams that receive
//! with multishot receive into the core's buffer pool and queue their output for the turn's
//! single submission.

use std::{
    cell::RefCell,
    collections::VecDeque,
    io,
    mem::ManuallyDrop,
    net::SocketAddr,
    num::NonZeroI32,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    path::Path,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, Waker},
    time::Duration,
};

use futures_io::{AsyncRead, AsyncWrite};
use io_uring::{opcode, squeue, types};
use socket2::{Domain, SockAddr, SockRef, Socket, Type};

use super::{
    reactor::{self, Keep, Op, SendNext},
    sys, with_reactor, Deferred,
};

/// Receive buffers' worth of bytes one connection may hold unread before its multishot
/// receive is paused: a slow reader costs at most this much (pool buffers, or heap once
/// spilled), and the rest waits in the kernel's socket buffer.
const RX_MAX_QUEUED: usize = 8;
/// Most bytes one multishot receive takes before it ends (re-armed once they are read): a
/// fast sender cannot take more of the pool than a slow reader may hold, however many
/// completions arrive before a cancel would.
const RX_ARM_LIMIT: u32 = (RX_MAX_QUEUED * reactor::BUF_SIZE) as u32;

/// The error a send that outlived its connection's linger is failed with.
const TIMED_OUT: NonZeroI32 = NonZeroI32::new(libc::ETIMEDOUT).expect("ETIMEDOUT is not 0");

thread_local! {
    /// Whether this kernel caps a multishot receive's total (Linux 6.16); set false the first
    /// time one refuses the cap.
    static RECV_LIMIT: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Whether this thread's receives are capped in total (and so may take bundles).
#[cfg(test)]
pub(crate) fn receives_capped() -> bool {
    RECV_LIMIT.with(std::cell::Cell::get)
}

/// Output bytes a connection may queue (beside what the kernel is sending) before writers
/// wait: a proxy's pump buffer fits, and a stalled peer costs at most twice this.
const TX_MAX_QUEUED: usize = 32 * 1024;
/// Output buffers a core keeps for reuse once their send completed, so a keep-alive exchange
/// does not allocate and free one per response (at most this many × [`TX_MAX_QUEUED`] bytes
/// per core; an idle connection still holds none).
const TX_POOL_KEEP: usize = 64;

thread_local! {
    /// This core's spare output buffers (empty, with capacity).
    static TX_POOL: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty output buffer of at least `capacity` bytes: a spare of this core's, or a new one.
pub(crate) fn tx_buffer(capacity: usize) -> Vec<u8> {
    TX_POOL
        .try_with(|pool| {
            let mut pool = pool.borrow_mut();
            let at = pool.iter().rposition(|b| b.capacity() >= capacity)?;
            Some(pool.swap_remove(at))
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| Vec::with_capacity(capacity))
}

/// Gives an output buffer the kernel has finished with back to this core's spares.
pub(crate) fn tx_return(mut buffer: Vec<u8>) {
    if buffer.capacity() == 0 || buffer.capacity() > TX_MAX_QUEUED {
        return;
    }
    buffer.clear();
    // `try_with`: a connection dropped while the thread's locals are torn down frees it.
    let _ = TX_POOL.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < TX_POOL_KEEP {
            pool.push(buffer);
        }
    });
}
/// Accepted sockets a listener may hold before its multishot accept is paused.
const ACCEPT_MAX_QUEUED: usize = 64;
/// How long a dropped stream's queued output may take to leave.
const LINGER: Duration = Duration::from_secs(10);

/// State of a multishot operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Multishot {
    Idle,
    Armed(u64),
    /// Cancel asked; the final completion is still to come.
    Pausing(u64),
}

/// A listener's accept side.
#[derive(Debug)]
pub(crate) struct ListenerState {
    fd: OwnedFd,
    accepted: VecDeque<io::Result<OwnedFd>>,
    state: Multishot,
    waker: Option<Waker>,
    dropped: bool,
    /// [`TcpListener::stop`] was called: the accept is not armed again.
    stopped: bool,
}

impl ListenerState {
    pub(crate) fn on_accept(&mut self, result: i32, more: bool) -> Option<Waker> {
        if !more {
            self.state = Multishot::Idle;
        }
        if result >= 0 {
            let fd = reactor::owned_fd(result);
            if !self.dropped {
                self.accepted.push_back(Ok(fd));
            }
        } else if result != -libc::ECANCELED {
            self.accepted
                .push_back(Err(io::Error::from_raw_os_error(-result)));
        }
        self.waker.take()
    }

    pub(crate) fn wants_pause(&mut self) -> bool {
        match self.state {
            Multishot::Armed(user_data)
                if self.dropped || self.accepted.len() >= ACCEPT_MAX_QUEUED =>
            {
                self.state = Multishot::Pausing(user_data);
                true
            }
            _ => false,
        }
    }
}

/// A TCP listener of the io_uring engine.
#[derive(Debug)]
pub struct TcpListener {
    state: Rc<RefCell<ListenerState>>,
}

impl TcpListener {
    /// Takes over a bound, listening socket.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        sys::set_blocking(fd.as_raw_fd())?;
        Ok(Self {
            state: Rc::new(RefCell::new(ListenerState {
                fd,
                accepted: VecDeque::new(),
                state: Multishot::Idle,
                waker: None,
                dropped: false,
                stopped: false,
            })),
        })
    }

    /// Its descriptor, valid while the listener lives.
    pub fn raw_fd(&self) -> RawFd {
        self.state.borrow().fd.as_raw_fd()
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        let state = self.state.borrow();
        socket_addr(SockRef::from(&state.fd).local_addr()?)
    }

    /// Waits for the next connection.
    pub async fn accept(&self) -> io::Result<TcpStream> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<TcpStream>> {
        let mut state = self.state.borrow_mut();
        if let Some(accepted) = state.accepted.pop_front() {
            return Poll::Ready(accepted.map(TcpStream::from_fd));
        }
        if state.stopped {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the listener stopped accepting",
            )));
        }
        if state.state == Multishot::Idle {
            let entry = reactor::accept_multishot(state.fd.as_raw_fd());
            let op = Op::Accept(self.state.clone());
            state.state = Multishot::Armed(with_reactor(|r| r.start(entry, op)));
        }
        match &state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Stops accepting and hands over every connection accepted and not taken yet, including
    /// those the kernel accepts until it has cancelled the multishot accept: the future waits
    /// for that cancellation's last completion. Dropping a listener instead closes them, which
    /// loses clients the kernel had completed; on a socket another process also accepts on (a
    /// binary upgrade) those would have been served there. Afterwards `accept` fails
    /// (`NotConnected`); the socket itself stays open and listening until the listener is
    /// dropped or closed. Accept errors queued meanwhile are left out.
    pub async fn stop(&self) -> Vec<TcpStream> {
        std::future::poll_fn(|cx| {
            let mut state = self.state.borrow_mut();
            state.stopped = true;
            match state.state {
                Multishot::Idle => {
                    let accepted = std::mem::take(&mut state.accepted);
                    return Poll::Ready(
                        accepted
                            .into_iter()
                            .filter_map(Result::ok)
                            .map(TcpStream::from_fd)
                            .collect(),
                    );
                }
                Multishot::Armed(user_data) => {
                    state.state = Multishot::Pausing(user_data);
                    super::defer(Deferred::Cancel(user_data));
                }
                Multishot::Pausing(_) => {}
            }
            match &state.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => {
                    // An `accept` waiting in another task is woken to see the stop (it fails)
                    // rather than left behind by the one waker this listener keeps.
                    if let Some(accepting) = state.waker.replace(cx.waker().clone()) {
                        accepting.wake();
                    }
                }
            }
            Poll::Pending
        })
        .await
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        let mut state = self.state.borrow_mut();
        state.dropped = true;
        state.waker = None;
        state.accepted.clear();
        if let Multishot::Armed(user_data) = state.state {
            state.state = Multishot::Pausing(user_data);
            super::defer(Deferred::Cancel(user_data));
        }
    }
}

/// Received bytes copied out of the pool (see [`Conn::relieve`]); `read` of them are read.
#[derive(Debug, Default)]
struct Spill {
    bytes: Vec<u8>,
    read: usize,
}

/// Received pool buffers not read yet, oldest first, as (buffer id, length), and how much of the
/// first is read. The first is kept inline: a connection rarely has more than one waiting, and a
/// `VecDeque` keeps its allocation once it held anything, which an idle connection would carry.
#[derive(Debug, Default)]
struct RxQueue {
    first: Option<(u16, u32)>,
    /// Bytes of `first` already read.
    offset: u32,
    /// The buffers after `first`; its allocation is freed when it empties.
    more: VecDeque<(u16, u32)>,
}

impl RxQueue {
    fn push(&mut self, buffer: (u16, u32)) {
        if self.first.is_none() {
            self.first = Some(buffer);
        } else {
            self.more.push_back(buffer);
        }
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.more.len()
    }

    /// Unread bytes in the queued buffers.
    fn unread(&self) -> usize {
        let queued: usize = self
            .first
            .iter()
            .chain(&self.more)
            .map(|&(_, len)| len as usize)
            .sum();
        queued.saturating_sub(self.offset as usize)
    }

    /// The first buffer: its id, its length and how much of it is read.
    fn front(&self) -> Option<(u16, usize, usize)> {
        let (bid, len) = self.first?;
        Some((bid, len as usize, self.offset as usize))
    }

    /// `n` more bytes of the first buffer are read; when it is all read it leaves the queue
    /// and its id is returned (to give the buffer back).
    fn consume(&mut self, n: usize) -> Option<u16> {
        let (bid, len) = self.first?;
        let offset = (self.offset as usize).saturating_add(n);
        if offset < len as usize {
            self.offset = offset as u32;
            return None;
        }
        self.offset = 0;
        self.first = self.more.pop_front();
        if self.more.is_empty() && self.more.capacity() > 0 {
            self.more = VecDeque::new();
        }
        Some(bid)
    }

    /// Empties the queue: each buffer (id, length) with how much of it was read.
    fn drain(&mut self) -> impl Iterator<Item = (u16, usize, usize)> {
        let offset = std::mem::take(&mut self.offset) as usize;
        let first = self
            .first
            .take()
            .map(|(bid, len)| (bid, len as usize, offset));
        let more = std::mem::take(&mut self.more);
        first
            .into_iter()
            .chain(more.into_iter().map(|(bid, len)| (bid, len as usize, 0)))
    }
}

/// One connection's state, shared by its stream and its operations in flight.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Closed through the ring when the connection's last reference goes (see `Drop`).
    fd: ManuallyDrop<OwnedFd>,
    /// Received bytes not read yet that were copied out of the pool when it ran low; they
    /// come before everything in `rx`. Boxed: few connections ever have any.
    rx_spilled: Option<Box<Spill>>,
    /// Received buffers not read yet.
    rx: RxQueue,
    /// On the reactor's list of connections holding pool buffers.
    pub(crate) rx_listed: bool,
    /// The armed receive carries the total cap ([`RX_ARM_LIMIT`]).
    rx_limited: bool,
    rx_state: Multishot,
    /// End of the receive side: `Ok` for end of stream, or the error.
    rx_end: Option<Result<(), io::ErrorKind>>,
    rx_error: Option<NonZeroI32>,
    rx_waker: Option<Waker>,
    rx_starved: bool,
    /// Output queued since the last send started.
    tx_queue: Vec<u8>,
    /// Output the kernel is sending; `tx_sent` of it is gone.
    tx_inflight: Vec<u8>,
    tx_sent: u32,
    tx_busy: bool,
    tx_dirty: bool,
    tx_error: Option<NonZeroI32>,
    tx_waker: Option<Waker>,
    /// The send in flight (to cancel it when a lingering drop gives up).
    pub(crate) tx_op: Option<u64>,
    dropped: bool,
}

impl Conn {
    fn new(fd: OwnedFd) -> Self {
        Self {
            fd: ManuallyDrop::new(fd),
            rx_spilled: None,
            rx: RxQueue::default(),
            rx_listed: false,
            rx_limited: false,
            rx_state: Multishot::Idle,
            rx_end: None,
            rx_error: None,
            rx_waker: None,
            rx_starved: false,
            tx_queue: Vec::new(),
            tx_inflight: Vec::new(),
            tx_sent: 0,
            tx_busy: false,
            tx_dirty: false,
            tx_error: None,
            tx_waker: None,
            tx_op: None,
            dropped: false,
        }
    }

    /// A receive completion: `result` bytes in `buffers` (id, bytes in it), or an error or
    /// the end. Returns the reader's waker, whether the buffers go back to the pool unread,
    /// and whether to pause the receive.
    pub(crate) fn on_recv(
        &mut self,
        result: i32,
        buffers: &[(u16, u32)],
        more: bool,
    ) -> (Option<Waker>, bool, bool) {
        if !more {
            self.rx_state = Multishot::Idle;
        }
        let mut give_back = !buffers.is_empty();
        if result > 0 {
            // A dropped stream's bytes go back to the pool.
            if !self.dropped {
                for &buffer in buffers {
                    self.rx.push(buffer);
                }
                give_back = false;
            }
        } else {
            match result {
                0 => self.rx_end = Some(Ok(())),
                e if e == -libc::ENOBUFS || e == -libc::ECANCELED => {}
                e if e == -libc::EINVAL && self.rx_limited => {
                    // A kernel before 6.16 refuses the total cap: arm without it from now on.
                    if RECV_LIMIT.with(|l| l.replace(false)) {
                        tracing::info!(
                            "io_uring: multishot receive without a total cap (needs Linux 6.16), \
                             so one buffer per receive; readers that fall behind rely on \
                             cancelling their receive"
                        );
                    }
                }
                e => {
                    self.rx_end = Some(Err(io::Error::from_raw_os_error(-e).kind()));
                    self.rx_error = NonZeroI32::new(-e);
                }
            }
        }
        let pause = match self.rx_state {
            Multishot::Armed(user_data) if self.dropped || self.queued_input() >= RX_MAX_QUEUED => {
                self.rx_state = Multishot::Pausing(user_data);
                true
            }
            _ => false,
        };
        (self.rx_waker.take(), give_back, pause)
    }

    /// Unread input in bytes (pool buffers and spilled copies).
    fn unread_bytes(&self) -> usize {
        self.rx.unread() + self.spilled_unread()
    }

    /// Unread input, in receive buffers' worth.
    fn queued_input(&self) -> usize {
        self.rx.len() + self.spilled_unread().div_ceil(reactor::BUF_SIZE)
    }

    /// Spilled bytes not read yet.
    fn spilled_unread(&self) -> usize {
        self.rx_spilled
            .as_ref()
            .map_or(0, |spill| spill.bytes.len() - spill.read)
    }

    /// Whether unread bytes sit in pool buffers.
    pub(crate) fn holds_buffers(&self) -> bool {
        !self.rx.is_empty()
    }

    /// Gives back the pool buffers of a stream that is gone; when the pool runs `low`, copies
    /// the unread bytes out of the pool buffers into the connection's own memory and gives the
    /// buffers back (readers that fall behind must not starve the core's other connections).
    pub(crate) fn relieve(&mut self, low: bool, bufs: &mut reactor::BufPool) {
        if !self.dropped && !low {
            return;
        }
        if self.dropped {
            for (bid, _, _) in self.rx.drain() {
                bufs.give_back(bid);
            }
            return;
        }
        if self.rx.is_empty() {
            return;
        }
        let spill = self.rx_spilled.get_or_insert_with(Box::default);
        spill.bytes.drain(..spill.read);
        spill.read = 0;
        spill.bytes.reserve(self.rx.unread());
        for (bid, len, read) in self.rx.drain() {
            let data = bufs.buffer(bid, len);
            spill
                .bytes
                .extend_from_slice(data.get(read..).unwrap_or_default());
            bufs.give_back(bid);
        }
    }

    /// The receive ran out of buffers: unless the stream is gone or the reader is already
    /// listed, it waits on the starved list (its reader, woken now, must not re-arm before
    /// buffers are back).
    pub(crate) fn starve(&mut self) -> bool {
        if self.dropped || self.rx_starved {
            return false;
        }
        self.rx_starved = true;
        true
    }

    /// Buffers are back: the starved reader may re-arm.
    pub(crate) fn rx_starved_done(&mut self) -> Option<Waker> {
        self.rx_starved = false;
        self.rx_waker.take()
    }

    /// Takes the queued output into flight; the send entry for it.
    pub(crate) fn start_send(&mut self) -> Option<squeue::Entry> {
        self.tx_dirty = false;
        if self.tx_busy || self.tx_queue.is_empty() || self.tx_error.is_some() {
            return None;
        }
        std::mem::swap(&mut self.tx_queue, &mut self.tx_inflight);
        self.tx_sent = 0;
        self.tx_busy = true;
        Some(self.send_rest())
    }

    fn send_rest(&self) -> squeue::Entry {
        let rest = &self.tx_inflight[self.tx_sent as usize..];
        let len = rest.len().min(u32::MAX as usize) as u32;
        reactor::send(self.fd.as_raw_fd(), rest.as_ptr(), len)
    }

    /// A send completion: `(writer to wake, what follows)`.
    pub(crate) fn on_send(&mut self, result: i32) -> (Option<Waker>, SendNext) {
        self.tx_op = None;
        let next = if result < 0 {
            self.tx_error = NonZeroI32::new(-result);
            self.tx_busy = false;
            self.tx_inflight.clear();
            self.tx_sent = 0;
            self.tx_queue = Vec::new();
            SendNext::Idle
        } else {
            // A send takes at most the rest of `tx_inflight`, which is below TX_MAX_QUEUED.
            self.tx_sent = self.tx_sent.saturating_add(result.unsigned_abs());
            if (self.tx_sent as usize) < self.tx_inflight.len() {
                SendNext::Continue(self.send_rest())
            } else {
                self.tx_busy = false;
                // Debug builds poison what the kernel has finished with: a send that still
                // used it would deliver poison (the engine tests check every byte).
                #[cfg(debug_assertions)]
                self.tx_inflight.fill(reactor::POISON);
                // Back to the core's spares, not kept: an idle connection holds no output
                // buffer (the next write takes one, and the swap in `start_send` hands it over).
                tx_return(std::mem::take(&mut self.tx_inflight));
                self.tx_sent = 0;
                if self.tx_queue.is_empty() {
                    SendNext::Idle
                } else {
                    self.tx_dirty = true;
                    SendNext::Queued
                }
            }
        };
        (self.tx_waker.take(), next)
    }

    fn queued_output(&self) -> usize {
        (self.tx_queue.len() + self.tx_inflight.len()).saturating_sub(self.tx_sent as usize)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        {
            self.tx_inflight.fill(reactor::POISON);
            self.tx_queue.fill(reactor::POISON);
        }
        // Buffers still unread go back to the pool.
        #[cfg(debug_assertions)]
        if let Some(spill) = &mut self.rx_spilled {
            spill.bytes.fill(reactor::POISON);
        }
        for (bid, _, _) in self.rx.drain() {
            super::defer(Deferred::GiveBack(bid));
        }
        // SAFETY: `fd` is taken once, here, and the connection is gone after this drop.
        let fd = unsafe { ManuallyDrop::take(&mut self.fd) };
        // Closed with the turn's submission; no operation names it any more (each holds the
        // connection, which is why this drop runs). After the engine stopped (or if the
        // action cannot be queued), dropping the descriptor closes it at once.
        if super::is_engine_thread() {
            super::defer(Deferred::Close(fd));
        }
    }
}

/// A connected stream socket (TCP or UNIX) of the io_uring engine.
#[derive(Debug)]
pub struct Stream {
    conn: Rc<RefCell<Conn>>,
    /// A second handle made by a test: dropping it leaves the connection to the first.
    #[cfg(test)]
    second_handle: bool,
}

/// A TCP connection of the io_uring engine.
pub type TcpStream = Stream;
/// A UNIX stream connection of the io_uring engine.
pub type UnixStream = Stream;

impl Stream {
    fn from_fd(fd: OwnedFd) -> Self {
        Self {
            conn: Rc::new(RefCell::new(Conn::new(fd))),
            #[cfg(test)]
            second_handle: false,
        }
    }

    /// A second handle on the same connection, so a test can read and write from two tasks;
    /// dropping it does nothing (the first handle's drop ends the connection).
    #[cfg(test)]
    pub(crate) fn clone_for_test(&self) -> Self {
        Self {
            conn: self.conn.clone(),
            second_handle: true,
        }
    }

    /// Connects a TCP socket to `addr` through the ring.
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
        Self::connect_socket(socket, SockAddr::from(addr)).await
    }

    /// Connects a UNIX stream socket to `path` through the ring.
    pub async fn connect_unix(path: &Path) -> io::Result<Self> {
        let socket = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
        Self::connect_socket(socket, SockAddr::unix(path)?).await
    }

    async fn connect_socket(socket: Socket, addr: SockAddr) -> io::Result<Self> {
        let addr = Box::new(addr);
        let entry = opcode::Connect::new(
            types::Fd(socket.as_raw_fd()),
            addr.as_ptr().cast(),
            addr.len(),
        )
        .build();
        // The slot owns the socket until the completion: a future dropped before the entry was
        // submitted must not close a descriptor number the entry still names.
        let (result, keep) = Oneshot::start(entry, Keep::Connect(addr, socket.into())).await;
        if result < 0 {
            return Err(io::Error::from_raw_os_error(-result));
        }
        match keep {
            Keep::Connect(_, fd) => Ok(Self::from_fd(fd)),
            _ => Err(io::Error::other("connect completed without its socket")),
        }
    }

    /// The remote end's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        socket_addr(SockRef::from(&*self.conn.borrow().fd).peer_addr()?)
    }

    /// Our end's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        socket_addr(SockRef::from(&*self.conn.borrow().fd).local_addr()?)
    }

    /// Turns Nagle's algorithm off (`on = true`: TCP_NODELAY) or on.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        SockRef::from(&*self.conn.borrow().fd).set_nodelay(on)
    }

    /// Bytes of memory holding this stream's unread input (pool buffers and spilled copies).
    #[cfg(test)]
    pub(crate) fn unread_held(&self) -> usize {
        let conn = self.conn.borrow();
        conn.rx_spilled.as_ref().map_or(0, |s| s.bytes.capacity())
            + conn.rx.len() * reactor::BUF_SIZE
    }

    /// Whether the engine holds nothing received from this connection: no unread bytes, no
    /// end of stream and no error taken from the kernel yet.
    pub fn nothing_received(&self) -> bool {
        let conn = self.conn.borrow();
        conn.rx_spilled.is_none()
            && conn.rx.is_empty()
            && conn.rx_end.is_none()
            && conn.rx_error.is_none()
    }

    /// The descriptor (for socket options).
    pub fn raw_fd(&self) -> RawFd {
        self.conn.borrow().fd.as_raw_fd()
    }

    /// Copies received bytes into `buf`; arms the receive when nothing is queued.
    fn read_into(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut conn = self.conn.borrow_mut();
        let conn = &mut *conn;
        // Never an empty spill answered as `Ok(0)` (the end of the stream): one with nothing
        // left unread is dropped and the pool's buffers come next.
        if conn
            .rx_spilled
            .as_ref()
            .is_some_and(|spill| spill.read >= spill.bytes.len())
        {
            conn.rx_spilled = None;
        }
        if let Some(spill) = &mut conn.rx_spilled {
            let spilled = &spill.bytes[spill.read..];
            let n = spilled.len().min(buf.len());
            buf[..n].copy_from_slice(&spilled[..n]);
            spill.read += n;
            if spill.read == spill.bytes.len() {
                // All read: an idle connection holds no memory for input.
                conn.rx_spilled = None;
            }
            self.rearm_early(conn);
            return Poll::Ready(Ok(n));
        }
        if !conn.rx.is_empty() {
            let copied = with_reactor(|r| {
                let mut copied = 0;
                while copied < buf.len() {
                    let Some((bid, len, read)) = conn.rx.front() else {
                        break;
                    };
                    let data = r.bufs.buffer(bid, len).get(read..).unwrap_or_default();
                    let n = data.len().min(buf.len() - copied);
                    buf[copied..copied + n].copy_from_slice(&data[..n]);
                    copied += n;
                    if let Some(bid) = conn.rx.consume(n) {
                        r.bufs.give_back(bid);
                    }
                }
                copied
            });
            self.rearm_early(conn);
            return Poll::Ready(Ok(copied));
        }
        if let Some(end) = conn.rx_end {
            return Poll::Ready(match end {
                Ok(()) => Ok(0),
                Err(_) => Err(io::Error::from_raw_os_error(
                    conn.rx_error.map_or(libc::EIO, NonZeroI32::get),
                )),
            });
        }
        match &conn.rx_waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => conn.rx_waker = Some(cx.waker().clone()),
        }
        if conn.rx_state == Multishot::Idle && !conn.rx_starved {
            self.arm_receive(conn, RX_ARM_LIMIT);
        }
        Poll::Pending
    }

    /// Arms the multishot receive (capped at `cap` bytes where the kernel can), or puts the
    /// reader on the starved list when the pool is empty.
    fn arm_receive(&self, conn: &mut Conn, cap: u32) {
        let fd = conn.fd.as_raw_fd();
        let op = Op::Recv(self.conn.clone());
        with_reactor(|r| {
            if r.bufs.available() == 0 {
                conn.rx_starved = true;
                r.starved.push(self.conn.clone());
            } else {
                let limited = RECV_LIMIT.with(std::cell::Cell::get);
                conn.rx_limited = limited;
                let entry = reactor::recv_multishot(fd, limited.then_some(cap), r.bundles);
                conn.rx_state = Multishot::Armed(r.start(entry, op));
            }
        });
    }

    /// A receive that ended at its cap is armed again once the reader is half way through
    /// what it holds, for what is left of the cap: the kernel goes on receiving while the
    /// reader works (waiting for the last byte to be read first cost a fifth more CPU per
    /// byte on a bulk transfer), and the connection never holds more than the cap.
    fn rearm_early(&self, conn: &mut Conn) {
        if conn.rx_state != Multishot::Idle
            || conn.rx_starved
            || conn.rx_end.is_some()
            || conn.dropped
            || !RECV_LIMIT.with(std::cell::Cell::get)
        {
            return;
        }
        let unread = conn.unread_bytes();
        if unread <= RX_ARM_LIMIT as usize / 2 {
            self.arm_receive(conn, RX_ARM_LIMIT - unread as u32);
        }
    }

    fn write_from(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut conn = self.conn.borrow_mut();
        if let Some(errno) = conn.tx_error {
            return Poll::Ready(Err(io::Error::from_raw_os_error(errno.get())));
        }
        let room = TX_MAX_QUEUED.saturating_sub(conn.queued_output());
        if room == 0 {
            conn.tx_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(room);
        let needed = conn.tx_queue.len() + n;
        if conn.tx_queue.capacity() == 0 {
            conn.tx_queue = tx_buffer(needed.next_power_of_two().clamp(4096, TX_MAX_QUEUED));
        }
        if needed > conn.tx_queue.capacity() {
            // Grow by powers of two, never past the bound (a Vec left to itself doubles).
            let target = needed
                .next_power_of_two()
                .clamp(4096, TX_MAX_QUEUED)
                .max(needed);
            let len = conn.tx_queue.len();
            conn.tx_queue.reserve_exact(target - len);
        }
        conn.tx_queue.extend_from_slice(&buf[..n]);
        if !conn.tx_dirty && !conn.tx_busy {
            conn.tx_dirty = true;
            drop(conn);
            with_reactor(|r| r.dirty.push(self.conn.clone()));
        }
        Poll::Ready(Ok(n))
    }

    fn flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut conn = self.conn.borrow_mut();
        if let Some(errno) = conn.tx_error {
            return Poll::Ready(Err(io::Error::from_raw_os_error(errno.get())));
        }
        if conn.queued_output() == 0 {
            return Poll::Ready(Ok(()));
        }
        conn.tx_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.read_into(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_from(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.flush(cx)
    }

    /// Sends what is queued, then shuts the sending side (a FIN). A system call, not a ring
    /// operation: the kernel runs every `IORING_OP_SHUTDOWN` on an io-wq worker thread, which
    /// measured at 2.7 context switches per connection (against 1.1) and 6 % fewer full
    /// handshakes per CPU-second.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.flush(cx))?;
        let conn = self.conn.borrow();
        match SockRef::from(&*conn.fd).shutdown(std::net::Shutdown::Write) {
            Err(e) if e.raw_os_error() != Some(libc::ENOTCONN) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        #[cfg(test)]
        if self.second_handle {
            return;
        }
        let mut conn = self.conn.borrow_mut();
        conn.dropped = true;
        conn.rx_waker = None;
        conn.tx_waker = None;
        if let Multishot::Armed(user_data) = conn.rx_state {
            conn.rx_state = Multishot::Pausing(user_data);
            super::defer(Deferred::Cancel(user_data));
        }
        if conn.queued_output() > 0 && conn.tx_error.is_none() {
            // Output accepted by `poll_write` still leaves, within a bound.
            drop(conn);
            let lingering = Self {
                conn: self.conn.clone(),
                #[cfg(test)]
                second_handle: false,
            };
            super::spawn_detached_internal(async move {
                let flushed = std::future::poll_fn(|cx| lingering.flush(cx));
                let gave_up = super::time::timeout(LINGER, flushed).await.is_err();
                // Dropped with no output left (or given up): nothing lingers again.
                let mut conn = lingering.conn.borrow_mut();
                conn.tx_queue = Vec::new();
                conn.tx_error.get_or_insert(TIMED_OUT);
                if gave_up {
                    // A peer that reads nothing must not keep the socket (and the send's
                    // buffer) alive: cancel the send and shut the connection.
                    if let Some(user_data) = conn.tx_op {
                        super::defer(Deferred::Cancel(user_data));
                    }
                    let _ = SockRef::from(&*conn.fd).shutdown(std::net::Shutdown::Both);
                }
            });
        }
    }
}

/// A one-shot operation in flight; its slot owns what the kernel may touch.
struct Oneshot {
    user_data: Option<u64>,
}

impl Oneshot {
    fn start(entry: squeue::Entry, keep: Keep) -> Self {
        let op = Op::Oneshot(Box::new(reactor::OneshotOp {
            result: None,
            waker: None,
            keep,
            abandoned: false,
        }));
        Self {
            user_data: Some(with_reactor(|r| r.start(entry, op))),
        }
    }
}

impl std::future::Future for Oneshot {
    type Output = (i32, Keep);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(i32, Keep)> {
        let Some(user_data) = self.user_data else {
            return Poll::Ready((-libc::ECANCELED, Keep::Nothing));
        };
        match with_reactor(|r| r.poll_oneshot(user_data, cx.waker())) {
            Some(result) => {
                self.user_data = None;
                Poll::Ready(result)
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for Oneshot {
    fn drop(&mut self) {
        if let Some(user_data) = self.user_data.take() {
            super::defer(Deferred::Abandon(user_data));
        }
    }
}

fn socket_addr(addr: SockAddr) -> io::Result<SocketAddr> {
    addr.as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))
}

#[cfg(test)]
mod rx_queue_tests {
    use super::{Conn, RxQueue};

    #[test]
    fn buffers_come_out_in_order_and_an_emptied_queue_holds_no_memory() {
        let mut queue = RxQueue::default();
        queue.push((1, 100));
        queue.push((2, 50));
        queue.push((3, 10));
        assert_eq!((queue.len(), queue.unread()), (3, 160));
        assert_eq!(queue.consume(40), None);
        assert_eq!(queue.front(), Some((1, 100, 40)));
        assert_eq!(queue.unread(), 120);
        assert_eq!(queue.consume(60), Some(1));
        assert_eq!(queue.front(), Some((2, 50, 0)));
        assert_eq!(queue.consume(50), Some(2));
        assert_eq!(queue.consume(10), Some(3));
        assert!(queue.is_empty() && queue.front().is_none());
        assert_eq!(queue.more.capacity(), 0);
        // One buffer at a time (the usual case) never allocates.
        queue.push((4, 8));
        assert_eq!(queue.more.capacity(), 0);
        assert_eq!(queue.consume(8), Some(4));
    }

    #[test]
    fn a_drain_says_how_much_of_the_first_buffer_was_read() {
        let mut queue = RxQueue::default();
        queue.push((1, 100));
        queue.push((2, 50));
        queue.consume(30);
        let drained: Vec<_> = queue.drain().collect();
        assert_eq!(drained, [(1, 100, 30), (2, 50, 0)]);
        assert!(queue.is_empty() && queue.unread() == 0);
        assert_eq!(queue.more.capacity(), 0);
    }

    /// Two per connection, each for the connection's whole life.
    #[test]
    fn a_connection_state_stays_within_192_bytes() {
        assert!(
            std::mem::size_of::<Conn>() <= 192,
            "{}",
            std::mem::size_of::<Conn>()
        );
    }
}
