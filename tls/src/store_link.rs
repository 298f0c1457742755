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
    net::SocketAddr,
    path::PathBuf,
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
use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::{
    oneshot::OneShot,
    session_store::{Answer, Health},
};

/// Lookups waiting on one core's link at most; more are answered `Refused` at once.
const WAITING_MAX: usize = 4096;
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// A store that has not answered the oldest command for this long is treated as gone.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(200);

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
/// out before its reply came), or the connection's own introduction (`setup`).
struct Waiting {
    setup: bool,
    reply: Option<Arc<OneShot<Answer>>>,
    asked: Instant,
    deadline: Instant,
}

#[derive(Default)]
struct State {
    /// Commands not written yet.
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
        links
            .borrow_mut()
            .entry(url.to_owned())
            .or_insert_with(|| {
                Rc::new(Link {
                    target: target.clone(),
                    health: health.clone(),
                    state: RefCell::new(State::default()),
                })
            })
            .clone()
    });
    link.ask(key, deadline, reply.clone());
    true
}

impl Link {
    fn ask(self: &Rc<Self>, key: &str, deadline: Duration, reply: Arc<OneShot<Answer>>) {
        let now = uring::time::now();
        let mut state = self.state.borrow_mut();
        if state.retry_at.is_some_and(|at| now < at) {
            reply.complete(Answer::Failed);
            return;
        }
        if state.waiting.len() >= WAITING_MAX {
            reply.complete(Answer::Refused);
            return;
        }
        // At most one byte past the longest sealed session is read: a huge value put in the
        // store costs nothing (it does not parse, and is counted unopened).
        let last = layout::MAX_SEALED.to_string();
        resp::command(
            &[b"GETRANGE", key.as_bytes(), b"0", last.as_bytes()],
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
            let link = self.clone();
            uring::spawn_detached(async move { link.drive().await });
        }
    }

    /// The connection's life: connect, introduce, then write commands and read replies until
    /// something fails; then everything waiting is answered `Failed` and the next lookup
    /// after the back-off connects again.
    async fn drive(self: Rc<Self>) {
        // Also when the task is dropped (the core stops): nothing waits for ever.
        let mut ending = Ending {
            link: self.clone(),
            why: None,
            quiet: false,
        };
        ending.why = Some(match time::timeout(CONNECT_TIMEOUT, self.connect()).await {
            Err(()) => format!("connecting took over {} ms", CONNECT_TIMEOUT.as_millis()),
            Ok(Err(error)) => format!("connecting: {error}"),
            Ok(Ok(stream)) => {
                {
                    let mut state = self.state.borrow_mut();
                    state.backoff = Duration::ZERO;
                    state.retry_at = None;
                }
                self.introduce();
                match self.serve(stream).await {
                    Some(why) => why,
                    None => {
                        // Closed by the store while nothing waited (Redis's idle `timeout`):
                        // not an outage; the next lookup connects again at once.
                        ending.quiet = true;
                        return;
                    }
                }
            }
        });
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

    /// `AUTH` and `SELECT` go ahead of the lookups queued while connecting.
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
        let now = uring::time::now();
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

    /// Writes and reads until the connection fails; returns why (`None`: the store closed it
    /// while no command waited).
    async fn serve(&self, mut stream: Stream) -> Option<String> {
        let mut input: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let out = std::mem::take(&mut self.state.borrow_mut().out);
            if !out.is_empty() {
                if let Err(error) = stream.write_all(&out).await {
                    return Some(format!("writing: {error}"));
                }
            }
            let wake_at = match self.expire() {
                Ok(at) => at,
                Err(why) => return Some(why),
            };
            let event = futures_lite::future::or(
                async { Event::Read(stream.read(&mut chunk).await) },
                futures_lite::future::or(
                    async {
                        self.more_to_write().await;
                        Event::Write
                    },
                    async {
                        match wake_at {
                            Some(at) => {
                                time::sleep(at.saturating_duration_since(uring::time::now())).await
                            }
                            None => std::future::pending::<()>().await,
                        }
                        Event::Tick
                    },
                ),
            )
            .await;
            match event {
                Event::Read(Ok(0)) => {
                    let idle = self.state.borrow().waiting.is_empty() && input.is_empty();
                    return (!idle).then(|| "the store closed the connection".to_owned());
                }
                Event::Read(Err(error)) => return Some(format!("reading: {error}")),
                Event::Read(Ok(n)) => {
                    input.extend_from_slice(&chunk[..n]);
                    if let Err(why) = self.take_replies(&mut input) {
                        return Some(why);
                    }
                }
                Event::Write | Event::Tick => {}
            }
        }
    }

