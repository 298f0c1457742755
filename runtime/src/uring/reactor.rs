//! One core's io_uring: the ring, the table of operations in flight, the provided-buffer pool
//! and the connections with output waiting for this turn's submission.
//!
//! Ownership rule (the Rust trap with io_uring): whatever the kernel may read or write for an
//! operation — a send buffer, a socket address, the wake-up counter — is owned by the
//! operation's slot here until its completion arrives, never by the future that asked for it.
//! A dropped future only marks its slot abandoned and asks the kernel to cancel.

use std::{
    cell::RefCell,
    collections::VecDeque,
    io,
    os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd},
    rc::Rc,
    sync::atomic::{AtomicU16, Ordering},
    task::Waker,
    time::Duration,
};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::{
    net::{Conn, ListenerState},
    sys::{anonymous_mapping, RingHandle},
};

/// Size of one provided receive buffer: a whole TLS record's payload.
pub(crate) const BUF_SIZE: usize = 16 * 1024;
/// Buffer group id of the per-core receive pool.
const BGID: u16 = 0;
/// What debug builds fill released buffers with.
#[cfg(debug_assertions)]
pub(crate) const POISON: u8 = 0xa5;
/// `user_data` of cancellations: their results are only checked for the unexpected.
const CANCEL: u64 = u64::MAX;
/// `user_data` of descriptor closes: no slot, counted in `closing`.
const CLOSE: u64 = u64::MAX - 1;

/// Settings of one core's ring.
#[derive(Debug, Clone, Copy)]
pub struct RingSettings {
    /// Submission queue entries (power of two).
    pub sq_entries: u32,
    /// Completion queue entries (power of two, ≥ `sq_entries`); the kernel keeps overflowing
    /// completions aside rather than dropping them.
    pub cq_entries: u32,
    /// Receive buffers of 16 KiB in the core's pool (power of two, ≤ 32,768).
    pub buffers: u16,
}

impl Default for RingSettings {
    fn default() -> Self {
        Self {
            sq_entries: 1024,
            cq_entries: 16 * 1024,
            buffers: 256,
        }
    }
}

/// How the ring was set up, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskRun {
    /// `SINGLE_ISSUER | DEFER_TASKRUN` (Linux 6.1): completion work runs only when we enter.
    Deferred,
    /// `COOP_TASKRUN | TASKRUN_FLAG` (Linux 5.19): no interrupt, the SQ flag says "enter".
    Cooperative,
}

/// What an operation in flight is for.
pub(crate) enum Op {
    /// A one-shot operation a future awaits (a connect). Boxed: the other kinds are one
    /// pointer, and every slot is as large as the largest kind (a connection's two receives
    /// hold two slots for its whole life).
    Oneshot(Box<OneshotOp>),
    /// A multishot accept of a listener.
    Accept(Rc<RefCell<ListenerState>>),
    /// A multishot receive of a connection.
    Recv(Rc<RefCell<Conn>>),
    /// A send of a connection's in-flight output.
    Send(Rc<RefCell<Conn>>),
    /// The read of the wake-up eventfd.
    Wake(Box<u64>),
}

/// A one-shot operation's state; `keep` is what the kernel may still touch.
pub(crate) struct OneshotOp {
    pub(crate) result: Option<i32>,
    pub(crate) waker: Option<Waker>,
    #[allow(dead_code)] // owned so the kernel's memory outlives the operation
    pub(crate) keep: Keep,
    pub(crate) abandoned: bool,
}

/// Memory an operation's kernel side may use until its completion.
#[allow(dead_code)] // held only to be dropped after the completion
pub(crate) enum Keep {
    Nothing,
    /// A connect's address and socket (handed back to the future on completion).
    Connect(Box<socket2::SockAddr>, OwnedFd),
}

struct Slot {
    generation: u32,
    op: Option<Op>,
}

