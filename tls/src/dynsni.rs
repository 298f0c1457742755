//! Dynamic SNI: contexts for server names that no `[[context]]` lists, asked of an HTTP
//! service, compatible with bud's: `GET <url with %s = the percent-encoded name>`; `404` means
//! "no such name" (the default context serves it, or `sni_strict` refuses it); `200` carries a
//! JSON context, `{"cert": PEM or [PEM…], "key": PEM or [PEM…], "passphrase"?: string or
//! [string…], "ciphers"?: string, "npn"?: [protocol…]}`, parsed by
//! `fastedge_wire::sni_answer`.
//!
//! Lookups never block a core. One cache serves every core (answers for `sni_cache_ttl`, 404s
//! for `sni_negative_ttl`, failures for a few seconds; at most `sni_cache_size` names in all,
//! the least recently used dropped first, in constant time); names are looked up without a
//! trailing dot (`a.test.` is `a.test`). A name being fetched is fetched once per core however
//! many handshakes wait for it. Fetches run on
//! `sni_fetchers` helper threads (so at most that many connections to the service), each with
//! the `sni_timeout` deadline and a bounded answer; the context is built there too. Whatever
//! the service does (slow, down, reset, 500, not JSON, `{}`, huge), the handshake goes on with
//! the default context (or fails cleanly under `sni_strict`), and the reason is logged.

use crate::oneshot::OneShot;
use std::{
    cell::RefCell,
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use boring::{pkey::PKey, x509::X509};
use fastedge_wire::logtext::Untrusted;

use crate::{
    certset::{runtime_set, CertSet},
    config::{DynamicSniSettings, TlsSettings},
    tickets::TicketKeys,
};

/// How long a failed lookup (not a 404) keeps its name on the default context.
const FAILURE_TTL: Duration = Duration::from_secs(5);
/// Largest answer accepted from the service.
const MAX_ANSWER: usize = 1024 * 1024;

/// What a fetch found: a context, no such name (`None`), or why it failed.
pub(crate) type Outcome = Result<Option<Arc<CertSet>>, String>;

/// Where a fetch's outcome lands, for every handshake waiting on it.
type Waiting = OneShot<Outcome>;

/// A lookup that has to wait for the service.
pub(crate) struct Wait(Arc<Waiting>);

impl Wait {
    /// The fetch this waits for, to settle exactly it.
    pub fn fetch_id(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }
}

impl Future for Wait {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        self.0.poll_value(cx)
    }
}

pub(crate) enum Lookup {
    /// Known on this core: a context, or none (the default serves).
    Ready(Option<Arc<CertSet>>),
    Wait(Wait),
}

struct Cached {
    found: Option<Arc<CertSet>>,
    until: Instant,
}

thread_local! {
    /// This core's fetches in flight.
    static IN_FLIGHT: RefCell<HashMap<(u64, String), Arc<Waiting>>> = RefCell::new(HashMap::new());
}

/// Names queued for the fetchers at most, per fetcher; more fail at once (a flood of made-up
/// names must not pile up work).
const QUEUE_PER_FETCHER: usize = 64;
/// Fetches in flight on one core at most.
const MAX_IN_FLIGHT: usize = 4096;

/// A queued fetch: the name, where its outcome goes, when it was queued.
type Job = (String, Arc<Waiting>, Instant);

/// The dynamic SNI client of one configuration load.
pub(crate) struct DynamicSni {
    id: u64,
    settings: DynamicSniSettings,
    fetch: Mutex<mpsc::SyncSender<Job>>,
    /// Every core's answers, by name; `None` when `sni_cache_size` is 0.
    cache: Option<Mutex<lru::LruCache<String, Cached>>>,
}

