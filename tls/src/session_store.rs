//! A session store shared by a fleet (Redis), for clients that resume by session ID (TLS 1.2
//! without tickets): a session made on one box resumes on any other.
//!
//! - **Never blocks a core.** A session ID that BoringSSL's local cache does not hold is looked
//!   up asynchronously: the handshake pauses (`SSL_ERROR_PENDING_SESSION`), the core goes on
//!   with other connections, and the handshake resumes when the answer comes. A lookup is
//!   answered within the store's `timeout` whatever Redis does; a miss, a timeout, a refused or
//!   failed lookup all give a full handshake, never a failed one, and each is counted.
//! - **Sealed.** A session leaves the box encrypted and authenticated with AES-256-GCM under a
//!   key derived (HKDF-SHA256) from the fleet's ticket secret, bound to its session ID; whoever
//!   can read Redis cannot read master secrets, and cannot move an entry to another ID. The
//!   layout is [`fastedge_wire::sealed_session`].
//! - **Bounded.** BoringSSL's own session cache (`session_cache_size`) is the local cache in
//!   front; lookups and writes wait in bounded queues (a full queue counts and skips, never
//!   waits); entries expire in Redis with the session timeout.
//!
//! One client per store address per process. Each core of the io_uring engine looks sessions
//! up over a connection of its own, on its own ring (one round trip to Redis, no thread in
//! between; `store_link`, replies parsed by [`fastedge_wire::resp`]). Writes, and lookups from
//! other threads (the glommio engine, or a store given by host name, which a core would have
//! to resolve by blocking), go through a thread running a small tokio runtime with a
//! reconnecting, multiplexed Redis connection ([`redis::aio::ConnectionManager`]).

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock, PoisonError,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use boring::{
    hash::MessageDigest,
    hkdf::HkdfSuite,
    ssl::{BoxGetSessionFinish, BoxGetSessionFuture, SslContextBuilder, SslSession},
    symm::{decrypt_aead, encrypt_aead, Cipher},
};
use fastedge_runtime::metrics::{label, write_family};
use fastedge_wire::sealed_session::{self as layout, KEY_ID_LEN, NONCE_LEN, TAG_LEN};

use crate::{oneshot::OneShot, TlsError};

pub use crate::store_state::{Answer, LOOKUP_QUEUE};
use crate::store_state::{Health, BACKOFF_MAX, BACKOFF_MIN, CONNECT_TIMEOUT, RESPONSE_TIMEOUT};

/// Sealed sessions waiting to be written at most; more are dropped (and counted).
pub const WRITE_QUEUE: usize = 4096;
/// Writes in flight at most (each within [`WRITE_TIMEOUT`]).
const WRITES_IN_FLIGHT: usize = 256;
/// How long one write may take before it is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Redis keys are this prefix followed by the session ID in hex.
pub const KEY_PREFIX: &str = "fastedge:session:";
const HKDF_SALT: &[u8] = b"fastedge session store v1";

/// Where a store is, how long a lookup may take and which secrets seal what goes there
/// (`tls.session_store`, `tls.session_store_timeout`, `tls.ticket_secret_file`,
/// `tls.ticket_secret_accept_file`), validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// A Redis URL: `redis://host:port/db` or `redis+unix:///path/to/socket`.
    pub url: String,
    /// How long a handshake waits for a lookup before going on as a full one (zero: it never
    /// waits, every store lookup counts as timed out).
    pub timeout: Duration,
    /// The fleet secret that seals sessions (and opens them).
    pub secret: std::path::PathBuf,
    /// A second secret that only opens them, while the fleet changes its secret.
    pub accept: Option<std::path::PathBuf>,
}