/// The per-core pool of receive buffers, shared with the kernel through a buffer ring.
pub(crate) struct BufPool {
    ring: memmap2::MmapRaw,
    data: memmap2::MmapRaw,
    entries: u16,
    /// Our copy of the ring's tail; published to the kernel once per turn.
    tail: u16,
    published: u16,
    /// Buffers the kernel handed us that are not back in the ring yet.
    pub(crate) held: u16,
    /// The buffer id written at each ring entry, and each buffer's entry: a bundle's
    /// completion names its first buffer only, and the rest are the entries after it.
    bid_at: Box<[u16]>,
    entry_of: Box<[u16]>,
    /// While set, buffers given back wait in `deferred` instead of going into the ring: a
    /// give-back rewrites the oldest entry the ring does not hold, which a completion not
    /// handled yet may name (one the kernel holds aside in its overflow list, or one behind
    /// the completion at hand in the queue being reaped).
    defer: bool,
    deferred: Vec<u16>,
}

impl BufPool {
    fn new(entries: u16) -> io::Result<Self> {
        let ring_len = (usize::from(entries) * std::mem::size_of::<types::BufRingEntry>())
            .next_multiple_of(4096);
        let ring = anonymous_mapping(ring_len)?;
        let data = anonymous_mapping(usize::from(entries) * BUF_SIZE)?;
        let mut pool = Self {
            ring,
            data,
            entries,
            tail: 0,
            published: 0,
            held: entries,
            bid_at: vec![0; usize::from(entries)].into_boxed_slice(),
            entry_of: vec![0; usize::from(entries)].into_boxed_slice(),
            defer: false,
            deferred: Vec::new(),
        };
        for bid in 0..entries {
            pool.give_back(bid);
        }
        Ok(pool)
    }

    fn base(&self) -> *mut types::BufRingEntry {
        self.ring.as_mut_ptr().cast()
    }

    /// Puts buffer `bid` back at the ring's tail (visible to the kernel after [`publish`]), or
    /// keeps it aside until completions may no longer name the entry it would take (see
    /// `defer`).
    pub(crate) fn give_back(&mut self, bid: u16) {
        if self.defer {
            self.deferred.push(bid);
            return;
        }
        debug_assert!(bid < self.entries);
        let index = usize::from(self.tail & (self.entries - 1));
        // SAFETY: `index` < entries, so the entry lies inside the ring mapping.
        let entry = unsafe { self.base().add(index) }.cast::<u8>();
        // SAFETY: `bid` < entries (ids come from `take`, which clamps the kernel's and reads the
        // rest from `bid_at`, where only ids below `entries` are written),
        // so the buffer lies inside the data mapping.
        let addr = unsafe { self.data.as_mut_ptr().add(usize::from(bid) * BUF_SIZE) };
        // Debug builds poison a buffer as it goes back: a reader still holding on to it would
        // read poison instead of the stream's bytes (the engine tests check every byte).
        #[cfg(debug_assertions)]
        // SAFETY: the buffer lies inside the data mapping (above) and is ours until published:
        // the kernel gave it to us and does not get it back before `publish`.
        unsafe {
            std::ptr::write_bytes(addr, POISON, BUF_SIZE);
        }
        // SAFETY: the writes stay inside this 16-byte `struct io_uring_buf` (addr at 0, len at 8,
        // bid at 12; the aligned mapping keeps them aligned) and never touch its last two bytes,
        // which for entry 0 are the ring's tail that the kernel reads concurrently: no
        // reference over the entry is formed. The kernel reads only entries between its head
        // and the published tail, and this one is past the published tail until `publish`.
        unsafe {
            entry.cast::<u64>().write(addr as u64);
            entry.add(8).cast::<u32>().write(BUF_SIZE as u32);
            entry.add(12).cast::<u16>().write(bid);
        }
        self.bid_at[index] = bid;
        self.entry_of[usize::from(bid)] = index as u16;
        self.tail = self.tail.wrapping_add(1);
        self.held -= 1;
    }

    /// Holds give-backs aside (`on`), or stops holding them and gives back those held.
    fn defer_give_backs(&mut self, on: bool) {
        self.defer = on;
        if !on {
            let mut deferred = std::mem::take(&mut self.deferred);
            for bid in deferred.drain(..) {
                self.give_back(bid);
            }
            self.deferred = deferred;
        }
    }

