//! The data model of `fastedge top` for a running split: what its control socket answers
//! (`status`, `stats`, `rules list`) read into a [`SplitSnapshot`], and per-second rates
//! between two snapshots as rows ([`SplitRates`]).
//!
//! Answers come from another process, so every field is read defensively: a missing or
//! mistyped field reads as zero (or none), and list lengths are capped ([`MAX_ROWS`]).
//! Snapshots carry no clock: the caller says how much time passed between two of them.

use std::{path::Path, time::Duration};

use serde_json::{json, Value};

use crate::control::Command;

/// Rows of one kind (inputs, ways, rules) read from an answer at most.
pub const MAX_ROWS: usize = 4096;

/// One way's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WayCounters {
    /// Frames put on the way so far.
    pub delivered: u64,
    /// Dropped because the way was full.
    pub dropped_full: u64,
    /// Read positions from the consumer that were ignored.
    pub bad_positions: u64,
    /// pid of the attached consumer.
    pub consumer: Option<u64>,
}

/// One input's counters; the drop causes as the kernel names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputCounters {
    /// Interface name or capture file.
    pub name: String,
    /// How it reads (`AF_PACKET TPACKET_V3`, `AF_XDP, XDP native mode`, …).
    pub mode: String,
    /// Frames received so far.
    pub received: u64,
    /// `(cause, count)` for every drop cause of the input, in a fixed order.
    pub drops: Vec<(&'static str, u64)>,
}

/// A pre-filter rule and its hits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleCounters {
    /// The rule id (what `rules del` takes).
    pub id: u64,
    /// The rule as text.
    pub rule: String,
    /// Frames it matched so far.
    pub hits: u64,
}

/// What a running split's control socket says at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SplitSnapshot {
    /// The split's name.
    pub name: String,
    /// Its process id.
    pub pid: u64,
    /// Seconds since it started.
    pub uptime_s: u64,
    /// Per input.
    pub inputs: Vec<InputCounters>,
    /// Per way, by index.
    pub ways: Vec<WayCounters>,
    /// Frames that were not IP.
    pub non_ip: u64,
    /// Frames whose headers did not parse.
    pub parse_errors: u64,
    /// `None` when the split has no pre-filter (its `rules` command answers an error).
    pub rules: Option<Vec<RuleCounters>>,
}

fn number(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn rows(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten().take(MAX_ROWS)
}

/// Why a snapshot could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The socket could not be reached, or did not answer a JSON line.
    #[error("control socket {path}: {source}")]
    Socket {
        /// The control socket's path.
        path: String,
        /// The error of the connect, write or read.
        source: std::io::Error,
    },
    /// The split answered a command with an error.
    #[error("control socket {path}: `{cmd}` failed: {message}")]
    Refused {
        /// The control socket's path.
        path: String,
        /// The command (`status`, `stats`, `rules`).
        cmd: &'static str,
        /// The error the split answered.
        message: String,
    },
}

