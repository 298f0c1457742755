//! The pre-filter's maps and the rule table behind them.
//!
//! [`Prefilter`] owns the kernel maps (two LPM tries of prefixes, the rules, per-rule per-CPU
//! hit counters), created once and shared by every program loaded with it, so rules outlive
//! program reloads. [`RuleTable`] keeps the userspace view (ids, chains per prefix) and changes
//! the maps so that a reader in XDP always sees a consistent chain: a new rule is written
//! before anything points to it; a removed rule is unlinked before it is deleted. Every change
//! is one map update at a time, each atomic: traffic never sees a half-made rule.

use std::{
    collections::HashMap,
    os::fd::{AsFd, BorrowedFd},
};

use fastedge_wire::rules::{Prefix, RuleAction, RuleSpec};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use crate::EbpfError;

/// "No next rule" in a chain.
const NO_RULE: u32 = u32::MAX;
/// Rules per prefix (per direction) the XDP program walks; keep in sync with MAX_CHAIN.
pub const MAX_CHAIN: usize = 8;
const KEY_SIZE: u32 = 20;
const RULE_SIZE: u32 = 40;

/// The kernel side of the pre-filter.
#[derive(Debug)]
pub struct Prefilter {
    pub(crate) src_prefixes: MapHandle,
    pub(crate) dst_prefixes: MapHandle,
    pub(crate) rules: MapHandle,
    pub(crate) hits: MapHandle,
    capacity: u32,
}

fn map_error(op: &'static str, map: &'static str) -> impl FnOnce(libbpf_rs::Error) -> EbpfError {
    move |source| EbpfError::Map { op, map, source }
}

impl Prefilter {
    /// Creates maps for up to `capacity` rules.
    pub fn create(capacity: u32) -> Result<Self, EbpfError> {
        let capacity = capacity.max(1);
        let no_prealloc = libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as libbpf_sys::size_t,
            map_flags: libbpf_sys::BPF_F_NO_PREALLOC,
            ..Default::default()
        };
        let plain = libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as libbpf_sys::size_t,
            ..Default::default()
        };
        let trie = |name: &'static str| {
            MapHandle::create(
                MapType::LpmTrie,
                Some(name),
                KEY_SIZE,
                4,
                capacity,
                &no_prealloc,
            )
            .map_err(map_error("creating", name))
        };
        Ok(Self {
            src_prefixes: trie("src_prefixes")?,
            dst_prefixes: trie("dst_prefixes")?,
            rules: MapHandle::create(
                MapType::Hash,
                Some("rules"),
                4,
                RULE_SIZE,
                capacity,
                &no_prealloc,
            )
            .map_err(map_error("creating", "rules"))?,
            hits: MapHandle::create(MapType::PercpuArray, Some("hits"), 4, 8, capacity, &plain)
                .map_err(map_error("creating", "hits"))?,
            capacity,
        })
    }

    /// The most rules the maps hold at once (`rule_capacity`).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The fd of the map the program declares as `name`, to reuse at load time.
    pub(crate) fn fd_for(&self, name: &str) -> Option<BorrowedFd<'_>> {
        match name {
            "src_prefixes" => Some(self.src_prefixes.as_fd()),
            "dst_prefixes" => Some(self.dst_prefixes.as_fd()),
            "rules" => Some(self.rules.as_fd()),
            "hits" => Some(self.hits.as_fd()),
            _ => None,
        }
    }

    fn trie(&self, by_source: bool) -> (&MapHandle, &'static str) {
        if by_source {
            (&self.src_prefixes, "src_prefixes")
        } else {
            (&self.dst_prefixes, "dst_prefixes")
        }
    }

    fn hits_of(&self, id: u32) -> Result<u64, EbpfError> {
        Ok(self
            .hits
            .lookup_percpu(&id.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_error("reading", "hits"))?
            .unwrap_or_default()
            .iter()
            .filter_map(|b| b.get(..8)?.try_into().ok())
            .map(u64::from_ne_bytes)
            .sum())
    }

    fn clear_hits(&self, id: u32) -> Result<(), EbpfError> {
        let cpus = libbpf_rs::num_possible_cpus().map_err(map_error("counting CPUs", "hits"))?;
        let zeros = vec![vec![0u8; 8]; cpus];
        self.hits
            .update_percpu(&id.to_ne_bytes(), &zeros, MapFlags::ANY)
            .map_err(map_error("clearing", "hits"))
    }
}