impl StoreSettings {
    /// Validates a store address as written in the configuration: `redis://host[:port][/db]`,
    /// `redis+unix:///path`, `unix:///path` or `unix:/path` (a UNIX socket). TLS to Redis
    /// (`rediss://`) is not built in: reach a remote Redis over a trusted network or a tunnel.
    pub fn new(
        address: &str,
        timeout: Duration,
        secret: std::path::PathBuf,
        accept: Option<std::path::PathBuf>,
    ) -> Result<Self, String> {
        let url = if let Some(path) = address
            .strip_prefix("unix:")
            .filter(|rest| !rest.starts_with("//"))
        {
            format!("redis+unix://{path}")
        } else {
            address.to_owned()
        };
        if url.starts_with("rediss://") {
            return Err(format!(
                "{address:?}: TLS to Redis (rediss://) is not supported; use redis:// over a \
                 trusted network, or a UNIX socket"
            ));
        }
        if !(url.starts_with("redis://")
            || url.starts_with("redis+unix://")
            || url.starts_with("unix://"))
        {
            return Err(format!(
                "{address:?}: expected redis://host:port[/db] or unix:/path/to/redis.sock"
            ));
        }
        redis::Client::open(url.as_str()).map_err(|e| format!("{address:?}: {e}"))?;
        Ok(Self {
            url,
            timeout,
            secret,
            accept,
        })
    }
}

/// One fleet secret's sealing material: its id (written with what it sealed) and the HKDF
/// pseudo-random key each session's own AES-256 key is expanded from.
#[derive(Clone)]
struct SealKey {
    id: [u8; KEY_ID_LEN],
    prk: Vec<u8>,
}

impl SealKey {
    /// The AES-256-GCM key of one session: HKDF-Expand(prk, "aes-256-gcm key" || session ID).
    /// A key per session keeps the random 96-bit nonces far from their collision bound
    /// however many sessions a fleet seals under one secret.
    fn session_key(&self, session_id: &[u8]) -> Result<[u8; 32], boring::error::ErrorStack> {
        let mut info = Vec::with_capacity(15 + session_id.len());
        info.extend_from_slice(b"aes-256-gcm key");
        info.extend_from_slice(session_id);
        let mut key = [0u8; 32];
        HkdfSuite::new(MessageDigest::sha256()).expand(&self.prk, &info, &mut key)?;
        Ok(key)
    }
}

/// Seals sessions before they leave the box and opens what comes back. Built from the fleet's
/// secrets: the first seals, every one opens (a fleet changing its secret holds two).
#[derive(Clone)]
pub struct SessionSeal {
    keys: Vec<SealKey>,
}

impl std::fmt::Debug for SessionSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<String> = self.keys.iter().map(|k| hex::encode(k.id)).collect();
        f.debug_struct("SessionSeal")
            .field("key_ids", &ids)
            .finish()
    }
}

/// Why a value from the store did not open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Not a sealed session at all.
    Shape(layout::SealedError),
    /// Sealed by a key this box does not hold (another fleet, or a secret rotated away).
    UnknownKey,
    /// Changed, or moved from another session ID: authentication failed.
    Forged,
}

impl SessionSeal {
    /// The seal of a fleet whose secrets are `secrets`, the current one first.
    pub fn from_secrets(secrets: &[&[u8]]) -> Result<Self, TlsError> {
        if secrets.is_empty() {
            return Err(TlsError::Invalid(
                "the session store needs the fleet's ticket secret to seal sessions".into(),
            ));
        }
        let hkdf = HkdfSuite::new(MessageDigest::sha256());
        let keys = secrets
            .iter()
            .map(|secret| {
                let prk = hkdf.extract(HKDF_SALT, secret).map_err(TlsError::Setup)?;
                let mut key = SealKey {
                    id: [0; KEY_ID_LEN],
                    prk: prk.to_vec(),
                };
                hkdf.expand(&prk, b"key id", &mut key.id)
                    .map_err(TlsError::Setup)?;
                Ok(key)
            })
            .collect::<Result<Vec<_>, TlsError>>()?;
        Ok(Self { keys })
    }

    /// `session` (its serialized form) sealed for the store under `session_id`.
    pub fn seal(&self, session_id: &[u8], session: &[u8]) -> Result<Vec<u8>, TlsError> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        boring::rand::rand_bytes(&mut nonce).map_err(TlsError::Setup)?;
        let mut tag = [0u8; TAG_LEN];
        let session_key = key.session_key(session_id).map_err(TlsError::Setup)?;
        let ciphertext = encrypt_aead(
            Cipher::aes_256_gcm(),
            &session_key,
            Some(&nonce),
            &layout::associated_data(session_id),
            session,
            &mut tag,
        )
        .map_err(TlsError::Setup)?;
        let mut out = Vec::with_capacity(layout::HEADER_LEN + ciphertext.len() + TAG_LEN);
        out.extend_from_slice(&layout::header(key.id, nonce));
        out.extend_from_slice(&ciphertext);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// The serialized session in `value`, read from the store under `session_id`, if it opens.
    pub fn open(&self, session_id: &[u8], value: &[u8]) -> Result<Vec<u8>, OpenError> {
        let sealed = layout::parse(value).map_err(OpenError::Shape)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == sealed.key_id)
            .ok_or(OpenError::UnknownKey)?;
        let session_key = key.session_key(session_id).map_err(|_| OpenError::Forged)?;
        decrypt_aead(
            Cipher::aes_256_gcm(),
            &session_key,
            Some(&sealed.nonce),
            &layout::associated_data(session_id),
            sealed.ciphertext,
            &sealed.tag,
        )
        .map_err(|_| OpenError::Forged)
    }
}

