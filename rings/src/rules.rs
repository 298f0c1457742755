//! The pre-filter rules of a running split and where each came from: the pipeline's config, the
//! control socket's `rules` command (our text syntax), or its `netcontrol` command (rules
//! shaped like Zeek NetControl's, one of which can stand for two of ours). Rules from the
//! config are tracked apart, so a reload replaces them and leaves the others alone.
//!
//! The kernel maps and the order in which they change belong to
//! [`fastedge_ebpf::rules::RuleTable`]; the NetControl translation to
//! [`fastedge_wire::netcontrol`]. This module keeps the bookkeeping between them and answers
//! the control socket's rule commands.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use fastedge_ebpf::rules::{RuleInfo, RuleTable, RuleTableError};
use fastedge_runtime::control::Answer;
use fastedge_wire::{
    packet::FlowKey,
    rules::{RuleAction, RuleError, RuleSpec},
};
use serde_json::{json, Map, Value};

use crate::control::into_map;

/// Where a rule came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleOrigin {
    /// The pipeline's `rules` (or `--rule`): replaced on reload.
    Config,
    /// Added with `rules add` on the control socket.
    Ctl,
    /// One of the rules a NetControl rule (its id here) stands for.
    NetControl(u32),
}

impl fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleOrigin::Config => f.write_str("config"),
            RuleOrigin::Ctl => f.write_str("ctl"),
            RuleOrigin::NetControl(nc) => write!(f, "netcontrol {nc}"),
        }
    }
}

/// Why a rule change was refused.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// A rule's text does not parse.
    #[error("rule {rule:?}: {source}")]
    Syntax {
        /// The text as given.
        rule: String,
        /// What is wrong with it.
        source: RuleError,
    },
    /// The table refused (full, chain full, no such rule, a map error).
    #[error(transparent)]
    Table(#[from] RuleTableError),
    /// The rule is one of a NetControl rule's: it goes when that one goes.
    #[error("rule {id} belongs to NetControl rule {netcontrol}: remove that one (netcontrol remove {netcontrol})")]
    OwnedByNetControl {
        /// Our rule id.
        id: u32,
        /// The NetControl rule's id.
        netcontrol: u32,
    },
    /// No NetControl rule has this id.
    #[error("no NetControl rule {0}")]
    NoNetControl(u32),
}

/// A rule as listed: the table's view (id, rule, hits, time left) and its origin.
#[derive(Debug, Clone)]
pub struct ListedRule {
    /// The rule and its counters.
    pub info: RuleInfo,
    /// Where it came from.
    pub origin: RuleOrigin,
}

/// One rule of a NetControl rule aimed at a single way.
#[derive(Debug, Clone)]
pub struct WayRule {
    /// The NetControl rule's id.
    pub netcontrol: u32,
    /// The way it applies to.
    pub way: u32,
    /// What it matches and does (`drop` or `pass`).
    pub spec: RuleSpec,
    /// When it goes; `None`: when removed.
    pub expires: Option<Instant>,
}

/// Rules aimed at single ways (NetControl rules with `"way": N`), applied by the engine to
/// each frame on its way to that way: a frame a `drop` rule matches (and no `pass` rule does)
/// does not reach the way; every other way, and the way's other frames, are not affected.
/// Shared between the control socket, which changes them, and the engine threads, which look
/// at `generation` before each batch and take a copy when it moved.
#[derive(Debug, Default)]
pub struct WayFilters {
    generation: AtomicU64,
    rules: Mutex<Vec<WayRule>>,
}