fn key_bytes(prefix: &Prefix) -> [u8; KEY_SIZE as usize] {
    let mut key = [0u8; KEY_SIZE as usize];
    key[..4].copy_from_slice(&u32::from(prefix.len).to_ne_bytes());
    key[4..].copy_from_slice(&prefix.addr);
    key
}

/// The bytes of `struct rule` in xsk_redirect.bpf.c.
fn rule_bytes(
    spec: &RuleSpec,
    by_source: bool,
    next: u32,
    expires_ns: u64,
) -> [u8; RULE_SIZE as usize] {
    let mut raw = [0u8; RULE_SIZE as usize];
    raw[0..4].copy_from_slice(&next.to_ne_bytes());
    raw[4] = match spec.action {
        RuleAction::Pass => 0,
        RuleAction::Drop => 1,
        RuleAction::Bypass => 2,
    };
    raw[5] = spec.protocol;
    let other = if by_source { spec.dst } else { None }.unwrap_or(Prefix::ANY);
    raw[6] = other.len;
    // The length of the prefix the rule hangs on: the program walks to shorter prefixes.
    raw[7] = placement(spec).1.len;
    raw[8..10].copy_from_slice(&spec.sport.0.to_ne_bytes());
    raw[10..12].copy_from_slice(&spec.sport.1.to_ne_bytes());
    raw[12..14].copy_from_slice(&spec.dport.0.to_ne_bytes());
    raw[14..16].copy_from_slice(&spec.dport.1.to_ne_bytes());
    raw[16..32].copy_from_slice(&other.addr);
    raw[32..40].copy_from_slice(&expires_ns.to_ne_bytes());
    raw
}

