//! Zeek NetControl rules, as its JSON clients send them (`{"ty": "drop", "target": "forward",
//! "entity": {…}, "expire": 30}`), translated into pre-filter rules ([`RuleSpec`]). The
//! bookkeeping that installs them (ids, removal, expiry) lives with the split supervisor in
//! `fastedge-rings`; this module only reads the request.

use serde_json::Value;

use crate::rules::{Prefix, RuleAction, RuleSpec, MAX_SECONDS};

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;

/// The way a NetControl rule is aimed at (`"way": N` in the rule, fastedge's own field), or
/// `None` for the whole input. The error is what the client is told.
pub fn rule_way(rule: &Value) -> Result<Option<u32>, String> {
    match &rule["way"] {
        Value::Null => Ok(None),
        way => way
            .as_u64()
            .and_then(|w| u32::try_from(w).ok())
            .map(Some)
            .ok_or_else(|| format!("way {way}: a way number (0, 1, …)")),
    }
}

/// The pre-filter rules one NetControl rule stands for: one for a flow, two for an address
/// (traffic from it and to it) or a connection (both directions). The error is what the client
/// is told.
pub fn rule_specs(rule: &Value) -> Result<Vec<RuleSpec>, String> {
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
                .filter(|s| *s > 0.0 && *s <= MAX_SECONDS as f64)
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
    match entity["ty"].as_str() {
        Some("address") => {
            let ip = prefix(&entity["ip"], "entity.ip")?.ok_or("entity.ip missing")?;
            // Traffic from and to the address.
            Ok(vec![
                RuleSpec {
                    src: Some(ip),
                    ..base
                },
                RuleSpec {
                    dst: Some(ip),
                    ..base
                },
            ])
        }
        Some("connection") => {
            let conn = &entity["conn"];
            let orig = prefix(&conn["orig_h"], "conn.orig_h")?.ok_or("conn.orig_h missing")?;
            let resp = prefix(&conn["resp_h"], "conn.resp_h")?.ok_or("conn.resp_h missing")?;
            let (op, proto) = port(&conn["orig_p"], "conn.orig_p")?.ok_or("conn.orig_p missing")?;
            let (rp, _) = port(&conn["resp_p"], "conn.resp_p")?.ok_or("conn.resp_p missing")?;
            let tcp_or_udp = matches!(proto, TCP | UDP);
            let one = |s: Prefix, d: Prefix, sp: u16, dp: u16| RuleSpec {
                src: Some(s),
                dst: Some(d),
                protocol: proto,
                sport: if tcp_or_udp { (sp, sp) } else { (0, u16::MAX) },
                dport: if tcp_or_udp { (dp, dp) } else { (0, u16::MAX) },
                ..base
            };
            // Both directions of the connection.
            Ok(vec![one(orig, resp, op, rp), one(resp, orig, rp, op)])
        }
        Some("flow") => {
            let flow = &entity["flow"];
            let sp = port(&flow["src_p"], "flow.src_p")?;
            let dp = port(&flow["dst_p"], "flow.dst_p")?;
            let proto = sp.or(dp).map_or(0, |(_, p)| p);
            // Ports mean something for TCP and UDP only (ICMP's "port" is its type).
            let ports = |p: Option<(u16, u8)>| match p {
                Some((port, TCP | UDP)) => (port, port),
                _ => (0, u16::MAX),
            };
            Ok(vec![RuleSpec {
                src: prefix(&flow["src_h"], "flow.src_h")?,
                dst: prefix(&flow["dst_h"], "flow.dst_h")?,
                protocol: proto,
                sport: ports(sp),
                dport: ports(dp),
                ..base
            }])
        }
        Some("mac") => {
            Err("MAC entities are not supported: the pre-filter matches IP headers".into())
        }
        Some(other) => Err(format!(
            "entity type {other:?}: address, connection or flow"
        )),
        None => Err("entity.ty missing: address, connection or flow".into()),
    }
}

/// An address or prefix field, absent: `None`.
fn prefix(v: &Value, what: &str) -> Result<Option<Prefix>, String> {
    match v.as_str() {
        None => Ok(None),
        Some(text) => text
            .parse::<Prefix>()
            .map(Some)
            .map_err(|e| format!("{what}: {e}")),
    }
}