impl SplitSnapshot {
    /// Reads the answers to `status`, `stats` and (if the split has a pre-filter) `rules
    /// list`. Each answer is the whole JSON object the socket sent.
    pub fn from_answers(status: &Value, stats: &Value, rules: Option<&Value>) -> Self {
        let stats = &stats["stats"];
        let inputs = rows(&stats["inputs"])
            .map(|i| {
                let (xsk, packet) = (&i["xsk"], &i["packet"]);
                InputCounters {
                    name: i["name"].as_str().unwrap_or("?").to_owned(),
                    mode: i["kind"].as_str().unwrap_or("").to_owned(),
                    received: number(&i["received"]),
                    drops: vec![
                        (
                            "kernel: socket dropped (AF_XDP)",
                            number(&xsk["rx_dropped"]),
                        ),
                        (
                            "kernel: RX ring full (AF_XDP)",
                            number(&xsk["rx_ring_full"]),
                        ),
                        (
                            "kernel: fill ring empty (AF_XDP)",
                            number(&xsk["rx_fill_ring_empty"]),
                        ),
                        (
                            "kernel: invalid descriptor (AF_XDP)",
                            number(&xsk["rx_invalid"]),
                        ),
                        ("kernel: ring full (AF_PACKET)", number(&packet["drops"])),
                        ("pre-filter: drop rules", number(&i["prefilter_dropped"])),
                        ("pre-filter: bypass rules", number(&i["prefilter_bypassed"])),
                    ],
                }
            })
            .collect();
        let ways = rows(&stats["ways"])
            .map(|w| WayCounters {
                delivered: number(&w["delivered"]),
                dropped_full: number(&w["dropped_full"]),
                bad_positions: number(&w["bad_positions"]),
                consumer: w["consumer"].as_u64(),
            })
            .collect();
        let rules = rules.filter(|r| r["ok"] == true).map(|r| {
            rows(&r["rules"])
                .map(|r| RuleCounters {
                    id: number(&r["id"]),
                    rule: r["rule"].as_str().unwrap_or("").to_owned(),
                    hits: number(&r["hits"]),
                })
                .collect()
        });
        Self {
            name: status["name"].as_str().unwrap_or("?").to_owned(),
            pid: number(&status["pid"]),
            uptime_s: number(&status["uptime_s"]),
            inputs,
            ways,
            non_ip: number(&stats["non_ip"]),
            parse_errors: number(&stats["parse_errors"]),
            rules,
        }
    }

    /// Asks the split behind control socket `socket` (three requests).
    pub fn fetch(socket: &Path) -> Result<Self, SnapshotError> {
        let ask = |cmd: Command, extra: Value| -> Result<Value, SnapshotError> {
            let mut request = json!({ "cmd": cmd.name() });
            if let (Some(map), Value::Object(extra)) = (request.as_object_mut(), extra) {
                map.extend(extra);
            }
            fastedge_runtime::control::request(socket, &request).map_err(|source| {
                SnapshotError::Socket {
                    path: socket.display().to_string(),
                    source,
                }
            })
        };
        let must = |cmd: Command| -> Result<Value, SnapshotError> {
            let answer = ask(cmd, Value::Null)?;
            if answer["ok"] != true {
                return Err(SnapshotError::Refused {
                    path: socket.display().to_string(),
                    cmd: cmd.name(),
                    message: answer["error"].as_str().unwrap_or("no message").to_owned(),
                });
            }
            Ok(answer)
        };
        let status = must(Command::Status)?;
        let stats = must(Command::Stats)?;
        let rules = ask(Command::Rules, json!({ "op": "list" }))?;
        Ok(Self::from_answers(&status, &stats, Some(&rules)))
    }
}

/// A way's row.
#[derive(Debug, Clone, PartialEq)]
pub struct WayRates {
    /// Index of the way.
    pub way: usize,
    /// Frames put on it per second.
    pub delivered_per_s: f64,
    /// Frames dropped because it was full, per second.
    pub dropped_per_s: f64,
    /// Frames put on it so far.
    pub delivered: u64,
    /// Frames dropped because it was full, so far.
    pub dropped_full: u64,
    /// pid of the attached consumer.
    pub consumer: Option<u64>,
}

/// A drop cause's row (summed over inputs, or the split's own).
#[derive(Debug, Clone, PartialEq)]
pub struct DropRates {
    /// What dropped the frames.
    pub cause: &'static str,
    /// Dropped so far.
    pub total: u64,
    /// Dropped per second.
    pub per_s: f64,
}

/// A rule's row.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleRates {
    /// The rule id.
    pub id: u64,
    /// The rule as text.
    pub rule: String,
    /// Frames it matched so far.
    pub hits: u64,
    /// Frames it matched per second.
    pub hits_per_s: f64,
}

/// An input's row.
#[derive(Debug, Clone, PartialEq)]
pub struct InputRates {
    /// Interface name or capture file.
    pub name: String,
    /// How it reads.
    pub mode: String,
    /// Frames received so far.
    pub received: u64,
    /// Frames received per second.
    pub received_per_s: f64,
}

