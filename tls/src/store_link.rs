//! Session-store lookups from each core's own ring: one connection to Redis per core and
//! store, its commands pipelined, its replies parsed by [`fastedge_wire::resp`].
//!
//! A lookup made through the store's client thread crosses four wake-ups (core → thread →
//! Redis → thread → core), each tens of µs on a VM whose other CPU sleeps (BENCHMARKS.md);
//! from the core's ring it is one round trip to Redis, submitted with the rest of the loop
//! turn. Cores of the io_uring engine use this path; other threads (the glommio engine) go
//! through the client thread, and writes always do (they are off the handshake's path).
//!
//! Behaviour is the client thread's: every lookup is answered within its deadline (the link
//! answers `TimedOut` itself when Redis is slow, and ignores the late reply); a connection
//! that fails answers everything waiting `Failed`, and for a short back-off (10 ms doubling to
//! 200 ms) new lookups are answered `Failed` at once instead of waiting for a connect that is
//! likely to fail; a store that answers nothing for a second is treated as gone.

use std::{
    cell::RefCell,
    collections::{HashMap, VecDeque},
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    rc::Rc,
    sync::Arc,
    task::{Poll, Waker},
    time::{Duration, Instant},
};

use fastedge_runtime::uring::{self, net::Stream, time};
use fastedge_wire::{
    resp::{self, Reply},
    sealed_session as layout,
};
use futures_lite::{AsyncRead, AsyncWrite};

use crate::{
    oneshot::OneShot,
    store_state::{
        Answer, Health, BACKOFF_MAX, BACKOFF_MIN, CONNECT_TIMEOUT, LOOKUP_QUEUE, RESPONSE_TIMEOUT,
    },
};

/// [`layout::MAX_SEALED`] as the text a GETRANGE takes (written once, not per lookup).
const MAX_SEALED_TEXT: &str = "16384";
/// What the cores' connections call themselves (`CLIENT LIST`).
pub(crate) const CLIENT_NAME: &str = "fastedge-core";

/// Where a core connects, and what it says first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    addr: Addr,
    /// `AUTH` arguments: (user, password), or the password alone.
    auth: Option<(Option<String>, String)>,
    /// `SELECT`'s database (0: not sent).
    db: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Addr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Target {
    /// From a store address the redis crate parsed. `None` when a core cannot connect by
    /// itself without blocking: a host name (resolving it would block the core) or TLS.
    pub(crate) fn from_info(info: &redis::ConnectionInfo) -> Option<Self> {
        let addr = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                Addr::Tcp(SocketAddr::new(host.parse().ok()?, *port))
            }
            redis::ConnectionAddr::Unix(path) => Addr::Unix(path.clone()),
            _ => return None,
        };
        let settings = info.redis_settings();
        let auth = settings
            .password()
            .map(|password| (settings.username().map(str::to_owned), password.to_owned()));
        Some(Self {
            addr,
            auth,
            db: settings.db(),
        })
    }
}

/// One command in the pipeline: a lookup (its `reply` taken once answered, also when it timed
/// out before its reply came), or the connection's own introduction (`setup`). Dropped
/// unanswered (the connection failed), a lookup is answered `Failed`.
struct Waiting {
    setup: bool,
    reply: Option<Arc<OneShot<Answer>>>,
    asked: Instant,
    deadline: Instant,
}

