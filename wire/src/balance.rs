//! Choosing a backend, and passive health: a sans-IO state machine over connect outcomes.
//!
//! Inputs: [`Balancer::pick`] (which backend for a new connection), [`Balancer::connected`],
//! [`Balancer::connect_failed`], [`Balancer::abandoned`] (a connect cancelled before it ended)
//! and [`Balancer::closed`]; every pick ends in exactly one of the last four; the current time is an argument of
//! each, so the logic is deterministic under test. Health follows bud's availability model: a
//! backend whose connects have kept failing for `death_timeout` is dead; after
//! `revive_interval` one connection is let through to probe it, and a success revives it.
//! Each core keeps its own `Balancer`; nothing is shared between cores.

use std::time::{Duration, Instant};

/// How the next backend is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceMode {
    /// In turn, skipping dead backends.
    RoundRobin,
    /// The first live backend in list order (the others are fallbacks).
    OnFail,
    /// The live backend with the fewest open connections (from this core), ties in list order.
    LeastConn,
}

/// Passive health settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSettings {
    /// Failing connects for this long, with no success between, mark a backend dead.
    pub death_timeout: Duration,
    /// A dead backend is probed again after this long.
    pub revive_interval: Duration,
}

/// Health of one backend as this core sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Connects succeed (or none failed since the last success).
    Alive,
    /// Connects are failing since `since`, not yet for `death_timeout`.
    Failing {
        /// When the first connect of the current failing run failed.
        since: Instant,
    },
    /// Dead since `since`; `probing` while one probe connection is in flight.
    Dead {
        /// When the backend was marked dead.
        since: Instant,
        /// One probe connect is in flight; other clients wait for it instead of probing too.
        probing: bool,
    },
}

#[derive(Debug, Clone)]
struct Backend {
    health: Health,
    active: u32,
}

/// What changed in a backend's health, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthChange {
    /// The backend at this index was marked dead (failing for `death_timeout`).
    Died(usize),
    /// The backend at this index answered again after being dead.
    Revived(usize),
}

/// Backend choice and health for one core.
#[derive(Debug, Clone)]
pub struct Balancer {
    mode: BalanceMode,
    health: HealthSettings,
    backends: Vec<Backend>,
    next: usize,
}

impl Balancer {
    /// A balancer over `count` backends, all alive.
    pub fn new(mode: BalanceMode, health: HealthSettings, count: usize) -> Self {
        Self {
            mode,
            health,
            backends: vec![
                Backend {
                    health: Health::Alive,
                    active: 0
                };
                count
            ],
            next: 0,
        }
    }

    /// The health of backend `backend` (its index in the configuration) as this core sees it;
    /// `None` when there is no such backend.
    pub fn health(&self, backend: usize) -> Option<Health> {
        self.backends.get(backend).map(|b| b.health)
    }

    /// Open connections to `backend` from this core.
    pub fn active(&self, backend: usize) -> u32 {
        self.backends.get(backend).map_or(0, |b| b.active)
    }

    /// Whether `backend` may take a connection now: alive or failing, or dead and due for a
    /// probe.
    ///
    /// A dead mark exists to send clients elsewhere, so it only holds while there is somewhere
    /// else to go: the only backend of a group is always tried (a dead mark must never refuse a
    /// client the backend could serve), and when every backend is dead a probe goes out at once
    /// (one in flight per backend) instead of after `revive_interval`.
    fn usable(&self, backend: usize, now: Instant) -> bool {
        match self.backends[backend].health {
            Health::Alive | Health::Failing { .. } => true,
            Health::Dead { .. } if self.backends.len() == 1 => true,
            Health::Dead { since, probing } => {
                !probing
                    && (now.saturating_duration_since(since) >= self.health.revive_interval
                        || self.all_dead())
            }
        }
    }

    fn all_dead(&self) -> bool {
        self.backends
            .iter()
            .all(|b| matches!(b.health, Health::Dead { .. }))
    }