    /// Takes the buffers a receive completion that names `first` filled with `bytes` into
    /// `out` as (id, bytes in it), in stream order, and counts them as held: `first` alone,
    /// or with receive bundles the ring entries after it until `bytes` are covered. Each
    /// entry holds what its length in the ring says, which the kernel may have cut short
    /// (to a receive's limit) rather than the full buffer we wrote. Called while give-backs
    /// are deferred (the reap), so no entry it reads has been rewritten since.
    pub(crate) fn take(&mut self, first: u16, bytes: i32, out: &mut Vec<(u16, u32)>) {
        out.clear();
        let first = first.min(self.entries - 1);
        let mask = self.entries - 1;
        let start = self.entry_of[usize::from(first)];
        let mut left = u32::try_from(bytes).unwrap_or(0);
        for i in 0..self.entries.saturating_sub(self.held) {
            let index = usize::from(start.wrapping_add(i) & mask);
            let bid = if i == 0 { first } else { self.bid_at[index] };
            let room = match self.entry_len(index) {
                0 => BUF_SIZE as u32,
                len => len.min(BUF_SIZE as u32),
            };
            let filled = room.min(left);
            out.push((bid, filled));
            left -= filled;
            if left == 0 {
                break;
            }
        }
        debug_assert_eq!(left, 0, "received bytes beyond the buffers in the ring");
        self.held += out.len() as u16;
    }

    /// The length field of ring entry `index` (< entries).
    fn entry_len(&self, index: usize) -> u32 {
        debug_assert!(index < usize::from(self.entries));
        // SAFETY: `index` < entries, so the 16-byte entry lies inside the ring mapping and its
        // length (at offset 8) is 4-aligned. The kernel writes entries' lengths (cutting them
        // short) only while it picks buffers for a receive, which runs inside this thread's
        // system calls (no SQPOLL; socket receives are never handed to io-wq workers), never
        // while this code runs. Read volatile: the kernel is the writer, not this program.
        unsafe {
            self.base()
                .add(index)
                .cast::<u8>()
                .add(8)
                .cast::<u32>()
                .read_volatile()
        }
    }

    /// Makes the buffers given back so far visible to the kernel.
    fn publish(&mut self) {
        if self.published != self.tail {
            // SAFETY: the tail field overlays the first entry's reserved field, inside the
            // mapping; the kernel reads it atomically, so we store it atomically with release
            // ordering after the entries it covers were written.
            unsafe {
                let tail = types::BufRingEntry::tail(self.base()) as *mut u16;
                AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
            }
            self.published = self.tail;
        }
    }

    /// The first `len` bytes of buffer `bid`, which the kernel filled and handed to us.
    pub(crate) fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        let bid = usize::from(bid.min(self.entries - 1));
        let len = len.min(BUF_SIZE);
        // SAFETY: bid and len are clamped to the data mapping; the kernel wrote this buffer
        // before posting the completion that gave it to us and does not touch it again until we
        // give it back, so nobody writes it while the slice lives.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr().add(bid * BUF_SIZE), len) }
    }

    /// Buffers the kernel can fill right now.
    pub(crate) fn available(&self) -> u16 {
        self.entries - self.held
    }
}

/// One core's ring and everything in flight on it.
pub(crate) struct Reactor {
    ring: IoUring,
    handle: RingHandle,
    slots: Vec<Slot>,
    free: Vec<u32>,
    pub(crate) bufs: BufPool,
    /// Connections whose output waits for this turn's submission.
    pub(crate) dirty: Vec<Rc<RefCell<Conn>>>,
    /// Connections whose multishot receive stopped for lack of buffers.
    pub(crate) starved: Vec<Rc<RefCell<Conn>>>,
    /// Connections that held pool buffers unread at some point since the last turn.
    holders: Vec<Rc<RefCell<Conn>>>,
    in_flight: usize,
    /// Descriptor closes submitted (or queued) whose completion has not come.
    closing: usize,
    pub(crate) task_run: TaskRun,
    /// The kernel has receive bundles (Linux 6.10): a receive fills several pool buffers in
    /// one go. Used only with a receive's total cap (Linux 6.16), see `recv_multishot`.
    pub(crate) bundles: bool,
    /// Receive completions that filled more than one buffer (for the tests).
    #[cfg(test)]
    pub(crate) bundles_received: u64,
    /// Reaps that ended with completions held aside by the kernel (for the tests).
    #[cfg(test)]
    pub(crate) overflowed_reaps: u64,
    /// The buffers of the receive completion being handled (kept for its allocation).
    taken: Vec<(u16, u32)>,
    wake_fd: RawFd,
    /// The engine is stopping: the wake-up read is not armed again.
    stopping: bool,
    /// Entries the full submission queue could not take (the kernel would not take the
    /// queue's entries just then), in order: they go before any newer entry, at the next
    /// turn. Nothing pushed is ever dropped, and a push never waits.
    backlog: VecDeque<squeue::Entry>,
}

