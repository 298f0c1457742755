//! The control protocol of a running split, both sides: the commands ([`Command`]), the
//! answers the supervisor gives ([`answer`]), and what a client needs (the socket's default
//! place, finding it, turning a command line into a request, rendering an answer for people).
//!
//! The socket itself (JSON lines over a private UNIX socket) is
//! [`fastedge_runtime::control`]; request lines are parsed by [`fastedge_wire::control`].

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::Instant,
};

use fastedge_runtime::control::Answer;
use serde_json::{json, Map, Value};

use crate::{
    pipeline::{PipelineConfig, ValidPipeline},
    rules::SharedRules,
    split::SplitStats,
    supervisor::SplitHandle,
};

/// Directory of the split control sockets by default.
pub const SOCKET_DIR: &str = "/run/fastedge";

/// A command of the split control socket, `{"cmd": NAME, …}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Name, pid, uptime, inputs and their modes, ways.
    Status,
    /// Every counter.
    Stats,
    /// Per way: delivered, dropped because full, attached consumer.
    Ways,
    /// The pipeline in use, as TOML.
    Pipeline,
    /// Read the config file again.
    Reload,
    /// Stop.
    Shutdown,
    /// Pre-filter rules: `"op": "list" | "add" | "del"`.
    Rules,
    /// A rule shaped like Zeek NetControl's: `"op": "add" | "remove"`.
    NetControl,
    /// What the commands are.
    Help,
}

impl Command {
    /// Every command, in the order `help` lists them.
    pub const ALL: [Command; 9] = [
        Command::Status,
        Command::Stats,
        Command::Ways,
        Command::Pipeline,
        Command::Reload,
        Command::Shutdown,
        Command::Rules,
        Command::NetControl,
        Command::Help,
    ];

    /// Its `"cmd"` on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::Stats => "stats",
            Command::Ways => "ways",
            Command::Pipeline => "pipeline",
            Command::Reload => "reload",
            Command::Shutdown => "shutdown",
            Command::Rules => "rules",
            Command::NetControl => "netcontrol",
            Command::Help => "help",
        }
    }

    /// The command named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// One line on what it does, as `help` answers.
    pub fn help(self) -> &'static str {
        match self {
            Command::Status => "name, pid, uptime, inputs and their modes, ways",
            Command::Stats => {
                "every counter: per input (kernel drops by cause), per way, per capture file"
            }
            Command::Ways => "per way: delivered, dropped because full, attached consumer",
            Command::Pipeline => "the pipeline in use, as TOML",
            Command::Reload => {
                "read the --config file again (ways of the same size keep their consumers)"
            }
            Command::Shutdown => "stop",
            Command::Rules => "pre-filter rules: list; add RULE; del ID",
            Command::NetControl => "add or remove a rule shaped like Zeek NetControl's (JSON)",
            Command::Help => "these commands",
        }
    }
}

/// The object inside `v`; anything else is put under `"value"`.
pub(crate) fn into_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => {
            let mut m = Map::new();
            m.insert("value".into(), other);
            m
        }
    }
}

/// What the control socket of a running split reads and changes.
#[derive(Debug)]
pub struct ControlState {
    pub(crate) handle: SplitHandle,
    pub(crate) config: Mutex<ValidPipeline>,
    /// The pipeline a `reload` request read and checked, for the supervisor to start (so the
    /// file is validated once per reload, and what was checked is what runs).
    pub(crate) approved: Mutex<Option<ValidPipeline>>,
    pub(crate) config_path: Option<PathBuf>,
    pub(crate) stats: Mutex<SplitStats>,
    pub(crate) started: Instant,
    pub(crate) rules: Option<SharedRules>,
}

impl ControlState {
    /// The latest counters (as of the engine's last tick).
    pub fn stats(&self) -> SplitStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The pipeline in use.
    pub fn config(&self) -> Result<ValidPipeline, String> {
        self.config
            .lock()
            .map(|c| c.clone())
            .map_err(|_| "state lock".to_owned())
    }
}