    /// Picks a backend for a new connection, skipping those in `tried` (already failed for
    /// this connection). The pick counts as an open connection until [`Self::connect_failed`],
    /// [`Self::abandoned`] or [`Self::closed`].
    ///
    /// `None` when no backend is usable now: with `tried` empty that means every backend is
    /// dead and being probed (or there is none), and the caller should wait a little and pick
    /// again while its connect budget lasts, since a probe's success revives the backend for
    /// the waiting clients.
    pub fn pick(&mut self, now: Instant, tried: &[usize]) -> Option<usize> {
        let n = self.backends.len();
        let candidates = |start: usize| (0..n).map(move |i| (start + i) % n);
        let chosen = match self.mode {
            BalanceMode::RoundRobin => {
                let start = self.next;
                let found = candidates(start).find(|&i| !tried.contains(&i) && self.usable(i, now));
                if let Some(i) = found {
                    self.next = (i + 1) % n;
                }
                found
            }
            BalanceMode::OnFail => (0..n).find(|&i| !tried.contains(&i) && self.usable(i, now)),
            BalanceMode::LeastConn => (0..n)
                .filter(|&i| !tried.contains(&i) && self.usable(i, now))
                .min_by_key(|&i| self.backends[i].active),
        }?;
        let backend = &mut self.backends[chosen];
        if let Health::Dead { since, .. } = backend.health {
            backend.health = Health::Dead {
                since,
                probing: true,
            };
        }
        backend.active += 1;
        Some(chosen)
    }

    /// The connect to `backend` succeeded.
    pub fn connected(&mut self, backend: usize) -> Option<HealthChange> {
        let b = self.backends.get_mut(backend)?;
        let was_dead = matches!(b.health, Health::Dead { .. });
        b.health = Health::Alive;
        was_dead.then_some(HealthChange::Revived(backend))
    }

    /// The connect to `backend` (from [`Self::pick`]) failed at `now`.
    pub fn connect_failed(&mut self, backend: usize, now: Instant) -> Option<HealthChange> {
        let b = self.backends.get_mut(backend)?;
        b.active = b.active.saturating_sub(1);
        self.record_failure(backend, now)
    }

    /// An active health check of `backend` succeeded: a dead backend is alive again.
    pub fn probe_succeeded(&mut self, backend: usize) -> Option<HealthChange> {
        self.connected(backend)
    }

    /// An active health check of `backend` failed at `now`; counts like a failed connect.
    pub fn probe_failed(&mut self, backend: usize, now: Instant) -> Option<HealthChange> {
        self.record_failure(backend, now)
    }

    fn record_failure(&mut self, backend: usize, now: Instant) -> Option<HealthChange> {
        let death_timeout = self.health.death_timeout;
        let b = self.backends.get_mut(backend)?;
        let (health, change) = match b.health {
            Health::Alive if death_timeout.is_zero() => (
                Health::Dead {
                    since: now,
                    probing: false,
                },
                Some(HealthChange::Died(backend)),
            ),
            Health::Alive => (Health::Failing { since: now }, None),
            Health::Failing { since } if now.saturating_duration_since(since) >= death_timeout => (
                Health::Dead {
                    since: now,
                    probing: false,
                },
                Some(HealthChange::Died(backend)),
            ),
            failing @ Health::Failing { .. } => (failing, None),
            // A failed probe: dead again, from now.
            Health::Dead { .. } => (
                Health::Dead {
                    since: now,
                    probing: false,
                },
                None,
            ),
        };
        b.health = health;
        change
    }

    /// A pick of `backend` ended before its connect did (the client went away and the connect
    /// was cancelled): it no longer counts as open, and a probe it was is over without a
    /// verdict, so the next due pick probes again. Without this a cancelled probe would leave
    /// the backend `probing` (and so skipped) for good.
    pub fn abandoned(&mut self, backend: usize) {
        if let Some(b) = self.backends.get_mut(backend) {
            b.active = b.active.saturating_sub(1);
            if let Health::Dead { since, .. } = b.health {
                b.health = Health::Dead {
                    since,
                    probing: false,
                };
            }
        }
    }