/// Where a rule hangs: the source trie (keyed by its source prefix, or `::/0` when it has
/// neither) or the destination trie (rules with only a destination prefix).
fn placement(spec: &RuleSpec) -> (bool, Prefix) {
    match (spec.src, spec.dst) {
        (Some(src), _) => (true, src),
        (None, Some(dst)) => (false, dst),
        (None, None) => (true, Prefix::ANY),
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

/// A rule in the table.
#[derive(Debug, Clone)]
pub struct InstalledRule {
    /// The id `fastedge ctl rules list` shows and `rules del` takes; reused after removal.
    pub id: u32,
    /// The rule as written.
    pub spec: RuleSpec,
    /// CLOCK_MONOTONIC deadline; 0: none.
    pub expires_ns: u64,
}

/// A rule with its hit count, as listed.
#[derive(Debug, Clone)]
pub struct RuleInfo {
    /// The rule's id.
    pub id: u32,
    /// The rule as written.
    pub spec: RuleSpec,
    /// Frames it matched, summed over every CPU.
    pub hits: u64,
    /// Seconds left before it expires.
    pub expires_in_s: Option<u64>,
}

/// Why a rule cannot be added or removed.
#[derive(Debug, thiserror::Error)]
pub enum RuleTableError {
    /// Every one of the table's slots (the capacity) holds a rule.
    #[error("the rule table is full ({0} rules)")]
    Full(u32),
    /// The prefix named already has [`MAX_CHAIN`] rules.
    #[error("{0} already has {MAX_CHAIN} rules: merge some")]
    ChainFull(String),
    /// No rule has this id.
    #[error("no rule with id {0}")]
    NoSuchRule(u32),
    /// A map update failed.
    #[error(transparent)]
    Map(#[from] EbpfError),
}

/// The userspace view of the rules and the code that changes the maps.
#[derive(Debug)]
pub struct RuleTable {
    prefilter: std::sync::Arc<Prefilter>,
    rules: HashMap<u32, InstalledRule>,
    /// Per (by source, prefix): rule ids in chain order.
    chains: HashMap<(bool, Prefix), Vec<u32>>,
    free: Vec<u32>,
    next_id: u32,
}

impl RuleTable {
    /// A table over `prefilter`'s maps, with no rules in it (the maps must be empty).
    pub fn new(prefilter: std::sync::Arc<Prefilter>) -> Self {
        Self {
            prefilter,
            rules: HashMap::new(),
            chains: HashMap::new(),
            free: Vec::new(),
            next_id: 0,
        }
    }

    /// The maps this table writes, shared with the XDP programs.
    pub fn prefilter(&self) -> &std::sync::Arc<Prefilter> {
        &self.prefilter
    }

    /// Number of rules installed.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether no rule is installed.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// A free id, and whether it was used before (its hit counters need clearing).
    fn allocate(&mut self) -> Result<(u32, bool), RuleTableError> {
        if let Some(id) = self.free.pop() {
            return Ok((id, true));
        }
        if self.next_id >= self.prefilter.capacity {
            return Err(RuleTableError::Full(self.prefilter.capacity));
        }
        self.next_id += 1;
        Ok((self.next_id - 1, false))
    }

    /// Adds many rules, in order; returns their ids. Rules on prefixes that have no rules yet
    /// are written with batched map updates (one system call per few thousand rules) where the
    /// kernel supports it; the others one by one, as [`RuleTable::add`] does.
    ///
    /// All or nothing: when one of them cannot be added (the table or a map is full, a map
    /// refuses), the rules this call added are taken out again, newest first, and the error
    /// is returned; the table and the maps hold what they held before. (A rule whose removal
    /// the maps refuse too stays, and stays listed: the table never claims less or more than
    /// the maps hold.)
    pub fn add_many(&mut self, specs: &[RuleSpec]) -> Result<Vec<u32>, RuleTableError> {
        let mut ids = Vec::with_capacity(specs.len());
        match self.add_each(specs, &mut ids) {
            Ok(()) => Ok(ids),
            Err(error) => {
                for id in ids.into_iter().rev() {
                    let _ = self.remove(id);
                }
                Err(error)
            }
        }
    }

    /// The work of [`RuleTable::add_many`]: `ids` gets the id of each rule once it is in the
    /// maps and the table, so that the caller knows exactly what to take back.
    fn add_each(&mut self, specs: &[RuleSpec], ids: &mut Vec<u32>) -> Result<(), RuleTableError> {
        const BATCH: usize = 4096;
        let mut pending: Vec<(u32, RuleSpec)> = Vec::new();
        let mut pending_places = std::collections::HashSet::new();
        for spec in specs {
            let place = placement(spec);
            let fresh = !self.chains.contains_key(&place)
                && self.free.is_empty()
                && !pending_places.contains(&place);
            if fresh {
                let id = match self.allocate() {
                    Ok((id, _)) => id,
                    Err(error) => {
                        self.release_unwritten(&mut pending);
                        return Err(error);
                    }
                };
                pending.push((id, *spec));
                pending_places.insert(place);
                if pending.len() == BATCH {
                    self.write_batch(&mut pending, ids)?;
                    pending_places.clear();
                }
            } else {
                self.write_batch(&mut pending, ids)?;
                pending_places.clear();
                ids.push(self.add(*spec)?);
            }
        }
        self.write_batch(&mut pending, ids)
    }

    /// Gives back ids that were allocated for `pending` but never written (so never hit).
    fn release_unwritten(&mut self, pending: &mut Vec<(u32, RuleSpec)>) {
        for (id, _) in pending.drain(..).rev() {
            if id + 1 == self.next_id {
                self.next_id = id;
            } else {
                self.free.push(id);
            }
        }
    }

    /// Writes rules that each start a new chain: all rules first, then their prefixes; appends
    /// their ids to `ids`. When a map refuses, whatever of the batch was written is deleted
    /// again (prefixes first: their tries had no entry for them before) and their ids are
    /// free again.
    fn write_batch(
        &mut self,
        pending: &mut Vec<(u32, RuleSpec)>,
        ids: &mut Vec<u32>,
    ) -> Result<(), RuleTableError> {
        if pending.is_empty() {
            return Ok(());
        }
        if let Err(error) = self.write_pending(pending, ids) {
            let p = self.prefilter.clone();
            for (_, spec) in pending.iter() {
                let (by_source, prefix) = placement(spec);
                let _ = p.trie(by_source).0.delete(&key_bytes(&prefix));
            }
            // Traffic may have hit them meanwhile: their ids count as used (their hit
            // counters are cleared when they are given out again).
            for (id, _) in pending.drain(..) {
                let _ = p.rules.delete(&id.to_ne_bytes());
                self.free.push(id);
            }
            return Err(error);
        }
        Ok(())
    }

    /// The map updates of [`RuleTable::write_batch`], then the bookkeeping once all are in.
    fn write_pending(
        &mut self,
        pending: &mut Vec<(u32, RuleSpec)>,
        ids: &mut Vec<u32>,
    ) -> Result<(), RuleTableError> {
        let now = monotonic_ns();
        let mut rule_keys = Vec::with_capacity(pending.len() * 4);
        let mut rule_values = Vec::with_capacity(pending.len() * RULE_SIZE as usize);
        let mut tries: [(Vec<u8>, Vec<u8>, u32); 2] = Default::default();
        let mut installed = Vec::with_capacity(pending.len());
        for (id, spec) in pending.iter() {
            let (by_source, prefix) = placement(spec);
            let expires_ns = spec
                .seconds
                .map_or(0, |s| now.saturating_add(s.saturating_mul(1_000_000_000)));
            rule_keys.extend_from_slice(&id.to_ne_bytes());
            rule_values.extend_from_slice(&rule_bytes(spec, by_source, NO_RULE, expires_ns));
            let trie = &mut tries[usize::from(!by_source)];
            trie.0.extend_from_slice(&key_bytes(&prefix));
            trie.1.extend_from_slice(&id.to_ne_bytes());
            trie.2 += 1;
            installed.push((*id, *spec, expires_ns, by_source, prefix));
        }
        let p = self.prefilter.clone();
        let count = pending.len() as u32;
        let batched = p
            .rules
            .update_batch(
                &rule_keys,
                &rule_values,
                count,
                MapFlags::ANY,
                MapFlags::ANY,
            )
            .is_ok();
        if !batched {
            for (key, value) in rule_keys
                .chunks(4)
                .zip(rule_values.chunks(RULE_SIZE as usize))
            {
                p.rules
                    .update(key, value, MapFlags::ANY)
                    .map_err(map_error("writing", "rules"))?;
            }
        }
        for (by_source, (keys, values, n)) in [true, false].into_iter().zip(&tries) {
            if *n == 0 {
                continue;
            }
            let (trie, name) = p.trie(by_source);
            if trie
                .update_batch(keys, values, *n, MapFlags::ANY, MapFlags::ANY)
                .is_err()
            {
                for (key, value) in keys.chunks(KEY_SIZE as usize).zip(values.chunks(4)) {
                    trie.update(key, value, MapFlags::ANY)
                        .map_err(map_error("writing", name))?;
                }
            }
        }
        for (id, spec, expires_ns, by_source, prefix) in installed {
            self.chains.insert((by_source, prefix), vec![id]);
            self.rules.insert(
                id,
                InstalledRule {
                    id,
                    spec,
                    expires_ns,
                },
            );
            ids.push(id);
        }
        pending.clear();
        Ok(())
    }

    /// Adds a rule after the rules already on its prefix; returns its id.
    pub fn add(&mut self, spec: RuleSpec) -> Result<u32, RuleTableError> {
        let (by_source, prefix) = placement(&spec);
        let chain_len = self.chains.get(&(by_source, prefix)).map_or(0, Vec::len);
        if chain_len >= MAX_CHAIN {
            return Err(RuleTableError::ChainFull(prefix.to_string()));
        }
        let (id, used_before) = self.allocate()?;
        let expires_ns = spec.seconds.map_or(0, |s| {
            monotonic_ns().saturating_add(s.saturating_mul(1_000_000_000))
        });
        let p = &self.prefilter;
        let cleared = if used_before {
            p.clear_hits(id)
        } else {
            Ok(())
        };
        let written = cleared
            .and_then(|()| {
                p.rules
                    .update(
                        &id.to_ne_bytes(),
                        &rule_bytes(&spec, by_source, NO_RULE, expires_ns),
                        MapFlags::ANY,
                    )
                    .map_err(map_error("writing", "rules"))
            })
            .and_then(|()| {
                // Link it in: the predecessor's `next`, or the prefix itself.
                match self.chains.get(&(by_source, prefix)).and_then(|c| c.last()) {
                    Some(&last) => self.write(last, Some(id)),
                    None => {
                        let (trie, name) = p.trie(by_source);
                        trie.update(&key_bytes(&prefix), &id.to_ne_bytes(), MapFlags::ANY)
                            .map_err(map_error("writing", name))
                    }
                }
            });
        if let Err(error) = written {
            let _ = p.rules.delete(&id.to_ne_bytes());
            self.free.push(id);
            return Err(error.into());
        }
        self.chains.entry((by_source, prefix)).or_default().push(id);
        self.rules.insert(
            id,
            InstalledRule {
                id,
                spec,
                expires_ns,
            },
        );
        Ok(id)
    }

    /// Rewrites rule `id` with a new `next`.
    fn write(&self, id: u32, next: Option<u32>) -> Result<(), EbpfError> {
        let Some(rule) = self.rules.get(&id) else {
            return Ok(());
        };
        let (by_source, _) = placement(&rule.spec);
        self.prefilter
            .rules
            .update(
                &id.to_ne_bytes(),
                &rule_bytes(
                    &rule.spec,
                    by_source,
                    next.unwrap_or(NO_RULE),
                    rule.expires_ns,
                ),
                MapFlags::ANY,
            )
            .map_err(map_error("writing", "rules"))
    }

    /// Removes rule `id`; returns it.
    pub fn remove(&mut self, id: u32) -> Result<RuleSpec, RuleTableError> {
        let rule = self
            .rules
            .get(&id)
            .cloned()
            .ok_or(RuleTableError::NoSuchRule(id))?;
        let (by_source, prefix) = placement(&rule.spec);
        let chain = self
            .chains
            .get(&(by_source, prefix))
            .cloned()
            .unwrap_or_default();
        let at = chain.iter().position(|&r| r == id).unwrap_or(0);
        let next = chain.get(at + 1).copied();
        let p = &self.prefilter;
        // Unlink first, then delete: a reader never follows a link to a deleted rule.
        if at == 0 {
            let (trie, name) = p.trie(by_source);
            match next {
                Some(next) => trie
                    .update(&key_bytes(&prefix), &next.to_ne_bytes(), MapFlags::ANY)
                    .map_err(map_error("writing", name))?,
                None => trie
                    .delete(&key_bytes(&prefix))
                    .map_err(map_error("deleting", name))?,
            }
        } else {
            self.write(chain[at - 1], next)?;
        }
        p.rules
            .delete(&id.to_ne_bytes())
            .map_err(map_error("deleting", "rules"))?;
        if let Some(c) = self.chains.get_mut(&(by_source, prefix)) {
            c.retain(|&r| r != id);
            if c.is_empty() {
                self.chains.remove(&(by_source, prefix));
            }
        }
        self.rules.remove(&id);
        self.free.push(id);
        Ok(rule.spec)
    }

    /// Removes the rules whose time is up; returns their ids.
    pub fn expire(&mut self) -> Vec<u32> {
        let now = monotonic_ns();
        let due: Vec<u32> = self
            .rules
            .values()
            .filter(|r| r.expires_ns != 0 && r.expires_ns <= now)
            .map(|r| r.id)
            .collect();
        due.into_iter()
            .filter(|&id| self.remove(id).is_ok())
            .collect()
    }

    /// The rules in id order with their hits.
    pub fn list(&self) -> Result<Vec<RuleInfo>, EbpfError> {
        let now = monotonic_ns();
        let mut ids: Vec<u32> = self.rules.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
            .map(|id| {
                let rule = &self.rules[&id];
                Ok(RuleInfo {
                    id,
                    spec: rule.spec,
                    hits: self.prefilter.hits_of(id)?,
                    expires_in_s: (rule.expires_ns != 0)
                        .then(|| rule.expires_ns.saturating_sub(now) / 1_000_000_000),
                })
            })
            .collect()
    }

    /// Hits of rule `id`.
    pub fn hits(&self, id: u32) -> Result<u64, RuleTableError> {
        if !self.rules.contains_key(&id) {
            return Err(RuleTableError::NoSuchRule(id));
        }
        Ok(self.prefilter.hits_of(id)?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn specs(rules: &[&str]) -> Vec<RuleSpec> {
        rules.iter().map(|r| r.parse().unwrap()).collect()
    }

    fn entries(map: &MapHandle) -> usize {
        map.keys().count()
    }

    /// A table of 16 rules whose destination trie takes one prefix only: a map that refuses
    /// while the table still has room (BPF maps need root).
    fn refusing_table() -> RuleTable {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the rule table tests make BPF maps: run them as root"
        );
        let mut prefilter = Prefilter::create(16).unwrap();
        let no_prealloc = libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as libbpf_sys::size_t,
            map_flags: libbpf_sys::BPF_F_NO_PREALLOC,
            ..Default::default()
        };
        prefilter.dst_prefixes = MapHandle::create(
            MapType::LpmTrie,
            Some("dst_prefixes"),
            KEY_SIZE,
            4,
            1,
            &no_prealloc,
        )
        .unwrap();
        RuleTable::new(std::sync::Arc::new(prefilter))
    }

    #[test]
    fn add_many_takes_back_what_it_added_when_a_map_refuses_midway() {
        let mut table = refusing_table();
        let before = table.add("drop src 10.9.9.9".parse().unwrap()).unwrap();
        // Batched (a new prefix), one by one (a second rule on it), then two new destination
        // prefixes in one batch: the trie takes the first and refuses the second.
        let error = table
            .add_many(&specs(&[
                "drop src 10.0.0.1",
                "pass src 10.0.0.1 proto udp",
                "drop src 10.0.0.2",
                "drop dst 192.0.2.1",
                "drop dst 192.0.2.2",
            ]))
            .unwrap_err();
        assert!(matches!(error, RuleTableError::Map(_)), "{error}");
        let listed: Vec<u32> = table.list().unwrap().iter().map(|r| r.id).collect();
        assert_eq!(listed, [before], "the table holds what it held before");
        let p = table.prefilter().clone();
        assert_eq!(entries(&p.rules), 1, "no rule left behind in the map");
        assert_eq!(entries(&p.src_prefixes), 1);
        assert_eq!(entries(&p.dst_prefixes), 0);
        // The table works on: its ids are given out again, and a set that fits goes in.
        let ids = table
            .add_many(&specs(&["drop src 10.0.0.1", "drop dst 192.0.2.1"]))
            .unwrap();
        assert_eq!(ids.len(), 2);
        assert!(ids.iter().all(|&id| id < 16 && id != before), "{ids:?}");
        assert_eq!(table.len(), 3);
        assert_eq!(entries(&p.rules), 3);
        assert_eq!(entries(&p.dst_prefixes), 1);
    }

    #[test]
    fn add_many_beyond_the_capacity_adds_nothing() {
        let mut table = refusing_table();
        let many: Vec<String> = (0..20).map(|i| format!("drop src 10.1.0.{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let error = table.add_many(&specs(&many)).unwrap_err();
        assert!(matches!(error, RuleTableError::Full(16)), "{error}");
        assert!(table.is_empty());
        assert_eq!(entries(&table.prefilter().rules), 0);
        assert_eq!(entries(&table.prefilter().src_prefixes), 0);
        // Every id is free again: 16 rules fit.
        assert_eq!(table.add_many(&specs(&many[..16])).unwrap().len(), 16);
    }
}