    /// Answers `TimedOut` to lookups past their deadline (their replies, when they come, are
    /// read and ignored); an error if the oldest command has waited over [`RESPONSE_TIMEOUT`].
    /// Returns when to look again.
    fn expire(&self) -> Result<Option<Instant>, String> {
        let now = uring::time::now();
        let mut state = self.state.borrow_mut();
        if state
            .waiting
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.asked) >= RESPONSE_TIMEOUT)
        {
            return Err(format!("no answer for {} ms", RESPONSE_TIMEOUT.as_millis()));
        }
        let mut next: Option<Instant> = state.waiting.front().map(|w| w.asked + RESPONSE_TIMEOUT);
        for waiting in &mut state.waiting {
            if waiting.reply.is_none() {
                continue;
            }
            if waiting.deadline <= now {
                if let Some(reply) = waiting.reply.take() {
                    reply.complete(Answer::TimedOut);
                }
            } else {
                next = Some(next.map_or(waiting.deadline, |at| at.min(waiting.deadline)));
            }
        }
        Ok(next)
    }

    /// Resolves when a lookup queued a command.
    async fn more_to_write(&self) {
        std::future::poll_fn(|cx| {
            let mut state = self.state.borrow_mut();
            if state.out.is_empty() {
                state.driver = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
    }

    /// Answers the lookups whose replies are complete in `input`, and drops those bytes.
    fn take_replies(&self, input: &mut Vec<u8>) -> Result<(), String> {
        let mut at = 0;
        let result = loop {
            let (reply, used) = match resp::parse_reply(&input[at..], layout::MAX_SEALED + 1) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break Ok(()),
                Err(error) => break Err(format!("the store's reply: {error}")),
            };
            at += used;
            let Some(waiting) = self.state.borrow_mut().waiting.pop_front() else {
                break Err("a reply to no command".to_owned());
            };
            if waiting.setup {
                // AUTH or SELECT.
                match reply {
                    Reply::Simple(_) => continue,
                    Reply::Error(error) => {
                        break Err(format!(
                            "refused the connection's AUTH or SELECT: {}",
                            String::from_utf8_lossy(error)
                        ))
                    }
                    other => break Err(format!("unexpected answer to AUTH or SELECT: {other:?}")),
                }
            }
            let answer = match reply {
                // Redis answers an empty string for a key it does not hold.
                Reply::Bulk([]) | Reply::Nil => Answer::Missing,
                Reply::Bulk(value) => Answer::Found(value.to_vec()),
                Reply::Error(error) => {
                    self.health.error_answer(&String::from_utf8_lossy(error));
                    Answer::Failed
                }
                other => break Err(format!("unexpected answer to GETRANGE: {other:?}")),
            };
            if answer != Answer::Failed {
                self.health.mark_up();
            }
            // A lookup that timed out has no one to answer any more.
            if let Some(reply) = waiting.reply {
                reply.complete(answer);
            }
        };
        input.drain(..at);
        result
    }
}

/// Ends a connection task: everything waiting is answered `Failed`, and the next lookup after
/// the back-off connects again. `why` is `None` when the task was dropped with its core;
/// `quiet` when the store closed an idle connection (no back-off).
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
                state.retry_at = Some(uring::time::now() + state.backoff);
            }
            std::mem::take(&mut state.waiting)
        };
        // Answered outside the borrow: a woken handshake may ask again at once.
        for waiting in waiting {
            if let Some(reply) = waiting.reply {
                reply.complete(Answer::Failed);
            }
        }
    }
}

enum Event {
    Read(std::io::Result<usize>),
    Write,
    Tick,
}