impl WayFilters {
    /// Moves on at every change.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn change<R>(&self, apply: impl FnOnce(&mut Vec<WayRule>) -> R) -> R {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let result = apply(&mut rules);
        self.generation.fetch_add(1, Ordering::Release);
        result
    }

    /// The rules, in the order added.
    pub fn rules(&self) -> Vec<WayRule> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Per way number, the rules aimed at it (as long as the highest way named; empty when
    /// there are none).
    pub fn by_way(&self) -> Vec<Vec<RuleSpec>> {
        let rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let mut by_way: Vec<Vec<RuleSpec>> = Vec::new();
        for rule in rules.iter() {
            let way = rule.way as usize;
            if by_way.len() <= way {
                by_way.resize(way + 1, Vec::new());
            }
            by_way[way].push(rule.spec);
        }
        by_way
    }

    fn remove(&self, netcontrol: u32) {
        self.change(|rules| rules.retain(|r| r.netcontrol != netcontrol));
    }

    /// Removes the rules whose time is up; returns the NetControl ids they belonged to.
    fn expire(&self, now: Instant) -> Vec<u32> {
        let due = |r: &WayRule| r.expires.is_some_and(|e| e <= now);
        if !self.rules().iter().any(due) {
            return Vec::new();
        }
        self.change(|rules| {
            let mut gone: Vec<u32> = rules
                .iter()
                .filter(|r| due(r))
                .map(|r| r.netcontrol)
                .collect();
            rules.retain(|r| !due(r));
            gone.sort_unstable();
            gone.dedup();
            gone
        })
    }
}

/// Whether `rules` (those aimed at one way) keep a frame of flow `key` from it: a `drop`
/// rule matches and no `pass` rule does. Frames that are not IP are never kept back.
#[inline]
pub fn kept_from_way(rules: &[RuleSpec], key: Option<&FlowKey>) -> bool {
    let Some(key) = key else {
        return false;
    };
    let mut dropped = false;
    for rule in rules {
        if rule.matches(key) {
            match rule.action {
                RuleAction::Pass => return false,
                RuleAction::Drop => dropped = true,
                RuleAction::Bypass => {}
            }
        }
    }
    dropped
}

/// The rule table and its bookkeeping.
#[derive(Debug)]
pub struct Rules {
    table: RuleTable,
    origin: HashMap<u32, RuleOrigin>,
    /// NetControl id → our rule ids.
    netcontrol: HashMap<u32, Vec<u32>>,
    /// NetControl id → the way, for NetControl rules aimed at one way (in `way_filters`).
    netcontrol_ways: HashMap<u32, u32>,
    way_filters: Arc<WayFilters>,
    next_netcontrol: u32,
}

/// The rules of a running split, shared by the control socket and the expiry sweeper.
pub type SharedRules = Arc<Mutex<Rules>>;

fn parse(rule: &str) -> Result<RuleSpec, RulesError> {
    rule.parse().map_err(|source| RulesError::Syntax {
        rule: rule.to_owned(),
        source,
    })
}

impl Rules {
    /// Bookkeeping over `table`, which holds no rules yet.
    pub fn new(table: RuleTable) -> Self {
        Self {
            table,
            origin: HashMap::new(),
            netcontrol: HashMap::new(),
            netcontrol_ways: HashMap::new(),
            way_filters: Arc::default(),
            next_netcontrol: 1,
        }
    }

    /// The rules aimed at single ways, for the engine.
    pub fn way_filters(&self) -> Arc<WayFilters> {
        self.way_filters.clone()
    }

    /// How many rules are installed.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when no rule is installed.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Replaces the rules that came from the config with `rules`. The new rules are in place
    /// before the old ones go, so a reload never runs unfiltered; when one of them does not
    /// parse, or the table or its maps cannot take all of them, nothing changes
    /// ([`RuleTable::add_many`] takes back what it added).
    pub fn set_config_rules(&mut self, rules: &[String]) -> Result<(), RulesError> {
        let old: Vec<u32> = self
            .origin
            .iter()
            .filter(|(_, o)| **o == RuleOrigin::Config)
            .map(|(id, _)| *id)
            .collect();
        let specs = rules
            .iter()
            .map(|r| parse(r))
            .collect::<Result<Vec<_>, _>>()?;
        let ids = self.table.add_many(&specs)?;
        for id in ids {
            self.origin.insert(id, RuleOrigin::Config);
        }
        for id in old {
            self.remove_any(id)?;
        }
        Ok(())
    }

