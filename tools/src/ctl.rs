//! `fastedge ctl`: the client of a running split's control socket, one command or a shell.

use std::path::PathBuf;

use anyhow::{anyhow, Context as _};
use clap::Args;
use fastedge_runtime::control;
use serde_json::{json, Value};

use crate::Failure;

/// Talk to a running `fastedge split` over its control socket.
///
/// Commands: `status`, `stats`, `ways`, `pipeline show`, `rules list`, `rules add RULE`,
/// `rules del ID`, `reload`, `shutdown`, `help`;
/// `raw JSON` sends a request as it is. Without a command, opens a shell with history
/// (~/.fastedge_ctl_history) and `help`. The answer is printed readably, or as the JSON line
/// the socket sent with `--json`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Control socket; default: /run/fastedge/split-NAME.sock with --name, else the only
    /// socket in /run/fastedge.
    #[arg(long, short = 's', value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Name of the split (its first interface, or its --name).
    #[arg(long, short = 'n')]
    name: Option<String>,

    /// Print answers as JSON.
    #[arg(long)]
    json: bool,

    /// The command and its arguments; none: interactive shell.
    command: Vec<String>,
}

fn find_socket(args: &CtlArgs) -> Result<PathBuf, Failure> {
    if let Some(path) = &args.socket {
        return Ok(path.clone());
    }
    if let Some(name) = &args.name {
        return Ok(crate::split::default_control(name));
    }
    let found: Vec<PathBuf> = std::fs::read_dir("/run/fastedge")
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
        [] => Err(Failure::config(anyhow!(
            "no split control socket in /run/fastedge: is `fastedge split` running? (or give --socket)"
        ))),
        many => Err(Failure::config(anyhow!(
            "several splits run ({}): pick one with --name or --socket",
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The request for a command line, or why it is not one.
fn request_for(words: &[String]) -> Result<Value, String> {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["status"] | ["stats"] | ["ways"] | ["reload"] | ["shutdown"] | ["help"] => {
            Ok(json!({ "cmd": words[0] }))
        }
        ["pipeline"] | ["pipeline", "show"] => Ok(json!({ "cmd": "pipeline" })),
        ["rules"] | ["rules", "list"] => Ok(json!({ "cmd": "rules", "op": "list" })),
        ["rules", "add", rule @ ..] if !rule.is_empty() => {
            Ok(json!({ "cmd": "rules", "op": "add", "rule": rule.join(" ") }))
        }
        ["rules", "del", id] => id
            .parse::<u32>()
            .map(|id| json!({ "cmd": "rules", "op": "del", "id": id }))
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

/// Renders an answer for people.
fn render(request: &Value, answer: &Value) -> String {
    if answer["ok"] != true {
        return format!(
            "error: {}",
            answer["error"].as_str().unwrap_or("(no message)")
        );
    }
    match request["cmd"].as_str() {
        Some("pipeline") => answer["toml"].as_str().unwrap_or_default().to_owned(),
        Some("ways") => {
            let mut out = String::from("way  delivered  dropped-full  consumer\n");
            for w in answer["ways"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "{:>3}  {:>9}  {:>12}  {}\n",
                    w["way"],
                    w["delivered"],
                    w["dropped_full"],
                    w["consumer_pid"]
                        .as_u64()
                        .map_or("-".to_owned(), |p| format!("pid {p}"))
                ));
            }
            out
        }
        Some("rules") if answer.get("rules").is_some() => {
            let mut out = String::from("  id        hits  expires  origin        rule\n");
            for r in answer["rules"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "{:>4}  {:>10}  {:>7}  {:<12}  {}\n",
                    r["id"],
                    r["hits"],
                    r["expires_in_s"]
                        .as_u64()
                        .map_or("-".to_owned(), |s| format!("{s}s")),
                    r["origin"].as_str().unwrap_or(""),
                    r["rule"].as_str().unwrap_or("")
                ));
            }
            out
        }
        Some("help") => {
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

fn send(socket: &std::path::Path, request: &Value) -> Result<Value, Failure> {
    control::request(socket, request)
        .with_context(|| format!("control socket {}", socket.display()))
        .map_err(Failure::runtime)
}

pub fn run(args: CtlArgs) -> Result<(), Failure> {
    let socket = find_socket(&args)?;
    if !args.command.is_empty() {
        let request = request_for(&args.command).map_err(|e| Failure::config(anyhow!(e)))?;
        let answer = send(&socket, &request)?;
        if args.json {
            println!("{answer}");
        } else {
            println!("{}", render(&request, &answer).trim_end());
        }
        if answer["ok"] != true {
            return Err(Failure::runtime(anyhow!(
                "{}",
                answer["error"].as_str().unwrap_or("request failed")
            )));
        }
        return Ok(());
    }
    shell(&socket, args.json)
}

fn shell(socket: &std::path::Path, json_out: bool) -> Result<(), Failure> {
    use rustyline::{error::ReadlineError, history::DefaultHistory, Editor};
    let mut editor: Editor<(), DefaultHistory> = Editor::new()
        .context("starting the line editor")
        .map_err(Failure::runtime)?;
    let history =
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".fastedge_ctl_history"));
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    println!(
        "fastedge ctl: {} — `help` for commands, `quit` or Ctrl-D to leave",
        socket.display()
    );
    loop {
        match editor.readline("fastedge> ") {
            Ok(line) => {
                let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
                if words.is_empty() {
                    continue;
                }
                let _ = editor.add_history_entry(line.as_str());
                if matches!(words[0].as_str(), "quit" | "exit") {
                    break;
                }
                match request_for(&words) {
                    Err(e) => println!("error: {e}"),
                    Ok(request) => match control::request(socket, &request) {
                        Ok(answer) if json_out => println!("{answer}"),
                        Ok(answer) => println!("{}", render(&request, &answer).trim_end()),
                        Err(e) => println!("error: control socket {}: {e}", socket.display()),
                    },
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                return Err(Failure::runtime(anyhow!("reading a command: {e}")));
            }
        }
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    Ok(())
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
            request_for(&words(r#"raw {"cmd": "x"}"#)),
            Ok(json!({"cmd": "x"}))
        );
        assert!(request_for(&words("frobnicate"))
            .unwrap_err()
            .contains("unknown command"));
        assert!(request_for(&words("raw {"))
            .unwrap_err()
            .contains("bad JSON"));
    }
}