/// The Redis key of a session ID.
pub fn redis_key(session_id: &[u8]) -> String {
    format!("{KEY_PREFIX}{}", hex::encode(session_id))
}

/// A store's counters since the process started.
#[derive(Debug, Default)]
pub struct StoreStats {
    found: AtomicU64,
    missing: AtomicU64,
    timed_out: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
    unopened: AtomicU64,
    written: AtomicU64,
    write_failed: AtomicU64,
    write_dropped: AtomicU64,
}

/// A snapshot of [`StoreStats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreCounts {
    /// Lookups the store answered with a sealed session that opened.
    pub found: u64,
    /// Lookups the store had nothing for.
    pub missing: u64,
    /// Lookups not answered within the timeout.
    pub timed_out: u64,
    /// Lookups that failed (store down or in error).
    pub failed: u64,
    /// Lookups not asked because too many were waiting.
    pub refused: u64,
    /// Values that did not open (another fleet's, or forged).
    pub unopened: u64,
    /// Sessions written.
    pub written: u64,
    /// Writes that failed.
    pub write_failed: u64,
    /// Writes dropped because too many were waiting.
    pub write_dropped: u64,
}

impl StoreStats {
    /// The counters now.
    pub fn counts(&self) -> StoreCounts {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StoreCounts {
            found: l(&self.found),
            missing: l(&self.missing),
            timed_out: l(&self.timed_out),
            failed: l(&self.failed),
            refused: l(&self.refused),
            unopened: l(&self.unopened),
            written: l(&self.written),
            write_failed: l(&self.write_failed),
            write_dropped: l(&self.write_dropped),
        }
    }