/// A port as NetControl writes it, "80/tcp": (port, protocol number).
fn port(v: &Value, what: &str) -> Result<Option<(u16, u8)>, String> {
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
        "tcp" => TCP,
        "udp" => UDP,
        "icmp" => ICMP,
        _ => return Err(format!("{what} {text:?}: tcp, udp or icmp")),
    };
    Ok(Some((p, proto)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn texts(rule: Value) -> Vec<String> {
        match rule_specs(&rule) {
            Ok(specs) => specs.iter().map(ToString::to_string).collect(),
            Err(error) => vec![format!("error: {error}")],
        }
    }

    #[test]
    fn an_address_is_dropped_both_ways_until_it_expires() {
        assert_eq!(
            texts(json!({
                "ty": "drop", "target": "forward", "expire": 2.5,
                "entity": {"ty": "address", "ip": "192.0.2.7/32"},
            })),
            ["drop src 192.0.2.7/32 for 3", "drop dst 192.0.2.7/32 for 3"]
        );
        assert_eq!(
            texts(json!({"ty": "whitelist", "entity": {"ty": "address", "ip": "2001:db8::/32"}})),
            ["pass src 2001:db8::/32", "pass dst 2001:db8::/32"]
        );
    }

    #[test]
    fn a_connection_becomes_both_directions_with_their_ports() {
        assert_eq!(
            texts(json!({
                "ty": "drop",
                "entity": {"ty": "connection", "conn": {
                    "orig_h": "10.0.0.1", "orig_p": "40000/tcp",
                    "resp_h": "10.0.0.2", "resp_p": "443/tcp",
                }},
            })),
            [
                "drop src 10.0.0.1/32 dst 10.0.0.2/32 proto tcp sport 40000 dport 443",
                "drop src 10.0.0.2/32 dst 10.0.0.1/32 proto tcp sport 443 dport 40000"
            ]
        );
        // ICMP's "ports" are its type and code: the rules match the protocol only.
        assert_eq!(
            texts(json!({
                "ty": "drop",
                "entity": {"ty": "connection", "conn": {
                    "orig_h": "10.0.0.1", "orig_p": "8/icmp",
                    "resp_h": "10.0.0.2", "resp_p": "0/icmp",
                }},
            })),
            [
                "drop src 10.0.0.1/32 dst 10.0.0.2/32 proto icmp",
                "drop src 10.0.0.2/32 dst 10.0.0.1/32 proto icmp"
            ]
        );
    }

    #[test]
    fn a_flow_is_one_rule_with_what_it_names() {
        assert_eq!(
            texts(json!({
                "ty": "drop",
                "entity": {"ty": "flow", "flow": {"src_h": "10.1.0.0/16", "dst_p": "53/udp"}},
            })),
            ["drop src 10.1.0.0/16 proto udp dport 53"]
        );
        assert_eq!(
            texts(json!({"ty": "drop", "entity": {"ty": "flow", "flow": {}}})),
            ["drop"]
        );
    }

    #[test]
    fn what_the_prefilter_cannot_do_is_refused_with_the_reason() {
        for (rule, why) in [
            (
                json!({"entity": {"ty": "address", "ip": "10.0.0.1"}}),
                "rule.ty missing",
            ),
            (json!({"ty": "redirect"}), "rule type \"redirect\""),
            (
                json!({"ty": "drop", "target": "output"}),
                "target \"output\"",
            ),
            (json!({"ty": "drop", "expire": 0}), "expire"),
            (json!({"ty": "drop", "expire": "soon"}), "expire"),
            (
                json!({"ty": "drop", "entity": {"ty": "mac", "mac": "02:00:00:00:00:01"}}),
                "MAC",
            ),
            (
                json!({"ty": "drop", "entity": {"ty": "cable"}}),
                "entity type \"cable\"",
            ),
            (json!({"ty": "drop", "entity": {}}), "entity.ty missing"),
            (
                json!({"ty": "drop", "entity": {"ty": "address"}}),
                "entity.ip missing",
            ),
            (
                json!({"ty": "drop", "entity": {"ty": "address", "ip": "10.0.0.300"}}),
                "entity.ip",
            ),
            (
                json!({"ty": "drop", "entity": {"ty": "connection", "conn": {
                    "orig_h": "10.0.0.1", "orig_p": "80", "resp_h": "10.0.0.2", "resp_p": "1/tcp"}}}),
                "PORT/PROTO",
            ),
            (
                json!({"ty": "drop", "entity": {"ty": "flow", "flow": {"src_p": "80/sctp"}}}),
                "tcp, udp or icmp",
            ),
            (
                json!({"ty": "drop", "entity": {"ty": "flow", "flow": {"src_p": "70000/tcp"}}}),
                "bad port",
            ),
        ] {
            let error = rule_specs(&rule).expect_err(&rule.to_string());
            assert!(error.contains(why), "{rule}: {error}");
        }
    }

    #[test]
    fn a_rule_may_name_one_way() {
        let rule = |way: Value| serde_json::json!({"ty": "drop", "way": way});
        assert_eq!(rule_way(&serde_json::json!({"ty": "drop"})), Ok(None));
        assert_eq!(rule_way(&rule(serde_json::json!(3))), Ok(Some(3)));
        for bad in [
            serde_json::json!(-1),
            serde_json::json!("3"),
            serde_json::json!(1.5),
        ] {
            assert!(rule_way(&rule(bad)).unwrap_err().contains("a way number"));
        }
    }
}
