//! Pre-filter rules of a running split, as the control socket changes them: `rules`
//! (list/add/del, our text syntax) and `netcontrol` (requests shaped like Zeek NetControl
//! rules). Rules from the pipeline's config are tracked apart, so a reload replaces them and
//! leaves the others alone.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use fastedge_ebpf::rules::RuleTable;
use fastedge_wire::rules::{Prefix, RuleAction, RuleSpec};
use serde_json::{json, Map, Value};

/// Where a rule came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Config,
    Ctl,
    NetControl(u32),
}

/// The rule table and its bookkeeping.
#[derive(Debug)]
pub struct Rules {
    table: RuleTable,
    origin: HashMap<u32, Origin>,
    /// NetControl id → our rule ids.
    netcontrol: HashMap<u32, Vec<u32>>,
    next_netcontrol: u32,
}

pub type SharedRules = Arc<Mutex<Rules>>;

impl Rules {
    pub fn new(table: RuleTable) -> Self {
        Self {
            table,
            origin: HashMap::new(),
            netcontrol: HashMap::new(),
            next_netcontrol: 1,
        }
    }

    /// Replaces the rules that came from the config with `rules` (already validated).
    pub fn set_config_rules(&mut self, rules: &[String]) -> Result<(), String> {
        let old: Vec<u32> = self
            .origin
            .iter()
            .filter(|(_, o)| **o == Origin::Config)
            .map(|(id, _)| *id)
            .collect();
        let specs = rules
            .iter()
            .map(|r| {
                r.parse::<RuleSpec>()
                    .map_err(|e| format!("rule {r:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The new rules are in place before the old ones go: a reload never runs unfiltered.
        let ids = self.table.add_many(&specs).map_err(|e| e.to_string())?;
        for id in ids {
            self.origin.insert(id, Origin::Config);
        }
        for id in old {
            self.table.remove(id).map_err(|e| e.to_string())?;
            self.origin.remove(&id);
        }
        Ok(())
    }

    /// Removes expired rules; returns how many.
    pub fn expire(&mut self) -> usize {
        let gone = self.table.expire();
        for id in &gone {
            if let Some(Origin::NetControl(nc)) = self.origin.remove(id) {
                if let Some(ids) = self.netcontrol.get_mut(&nc) {
                    ids.retain(|r| r != id);
                    if ids.is_empty() {
                        self.netcontrol.remove(&nc);
                        tracing::info!(netcontrol_id = nc, "NetControl rule expired");
                    }
                }
            }
        }
        gone.len()
    }

    fn add(&mut self, spec: RuleSpec, origin: Origin) -> Result<u32, String> {
        let id = self.table.add(spec).map_err(|e| e.to_string())?;
        self.origin.insert(id, origin);
        Ok(id)
    }

    fn remove(&mut self, id: u32) -> Result<RuleSpec, String> {
        let spec = self.table.remove(id).map_err(|e| e.to_string())?;
        self.origin.remove(&id);
        Ok(spec)
    }

    /// `{"cmd": "rules", "op": "list" | "add" | "del", …}`.
    pub fn control(&mut self, request: &Map<String, Value>) -> Result<Map<String, Value>, String> {
        let op = request.get("op").and_then(Value::as_str).unwrap_or("list");
        let answer = match op {
            "list" => {
                let listed = self.table.list().map_err(|e| e.to_string())?;
                json!({
                    "rules": listed.iter().map(|r| json!({
                        "id": r.id,
                        "rule": r.spec.to_string(),
                        "hits": r.hits,
                        "expires_in_s": r.expires_in_s,
                        "origin": match self.origin.get(&r.id) {
                            Some(Origin::Config) => "config".to_owned(),
                            Some(Origin::NetControl(nc)) => format!("netcontrol {nc}"),
                            _ => "ctl".to_owned(),
                        },
                    })).collect::<Vec<_>>()
                })
            }
            "add" => {
                let text = request
                    .get("rule")
                    .and_then(Value::as_str)
                    .ok_or("rules add: give \"rule\": \"drop src 203.0.113.0/24 …\"")?;
                let spec: RuleSpec = text.parse().map_err(|e| format!("rule {text:?}: {e}"))?;
                let id = self.add(spec, Origin::Ctl)?;
                json!({ "id": id, "rule": spec.to_string() })
            }
            "del" => {
                let id = request
                    .get("id")
                    .and_then(Value::as_u64)
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or("rules del: give \"id\": N (from rules list)")?;
                if let Some(Origin::NetControl(nc)) = self.origin.get(&id) {
                    return Err(format!(
                        "rule {id} belongs to NetControl rule {nc}: remove that one (netcontrol remove {nc})"
                    ));
                }
                let spec = self.remove(id)?;
                json!({ "removed": spec.to_string(), "id": id })
            }
            other => return Err(format!("rules: unknown op {other:?}: list, add, del")),
        };
        Ok(into_map(answer))
    }

    /// `{"cmd": "netcontrol", "op": "add", "rule": {…}}` or `{"op": "remove", "id": N}`:
    /// answered `{"result": "added" | "removed" | "error", "id": …}`.
    pub fn netcontrol(&mut self, request: &Map<String, Value>) -> Map<String, Value> {
        let op = request.get("op").and_then(Value::as_str).unwrap_or("add");
        let result = match op {
            "add" => self.netcontrol_add(request.get("rule").unwrap_or(&Value::Null)),
            "remove" => self.netcontrol_remove(request.get("id")),
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

    fn netcontrol_add(&mut self, rule: &Value) -> Result<Value, String> {
        let action = match rule["ty"].as_str() {
            Some("drop") => RuleAction::Drop,
            Some("whitelist") => RuleAction::Pass,
            Some(other) => {
                return Err(format!(
                    "rule type {other:?} is not supported: drop or whitelist"
                ))
            }
            None => return Err("rule.ty missing: drop or whitelist".into()),
        };
        match rule["target"].as_str() {
            None | Some("forward") | Some("monitor") | Some("input") => {}
            Some(other) => {
                return Err(format!(
                    "target {other:?} is not supported: the pre-filter acts on the whole input (forward, monitor)"
                ))
            }
        }
        let seconds = match &rule["expire"] {
            Value::Null => None,
            v => Some(
                v.as_f64()
                    .filter(|s| *s > 0.0 && *s <= fastedge_wire::rules::MAX_SECONDS as f64)
                    .map(|s| s.ceil() as u64)
                    .ok_or("expire: seconds above 0, at most ten years")?,
            ),
        };
        let entity = &rule["entity"];
        let base = RuleSpec {
            action,
            src: None,
            dst: None,
            protocol: 0,
            sport: (0, u16::MAX),
            dport: (0, u16::MAX),
            seconds,
        };
        let prefix = |v: &Value, what: &str| -> Result<Option<Prefix>, String> {
            match v.as_str() {
                None => Ok(None),
                Some(text) => text
                    .parse::<Prefix>()
                    .map(Some)
                    .map_err(|e| format!("{what}: {e}")),
            }
        };
        // "80/tcp" → (port, protocol).
        let port = |v: &Value, what: &str| -> Result<Option<(u16, u8)>, String> {
            let Some(text) = v.as_str() else {
                return Ok(None);
            };
            let (p, proto) = text
                .split_once('/')
                .ok_or_else(|| format!("{what} {text:?}: PORT/PROTO, e.g. 80/tcp"))?;
            let p: u16 = p
                .parse()
                .map_err(|_| format!("{what} {text:?}: bad port"))?;
            let proto = match proto {
                "tcp" => 6,
                "udp" => 17,
                "icmp" => 1,
                _ => return Err(format!("{what} {text:?}: tcp, udp or icmp")),
            };
            Ok(Some((p, proto)))
        };
        let specs: Vec<RuleSpec> = match entity["ty"].as_str() {
            Some("address") => {
                let ip = prefix(&entity["ip"], "entity.ip")?.ok_or("entity.ip missing")?;
                // Traffic from and to the address.
                vec![
                    RuleSpec {
                        src: Some(ip),
                        ..base
                    },
                    RuleSpec {
                        dst: Some(ip),
                        ..base
                    },
                ]
            }
            Some("connection") => {
                let conn = &entity["conn"];
                let orig = prefix(&conn["orig_h"], "conn.orig_h")?.ok_or("conn.orig_h missing")?;
                let resp = prefix(&conn["resp_h"], "conn.resp_h")?.ok_or("conn.resp_h missing")?;
                let (op, proto) =
                    port(&conn["orig_p"], "conn.orig_p")?.ok_or("conn.orig_p missing")?;
                let (rp, _) = port(&conn["resp_p"], "conn.resp_p")?.ok_or("conn.resp_p missing")?;
                let tcp_or_udp = matches!(proto, 6 | 17);
                let one = |s: Prefix, d: Prefix, sp: u16, dp: u16| RuleSpec {
                    src: Some(s),
                    dst: Some(d),
                    protocol: proto,
                    sport: if tcp_or_udp { (sp, sp) } else { (0, u16::MAX) },
                    dport: if tcp_or_udp { (dp, dp) } else { (0, u16::MAX) },
                    ..base
                };
                // Both directions of the connection.
                vec![one(orig, resp, op, rp), one(resp, orig, rp, op)]
            }
            Some("flow") => {
                let flow = &entity["flow"];
                let sp = port(&flow["src_p"], "flow.src_p")?;
                let dp = port(&flow["dst_p"], "flow.dst_p")?;
                let proto = sp.or(dp).map_or(0, |(_, p)| p);
                // Ports mean something for TCP and UDP only (ICMP's "port" is its type).
                let ports = |p: Option<(u16, u8)>| match p {
                    Some((port, 6 | 17)) => (port, port),
                    _ => (0, u16::MAX),
                };
                vec![RuleSpec {
                    src: prefix(&flow["src_h"], "flow.src_h")?,
                    dst: prefix(&flow["dst_h"], "flow.dst_h")?,
                    protocol: proto,
                    sport: ports(sp),
                    dport: ports(dp),
                    ..base
                }]
            }
            Some("mac") => {
                return Err(
                    "MAC entities are not supported: the pre-filter matches IP headers".into(),
                )
            }
            Some(other) => {
                return Err(format!(
                    "entity type {other:?}: address, connection or flow"
                ))
            }
            None => return Err("entity.ty missing: address, connection or flow".into()),
        };
        let nc = self.next_netcontrol;
        let mut ids = Vec::new();
        for spec in specs {
            match self.add(spec, Origin::NetControl(nc)) {
                Ok(id) => ids.push(id),
                Err(error) => {
                    for id in ids {
                        let _ = self.remove(id);
                    }
                    return Err(error);
                }
            }
        }
        self.next_netcontrol += 1;
        tracing::info!(netcontrol_id = nc, rules = ?ids, "NetControl rule added");
        self.netcontrol.insert(nc, ids.clone());
        Ok(json!({ "result": "added", "id": nc, "rules": ids }))
    }

    fn netcontrol_remove(&mut self, id: Option<&Value>) -> Result<Value, String> {
        let nc = id
            .and_then(Value::as_u64)
            .and_then(|i| u32::try_from(i).ok())
            .ok_or("remove: give \"id\" (from the added answer)")?;
        let ids = self
            .netcontrol
            .remove(&nc)
            .ok_or_else(|| format!("no NetControl rule {nc}"))?;
        for id in ids {
            self.remove(id)?;
        }
        Ok(json!({ "result": "removed", "id": nc }))
    }
}

fn into_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}