    /// Removes expired rules; returns how many. A NetControl rule whose rules are all gone
    /// is forgotten.
    pub fn expire(&mut self) -> usize {
        let mut expired = 0;
        for nc in self.way_filters.expire(Instant::now()) {
            if self.netcontrol_ways.remove(&nc).is_some() {
                tracing::info!(netcontrol_id = nc, "NetControl rule expired");
                expired += 1;
            }
        }
        let gone = self.table.expire();
        for id in &gone {
            if let Some(RuleOrigin::NetControl(nc)) = self.origin.remove(id) {
                if let Some(ids) = self.netcontrol.get_mut(&nc) {
                    ids.retain(|r| r != id);
                    if ids.is_empty() {
                        self.netcontrol.remove(&nc);
                        tracing::info!(netcontrol_id = nc, "NetControl rule expired");
                    }
                }
            }
        }
        gone.len() + expired
    }

    /// Adds `spec` with its origin; returns its id.
    pub fn add(&mut self, spec: RuleSpec, origin: RuleOrigin) -> Result<u32, RulesError> {
        let id = self.table.add(spec)?;
        self.origin.insert(id, origin);
        Ok(id)
    }

    /// Removes rule `id` and returns it; a rule that belongs to a NetControl rule is refused
    /// (remove that one with [`Rules::remove_netcontrol`]).
    pub fn remove(&mut self, id: u32) -> Result<RuleSpec, RulesError> {
        if let Some(RuleOrigin::NetControl(netcontrol)) = self.origin.get(&id) {
            return Err(RulesError::OwnedByNetControl {
                id,
                netcontrol: *netcontrol,
            });
        }
        self.remove_any(id)
    }

    fn remove_any(&mut self, id: u32) -> Result<RuleSpec, RulesError> {
        let spec = self.table.remove(id)?;
        self.origin.remove(&id);
        Ok(spec)
    }

    /// The rules in id order, with their counters and origins.
    pub fn list(&self) -> Result<Vec<ListedRule>, RulesError> {
        let listed = self.table.list().map_err(RuleTableError::from)?;
        Ok(listed
            .into_iter()
            .map(|info| ListedRule {
                origin: self
                    .origin
                    .get(&info.id)
                    .copied()
                    .unwrap_or(RuleOrigin::Ctl),
                info,
            })
            .collect())
    }

    /// Installs the rules `specs` as one NetControl rule: all or none. Returns its id and
    /// our rule ids.
    pub fn add_netcontrol(&mut self, specs: &[RuleSpec]) -> Result<(u32, Vec<u32>), RulesError> {
        let nc = self.next_netcontrol;
        let mut ids = Vec::new();
        for spec in specs {
            match self.add(*spec, RuleOrigin::NetControl(nc)) {
                Ok(id) => ids.push(id),
                Err(error) => {
                    for id in ids {
                        let _ = self.remove_any(id);
                    }
                    return Err(error);
                }
            }
        }
        self.next_netcontrol += 1;
        tracing::info!(netcontrol_id = nc, rules = ?ids, "NetControl rule added");
        self.netcontrol.insert(nc, ids.clone());
        Ok((nc, ids))
    }

    /// Installs the rules `specs` as one NetControl rule aimed at way `way` only (applied by
    /// the engine, not by XDP). Returns its id.
    pub fn add_netcontrol_for_way(&mut self, way: u32, specs: &[RuleSpec]) -> u32 {
        let nc = self.next_netcontrol;
        self.next_netcontrol += 1;
        let now = Instant::now();
        self.way_filters.change(|rules| {
            rules.extend(specs.iter().map(|spec| WayRule {
                netcontrol: nc,
                way,
                spec: *spec,
                expires: spec.seconds.map(|s| now + Duration::from_secs(s)),
            }))
        });
        self.netcontrol_ways.insert(nc, way);
        tracing::info!(
            netcontrol_id = nc,
            way,
            rules = specs.len(),
            "NetControl rule added for one way"
        );
        nc
    }