/// Answers request `cmd` (with all its fields in `request`) for the split behind `state`.
pub fn answer(state: &ControlState, cmd: &str, request: &Map<String, Value>) -> Answer {
    let Some(command) = Command::from_name(cmd) else {
        return Err(format!("unknown command {cmd:?}; try \"help\""));
    };
    match command {
        Command::Help => {
            let commands: Map<String, Value> = Command::ALL
                .into_iter()
                .filter(|c| *c != Command::Help)
                .map(|c| (c.name().to_owned(), Value::from(c.help())))
                .collect();
            Ok(into_map(json!({ "commands": commands })))
        }
        Command::Status => {
            let stats = state.stats();
            let config = state.config()?;
            Ok(into_map(json!({
                "name": config.name(),
                "pid": std::process::id(),
                "uptime_s": state.started.elapsed().as_secs(),
                "config": state.config_path.as_ref().map(|p| p.display().to_string()),
                "inputs": stats.inputs.iter().map(|i| json!({
                    "name": i.name,
                    "mode": i.kind.map(|k| k.to_string()),
                    "queues": i.queues,
                    "received": i.received,
                })).collect::<Vec<_>>(),
                "ways": config.way_count(),
                "consumers": stats.ways.iter().filter(|w| w.consumer.is_some()).count(),
            })))
        }
        Command::Stats => Ok(into_map(json!({ "stats": state.stats() }))),
        Command::Ways => Ok(into_map(json!({
            "ways": state.stats().ways.iter().enumerate().map(|(i, w)| json!({
                "way": i,
                "delivered": w.delivered,
                "dropped_full": w.dropped_full,
                "filtered": w.filtered,
                "consumer_pid": w.consumer,
            })).collect::<Vec<_>>()
        }))),
        Command::Pipeline => {
            let config = state.config()?;
            let text = toml::to_string(&config).map_err(|e| format!("rendering TOML: {e}"))?;
            Ok(into_map(json!({ "toml": text })))
        }
        Command::Reload => {
            if let Some(path) = &state.config_path {
                // Refuse a bad file here, with the reason, rather than after stopping.
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                let checked = PipelineConfig::from_toml(&text)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if let Ok(mut approved) = state.approved.lock() {
                    *approved = Some(checked);
                }
            }
            state.handle.reload();
            Ok(into_map(json!({ "reload": "started" })))
        }
        Command::Shutdown => {
            state.handle.shutdown();
            Ok(into_map(json!({ "shutdown": "started" })))
        }
        Command::Rules | Command::NetControl => {
            let rules = state
                .rules
                .as_ref()
                .ok_or("rules: the XDP pre-filter could not be set up (see the log)")?;
            let mut rules = rules.lock().map_err(|_| "rules lock".to_owned())?;
            if command == Command::Rules {
                rules.control(request)
            } else {
                let ways = state.config.lock().map_or(0, |c| c.way_count());
                Ok(rules.netcontrol(request, ways))
            }
        }
    }
}

/// The default control socket of split `name`.
pub fn default_socket(name: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("split-{name}.sock"))
}