/// The name as cached and fetched: without its trailing dot (the absolute form of the same
/// name).
fn normalise(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

impl DynamicSni {
    /// Starts the fetcher threads; contexts are built with `view` (the default context's
    /// settings) and `tickets`.
    pub fn new(
        settings: DynamicSniSettings,
        view: TlsSettings,
        tickets: Option<Arc<TicketKeys>>,
    ) -> Result<Self, crate::TlsError> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let (tx, rx) = mpsc::sync_channel::<Job>(settings.fetchers.max(1) * QUEUE_PER_FETCHER);
        let rx = Arc::new(Mutex::new(rx));
        let shared = Arc::new((settings.clone(), view, tickets));
        for n in 0..settings.fetchers.max(1) {
            let rx = rx.clone();
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("fastedge-sni-{n}"))
                .spawn(move || loop {
                    let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((name, waiting, queued)) = job else { return };
                    let (settings, view, tickets) = &*shared;
                    // Handshakes waiting longer than this have timed out or moved on.
                    let outcome = if queued.elapsed() > settings.timeout * 4 {
                        Err("waited too long for a free SNI fetcher".to_owned())
                    } else {
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            fetch(settings, view, tickets.as_ref(), &name)
                        }))
                        .unwrap_or_else(|_| Err("the SNI fetcher failed unexpectedly".into()))
                    };
                    if let Err(why) = &outcome {
                        tracing::warn!(
                            server_name = %Untrusted(&name),
                            reason = %Untrusted(why),
                            "dynamic SNI lookup failed; the default context serves this name for now"
                        );
                    }
                    waiting.complete(outcome);
                })
                .map_err(|e| crate::TlsError::Invalid(format!("starting SNI fetchers: {e}")))?;
        }
        let cache = std::num::NonZeroUsize::new(settings.cache_size)
            .map(|size| Mutex::new(lru::LruCache::new(size)));
        Ok(Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            settings,
            fetch: Mutex::new(tx),
            cache,
        })
    }

    /// What this core knows about `name` (lower case), or a wait for the service.
    pub fn lookup(&self, name: &str) -> Lookup {
        let name = normalise(name);
        let key = (self.id, name.to_owned());
        let now = Instant::now();
        let cached = self.cache.as_ref().and_then(|cache| {
            let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
            match cache.get(name) {
                Some(c) if c.until > now => Some(c.found.clone()),
                Some(_) => {
                    cache.pop(name);
                    None
                }
                None => None,
            }
        });
        if let Some(found) = cached {
            return Lookup::Ready(found);
        }
        IN_FLIGHT.with(|in_flight| {
            let mut in_flight = in_flight.borrow_mut();
            if let Some(waiting) = in_flight.get(&key) {
                // An outcome no handshake collected in time is not reused once stale.
                let stale = waiting
                    .completed_at()
                    .is_some_and(|at| at.elapsed() > FAILURE_TTL);
                if !stale {
                    return Lookup::Wait(Wait(waiting.clone()));
                }
                in_flight.remove(&key);
            }
            if in_flight.len() >= MAX_IN_FLIGHT / 4 {
                // Fetches whose handshakes all went away before they finished.
                in_flight.retain(|_, w| w.completed_at().is_none());
            }
            if in_flight.len() >= MAX_IN_FLIGHT {
                return Lookup::Ready(None);
            }
            let waiting = Arc::new(Waiting::default());
            let sent = self
                .fetch
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .try_send((name.to_owned(), waiting.clone(), Instant::now()));
            match sent {
                Ok(()) => {}
                Err(mpsc::TrySendError::Full(_)) => {
                    waiting.complete(Err("too many names waiting for the SNI service".into()))
                }
                Err(mpsc::TrySendError::Disconnected(_)) => {
                    waiting.complete(Err("the SNI fetcher threads have stopped".into()))
                }
            }
            in_flight.insert(key, waiting.clone());
            Lookup::Wait(Wait(waiting))
        })
    }

    /// Records a finished fetch in this core's cache (once per name, whoever comes first) and
    /// returns what it found.
    pub fn settle(&self, name: &str, fetch_id: usize, outcome: Outcome) -> Option<Arc<CertSet>> {
        let name = normalise(name);
        let key = (self.id, name.to_owned());
        let ours = IN_FLIGHT.with(|in_flight| {
            let mut in_flight = in_flight.borrow_mut();
            let ours = in_flight
                .get(&key)
                .is_some_and(|w| Arc::as_ptr(w) as usize == fetch_id);
            if ours {
                in_flight.remove(&key);
            }
            ours
        });
        if !ours {
            // A newer fetch for the name is under way (or settled): this late outcome serves
            // its handshake and is not cached.
            return outcome.ok().flatten();
        }
        let (found, ttl) = match outcome {
            Ok(Some(set)) => (Some(set), self.settings.cache_ttl),
            Ok(None) => (None, self.settings.negative_ttl),
            Err(_) => (
                None,
                FAILURE_TTL.min(self.settings.negative_ttl.max(Duration::from_millis(1))),
            ),
        };
        if let Some(cache) = &self.cache {
            // At capacity, `put` drops the least recently used name: constant time.
            cache.lock().unwrap_or_else(|p| p.into_inner()).put(
                name.to_owned(),
                Cached {
                    found: found.clone(),
                    until: Instant::now() + ttl,
                },
            );
        }
        found
    }
}

