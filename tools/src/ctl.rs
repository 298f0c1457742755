//! `fastedge ctl`: the client of a running split's control socket, one command or a shell.

use std::path::PathBuf;

use anyhow::{anyhow, Context as _};
use clap::Args;
use fastedge_rings::control::{find_socket, render, request_for};
use fastedge_runtime::control;

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

pub fn run(args: CtlArgs) -> Result<(), Failure> {
    let socket = match &args.socket {
        Some(path) => path.clone(),
        None => find_socket(args.name.as_deref()).map_err(|e| Failure::config(anyhow!(e)))?,
    };
    if !args.command.is_empty() {
        let request = request_for(&args.command).map_err(|e| Failure::config(anyhow!(e)))?;
        let answer = control::request(&socket, &request)
            .with_context(|| format!("control socket {}", socket.display()))
            .map_err(Failure::runtime)?;
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