    fn count(&self, answer: &Answer) {
        let counter = match answer {
            Answer::Found(_) => &self.found,
            Answer::Missing => &self.missing,
            Answer::TimedOut => &self.timed_out,
            Answer::Failed => &self.failed,
            Answer::Refused => &self.refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

struct Lookup {
    key: String,
    asked: Instant,
    deadline: Duration,
    reply: Arc<OneShot<Answer>>,
}

impl Drop for Lookup {
    /// A lookup dropped unanswered (its task failed, or the client thread went away) still
    /// lets its handshake go on: as a failed lookup, within the store's timeout, not the
    /// handshake's. A second answer is ignored, so answered lookups are unaffected.
    fn drop(&mut self) {
        self.reply.complete(Answer::Failed);
    }
}

struct Write {
    key: String,
    value: Vec<u8>,
    ttl_seconds: u64,
}

/// The client of one store address, shared by every core and context of the process.
#[derive(Debug)]
pub struct StoreClient {
    url: String,
    /// Where cores of the io_uring engine connect by themselves for lookups (`None`: a host
    /// name, which only the client thread resolves).
    target: Option<crate::store_link::Target>,
    /// Whether the cores' own connections reach the store (the store thread has its own).
    link_health: Arc<Health>,
    lookups: tokio::sync::mpsc::Sender<Lookup>,
    writes: tokio::sync::mpsc::Sender<Write>,
    stats: Arc<StoreStats>,
}

/// The CPUs store client threads run on (`None`: wherever the scheduler puts them).
static CPUS: Mutex<Option<Vec<usize>>> = Mutex::new(None);

/// Keeps the client threads started from now on to `cpus`, the CPUs of the cores that ask
/// them: a lookup then hands over to a thread on the same CPUs instead of waking another CPU
/// and back (on a VM a sleeping CPU takes tens of µs to wake; measured in BENCHMARKS.md).
/// A terminator calls it before it builds its contexts.
pub fn keep_on_cpus(cpus: &[usize]) {
    *CPUS.lock().unwrap_or_else(PoisonError::into_inner) = Some(cpus.to_vec());
}

/// Pins the calling thread to [`keep_on_cpus`]'s CPUs, if set; a failure is logged only.
fn pin_to_store_cpus() {
    let Some(cpus) = CPUS.lock().unwrap_or_else(PoisonError::into_inner).clone() else {
        return;
    };
    let mut set = nix::sched::CpuSet::new();
    for &cpu in &cpus {
        let _ = set.set(cpu);
    }
    if let Err(error) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set) {
        tracing::warn!(%error, ?cpus, "session store thread left unpinned");
    }
}

fn clients() -> &'static Mutex<HashMap<String, Arc<StoreClient>>> {
    static CLIENTS: OnceLock<Mutex<HashMap<String, Arc<StoreClient>>>> = OnceLock::new();
    CLIENTS.get_or_init(Default::default)
}

/// Every store client of this process, for metrics.
pub fn all_clients() -> Vec<Arc<StoreClient>> {
    clients()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
        .cloned()
        .collect()
}

impl StoreClient {
    /// The process's client of the store at `url` (a URL [`StoreSettings::new`] accepted),
    /// started on first use; it connects when first asked and reconnects by itself.
    pub fn for_url(url: &str) -> Result<Arc<Self>, TlsError> {
        let mut clients = clients().lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(url) {
            return Ok(client.clone());
        }
        let redis = redis::Client::open(url)
            .map_err(|e| TlsError::Invalid(format!("session store {url:?}: {e}")))?;
        let (lookups, lookup_rx) = tokio::sync::mpsc::channel(LOOKUP_QUEUE);
        let (writes, write_rx) = tokio::sync::mpsc::channel(WRITE_QUEUE);
        let stats = Arc::new(StoreStats::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TlsError::Invalid(format!("session store runtime: {e}")))?;
        let target = crate::store_link::Target::from_info(redis.get_connection_info());
        let health = Arc::new(Health::new(url, "the store thread"));
        let worker = Worker {
            url: url.to_owned(),
            stats: stats.clone(),
            health: health.clone(),
        };
        std::thread::Builder::new()
            .name("fastedge-sessions".into())
            .spawn(move || {
                pin_to_store_cpus();
                runtime.block_on(worker.run(redis, lookup_rx, write_rx))
            })
            .map_err(|e| {
                TlsError::Invalid(format!("session store {url:?}: starting its thread: {e}"))
            })?;
        let client = Arc::new(Self {
            url: url.to_owned(),
            target,
            link_health: Arc::new(Health::new(url, "the cores' own connections")),
            lookups,
            writes,
            stats,
        });
        clients.insert(url.to_owned(), client.clone());
        Ok(client)
    }

    /// The store's address.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The store's counters.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Asks the store for `session_id`; the answer comes within `deadline`.
    ///
    /// On a core of the io_uring engine the core asks Redis itself, over its own connection
    /// (see `store_link`); elsewhere the store's client thread asks.
    pub fn lookup(&self, session_id: &[u8], deadline: Duration) -> AnswerFuture {
        let reply = Arc::new(OneShot::default());
        let key = redis_key(session_id);
        if deadline.is_zero() {
            reply.complete(Answer::TimedOut);
        } else if !self.target.as_ref().is_some_and(|target| {
            crate::store_link::lookup(&self.url, target, &self.link_health, &key, deadline, &reply)
        }) {
            let lookup = Lookup {
                key,
                asked: Instant::now(),
                deadline,
                reply: reply.clone(),
            };
            if self.lookups.try_send(lookup).is_err() {
                reply.complete(Answer::Refused);
            }
        }
        AnswerFuture {
            reply,
            stats: self.stats.clone(),
            counted: false,
        }
    }