/// Asks the service about `name` and builds the context it describes.
fn fetch(
    settings: &DynamicSniSettings,
    view: &TlsSettings,
    tickets: Option<&Arc<TicketKeys>>,
    name: &str,
) -> Outcome {
    let mut escaped = Vec::new();
    fastedge_wire::forwarded::percent_encode(name, &mut escaped);
    let url = settings
        .url
        .replacen("%s", &String::from_utf8_lossy(&escaped), 1);
    let (status, body) = crate::http::http("GET", &url, "", &[], settings.timeout, MAX_ANSWER)
        .map_err(|e| format!("SNI service {url}: {e}"))?;
    match status {
        404 => return Ok(None),
        200..=299 => {}
        other => return Err(format!("SNI service {url} answered HTTP {other}")),
    }
    let answer = fastedge_wire::sni_answer::parse(&body).map_err(|error| match error {
        fastedge_wire::sni_answer::AnswerError::Invalid(message) => message,
        other => format!("SNI service answer for {name} {other}"),
    })?;
    let mut pairs = Vec::with_capacity(answer.pairs.len());
    for fastedge_wire::sni_answer::CertKey {
        cert,
        key,
        passphrase,
    } in &answer.pairs
    {
        let chain = X509::stack_from_pem(cert.as_bytes())
            .map_err(|e| format!("the answer's certificate: {e}"))?;
        if chain.is_empty() {
            return Err("the answer's \"cert\" holds no PEM certificate".into());
        }
        let key = match passphrase {
            Some(p) => PKey::private_key_from_pem_passphrase(key.as_bytes(), p.as_bytes()),
            None => PKey::private_key_from_pem(key.as_bytes()),
        }
        .map_err(|e| format!("the answer's key: {e}"))?;
        pairs.push((chain, key));
    }
    let starting_ciphers = view.ciphers.clone();
    let mut view = view.clone();
    if let Some(ciphers) = answer.ciphers {
        view.ciphers = Some(ciphers);
    }
    if let Some(npn) = answer.npn {
        view.alpn = npn
            .into_iter()
            // Unrewritable when the global backends get forwarding headers.
            .filter(|p| !(view.alpn_no_h2 && p == "h2"))
            .collect();
    }
    let set = runtime_set(pairs, &view, &starting_ciphers, tickets)
        .map_err(|e| format!("building the context for {name}: {e}"))?;
    Ok(Some(Arc::new(set)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn dynamic(cache_size: usize) -> Arc<DynamicSni> {
        let settings = DynamicSniSettings {
            // Nothing listens there: the fetchers' own outcomes are never used below.
            url: "http://127.0.0.1:9/%s".into(),
            timeout: Duration::from_millis(100),
            cache_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(60),
            cache_size,
            fetchers: 1,
        };
        let view = crate::config::ServeConfig::default().tls;
        Arc::new(DynamicSni::new(settings, view, None).unwrap())
    }

    /// Looks `name` up; when it has to wait, settles it at once as "no such name" (a 404).
    /// True when it was cached.
    fn cached(sni: &DynamicSni, name: &str) -> bool {
        match sni.lookup(name) {
            Lookup::Ready(_) => true,
            Lookup::Wait(wait) => {
                sni.settle(name, wait.fetch_id(), Ok(None));
                false
            }
        }
    }

    /// Issue 14, defect 5: one cache for every core, bounded in total, the least recently used
    /// name dropped first, and a name with a trailing dot the same as without.
    #[test]
    fn one_bounded_cache_for_every_core_and_names_without_their_dot() {
        let sni = dynamic(4);
        for n in 0..4 {
            assert!(!cached(&sni, &format!("n{n}.test")));
        }
        // Another core finds them; `n0.test.` is `n0.test`.
        let other = sni.clone();
        std::thread::spawn(move || {
            for n in 0..4 {
                assert!(
                    cached(&other, &format!("n{n}.test.")),
                    "n{n} on another core"
                );
            }
        })
        .join()
        .unwrap();
        // A fifth name: the least recently used (n0) goes, the others stay.
        assert!(!cached(&sni, "n4.test"));
        for n in 1..5 {
            assert!(cached(&sni, &format!("n{n}.test")), "n{n} kept");
        }
        assert!(!cached(&sni, "n0.test"), "n0 was dropped");
        assert_eq!(sni.cache.as_ref().unwrap().lock().unwrap().len(), 4);
        // No cache at all with sni_cache_size = 0.
        let uncached = dynamic(0);
        assert!(!cached(&uncached, "a.test"));
        assert!(!cached(&uncached, "a.test"));
    }
}