impl Reactor {
    pub(crate) fn new(settings: RingSettings, wake_fd: RawFd) -> io::Result<Self> {
        let (ring, task_run) = build_ring(settings)?;
        let bundles = ring.params().is_feature_recvsend_bundle();
        if !bundles {
            static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if !SAID.swap(true, Ordering::Relaxed) {
                tracing::info!(
                    "io_uring: each receive fills one buffer (receive bundles need Linux 6.10)"
                );
            }
        }
        let handle = RingHandle::register(ring.as_raw_fd());
        let bufs = BufPool::new(settings.buffers)?;
        // SAFETY: the ring mapping holds `buffers` entries and lives as long as `bufs`, which
        // lives in the reactor with the ring; a stopping engine that cannot see every operation
        // end leaks the reactor rather than unmap memory the kernel may still use (`Runtime::stop`).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.ring.as_ptr() as u64,
                settings.buffers,
                BGID,
                0,
            )
        }
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("registering the receive buffer ring (needs Linux 5.19): {e}"),
            )
        })?;
        let mut reactor = Self {
            ring,
            handle,
            slots: Vec::new(),
            free: Vec::new(),
            bufs,
            dirty: Vec::new(),
            starved: Vec::new(),
            holders: Vec::new(),
            in_flight: 0,
            closing: 0,
            task_run,
            bundles,
            #[cfg(test)]
            bundles_received: 0,
            #[cfg(test)]
            overflowed_reaps: 0,
            taken: Vec::new(),
            wake_fd,
            stopping: false,
            backlog: VecDeque::new(),
        };
        reactor.bufs.publish();
        reactor.arm_wake(Box::new(0));
        Ok(reactor)
    }

    /// Ops in flight (for tests and shutdown).
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight + self.closing
    }

    /// Closes `fd` with this turn's submission (a system call saved per connection); at once
    /// while the engine stops, whose last submission may never come.
    pub(crate) fn close(&mut self, fd: OwnedFd) {
        if self.stopping {
            drop(fd);
            return;
        }
        let entry = opcode::Close::new(types::Fd(fd.into_raw_fd()))
            .build()
            .user_data(CLOSE);
        self.closing += 1;
        self.push(entry);
    }

    fn insert(&mut self, op: Op) -> u64 {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    op: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.op = Some(op);
        self.in_flight += 1;
        (u64::from(slot.generation) << 32) | u64::from(index)
    }

    fn slot_mut(&mut self, user_data: u64) -> Option<&mut Slot> {
        let slot = self.slots.get_mut((user_data & 0xffff_ffff) as usize)?;
        (slot.generation == (user_data >> 32) as u32 && slot.op.is_some()).then_some(slot)
    }

    fn remove(&mut self, user_data: u64) -> Option<Op> {
        let index = (user_data & 0xffff_ffff) as u32;
        let slot = self.slot_mut(user_data)?;
        let op = slot.op.take();
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index);
        self.in_flight -= 1;
        op
    }

    /// Queues `entry` for this turn's submission. When the queue is full, what it holds is
    /// handed to the kernel now (no waiting) to make room; if that fails, or the kernel takes
    /// none, the entry waits in the backlog for the next turn.
    pub(crate) fn push(&mut self, entry: squeue::Entry) {
        if self.backlog.is_empty() {
            // SAFETY: every entry pushed refers to memory owned by its slot (see the module
            // comment) or to nothing, so it stays valid until the completion.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            let pending = self.ring.submission().len() as u32;
            match self.handle.enter(pending, Some(Duration::ZERO)) {
                // SAFETY: as above.
                Ok(()) if unsafe { self.ring.submission().push(&entry) }.is_ok() => return,
                Ok(()) => {}
                Err(error) => {
                    tracing::warn!(%error, "io_uring submission failed; retrying next turn")
                }
            }
        }
        self.backlog.push_back(entry);
    }

    /// Moves backlog entries into the submission queue, oldest first, while it has room.
    fn drain_backlog(&mut self) {
        while let Some(entry) = self.backlog.front() {
            // SAFETY: as in `push`: the entry's memory belongs to its slot until completion.
            if unsafe { self.ring.submission().push(entry) }.is_err() {
                break;
            }
            self.backlog.pop_front();
        }
    }

    /// Starts operation `op` described by `entry`; returns its `user_data`.
    pub(crate) fn start(&mut self, entry: squeue::Entry, op: Op) -> u64 {
        let user_data = self.insert(op);
        self.push(entry.user_data(user_data));
        user_data
    }

    /// Asks the kernel to cancel the operation `user_data` (its completion still arrives).
    pub(crate) fn cancel(&mut self, user_data: u64) {
        if self.slot_mut(user_data).is_some() {
            self.push(
                opcode::AsyncCancel::new(user_data)
                    .build()
                    .user_data(CANCEL),
            );
        }
    }

    /// Cancels everything in flight (shutdown); the wake-up read is not armed again.
    pub(crate) fn cancel_all(&mut self) {
        self.stopping = true;
        self.push(
            opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(CANCEL),
        );
    }

    /// A one-shot operation's result with what its slot kept (a connecting socket comes back
    /// this way), or registers `waker` for it.
    pub(crate) fn poll_oneshot(&mut self, user_data: u64, waker: &Waker) -> Option<(i32, Keep)> {
        let slot = self.slot_mut(user_data)?;
        let Some(Op::Oneshot(op)) = &mut slot.op else {
            return None;
        };
        if op.result.is_none() {
            match &op.waker {
                Some(w) if w.will_wake(waker) => {}
                _ => op.waker = Some(waker.clone()),
            }
            return None;
        }
        match self.remove(user_data) {
            Some(Op::Oneshot(op)) => {
                let OneshotOp { result, keep, .. } = *op;
                result.map(|result| (result, keep))
            }
            _ => None,
        }
    }

    /// The future awaiting `user_data` is gone: free the slot if done, else cancel the
    /// operation and let its completion free the slot. Returns what to drop outside the borrow.
    pub(crate) fn abandon(&mut self, user_data: u64) -> Option<Op> {
        let done = match &mut self.slot_mut(user_data)?.op {
            Some(Op::Oneshot(op)) => {
                op.abandoned = true;
                op.waker = None;
                op.result.is_some()
            }
            _ => return None,
        };
        if done {
            self.remove(user_data)
        } else {
            self.cancel(user_data);
            None
        }
    }

    fn arm_wake(&mut self, mut counter: Box<u64>) {
        let ptr: *mut u64 = &mut *counter;
        let entry = opcode::Read::new(types::Fd(self.wake_fd), ptr.cast(), 8).build();
        self.start(entry, Op::Wake(counter));
    }

    /// One turn: submit everything queued (output of dirty connections included), wait up to
    /// `wait` for a completion, and reap what completed. Wakers to call and garbage to drop
    /// go to `out`, so they run after the reactor's borrow ends.
    pub(crate) fn turn(&mut self, wait: Option<Duration>, out: &mut Reaped) -> io::Result<()> {
        self.flush_output();
        self.relieve_pool(out);
        if !self.starved.is_empty() && self.bufs.available() > 0 {
            // As many waiting readers as there are free buffers; the rest wait for more. An
            // entry with no reader waiting (its stream dropped, or it starved while re-arming
            // ahead of a read) leaves the list without taking a buffer's turn: it would wake
            // nobody while a reader behind it waited for ever.
            let mut free = usize::from(self.bufs.available());
            let mut handed = 0;
            for conn in &self.starved {
                if free == 0 {
                    break;
                }
                handed += 1;
                if let Some(waker) = conn.borrow_mut().rx_starved_done() {
                    out.wakers.push(waker);
                    free -= 1;
                }
            }
            out.garbage_conns.extend(self.starved.drain(..handed));
        }
        self.bufs.publish();
        self.drain_backlog();
        let pending = self.ring.submission().len() as u32;
        // With completions already waiting, or readers just given buffers back (their wakers
        // run after this enter), don't sleep: nothing else may ever complete to end the wait.
        // Nor with entries still in the backlog: they go in the next turn.
        let wait = if self.ring.completion().is_empty()
            && out.wakers.is_empty()
            && self.backlog.is_empty()
        {
            wait
        } else {
            Some(Duration::ZERO)
        };
        self.handle.enter(pending, wait)?;
        self.reap(out);
        Ok(())
    }

    /// Every reader has had its turn since its buffers arrived. When the pool runs low (a
    /// quarter left, or a receive already starved), the bytes still unread are copied out of
    /// the pool so that readers that fall behind never starve the core's other connections;
    /// otherwise the list only forgets connections that read everything.
    fn relieve_pool(&mut self, out: &mut Reaped) {
        if self.holders.is_empty() {
            return;
        }
        let low = self.bufs.available() < self.bufs.entries / 4 || !self.starved.is_empty();
        // Removed connections go to `out`: a last reference must not drop inside the reactor.
        let mut k = 0;
        while k < self.holders.len() {
            let keep = {
                let mut conn = self.holders[k].borrow_mut();
                conn.relieve(low, &mut self.bufs);
                let keep = conn.holds_buffers();
                conn.rx_listed = keep;
                keep
            };
            if keep {
                k += 1;
            } else {
                out.garbage_conns.push(self.holders.swap_remove(k));
            }
        }
    }

    /// Turns the output queued by connections this turn into send operations.
    fn flush_output(&mut self) {
        while let Some(conn) = self.dirty.pop() {
            let entry = conn.borrow_mut().start_send();
            if let Some(entry) = entry {
                let user_data = self.start(entry, Op::Send(conn.clone()));
                conn.borrow_mut().tx_op = Some(user_data);
            }
        }
    }

    /// Gives back the buffers of the receive completion at hand (`taken`).
    fn give_back_taken(&mut self) {
        for &(bid, _) in &self.taken {
            self.bufs.give_back(bid);
        }
    }

    fn reap(&mut self, out: &mut Reaped) {
        self.bufs.defer_give_backs(true);
        loop {
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            self.complete(cqe, out);
        }
        // Completions the kernel holds aside (the queue overflowed) come with the next enter,
        // and may name entries a give-back would rewrite: until then buffers stay aside too.
        let overflow = self.ring.submission().cq_overflow();
        #[cfg(test)]
        if overflow {
            self.overflowed_reaps += 1;
        }
        if !overflow {
            self.bufs.defer_give_backs(false);
        }
    }

    fn complete(&mut self, cqe: cqueue::Entry, out: &mut Reaped) {
        let user_data = cqe.user_data();
        if user_data == CLOSE {
            self.closing = self.closing.saturating_sub(1);
            let result = cqe.result();
            if result < 0 {
                tracing::warn!(
                    error = %io::Error::from_raw_os_error(-result),
                    "io_uring close failed"
                );
            }
            return;
        }
        if user_data == CANCEL {
            // 0: cancelled; ENOENT: it had completed; EALREADY: it is ending. Either way its
            // own completion comes. Anything else is a bug worth seeing in the log.
            let result = cqe.result();
            if result < 0 && result != -libc::ENOENT && result != -libc::EALREADY {
                tracing::warn!(
                    error = %io::Error::from_raw_os_error(-result),
                    "io_uring cancel failed"
                );
            }
            return;
        }
        let (result, flags) = (cqe.result(), cqe.flags());
        let more = cqueue::more(flags);
        let Some(slot) = self.slot_mut(user_data) else {
            // Not ours (a stale id): give back any buffer it carries.
            if let Some(bid) = cqueue::buffer_select(flags) {
                self.bufs.take(bid, result, &mut self.taken);
                self.give_back_taken();
            }
            return;
        };
        match slot.op.as_mut() {
            Some(Op::Oneshot(op)) => {
                if op.abandoned {
                    if let Some(op) = self.remove(user_data) {
                        out.garbage.push(op);
                    }
                } else {
                    op.result = Some(result);
                    if let Some(waker) = op.waker.take() {
                        out.wakers.push(waker);
                    }
                }
            }
            Some(Op::Accept(listener)) => {
                let listener = listener.clone();
                if let Some(waker) = listener.borrow_mut().on_accept(result, more) {
                    out.wakers.push(waker);
                }
                if !more {
                    if let Some(op) = self.remove(user_data) {
                        out.garbage.push(op);
                    }
                } else if listener.borrow_mut().wants_pause() {
                    self.cancel(user_data);
                }
            }
            Some(Op::Recv(conn)) => {
                let conn = conn.clone();
                match cqueue::buffer_select(flags) {
                    Some(bid) => self.bufs.take(bid, result, &mut self.taken),
                    None => self.taken.clear(),
                }
                #[cfg(test)]
                if self.taken.len() > 1 {
                    self.bundles_received += 1;
                }
                let (waker, give_back, pause) =
                    conn.borrow_mut().on_recv(result, &self.taken, more);
                {
                    let mut c = conn.borrow_mut();
                    if c.holds_buffers() && !c.rx_listed {
                        c.rx_listed = true;
                        self.holders.push(conn.clone());
                    }
                }
                if give_back {
                    self.give_back_taken();
                }
                if let Some(waker) = waker {
                    out.wakers.push(waker);
                }
                if !more {
                    if result == -libc::ENOBUFS && conn.borrow_mut().starve() {
                        self.starved.push(conn.clone());
                    }
                    if let Some(op) = self.remove(user_data) {
                        out.garbage.push(op);
                    }
                } else if pause {
                    self.cancel(user_data);
                }
                out.garbage_conns.push(conn);
            }
            Some(Op::Send(conn)) => {
                let conn = conn.clone();
                let (waker, next) = conn.borrow_mut().on_send(result);
                if let Some(op) = self.remove(user_data) {
                    out.garbage.push(op);
                }
                match next {
                    SendNext::Idle => {}
                    SendNext::Continue(entry) => {
                        let user_data = self.start(entry, Op::Send(conn.clone()));
                        conn.borrow_mut().tx_op = Some(user_data);
                    }
                    SendNext::Queued => self.dirty.push(conn.clone()),
                }
                if let Some(waker) = waker {
                    out.wakers.push(waker);
                }
                out.garbage_conns.push(conn);
            }
            Some(Op::Wake(_)) => {
                if let Some(Op::Wake(counter)) = self.remove(user_data) {
                    if !self.stopping {
                        self.arm_wake(counter);
                    }
                }
            }
            None => {}
        }
    }
}