impl Waiting {
    fn answer(&mut self, answer: Answer) {
        if let Some(reply) = self.reply.take() {
            reply.complete(answer);
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.answer(Answer::Failed);
    }
}

#[derive(Default)]
struct State {
    /// Commands not handed to the connection yet.
    out: Vec<u8>,
    /// One entry per command queued or written, in order.
    waiting: VecDeque<Waiting>,
    /// The connection task, waiting for commands to write.
    driver: Option<Waker>,
    running: bool,
    /// After a failed connection: lookups are answered `Failed` at once until then.
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// One core's connection to one store.
struct Link {
    target: Target,
    health: Arc<Health>,
    state: RefCell<State>,
}

thread_local! {
    static LINKS: RefCell<HashMap<String, Rc<Link>>> = RefCell::new(HashMap::new());
}

/// Asks for `key` from this core's own link to the store at `url`, answering `reply` within
/// `deadline`. Returns `false` (nothing done) when the calling thread is not an io_uring
/// engine core.
pub(crate) fn lookup(
    url: &str,
    target: &Target,
    health: &Arc<Health>,
    key: &str,
    deadline: Duration,
    reply: &Arc<OneShot<Answer>>,
) -> bool {
    if !uring::is_engine_thread() {
        return false;
    }
    let link = LINKS.with(|links| {
        let found = links.borrow().get(url).cloned();
        found.unwrap_or_else(|| {
            let link = Rc::new(Link {
                target: target.clone(),
                health: health.clone(),
                state: RefCell::new(State::default()),
            });
            links.borrow_mut().insert(url.to_owned(), link.clone());
            link
        })
    });
    link.ask(key, deadline, reply.clone());
    true
}

impl Link {
    fn ask(self: &Rc<Self>, key: &str, deadline: Duration, reply: Arc<OneShot<Answer>>) {
        // The clock, not the turn's time: a deadline counts from now.
        let now = Instant::now();
        let mut state = self.state.borrow_mut();
        if state.retry_at.is_some_and(|at| now < at) {
            reply.complete(Answer::Failed);
            return;
        }
        if state.waiting.len() >= LOOKUP_QUEUE {
            reply.complete(Answer::Refused);
            return;
        }
        // At most one byte past the longest sealed session is read: a huge value put in the
        // store costs nothing (it does not parse, and is counted unopened).
        resp::command(
            &[
                b"GETRANGE",
                key.as_bytes(),
                b"0",
                MAX_SEALED_TEXT.as_bytes(),
            ],
            &mut state.out,
        );
        state.waiting.push_back(Waiting {
            setup: false,
            reply: Some(reply),
            asked: now,
            deadline: now + deadline,
        });
        if let Some(driver) = state.driver.take() {
            driver.wake();
        }
        if !state.running {
            state.running = true;
            // Made here, not in the task: a task dropped before it first runs (its core
            // stopping) still ends the link's run.
            let ending = Ending {
                link: self.clone(),
                why: None,
                quiet: false,
            };
            uring::spawn_detached(async move { ending.link.clone().drive(ending).await });
        }
    }

    /// The connection's life: connect, introduce, then write commands and read replies until
    /// something fails; then (`ending`) everything waiting is answered `Failed` and the next
    /// lookup after the back-off connects again. Deadlines are kept all along, connecting
    /// included.
    async fn drive(self: Rc<Self>, mut ending: Ending) {
        let connect_by = Instant::now() + CONNECT_TIMEOUT;
        let mut connect = std::pin::pin!(self.connect());
        let stream = loop {
            let wake_at = match self.expire() {
                Ok(at) => at.map_or(connect_by, |at| at.min(connect_by)),
                Err(why) => {
                    ending.why = Some(why);
                    return;
                }
            };
            let connected =
                futures_lite::future::or(async { Some(connect.as_mut().await) }, async {
                    time::Sleep::until(wake_at).await;
                    None
                })
                .await;
            match connected {
                Some(Ok(stream)) => break stream,
                Some(Err(error)) => {
                    ending.why = Some(format!("connecting: {error}"));
                    return;
                }
                None if Instant::now() >= connect_by => {
                    ending.why = Some(format!(
                        "connecting took over {} ms",
                        CONNECT_TIMEOUT.as_millis()
                    ));
                    return;
                }
                None => {}
            }
        };
        self.introduce();
        match self.serve(stream).await {
            Ok(()) => {
                // Closed by the store while idle (Redis's `timeout`): not an outage; the next
                // lookup connects again at once.
                ending.quiet = true;
            }
            Err(why) => ending.why = Some(why),
        }
    }

    async fn connect(&self) -> std::io::Result<Stream> {
        match &self.target.addr {
            Addr::Tcp(addr) => {
                let stream = Stream::connect(*addr).await?;
                stream.set_nodelay(true)?;
                Ok(stream)
            }
            Addr::Unix(path) => Stream::connect_unix(path).await,
        }
    }