    /// Queues `value` to be written under `session_id`, expiring after `ttl`; never waits (a
    /// full queue drops it, counted).
    pub fn write(&self, session_id: &[u8], value: Vec<u8>, ttl: Duration) {
        let write = Write {
            key: redis_key(session_id),
            value,
            ttl_seconds: ttl.as_secs().max(1),
        };
        if self.writes.try_send(write).is_err() {
            self.stats.write_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The answer to a lookup, when it comes (always within the lookup's deadline). Counted once.
pub struct AnswerFuture {
    reply: Arc<OneShot<Answer>>,
    stats: Arc<StoreStats>,
    counted: bool,
}

impl std::fmt::Debug for AnswerFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerFuture")
            .field("counted", &self.counted)
            .finish_non_exhaustive()
    }
}

impl Future for AnswerFuture {
    type Output = Answer;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        let answer = std::task::ready!(self.reply.poll_value(cx));
        if !self.counted {
            self.counted = true;
            self.stats.count(&answer);
        }
        Poll::Ready(answer)
    }
}

/// The client thread's side.
struct Worker {
    url: String,
    stats: Arc<StoreStats>,
    health: Arc<Health>,
}

impl Worker {
    async fn run(
        self,
        redis: redis::Client,
        mut lookups: tokio::sync::mpsc::Receiver<Lookup>,
        mut writes: tokio::sync::mpsc::Receiver<Write>,
    ) {
        // Lookups must be answered quickly even while Redis is unreachable: a connection
        // attempt is bounded, and retried from scratch by the next command.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(BACKOFF_MIN)
            .set_max_delay(BACKOFF_MAX);
        let manager = match redis::aio::ConnectionManager::new_lazy_with_config(redis, config) {
            Ok(manager) => manager,
            Err(e) => {
                tracing::error!(store = %self.url, error = %e, "session store unusable: every session-ID resumption from other boxes is a full handshake");
                // Answer everything as failed rather than leave handshakes waiting.
                let stats = self.stats.clone();
                let drain_writes = async move {
                    while writes.recv().await.is_some() {
                        stats.write_failed.fetch_add(1, Ordering::Relaxed);
                    }
                };
                let answer_lookups = async move {
                    while let Some(lookup) = lookups.recv().await {
                        lookup.reply.complete(Answer::Failed);
                    }
                };
                futures_lite::future::zip(drain_writes, answer_lookups).await;
                return;
            }
        };
        let worker = Arc::new(self);
        let writer = {
            let worker = worker.clone();
            let manager = manager.clone();
            // Writes overlap (a box writes faster than one per round trip), at most this many
            // at once; the queue in front holds the rest.
            let in_flight = Arc::new(tokio::sync::Semaphore::new(WRITES_IN_FLIGHT));
            tokio::spawn(async move {
                while let Some(write) = writes.recv().await {
                    let Ok(permit) = in_flight.clone().acquire_owned().await else {
                        break;
                    };
                    let worker = worker.clone();
                    let mut conn = manager.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        let command = redis::cmd("SET")
                            .arg(&write.key)
                            .arg(&write.value)
                            .arg("EX")
                            .arg(write.ttl_seconds)
                            .to_owned();
                        let result = tokio::time::timeout(
                            WRITE_TIMEOUT,
                            command.query_async::<()>(&mut conn),
                        )
                        .await;
                        match result {
                            Ok(Ok(())) => {
                                worker.stats.written.fetch_add(1, Ordering::Relaxed);
                                worker.health.mark_up();
                            }
                            Ok(Err(e)) => {
                                worker.stats.write_failed.fetch_add(1, Ordering::Relaxed);
                                worker.failed(&e);
                            }
                            Err(_) => {
                                worker.stats.write_failed.fetch_add(1, Ordering::Relaxed);
                                worker.health.mark_down("a write took over 1 s");
                            }
                        }
                    });
                }
            })
        };
        // Lookups in flight at most: each ends within its deadline, and one more is answered
        // "refused" at once rather than queued behind a stalled store.
        let in_flight = Arc::new(tokio::sync::Semaphore::new(LOOKUP_QUEUE));
        while let Some(lookup) = lookups.recv().await {
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                lookup.reply.complete(Answer::Refused);
                continue;
            };
            let worker = worker.clone();
            let mut conn = manager.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let left = lookup.deadline.saturating_sub(lookup.asked.elapsed());
                if left.is_zero() {
                    lookup.reply.complete(Answer::TimedOut);
                    return;
                }
                // At most one byte past the longest sealed session is read: a huge value put
                // in the store costs nothing (it does not parse, and is counted unopened).
                let command = redis::cmd("GETRANGE")
                    .arg(&lookup.key)
                    .arg(0)
                    .arg(layout::MAX_SEALED)
                    .to_owned();
                let get = command.query_async::<Vec<u8>>(&mut conn);
                let answer = match tokio::time::timeout(left, get).await {
                    // Redis answers an empty string for a key it does not hold.
                    Ok(Ok(value)) if value.is_empty() => {
                        worker.health.mark_up();
                        Answer::Missing
                    }
                    Ok(Ok(value)) => {
                        worker.health.mark_up();
                        Answer::Found(value)
                    }
                    Ok(Err(e)) => {
                        worker.failed(&e);
                        Answer::Failed
                    }
                    Err(_) => Answer::TimedOut,
                };
                lookup.reply.complete(answer);
            });
        }
        writer.abort();
    }

    /// A command failed: the store counts as down only for connection trouble; an error
    /// answer is logged (at most once a minute).
    fn failed(&self, error: &redis::RedisError) {
        if error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_timeout()
        {
            self.health.mark_down(&error.to_string());
        } else {
            self.health.error_answer(error);
        }
    }
}