    /// Removes NetControl rule `nc` and the rules it stands for.
    pub fn remove_netcontrol(&mut self, nc: u32) -> Result<(), RulesError> {
        if self.netcontrol_ways.remove(&nc).is_some() {
            self.way_filters.remove(nc);
            return Ok(());
        }
        let ids = self
            .netcontrol
            .remove(&nc)
            .ok_or(RulesError::NoNetControl(nc))?;
        for id in ids {
            self.remove_any(id)?;
        }
        Ok(())
    }

    /// Answers `{"cmd": "rules", "op": "list" | "add" | "del", …}`.
    pub fn control(&mut self, request: &Map<String, Value>) -> Answer {
        let op = request.get("op").and_then(Value::as_str).unwrap_or("list");
        let answer = match op {
            "list" => {
                let listed = self.list().map_err(|e| e.to_string())?;
                let now = Instant::now();
                json!({
                    "rules": listed.iter().map(|r| json!({
                        "id": r.info.id,
                        "rule": r.info.spec.to_string(),
                        "hits": r.info.hits,
                        "expires_in_s": r.info.expires_in_s,
                        "origin": r.origin.to_string(),
                    })).collect::<Vec<_>>(),
                    "way_rules": self.way_filters.rules().iter().map(|r| json!({
                        "way": r.way,
                        "rule": r.spec.to_string(),
                        "expires_in_s": r.expires.map(|e| e.saturating_duration_since(now).as_secs()),
                        "origin": RuleOrigin::NetControl(r.netcontrol).to_string(),
                    })).collect::<Vec<_>>(),
                })
            }
            "add" => {
                let text = request
                    .get("rule")
                    .and_then(Value::as_str)
                    .ok_or("rules add: give \"rule\": \"drop src 203.0.113.0/24 …\"")?;
                let spec = parse(text).map_err(|e| e.to_string())?;
                let id = self.add(spec, RuleOrigin::Ctl).map_err(|e| e.to_string())?;
                json!({ "id": id, "rule": spec.to_string() })
            }
            "del" => {
                let id = request
                    .get("id")
                    .and_then(Value::as_u64)
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or("rules del: give \"id\": N (from rules list)")?;
                let spec = self.remove(id).map_err(|e| e.to_string())?;
                json!({ "removed": spec.to_string(), "id": id })
            }
            other => return Err(format!("rules: unknown op {other:?}: list, add, del")),
        };
        Ok(into_map(answer))
    }