/// What a send completion leads to.
pub(crate) enum SendNext {
    /// Nothing more to send.
    Idle,
    /// The rest of a partly sent buffer.
    Continue(squeue::Entry),
    /// More output was queued meanwhile: send it with the next turn.
    Queued,
}

/// Wakers and garbage collected during a turn, handled once the reactor is released.
#[derive(Default)]
pub(crate) struct Reaped {
    pub(crate) wakers: Vec<Waker>,
    pub(crate) garbage: Vec<Op>,
    pub(crate) garbage_conns: Vec<Rc<RefCell<Conn>>>,
}

impl Reaped {
    pub(crate) fn finish(&mut self) {
        for waker in self.wakers.drain(..) {
            waker.wake();
        }
        self.garbage.clear();
        self.garbage_conns.clear();
    }
}

fn build_ring(settings: RingSettings) -> io::Result<(IoUring, TaskRun)> {
    let deferred = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_submit_all()
        .setup_cqsize(settings.cq_entries)
        .build(settings.sq_entries);
    match deferred {
        Ok(ring) => return Ok((ring, TaskRun::Deferred)),
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(
                "io_uring DEFER_TASKRUN unavailable (needs Linux 6.1): falling back to COOP_TASKRUN"
            );
        }
        Err(error) => return Err(ring_error(error)),
    }
    IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_submit_all()
        .setup_cqsize(settings.cq_entries)
        .build(settings.sq_entries)
        .map(|ring| (ring, TaskRun::Cooperative))
        .map_err(ring_error)
}