    /// `AUTH`, `SELECT` and `CLIENT SETNAME` go ahead of the lookups queued while connecting
    /// (the name shows the cores' connections in `CLIENT LIST`).
    fn introduce(&self) {
        let mut first = Vec::new();
        let mut count = 0;
        if let Some((user, password)) = &self.target.auth {
            match user {
                Some(user) => {
                    resp::command(&[b"AUTH", user.as_bytes(), password.as_bytes()], &mut first)
                }
                None => resp::command(&[b"AUTH", password.as_bytes()], &mut first),
            }
            count += 1;
        }
        if self.target.db != 0 {
            let db = self.target.db.to_string();
            resp::command(&[b"SELECT", db.as_bytes()], &mut first);
            count += 1;
        }
        resp::command(&[b"CLIENT", b"SETNAME", CLIENT_NAME.as_bytes()], &mut first);
        count += 1;
        let now = Instant::now();
        let mut state = self.state.borrow_mut();
        first.extend_from_slice(&state.out);
        state.out = first;
        for _ in 0..count {
            state.waiting.push_front(Waiting {
                setup: true,
                reply: None,
                asked: now,
                deadline: now + RESPONSE_TIMEOUT,
            });
        }
    }

    /// Writes and reads until the connection ends: `Ok` when the store closed it while no
    /// command waited and it had answered no command with an error, else why it failed.
    /// Writing never holds up the rest: a store that stops reading still gets its lookups
    /// answered `TimedOut` at their deadlines, and dropped after [`RESPONSE_TIMEOUT`].
    async fn serve(&self, mut stream: Stream) -> Result<(), String> {
        let mut input: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        let mut unsent: Vec<u8> = Vec::new();
        let mut sent = 0;
        let mut errors = false;
        loop {
            let wake_at = self.expire()?;
            let mut timer = wake_at.map(time::Sleep::until);
            let event = std::future::poll_fn(|cx| {
                // New lookups bring new deadlines: the timer is set again for them.
                let mut new_lookups = false;
                loop {
                    // Hand queued commands to the connection, as far as it takes them.
                    if sent == unsent.len() {
                        unsent.clear();
                        sent = 0;
                        let mut state = self.state.borrow_mut();
                        std::mem::swap(&mut unsent, &mut state.out);
                        if unsent.is_empty() {
                            state.driver = Some(cx.waker().clone());
                            break;
                        }
                        new_lookups = true;
                    }
                    match Pin::new(&mut stream).poll_write(cx, &unsent[sent..]) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Event::Failed(
                                "the connection took no bytes".into(),
                            ))
                        }
                        Poll::Ready(Ok(n)) => sent += n,
                        Poll::Ready(Err(error)) => {
                            return Poll::Ready(Event::Failed(format!("writing: {error}")))
                        }
                        Poll::Pending => break,
                    }
                }
                if let Poll::Ready(read) = Pin::new(&mut stream).poll_read(cx, &mut chunk) {
                    return Poll::Ready(Event::Read(read));
                }
                if new_lookups {
                    return Poll::Ready(Event::Tick);
                }
                match timer.as_mut().map(|t| Pin::new(t).poll(cx)) {
                    Some(Poll::Ready(())) => Poll::Ready(Event::Tick),
                    _ => Poll::Pending,
                }
            })
            .await;
            match event {
                Event::Read(Ok(0)) => {
                    let idle = self.state.borrow().waiting.is_empty() && input.is_empty();
                    return if idle && !errors {
                        Ok(())
                    } else {
                        Err("the store closed the connection".to_owned())
                    };
                }
                Event::Read(Err(error)) => return Err(format!("reading: {error}")),
                Event::Read(Ok(n)) => {
                    input.extend_from_slice(&chunk[..n]);
                    self.take_replies(&mut input, &mut errors)?;
                }
                Event::Failed(why) => return Err(why),
                Event::Tick => {}
            }
        }
    }

    /// Answers `TimedOut` to lookups past their deadline (their replies, when they come, are
    /// read and ignored) — also when the store is then found gone, since their deadline came
    /// first; an error if the oldest command has waited over [`RESPONSE_TIMEOUT`]. Returns
    /// when to look again.
    fn expire(&self) -> Result<Option<Instant>, String> {
        let now = Instant::now();
        let mut state = self.state.borrow_mut();
        let Some(oldest) = state.waiting.front().map(|w| w.asked) else {
            return Ok(None);
        };
        let mut next = oldest + RESPONSE_TIMEOUT;
        let mut expired = Vec::new();
        for waiting in &mut state.waiting {
            if waiting.reply.is_none() {
                continue;
            }
            if waiting.deadline <= now {
                expired.extend(waiting.reply.take());
            } else {
                next = next.min(waiting.deadline);
            }
        }
        drop(state);
        for reply in expired {
            reply.complete(Answer::TimedOut);
        }
        if now.duration_since(oldest) >= RESPONSE_TIMEOUT {
            return Err(format!("no answer for {} ms", RESPONSE_TIMEOUT.as_millis()));
        }
        Ok(Some(next))
    }

    /// Answers the lookups whose replies are complete in `input`, and drops those bytes.
    /// `errors` records that the store answered a command with an error.
    fn take_replies(&self, input: &mut Vec<u8>, errors: &mut bool) -> Result<(), String> {
        let mut at = 0;
        let result = loop {
            let (reply, used) = match resp::parse_reply(&input[at..], layout::MAX_SEALED + 1) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break Ok(()),
                Err(error) => break Err(format!("the store's reply: {error}")),
            };
            at += used;
            // Dropped unanswered on any error below: `Waiting` answers `Failed`.
            let Some(mut waiting) = self.state.borrow_mut().waiting.pop_front() else {
                break Err("a reply to no command".to_owned());
            };
            if waiting.setup {
                match reply {
                    Reply::Simple(_) => continue,
                    Reply::Error(error) => {
                        break Err(format!(
                            "refused the connection's introduction (AUTH, SELECT or CLIENT \
                             SETNAME): {}",
                            String::from_utf8_lossy(error)
                        ))
                    }
                    other => {
                        break Err(format!("unexpected answer to the introduction: {other:?}"))
                    }
                }
            }
            let answer = match reply {
                // Redis answers an empty string for a key it does not hold.
                Reply::Bulk([]) | Reply::Nil => Answer::Missing,
                Reply::Bulk(value) => Answer::Found(value.to_vec()),
                Reply::Error(error) => {
                    *errors = true;
                    self.health.error_answer(&String::from_utf8_lossy(error));
                    Answer::Failed
                }
                other => break Err(format!("unexpected answer to GETRANGE: {other:?}")),
            };
            if answer != Answer::Failed {
                // A good answer: the store works, and a later failure backs off from the start.
                self.health.mark_up();
                self.state.borrow_mut().backoff = Duration::ZERO;
            }
            waiting.answer(answer);
        };
        input.drain(..at);
        result
    }
}

/// Ends a link's run: everything waiting is answered `Failed`, and the next lookup after the
/// back-off connects again. `why` is `None` when the run was dropped with its core or the store
/// closed an idle connection (`quiet`: no back-off).
struct Ending {
    link: Rc<Link>,
    why: Option<String>,
    quiet: bool,
}

impl Drop for Ending {
    fn drop(&mut self) {
        if let Some(why) = &self.why {
            self.link.health.mark_down(why);
        }
        let waiting = {
            let mut state = self.link.state.borrow_mut();
            state.out.clear();
            state.driver = None;
            state.running = false;
            if !self.quiet {
                state.backoff = (state.backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                state.retry_at = Some(Instant::now() + state.backoff);
            }
            std::mem::take(&mut state.waiting)
        };
        // Answered (`Failed`, by `Waiting`'s drop) outside the borrow: a woken handshake may
        // ask again at once.
        drop(waiting);
    }
}

enum Event {
    Read(std::io::Result<usize>),
    Failed(String),
    Tick,
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_getrange_bound_is_the_longest_sealed_session() {
        assert_eq!(
            super::MAX_SEALED_TEXT,
            fastedge_wire::sealed_session::MAX_SEALED.to_string()
        );
    }
}