    /// Answers `{"cmd": "netcontrol", "op": "add", "rule": {…}}` or `{"op": "remove", "id": N}`
    /// with `{"result": "added" | "removed" | "error", "id": …}`, as NetControl clients expect.
    /// A rule with `"way": N` (one of the pipeline's `ways`) applies to that way only.
    pub fn netcontrol(&mut self, request: &Map<String, Value>, ways: u32) -> Map<String, Value> {
        let op = request.get("op").and_then(Value::as_str).unwrap_or("add");
        let result = match op {
            "add" => {
                let rule = request.get("rule").unwrap_or(&Value::Null);
                fastedge_wire::netcontrol::rule_way(rule).and_then(|way| {
                    let specs = fastedge_wire::netcontrol::rule_specs(rule)?;
                    match way {
                        Some(way) if way >= ways => Err(format!(
                            "way {way}: the pipeline has ways 0 to {}",
                            ways.saturating_sub(1)
                        )),
                        Some(way) => {
                            let nc = self.add_netcontrol_for_way(way, &specs);
                            Ok(json!({ "result": "added", "id": nc, "way": way, "rules": [] }))
                        }
                        None => {
                            let (nc, ids) =
                                self.add_netcontrol(&specs).map_err(|e| e.to_string())?;
                            Ok(json!({ "result": "added", "id": nc, "rules": ids }))
                        }
                    }
                })
            }
            "remove" => request
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| "remove: give \"id\" (from the added answer)".to_owned())
                .and_then(|nc| {
                    self.remove_netcontrol(nc).map_err(|e| e.to_string())?;
                    Ok(json!({ "result": "removed", "id": nc }))
                }),
            other => Err(format!("unknown op {other:?}: add or remove")),
        };
        match result {
            Ok(answer) => into_map(answer),
            Err(error) => into_map(json!({
                "ok": false,
                "result": "error",
                "error": error,
                "id": request.get("id").cloned().unwrap_or(Value::Null),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use fastedge_ebpf::rules::Prefilter;

    use super::*;

    /// Rules over real pre-filter maps of `capacity` rules (BPF maps need root).
    fn rules(capacity: u32) -> Rules {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the rule bookkeeping tests make BPF maps: run them as root"
        );
        let prefilter = Arc::new(Prefilter::create(capacity).unwrap());
        Rules::new(RuleTable::new(prefilter))
    }

    fn request(value: Value) -> Map<String, Value> {
        into_map(value)
    }

    /// (rule, origin) of every rule, in id order.
    fn listed(rules: &mut Rules) -> Vec<(String, String)> {
        let answer = rules.control(&request(json!({"op": "list"}))).unwrap();
        answer["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["rule"].as_str().unwrap().to_owned(),
                    r["origin"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    fn strings(rules: &[&str]) -> Vec<String> {
        rules.iter().map(|r| (*r).to_owned()).collect()
    }

    #[test]
    fn ctl_rules_are_added_listed_and_removed_by_id() {
        let mut rules = rules(16);
        let added = rules
            .control(&request(
                json!({"op": "add", "rule": "drop src 203.0.113.9 proto udp dport 53"}),
            ))
            .unwrap();
        assert_eq!(added["rule"], "drop src 203.0.113.9/32 proto udp dport 53");
        let id = u32::try_from(added["id"].as_u64().unwrap()).unwrap();
        let list = rules.control(&request(json!({"op": "list"}))).unwrap();
        assert_eq!(list["rules"][0]["id"], id);
        assert_eq!(list["rules"][0]["hits"], 0);
        assert_eq!(list["rules"][0]["expires_in_s"], Value::Null);
        assert_eq!(
            listed(&mut rules),
            [(
                "drop src 203.0.113.9/32 proto udp dport 53".into(),
                "ctl".into()
            )]
        );
        // A rule with a lifetime lists the seconds it has left.
        rules
            .control(&request(
                json!({"op": "add", "rule": "bypass dst 10.9.0.0/16 for 60"}),
            ))
            .unwrap();
        let list = rules.control(&request(json!({"op": "list"}))).unwrap();
        let left = list["rules"][1]["expires_in_s"].as_u64().unwrap();
        assert!((58..=60).contains(&left), "{list:?}");

        let removed = rules
            .control(&request(json!({"op": "del", "id": id})))
            .unwrap();
        assert_eq!(
            removed["removed"],
            "drop src 203.0.113.9/32 proto udp dport 53"
        );
        assert_eq!(rules.len(), 1);
        for (bad, why) in [
            (json!({"op": "del", "id": id}), "no rule with id"),
            (json!({"op": "del"}), "give \"id\""),
            (json!({"op": "add"}), "give \"rule\""),
            (
                json!({"op": "add", "rule": "drop src nowhere"}),
                "rule \"drop src nowhere\"",
            ),
            (json!({"op": "flush"}), "unknown op \"flush\""),
        ] {
            let error = rules.control(&request(bad.clone())).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
        assert_eq!(rules.len(), 1, "refusals change nothing");
    }

    #[test]
    fn a_reload_replaces_config_rules_and_keeps_the_others() {
        let mut rules = rules(16);
        rules
            .set_config_rules(&strings(&["drop src 10.1.0.0/16", "pass src 10.1.2.3"]))
            .unwrap();
        rules
            .control(&request(json!({"op": "add", "rule": "drop dst 192.0.2.1"})))
            .unwrap();
        rules
            .set_config_rules(&strings(&["drop src 10.1.0.0/16", "bypass proto icmp"]))
            .unwrap();
        let mut now = listed(&mut rules);
        now.sort();
        assert_eq!(
            now,
            [
                ("bypass proto icmp".into(), "config".into()),
                ("drop dst 192.0.2.1/32".into(), "ctl".into()),
                ("drop src 10.1.0.0/16".into(), "config".into()),
            ]
        );
        // A bad rule refuses the whole set and keeps the rules in use.
        let error = rules
            .set_config_rules(&strings(&["drop src 10.7.0.0/16", "frobnicate"]))
            .unwrap_err();
        assert!(error.to_string().contains("rule \"frobnicate\""), "{error}");
        assert_eq!(listed(&mut rules).len(), 3);
        rules.set_config_rules(&[]).unwrap();
        assert_eq!(
            listed(&mut rules),
            [("drop dst 192.0.2.1/32".into(), "ctl".into())]
        );
    }

    #[test]
    fn netcontrol_rules_become_ours_and_go_as_one() {
        let mut rules = rules(16);
        let added = rules.netcontrol(
            &request(json!({
                "op": "add",
                "rule": {"ty": "drop", "target": "forward",
                         "entity": {"ty": "address", "ip": "198.51.100.4"}},
            })),
            4,
        );
        assert_eq!(added["result"], "added", "{added:?}");
        assert_eq!(added["id"], 1);
        assert_eq!(added["rules"].as_array().unwrap().len(), 2);
        assert_eq!(
            listed(&mut rules),
            [
                ("drop src 198.51.100.4/32".into(), "netcontrol 1".into()),
                ("drop dst 198.51.100.4/32".into(), "netcontrol 1".into()),
            ]
        );
        // Its rules cannot be removed one by one.
        let one = added["rules"][0].as_u64().unwrap();
        let error = rules
            .control(&request(json!({"op": "del", "id": one})))
            .unwrap_err();
        assert!(error.contains("netcontrol remove 1"), "{error}");
        let second = rules.netcontrol(
            &request(json!({
                "op": "add",
                "rule": {"ty": "whitelist", "entity": {"ty": "flow", "flow": {"dst_p": "443/tcp"}}},
            })),
            4,
        );
        assert_eq!(second["id"], 2);

        let removed = rules.netcontrol(&request(json!({"op": "remove", "id": 1})), 4);
        assert_eq!(removed["result"], "removed");
        assert_eq!(
            listed(&mut rules),
            [("pass proto tcp dport 443".into(), "netcontrol 2".into())]
        );
        for (bad, why) in [
            (json!({"op": "remove", "id": 1}), "no NetControl rule 1"),
            (json!({"op": "remove"}), "give \"id\""),
            (json!({"op": "modify"}), "unknown op"),
            (
                json!({"op": "add", "rule": {"ty": "drop", "entity": {"ty": "mac"}}}),
                "MAC",
            ),
        ] {
            let answer = rules.netcontrol(&request(bad.clone()), 4);
            assert_eq!(answer["ok"], false, "{bad}");
            assert_eq!(answer["result"], "error", "{bad}");
            assert!(
                answer["error"].as_str().unwrap().contains(why),
                "{bad}: {answer:?}"
            );
        }
    }

    #[test]
    fn a_full_table_refuses_and_a_netcontrol_rule_is_all_or_nothing() {
        let mut rules = rules(3);
        rules
            .set_config_rules(&strings(&["drop src 10.0.0.1", "drop src 10.0.0.2"]))
            .unwrap();
        // An address needs two rules; one slot is left: nothing of it stays.
        let refused = rules.netcontrol(
            &request(json!({
                "op": "add",
                "rule": {"ty": "drop", "entity": {"ty": "address", "ip": "10.0.0.3"}},
            })),
            4,
        );
        assert_eq!(refused["result"], "error");
        assert!(
            refused["error"]
                .as_str()
                .unwrap()
                .contains("full (3 rules)"),
            "{refused:?}"
        );
        assert_eq!(rules.len(), 2);
        rules
            .control(&request(json!({"op": "add", "rule": "drop src 10.0.0.4"})))
            .unwrap();
        let error = rules
            .control(&request(json!({"op": "add", "rule": "drop src 10.0.0.5"})))
            .unwrap_err();
        assert!(
            error.contains("the rule table is full (3 rules)"),
            "{error}"
        );
        // A reload that would need more room than there is keeps the rules in use.
        assert!(rules
            .set_config_rules(&strings(&["drop src 10.0.0.6", "drop src 10.0.0.7"]))
            .is_err());
        assert_eq!(rules.len(), 3);
        // Removing makes room again; the freed id is used again.
        let listed_now = rules.list().unwrap();
        let ctl = listed_now
            .iter()
            .find(|r| r.origin == RuleOrigin::Ctl)
            .unwrap()
            .info
            .id;
        rules.remove(ctl).unwrap();
        let again = rules
            .add("drop src 10.0.0.8".parse().unwrap(), RuleOrigin::Ctl)
            .unwrap();
        assert_eq!(again, ctl);
    }

    #[test]
    fn expired_netcontrol_rules_are_forgotten() {
        let mut rules = rules(8);
        let added = rules.netcontrol(
            &request(json!({
                "op": "add",
                "rule": {"ty": "drop", "expire": 1,
                         "entity": {"ty": "address", "ip": "192.0.2.200"}},
            })),
            4,
        );
        assert_eq!(added["result"], "added");
        rules
            .set_config_rules(&strings(&["drop src 10.0.0.0/8"]))
            .unwrap();
        assert_eq!(rules.expire(), 0, "nothing is due yet");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(rules.expire(), 2);
        assert_eq!(
            listed(&mut rules),
            [("drop src 10.0.0.0/8".into(), "config".into())]
        );
        let answer = rules.netcontrol(&request(json!({"op": "remove", "id": 1})), 4);
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("no NetControl rule 1"),
            "{answer:?}"
        );
    }

    #[test]
    fn a_netcontrol_rule_aimed_at_one_way_goes_to_the_way_filters() {
        let mut rules = rules(16);
        let filters = rules.way_filters();
        let before = filters.generation();
        let added = rules.netcontrol(
            &request(json!({
                "op": "add",
                "rule": {"ty": "drop", "way": 1, "expire": 1,
                         "entity": {"ty": "address", "ip": "198.51.100.4"}},
            })),
            2,
        );
        assert_eq!(added["result"], "added", "{added:?}");
        assert_eq!(added["way"], 1);
        assert_eq!(added["rules"], json!([]), "nothing in the XDP table");
        assert!(rules.is_empty());
        assert_ne!(filters.generation(), before);
        let by_way = filters.by_way();
        assert_eq!(by_way.len(), 2);
        assert!(by_way[0].is_empty());
        let texts: Vec<String> = by_way[1].iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                "drop src 198.51.100.4/32 for 1",
                "drop dst 198.51.100.4/32 for 1"
            ]
        );
        let list = rules.control(&request(json!({"op": "list"}))).unwrap();
        assert_eq!(list["way_rules"][0]["way"], 1);
        assert_eq!(list["way_rules"][0]["origin"], "netcontrol 1");
        // A way the pipeline does not have, refused with the reason.
        let refused = rules.netcontrol(
            &request(json!({"op": "add", "rule": {"ty": "drop", "way": 2,
                            "entity": {"ty": "address", "ip": "198.51.100.5"}}})),
            2,
        );
        assert!(
            refused["error"].as_str().unwrap().contains("ways 0 to 1"),
            "{refused:?}"
        );
        // It expires like the others.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(rules.expire(), 1);
        assert!(filters.by_way().is_empty());
        // And is removed by its id.
        let second = rules.netcontrol(
            &request(json!({"op": "add", "rule": {"ty": "whitelist", "way": 0,
                            "entity": {"ty": "flow", "flow": {"dst_p": "53/udp"}}}})),
            2,
        );
        let id = second["id"].clone();
        let removed = rules.netcontrol(&request(json!({"op": "remove", "id": id})), 2);
        assert_eq!(removed["result"], "removed", "{removed:?}");
        assert!(filters.rules().is_empty());
    }
}