fn ring_error(error: io::Error) -> io::Error {
    let hint = match error.raw_os_error() {
        Some(libc::ENOSYS) => "io_uring is not available in this kernel",
        Some(libc::EPERM) => "io_uring is disabled (sysctl kernel.io_uring_disabled, or seccomp)",
        Some(libc::EINVAL) => "the kernel lacks COOP_TASKRUN (needs Linux 5.19; 6.1 recommended)",
        Some(libc::ENOMEM) => "not enough locked memory for the ring (RLIMIT_MEMLOCK)",
        _ => "setting up the ring failed",
    };
    io::Error::new(error.kind(), format!("io_uring: {hint}: {error}"))
}

/// Builds a multishot receive for `fd` from the core's buffer pool; with `bundles` and a
/// `total_limit`, each receive fills as many buffers as the data waiting needs (within the
/// limit) and posts one completion for them all: half the completions of a bulk transfer,
/// and almost none of the pauses at the unread limit.
pub(crate) fn recv_multishot(fd: RawFd, total_limit: Option<u32>, bundles: bool) -> squeue::Entry {
    // Bundles only under the total cap: without it one receive could take the whole pool.
    let entry = if bundles && total_limit.is_some() {
        opcode::RecvMultiBundle::new(types::Fd(fd), BGID).build()
    } else {
        opcode::RecvMulti::new(types::Fd(fd), BGID).build()
    };
    match total_limit {
        Some(limit) => super::sys::with_optlen(entry, limit),
        None => entry,
    }
}