/// What changed between two snapshots of a split, per second.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitRates {
    /// The split's name.
    pub name: String,
    /// Its process id.
    pub pid: u64,
    /// Seconds since it started.
    pub uptime_s: u64,
    /// A row per input.
    pub inputs: Vec<InputRates>,
    /// A row per way, by index.
    pub ways: Vec<WayRates>,
    /// Ways with a consumer attached.
    pub consumers: usize,
    /// Every drop cause with a non-zero count, inputs' causes summed.
    pub drops: Vec<DropRates>,
    /// `None` without a pre-filter.
    pub rules: Option<Vec<RuleRates>>,
}

use fastedge_wire::prometheus::per_second;

impl SplitRates {
    /// Rates from `before` to `after`, `elapsed` apart.
    pub fn between(before: &SplitSnapshot, after: &SplitSnapshot, elapsed: Duration) -> Self {
        let s = elapsed.as_secs_f64();
        let ways: Vec<WayRates> = after
            .ways
            .iter()
            .enumerate()
            .map(|(i, now)| {
                let then = before.ways.get(i).cloned().unwrap_or_default();
                WayRates {
                    way: i,
                    delivered_per_s: per_second(then.delivered, now.delivered, s),
                    dropped_per_s: per_second(then.dropped_full, now.dropped_full, s),
                    delivered: now.delivered,
                    dropped_full: now.dropped_full,
                    consumer: now.consumer,
                }
            })
            .collect();
        let inputs = after
            .inputs
            .iter()
            .map(|now| {
                let then = before
                    .inputs
                    .iter()
                    .find(|i| i.name == now.name)
                    .map_or(0, |i| i.received);
                InputRates {
                    name: now.name.clone(),
                    mode: now.mode.clone(),
                    received: now.received,
                    received_per_s: per_second(then, now.received, s),
                }
            })
            .collect();
        let drop_totals = |snapshot: &SplitSnapshot| -> Vec<(&'static str, u64)> {
            let mut totals: Vec<(&'static str, u64)> = Vec::new();
            for input in &snapshot.inputs {
                for &(cause, n) in &input.drops {
                    match totals.iter_mut().find(|(c, _)| *c == cause) {
                        Some(entry) => entry.1 = entry.1.saturating_add(n),
                        None => totals.push((cause, n)),
                    }
                }
            }
            totals.push((
                "ways: full (consumer slow or absent)",
                snapshot
                    .ways
                    .iter()
                    .fold(0u64, |sum, w| sum.saturating_add(w.dropped_full)),
            ));
            totals.push((
                "ways: bad consumer positions",
                snapshot
                    .ways
                    .iter()
                    .fold(0u64, |sum, w| sum.saturating_add(w.bad_positions)),
            ));
            totals.push(("not IP", snapshot.non_ip));
            totals.push(("parse errors", snapshot.parse_errors));
            totals
        };
        let then = drop_totals(before);
        let drops = drop_totals(after)
            .into_iter()
            .filter(|&(_, total)| total > 0)
            .map(|(cause, total)| DropRates {
                cause,
                total,
                per_s: per_second(
                    then.iter().find(|(c, _)| *c == cause).map_or(0, |t| t.1),
                    total,
                    s,
                ),
            })
            .collect();
        let rules = after.rules.as_ref().map(|rules| {
            rules
                .iter()
                .map(|now| RuleRates {
                    id: now.id,
                    rule: now.rule.clone(),
                    hits: now.hits,
                    hits_per_s: per_second(
                        before
                            .rules
                            .iter()
                            .flatten()
                            .find(|r| r.id == now.id)
                            .map_or(0, |r| r.hits),
                        now.hits,
                        s,
                    ),
                })
                .collect()
        });
        Self {
            name: after.name.clone(),
            pid: after.pid,
            uptime_s: after.uptime_s,
            inputs,
            consumers: ways.iter().filter(|w| w.consumer.is_some()).count(),
            ways,
            drops,
            rules,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(delivered: u64, full: u64, hits: u64) -> (Value, Value, Value) {
        (
            json!({"ok": true, "name": "veth0", "pid": 42, "uptime_s": 7, "ways": 2}),
            json!({"ok": true, "stats": {
                "inputs": [{"name": "veth0", "kind": "AF_PACKET TPACKET_V3", "queues": 1,
                            "received": delivered * 2 + full, "bytes": 0,
                            "xsk": {"rx_dropped": 0, "rx_ring_full": 0, "rx_fill_ring_empty": 0, "rx_invalid": 0},
                            "packet": {"packets": 0, "drops": 3, "freezes": 0},
                            "prefilter_dropped": 0, "prefilter_bypassed": 0, "in_kernel": null}],
                "non_ip": 1, "parse_errors": 0,
                "ways": [
                    {"delivered": delivered, "dropped_full": 0, "consumer": 1234, "bad_positions": 0},
                    {"delivered": delivered, "dropped_full": full, "consumer": null, "bad_positions": 0}
                ],
                "pcaps": [], "interfaces": []}}),
            json!({"ok": true, "rules": [{"id": 1, "hits": hits, "expires_in_s": null, "origin": "ctl", "rule": "drop src 10.0.0.0/8"}]}),
        )
    }

    #[test]
    fn rows_from_two_snapshots() {
        let (status, stats, rules) = answers(100, 10, 5);
        let before = SplitSnapshot::from_answers(&status, &stats, Some(&rules));
        let (status, stats, rules) = answers(300, 50, 25);
        let after = SplitSnapshot::from_answers(&status, &stats, Some(&rules));
        let rates = SplitRates::between(&before, &after, Duration::from_secs(2));
        assert_eq!((rates.name.as_str(), rates.pid), ("veth0", 42));
        assert_eq!(rates.ways.len(), 2);
        assert_eq!(rates.ways[0].delivered_per_s, 100.0);
        assert_eq!(rates.ways[1].dropped_per_s, 20.0);
        assert_eq!(rates.ways[0].consumer, Some(1234));
        assert_eq!(rates.consumers, 1);
        assert_eq!(rates.inputs[0].received_per_s, 220.0);
        assert_eq!(rates.inputs[0].mode, "AF_PACKET TPACKET_V3");
        let causes: Vec<(&str, u64)> = rates.drops.iter().map(|d| (d.cause, d.total)).collect();
        assert_eq!(
            causes,
            vec![
                ("kernel: ring full (AF_PACKET)", 3),
                ("ways: full (consumer slow or absent)", 50),
                ("not IP", 1)
            ]
        );
        assert_eq!(rates.drops[1].per_s, 20.0);
        let rules = rates.rules.unwrap();
        assert_eq!((rules[0].hits, rules[0].hits_per_s), (25, 10.0));
    }

    #[test]
    fn no_prefilter_and_hostile_answers() {
        let refused =
            json!({"ok": false, "error": "rules: the XDP pre-filter could not be set up"});
        let snapshot = SplitSnapshot::from_answers(
            &json!({"ok": true, "name": 7}),
            &json!({"ok": true, "stats": {"ways": [{"delivered": -1, "consumer": "x"}], "inputs": "no"}}),
            Some(&refused),
        );
        assert_eq!(snapshot.name, "?");
        assert_eq!(snapshot.ways, vec![WayCounters::default()]);
        assert!(snapshot.inputs.is_empty() && snapshot.rules.is_none());
        let many = json!({"ok": true, "stats": {"ways": vec![json!({}); MAX_ROWS + 10]}});
        let snapshot = SplitSnapshot::from_answers(&json!({}), &many, None);
        assert_eq!(snapshot.ways.len(), MAX_ROWS);
        let rates = SplitRates::between(&snapshot, &snapshot, Duration::ZERO);
        assert!(rates.drops.is_empty() && rates.ways[0].delivered_per_s == 0.0);
    }

    #[test]
    fn a_missing_socket_is_a_clear_error() {
        let error = SplitSnapshot::fetch(Path::new("/nonexistent/split-x.sock")).unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/split-x.sock"),
            "{error}"
        );
    }
}