/// Puts the store behind BoringSSL's session cache of `builder` (the context that starts
/// handshakes: sessions live in its cache): sessions it caches are also sealed and written to
/// the store, expiring after `session_timeout`, and session IDs its cache does not hold are
/// looked up in the store, waiting at most `timeout`.
pub fn install(
    builder: &mut SslContextBuilder,
    client: Arc<StoreClient>,
    seal: Arc<SessionSeal>,
    timeout: Duration,
    session_timeout: Duration,
) {
    {
        let client = client.clone();
        let seal = seal.clone();
        builder.set_new_session_callback(move |_ssl, session| {
            let id = session.id().to_vec();
            // TLS 1.3 resumes only with tickets, which every box of the fleet decrypts already.
            if id.is_empty() || session.protocol_version() == boring::ssl::SslVersion::TLS1_3 {
                return;
            }
            let sealed = session
                .to_der()
                .map_err(TlsError::Setup)
                .and_then(|der| seal.seal(&id, &der));
            match sealed {
                Ok(value) => client.write(&id, value, session_timeout),
                Err(e) => {
                    client.stats.write_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "a session could not be sealed for the store");
                }
            }
        });
    }
    let callback =
        move |_ssl: &mut boring::ssl::SslRef, id: &[u8]| -> Option<BoxGetSessionFuture> {
            let answer = client.lookup(id, timeout);
            let seal = seal.clone();
            let stats = client.stats.clone();
            let id = id.to_vec();
            Some(Box::pin(async move {
                let Answer::Found(value) = answer.await else {
                    return None;
                };
                match seal.open(&id, &value) {
                    Ok(der) => {
                        let finish: BoxGetSessionFinish =
                            Box::new(move |_ssl, _id| SslSession::from_der(&der).ok());
                        Some(finish)
                    }
                    Err(e) => {
                        stats.unopened.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = ?e, "a stored session did not open");
                        None
                    }
                }
            }))
        };
    // SAFETY: the sessions the callback returns are parsed from bytes (`SslSession::from_der`)
    // and belong to no other context, which is what the callback's contract asks.
    unsafe { builder.set_async_get_session_callback(callback) };
}