/// Builds a multishot accept for `fd` (accepted sockets close on exec, blocking).
pub(crate) fn accept_multishot(fd: RawFd) -> squeue::Entry {
    opcode::AcceptMulti::new(types::Fd(fd))
        .flags(libc::SOCK_CLOEXEC)
        .build()
}

/// Builds a send of `len` bytes at `ptr` on `fd` (no SIGPIPE).
pub(crate) fn send(fd: RawFd, ptr: *const u8, len: u32) -> squeue::Entry {
    opcode::Send::new(types::Fd(fd), ptr, len)
        .flags(libc::MSG_NOSIGNAL)
        .build()
}

/// Takes ownership of a descriptor the kernel created for us (an accepted socket).
pub(crate) fn owned_fd(fd: i32) -> OwnedFd {
    // SAFETY: the kernel just created `fd` for this completion and nobody else knows it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    /// Every operation in flight holds a slot, and an idle connection holds two (its receive
    /// and its backend's): a slot stays a generation and one pointer-sized operation.
    #[test]
    fn a_slot_is_a_generation_and_a_pointer() {
        assert!(std::mem::size_of::<super::Slot>() <= 24);
    }

    /// A bundle's buffers are the ring entries after the first one's, however the readers
    /// gave them back, each holding what its length in the ring says: the kernel cuts an
    /// entry short to a receive's limit and may leave it so for the next receive.
    #[test]
    fn a_bundle_is_read_with_the_ids_and_lengths_left_in_the_ring() {
        use super::{BufPool, BUF_SIZE};
        let full = BUF_SIZE as u32;
        let mut pool = BufPool::new(8).expect("pool");
        let mut taken = Vec::new();
        // The kernel took all eight (entries 0..8 hold ids 0..8), in one bundle.
        pool.take(0, 8 * BUF_SIZE as i32, &mut taken);
        assert_eq!(taken, (0..8).map(|bid| (bid, full)).collect::<Vec<_>>());
        assert_eq!(pool.available(), 0);
        // Readers give three back out of order: entries 0, 1, 2 now hold ids 5, 2, 7.
        for bid in [5, 2, 7] {
            pool.give_back(bid);
        }
        // The kernel cut entry 0 to 1,000 bytes, then a receive of three buffers' worth.
        // SAFETY: entry 0's length field lies inside the ring mapping (as in `entry_len`), and
        // no kernel uses this pool.
        unsafe {
            pool.base().cast::<u8>().add(8).cast::<u32>().write(1000);
        }
        pool.take(5, 1000 + BUF_SIZE as i32 + 500, &mut taken);
        assert_eq!(taken, vec![(5, 1000), (2, full), (7, 500)]);
        assert_eq!(pool.available(), 0);
        // A completion with no bytes (an error, or the end) still hands back its one buffer.
        pool.give_back(2);
        pool.take(2, 0, &mut taken);
        assert_eq!(taken, vec![(2, 0)]);
    }
}