    /// A connection to `backend` (that had connected) closed.
    pub fn closed(&mut self, backend: usize) {
        if let Some(b) = self.backends.get_mut(backend) {
            b.active = b.active.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEALTH: HealthSettings = HealthSettings {
        death_timeout: Duration::from_millis(1000),
        revive_interval: Duration::from_millis(2500),
    };

    fn ms(start: Instant, n: u64) -> Instant {
        start + Duration::from_millis(n)
    }

    #[test]
    fn round_robin_in_turn() {
        let now = Instant::now();
        let mut b = Balancer::new(BalanceMode::RoundRobin, HEALTH, 3);
        let picks: Vec<_> = (0..6).map(|_| b.pick(now, &[]).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert_eq!(b.pick(now, &[0, 1]), Some(2));
    }

    #[test]
    fn on_fail_prefers_the_first_live() {
        let t0 = Instant::now();
        let mut b = Balancer::new(BalanceMode::OnFail, HEALTH, 3);
        assert_eq!(b.pick(t0, &[]), Some(0));
        assert_eq!(b.pick(t0, &[0]), Some(1));
        assert_eq!(b.connect_failed(0, t0), None);
        assert_eq!(
            b.connect_failed(0, ms(t0, 1000)),
            Some(HealthChange::Died(0))
        );
        assert_eq!(b.pick(ms(t0, 1001), &[]), Some(1));
    }

    #[test]
    fn least_conn_counts_open_connections() {
        let now = Instant::now();
        let mut b = Balancer::new(BalanceMode::LeastConn, HEALTH, 3);
        assert_eq!(b.pick(now, &[]), Some(0));
        assert_eq!(b.pick(now, &[]), Some(1));
        assert_eq!(b.pick(now, &[]), Some(2));
        b.closed(1);
        assert_eq!(b.pick(now, &[]), Some(1));
        assert_eq!(b.active(0), 1);
    }

    #[test]
    fn death_then_probe_then_revival() {
        let t0 = Instant::now();
        let mut b = Balancer::new(BalanceMode::RoundRobin, HEALTH, 2);
        // Failing for less than death_timeout: still used.
        b.pick(t0, &[]);
        b.connect_failed(0, t0);
        assert!(matches!(b.health(0), Some(Health::Failing { .. })));
        // A success in between resets it.
        b.connected(0);
        assert_eq!(b.health(0), Some(Health::Alive));
        b.connect_failed(0, ms(t0, 100));
        assert_eq!(
            b.connect_failed(0, ms(t0, 1100)),
            Some(HealthChange::Died(0))
        );
        // Dead: skipped until revive_interval has passed.
        for _ in 0..4 {
            assert_eq!(b.pick(ms(t0, 2000), &[]), Some(1));
        }
        // Due: one probe goes through, not two.
        let due = ms(t0, 1100 + 2500);
        let picks: Vec<_> = (0..3).map(|_| b.pick(due, &[]).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&p| p == 0).count(), 1, "{picks:?}");
        // The probe fails: dead again from now.
        assert_eq!(b.connect_failed(0, due), None);
        assert_eq!(b.pick(ms(t0, 3700), &[]), Some(1));
        // Next probe succeeds: revived.
        let later = due + Duration::from_millis(2500);
        while b.pick(later, &[]) != Some(0) {}
        assert_eq!(b.connected(0), Some(HealthChange::Revived(0)));
        assert_eq!(b.health(0), Some(Health::Alive));
    }

    #[test]
    fn probes_kill_and_revive_without_touching_counts() {
        let t0 = Instant::now();
        let zero = HealthSettings {
            death_timeout: Duration::ZERO,
            revive_interval: Duration::from_secs(3600),
        };
        let mut b = Balancer::new(BalanceMode::OnFail, zero, 2);
        assert_eq!(b.probe_failed(0, t0), Some(HealthChange::Died(0)));
        assert_eq!(b.active(0), 0);
        assert_eq!(b.pick(t0, &[]), Some(1));
        assert_eq!(b.probe_succeeded(0), Some(HealthChange::Revived(0)));
        assert_eq!(b.pick(t0, &[]), Some(0));
    }

    #[test]
    fn a_cancelled_probe_lets_the_next_one_through() {
        let t0 = Instant::now();
        let zero = HealthSettings {
            death_timeout: Duration::ZERO,
            revive_interval: Duration::from_millis(100),
        };
        let mut b = Balancer::new(BalanceMode::OnFail, zero, 2);
        assert_eq!(b.pick(t0, &[]), Some(0));
        assert_eq!(b.connect_failed(0, t0), Some(HealthChange::Died(0)));
        // Due: the probe goes out, and while it is in flight backend 0 is skipped.
        let due = ms(t0, 100);
        assert_eq!(b.pick(due, &[]), Some(0));
        assert_eq!(
            b.health(0),
            Some(Health::Dead {
                since: t0,
                probing: true
            })
        );
        assert_eq!(b.pick(due, &[]), Some(1));
        // The client leaves before the probe's connect ends: no verdict, but no longer probing.
        b.abandoned(0);
        assert_eq!(b.active(0), 0);
        assert_eq!(
            b.health(0),
            Some(Health::Dead {
                since: t0,
                probing: false
            })
        );
        assert_eq!(b.pick(due, &[]), Some(0), "the next pick probes again");
        assert_eq!(b.connected(0), Some(HealthChange::Revived(0)));
        b.closed(0);
        // Abandoning a pick of a live backend only gives its count back.
        assert_eq!(b.pick(due, &[]), Some(0));
        b.abandoned(0);
        assert_eq!(b.health(0), Some(Health::Alive));
        assert_eq!(b.active(0), 0);
    }

    #[test]
    fn all_dead_probes_at_once_and_waits_for_the_probes() {
        let t0 = Instant::now();
        let zero = HealthSettings {
            death_timeout: Duration::ZERO,
            revive_interval: Duration::from_secs(10),
        };
        let mut b = Balancer::new(BalanceMode::RoundRobin, zero, 2);
        for i in 0..2 {
            b.pick(t0, &[]);
            assert_eq!(b.connect_failed(i, t0), Some(HealthChange::Died(i)));
        }
        // Nowhere else to go: each dead backend gets one probe now, not after revive_interval.
        let soon = ms(t0, 10);
        let mut probes = [b.pick(soon, &[]), b.pick(soon, &[])];
        probes.sort();
        assert_eq!(probes, [Some(0), Some(1)]);
        // Both probes in flight: wait.
        assert_eq!(b.pick(soon, &[]), None);
        // One succeeds: revived at once for the waiting clients, and dead marks steer again.
        assert_eq!(b.connected(1), Some(HealthChange::Revived(1)));
        assert_eq!(b.connect_failed(0, soon), None);
        assert_eq!(b.pick(ms(t0, 20), &[]), Some(1));
        assert_eq!(b.pick(ms(t0, 20), &[]), Some(1));
        assert_eq!(
            Balancer::new(BalanceMode::OnFail, zero, 0).pick(t0, &[]),
            None
        );
    }

    #[test]
    fn a_dead_mark_never_refuses_the_only_backend() {
        let t0 = Instant::now();
        let mut b = Balancer::new(BalanceMode::RoundRobin, HEALTH, 1);
        b.pick(t0, &[]);
        b.connect_failed(0, t0);
        b.pick(t0, &[]);
        assert_eq!(
            b.connect_failed(0, ms(t0, 1000)),
            Some(HealthChange::Died(0))
        );
        // Every client is let through, probes in flight or not, well before revive_interval.
        for _ in 0..3 {
            assert_eq!(b.pick(ms(t0, 1001), &[]), Some(0));
        }
        assert_eq!(b.connect_failed(0, ms(t0, 1002)), None);
        assert_eq!(b.pick(ms(t0, 1003), &[]), Some(0));
        // The first connect that succeeds revives it.
        assert_eq!(b.connected(0), Some(HealthChange::Revived(0)));
        assert_eq!(b.health(0), Some(Health::Alive));
    }
}