/// Renders every store client's counters (Prometheus text), zeros when there is none, so the
/// families are always there to be scraped.
pub fn render_metrics(out: &mut String) {
    let clients = all_clients();
    let sum = |read: &dyn Fn(&StoreCounts) -> u64| -> u64 {
        clients.iter().map(|c| read(&c.stats.counts())).sum()
    };
    let lookups: Vec<(String, u64)> = [
        ("found", sum(&|c| c.found)),
        ("missing", sum(&|c| c.missing)),
        ("timed_out", sum(&|c| c.timed_out)),
        ("failed", sum(&|c| c.failed)),
        ("refused", sum(&|c| c.refused)),
    ]
    .into_iter()
    .map(|(result, n)| (label("result", result), n))
    .collect();
    write_family(
        out,
        "fastedge_session_store_lookups_total",
        "counter",
        "Session-ID lookups in the shared session store, by result (found: the store held it; a found value that did not open counts in fastedge_session_store_unopened_total too).",
        &lookups,
    );
    write_family(
        out,
        "fastedge_session_store_unopened_total",
        "counter",
        "Values from the session store that did not open (another fleet's, or forged).",
        &[(String::new(), sum(&|c| c.unopened))],
    );
    let writes: Vec<(String, u64)> = [
        ("written", sum(&|c| c.written)),
        ("failed", sum(&|c| c.write_failed)),
        ("dropped", sum(&|c| c.write_dropped)),
    ]
    .into_iter()
    .map(|(result, n)| (label("result", result), n))
    .collect();
    write_family(
        out,
        "fastedge_session_store_writes_total",
        "counter",
        "Sessions written to the shared session store, by result (dropped: too many waiting).",
        &writes,
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_session_id_is_keyed_as_lower_case_hex() {
        assert_eq!(
            super::redis_key(&[0x00, 0x0a, 0xab, 0xff]),
            format!("{}000aabff", super::KEY_PREFIX)
        );
    }

    use super::*;

    fn seal(secret: &[u8]) -> SessionSeal {
        SessionSeal::from_secrets(&[secret]).unwrap()
    }

    #[test]
    fn a_sealed_session_opens_under_its_own_id_only() {
        let s = seal(&[1; 32]);
        let value = s.seal(b"id-1", b"the session").unwrap();
        assert!(!value.windows(11).any(|w| w == b"the session"));
        assert_eq!(s.open(b"id-1", &value).unwrap(), b"the session");
        assert_eq!(s.open(b"id-2", &value), Err(OpenError::Forged));
        let mut changed = value.clone();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        assert_eq!(s.open(b"id-1", &changed), Err(OpenError::Forged));
    }

    #[test]
    fn another_fleets_sessions_do_not_open() {
        let value = seal(&[1; 32]).seal(b"id", b"x").unwrap();
        assert_eq!(
            seal(&[2; 32]).open(b"id", &value),
            Err(OpenError::UnknownKey)
        );
        assert!(matches!(
            seal(&[1; 32]).open(b"id", b"junk"),
            Err(OpenError::Shape(_))
        ));
    }

    #[test]
    fn during_a_secret_change_both_secrets_open() {
        let old = seal(&[1; 32]);
        let both = SessionSeal::from_secrets(&[&[2; 32], &[1; 32]]).unwrap();
        let from_old = old.seal(b"id", b"old").unwrap();
        assert_eq!(both.open(b"id", &from_old).unwrap(), b"old");
        let from_new = both.seal(b"id", b"new").unwrap();
        assert_eq!(seal(&[2; 32]).open(b"id", &from_new).unwrap(), b"new");
        assert_eq!(old.open(b"id", &from_new), Err(OpenError::UnknownKey));
    }

    #[test]
    fn store_addresses_are_checked() {
        let new = |address: &str| {
            StoreSettings::new(address, Duration::from_millis(20), "s".into(), None)
        };
        assert_eq!(
            new("unix:/run/redis.sock").unwrap().url,
            "redis+unix:///run/redis.sock"
        );
        assert!(new("redis://10.0.0.1:6379/2").is_ok());
        for bad in ["rediss://h", "http://h", "", "redis://"] {
            assert!(new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_lookup_dropped_unanswered_still_answers() {
        let reply = Arc::new(OneShot::default());
        drop(Lookup {
            key: redis_key(b"id"),
            asked: Instant::now(),
            deadline: Duration::from_secs(1),
            reply: reply.clone(),
        });
        let waker = std::task::Waker::noop();
        assert_eq!(
            reply.poll_value(&Context::from_waker(waker)),
            Poll::Ready(Answer::Failed)
        );
    }

    #[test]
    fn each_session_is_sealed_under_its_own_key() {
        let s = seal(&[1; 32]);
        let key = &s.keys[0];
        assert_ne!(
            key.session_key(b"a").unwrap(),
            key.session_key(b"b").unwrap()
        );
        assert_eq!(
            key.session_key(b"a").unwrap(),
            key.session_key(b"a").unwrap()
        );
    }

    #[test]
    fn a_dead_store_answers_within_the_deadline() {
        // Nothing listens on port 1: every lookup fails or times out, never hangs.
        let client = StoreClient::for_url("redis://127.0.0.1:1/").unwrap();
        let started = Instant::now();
        let answer =
            futures_lite::future::block_on(client.lookup(b"some id", Duration::from_millis(50)));
        assert!(
            matches!(answer, Answer::Failed | Answer::TimedOut),
            "{answer:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