/// The control socket of a running split: the default one of split `name`, or without a
/// name the only split socket in [`SOCKET_DIR`]. The error says what to do.
pub fn find_socket(name: Option<&str>) -> Result<PathBuf, String> {
    if let Some(name) = name {
        return Ok(default_socket(name));
    }
    let found: Vec<PathBuf> = std::fs::read_dir(SOCKET_DIR)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("split-") && n.ends_with(".sock"))
                })
                .collect()
        })
        .unwrap_or_default();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "no split control socket in {SOCKET_DIR}: is `fastedge split` running? (or give --socket)"
        )),
        many => Err(format!(
            "several splits run ({}): pick one with --name or --socket",
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The request for a command line (`rules add drop src 10.0.0.0/8`), or why it is not one.
/// `raw JSON` is sent as it is.
pub fn request_for(words: &[String]) -> Result<Value, String> {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let simple = |c: Command| json!({ "cmd": c.name() });
    match words.as_slice() {
        [name @ ("status" | "stats" | "ways" | "reload" | "shutdown" | "help")] => {
            Ok(json!({ "cmd": name }))
        }
        ["pipeline"] | ["pipeline", "show"] => Ok(simple(Command::Pipeline)),
        ["rules"] | ["rules", "list"] => Ok(json!({ "cmd": Command::Rules.name(), "op": "list" })),
        ["rules", "add", rule @ ..] if !rule.is_empty() => {
            Ok(json!({ "cmd": Command::Rules.name(), "op": "add", "rule": rule.join(" ") }))
        }
        ["rules", "del", id] => id
            .parse::<u32>()
            .map(|id| json!({ "cmd": Command::Rules.name(), "op": "del", "id": id }))
            .map_err(|_| format!("rules del {id:?}: a rule id (from rules list)")),
        ["rules", ..] => Err("rules list | rules add RULE | rules del ID".into()),
        ["raw", rest @ ..] if !rest.is_empty() => {
            serde_json::from_str(&rest.join(" ")).map_err(|e| format!("raw: bad JSON: {e}"))
        }
        [] => Err("no command".into()),
        [other, ..] => Err(format!(
            "unknown command {other:?}: status, stats, ways, pipeline show, rules, reload, shutdown, raw JSON, help"
        )),
    }
}

/// A JSON value as a table cell: `Value`'s own `Display` ignores widths.
fn cell(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// Renders `answer` (to `request`) for people: tables for ways and rules, the TOML of the
/// pipeline, the command list, else the answer's fields as indented JSON.
pub fn render(request: &Value, answer: &Value) -> String {
    if answer["ok"] != true {
        return format!(
            "error: {}",
            answer["error"].as_str().unwrap_or("(no message)")
        );
    }
    match request["cmd"].as_str().and_then(Command::from_name) {
        Some(Command::Pipeline) => answer["toml"].as_str().unwrap_or_default().to_owned(),
        Some(Command::Ways) => {
            let mut out = String::from("way  delivered  dropped-full  filtered  consumer\n");
            for w in answer["ways"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "{:>3}  {:>9}  {:>12}  {:>8}  {}\n",
                    cell(&w["way"]),
                    cell(&w["delivered"]),
                    cell(&w["dropped_full"]),
                    cell(&w["filtered"]),
                    w["consumer_pid"]
                        .as_u64()
                        .map_or("-".to_owned(), |p| format!("pid {p}"))
                ));
            }
            out
        }
        Some(Command::Rules) if answer.get("rules").is_some() => {
            let mut out = String::from("  id        hits  expires  origin        rule\n");
            for r in answer["rules"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "{:>4}  {:>10}  {:>7}  {:<12}  {}\n",
                    cell(&r["id"]),
                    cell(&r["hits"]),
                    r["expires_in_s"]
                        .as_u64()
                        .map_or("-".to_owned(), |s| format!("{s}s")),
                    r["origin"].as_str().unwrap_or(""),
                    r["rule"].as_str().unwrap_or("")
                ));
            }
            out
        }
        Some(Command::Help) => {
            let mut out = String::new();
            if let Some(commands) = answer["commands"].as_object() {
                for (name, what) in commands {
                    out.push_str(&format!("{name:<10} {}\n", what.as_str().unwrap_or("")));
                }
            }
            out.push_str("raw JSON   send a request as it is\nquit       leave the shell\n");
            out
        }
        _ => {
            let mut fields = answer.clone();
            if let Some(map) = fields.as_object_mut() {
                map.remove("ok");
            }
            serde_json::to_string_pretty(&fields).unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn commands_become_requests() {
        assert_eq!(request_for(&words("status")), Ok(json!({"cmd": "status"})));
        assert_eq!(
            request_for(&words("pipeline show")),
            Ok(json!({"cmd": "pipeline"}))
        );
        assert_eq!(
            request_for(&words("rules add drop src 10.0.0.0/8 proto udp")),
            Ok(json!({"cmd": "rules", "op": "add", "rule": "drop src 10.0.0.0/8 proto udp"}))
        );
        assert_eq!(
            request_for(&words("rules del 7")),
            Ok(json!({"cmd": "rules", "op": "del", "id": 7}))
        );
        assert_eq!(
            request_for(&words(r#"raw {"cmd": "x"}"#)),
            Ok(json!({"cmd": "x"}))
        );
        for (line, why) in [
            ("frobnicate", "unknown command"),
            ("raw {", "bad JSON"),
            ("rules del seven", "a rule id"),
            ("rules flush", "rules list | rules add RULE"),
            ("", "no command"),
        ] {
            let error = request_for(&words(line)).expect_err(line);
            assert!(error.contains(why), "{line}: {error}");
        }
    }

    #[test]
    fn every_command_the_client_sends_is_one_the_server_knows() {
        for line in [
            "status",
            "stats",
            "ways",
            "pipeline",
            "reload",
            "shutdown",
            "help",
            "rules",
            "rules add drop",
            "rules del 1",
        ] {
            let request = request_for(&words(line)).expect(line);
            let cmd = request["cmd"].as_str().expect(line);
            assert!(Command::from_name(cmd).is_some(), "{line}");
        }
        for command in Command::ALL {
            assert_eq!(Command::from_name(command.name()), Some(command));
        }
    }

    #[test]
    fn answers_render_for_people() {
        let rules = json!({"ok": true, "rules": [
            {"id": 3, "hits": 12, "expires_in_s": 40, "origin": "ctl", "rule": "drop src 10.0.0.0/8"},
            {"id": 4, "hits": 0, "expires_in_s": null, "origin": "config", "rule": "pass dst 10.1.0.0/16"},
        ]});
        let text = render(&json!({"cmd": "rules", "op": "list"}), &rules);
        // Columns line up (a JSON number's own Display would ignore the widths).
        assert!(
            text.contains("   3          12      40s  ctl           drop src 10.0.0.0/8"),
            "{text}"
        );
        assert!(text.contains("-  config"), "{text}");
        let ways = json!({"ok": true, "ways": [{"way": 0, "delivered": 5, "dropped_full": 1, "filtered": 3, "consumer_pid": 42}]});
        let text = render(&json!({"cmd": "ways"}), &ways);
        assert!(
            text.contains("  0          5             1         3  pid 42"),
            "{text}"
        );
        let error = json!({"ok": false, "error": "it failed"});
        assert_eq!(render(&json!({"cmd": "stats"}), &error), "error: it failed");
        let other = render(
            &json!({"cmd": "reload"}),
            &json!({"ok": true, "reload": "started"}),
        );
        assert!(
            other.contains("\"reload\": \"started\"") && !other.contains("ok"),
            "{other}"
        );
    }
}
