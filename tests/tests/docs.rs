//! The examples of README.md and docs/*.md, checked against the real loaders and the real
//! command line, so that a page cannot show a configuration, a command, a rule or a call that
//! does not work.
//!
//! What each fenced block is, by its info string (the words after the backticks):
//!
//! - `toml`: a `serve` configuration, or a `split` pipeline when it has an `[output]` or
//!   `[[input]]` table (`toml split` / `toml serve` say so outright). It must load with the
//!   library's own loader, `ServeConfig::parse` or `PipelineConfig::from_toml`: every key
//!   known, every value valid. Files it names need not exist.
//! - `text rules`: pre-filter rules, one per line (a line starting with `ACTION` is the
//!   grammar); each must parse as `fastedge ctl rules add` would take it.
//! - `json`: control-socket requests; each must be a request the control socket reads, and a
//!   `netcontrol` rule must translate into pre-filter rules.
//! - `c`: calls of the C way API; every `fastedge_*` name must be in the committed header.
//! - `rust`: compiled (and run, unless `no_run`) as doctests of `fastedge-examples`, which
//!   includes docs/library.md; so a `rust` block anywhere else is an error here.
//! - anything else (`sh`, `text`, none): every `fastedge …` command in it must name a
//!   subcommand whose `--help` works and only options that help lists; every `make TARGET`
//!   must be a target of the Makefile.

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
};

use fastedge_rings::pipeline::PipelineConfig;
use fastedge_tests::process::fastedge_bin;
use fastedge_tls::config::{ServeConfig, DEFAULT_CONFIG};
use fastedge_wire::rules::RuleSpec;

/// One fenced block of a page.
#[derive(Debug)]
struct Block {
    /// `path:line` of its opening fence, for messages.
    at: String,
    /// The info string's first word (`toml`, `sh`, …; empty when none).
    language: String,
    /// The info string's other words (`split`, `rules`, `no_run` after a comma, …).
    tags: Vec<String>,
    body: String,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// README.md and every page under docs/.
fn pages() -> Vec<PathBuf> {
    let root = root();
    let mut pages = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    assert!(!docs.is_empty(), "no pages under docs/");
    pages.extend(docs);
    pages
}

/// The fenced blocks of a Markdown text (fences of three backticks, possibly indented, as in
/// a list item).
fn blocks_of(name: &str, text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    // The block being read, and the indentation of its opening fence.
    let mut open: Option<(Block, usize)> = None;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match open.take() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    let mut words = info.split(|c: char| c.is_whitespace() || c == ',');
                    let block = Block {
                        at: format!("{name}:{}", index + 1),
                        language: words.next().unwrap_or("").to_owned(),
                        tags: words.filter(|w| !w.is_empty()).map(str::to_owned).collect(),
                        body: String::new(),
                    };
                    open = Some((block, indent));
                }
            }
            Some((mut block, fence_indent)) => {
                if trimmed.starts_with("```") {
                    block.body.pop(); // the last line's newline
                    blocks.push(block);
                } else {
                    // Lines of a block in a list item carry the item's indentation.
                    block.body.push_str(&line[indent.min(fence_indent)..]);
                    block.body.push('\n');
                    open = Some((block, fence_indent));
                }
            }
        }
    }
    assert!(open.is_none(), "{name}: a fenced block is not closed");
    blocks
}

fn all_blocks() -> Vec<Block> {
    let root = root();
    pages()
        .iter()
        .flat_map(|page| {
            let name = page.strip_prefix(&root).unwrap().display().to_string();
            blocks_of(&name, &std::fs::read_to_string(page).unwrap())
        })
        .collect()
}

fn is_pipeline(block: &Block) -> bool {
    if block.tags.iter().any(|t| t == "split") {
        return true;
    }
    if block.tags.iter().any(|t| t == "serve") {
        return false;
    }
    block
        .body
        .lines()
        .map(str::trim)
        .any(|l| l == "[output]" || l == "[[input]]")
}

#[test]
fn every_toml_example_loads_with_the_real_loader() {
    let (mut serve, mut split, mut failures) = (0, 0, Vec::new());
    for block in all_blocks().iter().filter(|b| b.language == "toml") {
        let result = if is_pipeline(block) {
            split += 1;
            PipelineConfig::from_toml(&block.body)
                .map(drop)
                .map_err(|e| e.to_string())
        } else {
            serve += 1;
            ServeConfig::parse(&block.body)
                .map(drop)
                .map_err(|e| e.to_string())
        };
        if let Err(error) = result {
            failures.push(format!("{}: {error}", block.at));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // README.md alone shows one of each; the guides more.
    assert!(
        serve >= 3 && split >= 2,
        "found {serve} serve and {split} split examples"
    );
}

/// A command line as written: `fastedge SUB ARGS…`, without what follows a pipe or comment.
#[derive(Debug)]
struct Invocation {
    at: String,
    words: Vec<String>,
}

/// The `fastedge …` and `make …` commands of a block. An indented line after a command
/// continues it (a synopsis wrapped over lines, a `\` continuation).
fn commands_of(block: &Block) -> Vec<Invocation> {
    let mut commands: Vec<Invocation> = Vec::new();
    let mut continuing = false;
    for (offset, line) in block.body.lines().enumerate() {
        let indented = line.starts_with(char::is_whitespace);
        let words = shell_words(line);
        if continuing && indented && !line.trim().is_empty() {
            if let Some(last) = commands.last_mut() {
                last.words.extend(words);
                continue;
            }
        }
        continuing = false;
        // Commands start a line (after `sudo` or a prompt) or follow a pipe.
        let mut segment_start = true;
        let mut i = 0;
        while i < words.len() {
            let word = words[i].as_str();
            if word == "|" || word == "&&" || word == ";" {
                segment_start = true;
            } else if segment_start && (word == "sudo" || word == "$") {
                // still at the start of a command
            } else if segment_start && (word == "fastedge" || word == "make") {
                // A `|` inside `[…]` separates alternatives of a synopsis; outside, it pipes.
                let mut depth = 0i32;
                let rest: Vec<String> = words[i + 1..]
                    .iter()
                    .take_while(|w| {
                        let ends = depth == 0 && matches!(w.as_str(), "|" | "&&" | ";");
                        depth += w.matches('[').count() as i32 - w.matches(']').count() as i32;
                        !ends
                    })
                    .cloned()
                    .collect();
                i += rest.len();
                let mut all = vec![word.to_owned()];
                all.extend(rest);
                commands.push(Invocation {
                    at: format!("{} (+{})", block.at, offset + 1),
                    words: all,
                });
                continuing = true;
                segment_start = false;
            } else {
                segment_start = false;
            }
            i += 1;
        }
    }
    for command in &mut commands {
        command.words.retain(|w| w != "\\");
    }
    commands
}

/// The `fastedge …` commands written in code spans of a page's prose (outside fenced blocks),
/// e.g. `` `fastedge split eth1 --ways 4 --to veth` ``; a span may run over a line break.
fn inline_commands(name: &str, text: &str) -> Vec<Invocation> {
    let mut commands = Vec::new();
    let mut fenced = false;
    // Paragraphs of prose: (first line, text with line breaks as spaces).
    let mut paragraphs: Vec<(usize, String)> = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, line) in text.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        if fence {
            fenced = !fenced;
        }
        if fence || fenced || line.trim().is_empty() {
            paragraphs.extend(current.take());
            continue;
        }
        match &mut current {
            Some((_, paragraph)) => {
                paragraph.push(' ');
                paragraph.push_str(line.trim());
            }
            None => current = Some((index + 1, line.trim().to_owned())),
        }
    }
    paragraphs.extend(current);
    for (line, paragraph) in paragraphs {
        // Code spans are the odd pieces between backticks.
        for span in paragraph.split('`').skip(1).step_by(2) {
            if span.starts_with("fastedge ") {
                let block = Block {
                    at: format!("{name}:{line}"),
                    language: String::new(),
                    tags: Vec::new(),
                    body: span.to_owned(),
                };
                commands.extend(commands_of(&block));
            }
        }
    }
    commands
}

/// A line's words, up to a `#` comment; pipes and `&&`/`;` as words of their own.
fn shell_words(line: &str) -> Vec<String> {
    let code = match line.find(" #") {
        Some(at) => &line[..at],
        None if line.trim_start().starts_with('#') => "",
        None => line,
    };
    code.split_whitespace()
        .flat_map(|word| {
            if word.len() > 1 && word.ends_with(';') {
                vec![word.trim_end_matches(';').to_owned(), ";".to_owned()]
            } else {
                vec![word.to_owned()]
            }
        })
        .collect()
}

/// The options a word names: `--flag` anywhere in it (`[--cert`, `--json]`,
/// `--control-mode=600`), or a lone short option (`-i`).
fn options_in(word: &str) -> Vec<String> {
    let mut found = Vec::new();
    let bytes = word.as_bytes();
    let mut i = 0;
    while i + 2 < bytes.len() + 1 {
        if bytes[i..].starts_with(b"--")
            && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
            && bytes.get(i + 2).is_some_and(u8::is_ascii_lowercase)
        {
            let end = bytes[i + 2..]
                .iter()
                .position(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-'))
                .map_or(bytes.len(), |p| i + 2 + p);
            found.push(word[i..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    if bytes.len() == 2 && bytes[0] == b'-' && bytes[1].is_ascii_alphabetic() {
        found.push(word.to_owned());
    }
    found
}

/// Whether `help` lists `option` as an option (followed by a non-name character).
fn help_lists(help: &str, option: &str) -> bool {
    help.match_indices(option).any(|(at, _)| {
        let before_ok = at == 0 || !help.as_bytes()[at - 1].is_ascii_alphanumeric();
        let after = help.as_bytes().get(at + option.len());
        before_ok && !after.is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'-')
    })
}

#[test]
fn every_command_shown_names_real_subcommands_options_and_make_targets() {
    let makefile = std::fs::read_to_string(root().join("Makefile")).unwrap();
    let mut helps: HashMap<String, Result<String, String>> = HashMap::new();
    let (mut checked, mut failures) = (0, Vec::new());
    let root = root();
    let mut commands: Vec<Invocation> = all_blocks()
        .iter()
        .filter(|b| !matches!(b.language.as_str(), "toml" | "rust" | "c" | "json"))
        .flat_map(commands_of)
        .collect();
    for page in pages() {
        let name = page.strip_prefix(&root).unwrap().display().to_string();
        commands.extend(inline_commands(
            &name,
            &std::fs::read_to_string(&page).unwrap(),
        ));
    }
    {
        for command in commands {
            checked += 1;
            let program = command.words[0].as_str();
            let Some(first) = command.words.get(1) else {
                failures.push(format!("{}: `{program}` with nothing after it", command.at));
                continue;
            };
            if program == "make" {
                if !makefile
                    .lines()
                    .any(|l| l.starts_with(&format!("{first}:")))
                {
                    failures.push(format!("{}: no Makefile target `{first}`", command.at));
                }
                continue;
            }
            let sub = first.trim_start_matches('[');
            if sub.starts_with('-') {
                failures.push(format!(
                    "{}: `fastedge {sub}`: write the subcommand first",
                    command.at
                ));
                continue;
            }
            let help = helps.entry(sub.to_owned()).or_insert_with(|| {
                let output = Command::new(fastedge_bin())
                    .args([sub, "--help"])
                    .output()
                    .unwrap();
                if output.status.success() {
                    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
                } else {
                    Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
                }
            });
            let help = match help {
                Ok(help) => help,
                Err(error) => {
                    failures.push(format!("{}: `fastedge {sub} --help`: {error}", command.at));
                    continue;
                }
            };
            for option in command.words[2..].iter().flat_map(|w| options_in(w)) {
                if !help_lists(help, &option) {
                    failures.push(format!(
                        "{}: `fastedge {sub}` has no option {option}",
                        command.at
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 60, "only {checked} commands found");
}

#[test]
fn every_rule_and_control_request_shown_is_accepted() {
    let (mut rules, mut requests, mut failures) = (0, 0, Vec::new());
    for block in all_blocks() {
        if block.language == "text" && block.tags.iter().any(|t| t == "rules") {
            for line in block.body.lines().map(str::trim) {
                if line.is_empty() || line.starts_with("ACTION") {
                    continue;
                }
                rules += 1;
                if let Err(error) = line.parse::<RuleSpec>() {
                    failures.push(format!("{}: rule `{line}`: {error}", block.at));
                }
            }
        }
        if block.language == "json" {
            for value in serde_json::Deserializer::from_str(&block.body).into_iter() {
                let value: serde_json::Value = match value {
                    Ok(value) => value,
                    Err(error) => {
                        failures.push(format!("{}: not JSON: {error}", block.at));
                        break;
                    }
                };
                requests += 1;
                let line = value.to_string();
                let request = match fastedge_wire::control::parse_request(&line) {
                    Ok(request) => request,
                    Err(error) => {
                        failures.push(format!("{}: request {line}: {error}", block.at));
                        continue;
                    }
                };
                if request.cmd != "netcontrol" {
                    continue;
                }
                let checked = match request.fields.get("op").and_then(|op| op.as_str()) {
                    Some("add") => request
                        .fields
                        .get("rule")
                        .ok_or_else(|| "no `rule`".to_owned())
                        .and_then(fastedge_wire::netcontrol::rule_specs)
                        .map(drop),
                    Some("remove") => request
                        .fields
                        .get("id")
                        .and_then(|id| id.as_u64())
                        .map(drop)
                        .ok_or_else(|| "`remove` needs a numeric `id`".to_owned()),
                    other => Err(format!("unknown op {other:?}")),
                };
                if let Err(error) = checked {
                    failures.push(format!("{}: request {line}: {error}", block.at));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        rules >= 3 && requests >= 4,
        "found {rules} rules, {requests} requests"
    );
}

#[test]
fn the_c_example_calls_only_what_the_header_declares() {
    let header = std::fs::read_to_string(root().join("capi/include/fastedge_ways.h")).unwrap();
    let (mut names, mut failures) = (0, Vec::new());
    for block in all_blocks().iter().filter(|b| b.language == "c") {
        let body = block.body.as_str();
        for (at, _) in body.match_indices("fastedge_") {
            if at > 0 && body.as_bytes()[at - 1].is_ascii_alphanumeric() {
                continue;
            }
            let end = body[at..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(body.len(), |p| at + p);
            let name = &body[at..end];
            if name.ends_with(".h") || body[end..].starts_with(".h") {
                continue; // the #include line names the header itself
            }
            names += 1;
            if !help_lists(&header, name) {
                failures.push(format!("{}: {name} is not in fastedge_ways.h", block.at));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(names >= 5, "found {names} names");
}

#[test]
fn rust_examples_are_only_where_the_doctests_run_them() {
    let examples_lib = std::fs::read_to_string(root().join("examples/lib.rs")).unwrap();
    assert!(
        examples_lib.contains("include_str!(\"../docs/library.md\")"),
        "examples/lib.rs no longer runs docs/library.md as doctests"
    );
    let stray: Vec<String> = all_blocks()
        .iter()
        .filter(|b| b.language == "rust" && !b.at.starts_with("docs/library.md:"))
        .map(|b| b.at.clone())
        .collect();
    assert!(
        stray.is_empty(),
        "Rust examples outside docs/library.md are compiled by nothing: {stray:?}"
    );
}

#[test]
fn the_block_reader_sees_indented_fences_and_the_command_reader_pipes() {
    let blocks = blocks_of(
        "x.md",
        "text\n\n1. item:\n\n   ```sh\n   fastedge tap eth1:2 | tcpdump -r -   # note\n   \
         sudo make deb\n   ```\n\n```text rules\ndrop\n```\n",
    );
    assert_eq!(blocks.len(), 2);
    assert_eq!(
        (blocks[0].language.as_str(), blocks[0].at.as_str()),
        ("sh", "x.md:5")
    );
    assert_eq!(blocks[1].tags, ["rules"]);
    let commands = commands_of(&blocks[0]);
    let words: Vec<Vec<String>> = commands.into_iter().map(|c| c.words).collect();
    assert_eq!(
        words,
        [vec!["fastedge", "tap", "eth1:2"], vec!["make", "deb"]]
    );
    let synopsis = Block {
        at: "x.md:1".into(),
        language: "text".into(),
        tags: Vec::new(),
        body: "fastedge ctl [--name N | --socket P] [--json] a|b | tee".into(),
    };
    assert_eq!(
        commands_of(&synopsis)[0].words.len(),
        9,
        "alternatives are not pipes"
    );
    let inline = inline_commands(
        "x.md",
        "Run `fastedge top --once` or `cargo x`.\n```\n`fastedge no`\n```\n",
    );
    assert_eq!(inline.len(), 1);
    assert_eq!(inline[0].words, ["fastedge", "top", "--once"]);
    assert_eq!(
        options_in("[--cert"),
        ["--cert"],
        "brackets around an option"
    );
    assert_eq!(options_in("--control-mode=600]"), ["--control-mode"]);
    assert_eq!(options_in("-i"), ["-i"]);
    assert!(options_in("FILE|-").is_empty());
    assert!(help_lists("  -i, --interval <D>", "--interval"));
    assert!(!help_lists("  --intervals", "--interval"));
}

/// GitHub's anchor of a heading: lower case, spaces to `-`, punctuation other than `-` and `_`
/// dropped.
fn anchor_of(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_link_between_pages_reaches_a_file_and_heading() {
    let mut broken = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let dir = page.parent().unwrap();
        let mut rest = text.as_str();
        while let Some(start) = rest.find("](") {
            rest = &rest[start + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = &rest[..end];
            rest = &rest[end..];
            if target.contains("://") || target.starts_with("mailto:") || target.contains(' ') {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let path = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            if !path.exists() {
                broken.push(format!("{}: {target} (no such file)", page.display()));
                continue;
            }
            if anchor.is_empty() || path.extension().is_none_or(|e| e != "md") {
                continue;
            }
            let headings: Vec<String> = std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .filter_map(|l| {
                    l.trim_start_matches('#')
                        .strip_prefix(' ')
                        .filter(|_| l.starts_with('#'))
                })
                .map(anchor_of)
                .collect();
            if !headings.iter().any(|h| h == anchor) {
                broken.push(format!("{}: {target} (no such heading)", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The rows of the table of `serve` defaults in docs/configuration.md: each key (dotted, or
/// `[[backend]] name`) with the text of its documented default (`None`: the cell is `—`), and
/// the row's line for messages. A cell may list several keys sharing a prefix (`tls.cert`,
/// `tls.key`; `tls.passphrase`, `_env` for `tls.passphrase_env`; `tls.sni_timeout`,
/// `sni_cache_ttl`) and either one default for all or one per key.
fn documented_defaults(text: &str) -> Result<Vec<(String, Option<String>, usize)>, String> {
    let spans = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.trim() == "| key | default | meaning |")
        .ok_or("no `| key | default | meaning |` table")?;
    let mut rows = Vec::new();
    for (i, line) in lines.iter().enumerate().skip(header + 2) {
        let n = i + 1;
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split(" | ").collect();
        let [key_cell, default_cell, ..] = cells.as_slice() else {
            return Err(format!("line {n}: not a key | default | meaning row"));
        };
        let names = spans(key_cell.trim_start_matches('|'));
        let Some(first) = names.first() else {
            return Err(format!("line {n}: no `key` in the first cell"));
        };
        let prefix = &first[..first.rfind(['.', ' ']).map_or(0, |i| i + 1)];
        let keys: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(k, name)| match name {
                _ if k == 0 || name.contains('.') => name.clone(),
                _ if name.starts_with('_') => format!("{first}{name}"),
                _ => format!("{prefix}{name}"),
            })
            .collect();
        let defaults = spans(default_cell);
        match defaults.len() {
            0 if default_cell.trim() == "—" => {
                rows.extend(keys.into_iter().map(|key| (key, None, n)));
            }
            1 => rows.extend(
                keys.into_iter()
                    .map(|key| (key, Some(defaults[0].clone()), n)),
            ),
            d if d == keys.len() => rows.extend(
                keys.into_iter()
                    .zip(defaults)
                    .map(|(key, default)| (key, Some(default), n)),
            ),
            d => {
                return Err(format!(
                    "line {n}: {} key(s) but {d} default(s): {default_cell:?}",
                    keys.len()
                ))
            }
        }
    }
    Ok(rows)
}

/// Every key of the default configuration (`fastedge serve --print-default-config`, the
/// layer every document is read over), dotted, with its value.
fn code_defaults() -> Vec<(String, toml::Value)> {
    let table: toml::Table = toml::from_str(DEFAULT_CONFIG).unwrap();
    let mut keys = Vec::new();
    for (name, value) in table {
        match value {
            toml::Value::Table(inner) => keys.extend(
                inner
                    .into_iter()
                    .map(|(key, value)| (format!("{name}.{key}"), value)),
            ),
            value => keys.push((name, value)),
        }
    }
    keys
}

/// `key = value` as a document: in its table (`tls.cert` → `[tls]`), or in a `[[backend]]`
/// with an address.
fn document_setting(key: &str, value: &str) -> String {
    if let Some(name) = key.strip_prefix("[[backend]] ") {
        let address = "address = \"127.0.0.1:1\"";
        return match name {
            "address" => format!("[[backend]]\n{address}\n"),
            _ => format!("[[backend]]\n{address}\n{name} = {value}\n"),
        };
    }
    match key.split_once('.') {
        Some((table, name)) => format!("[{table}]\n{name} = {value}\n"),
        None => format!("{key} = {value}\n"),
    }
}

#[test]
fn the_table_of_serve_defaults_says_what_the_code_uses() {
    let path = root().join("docs/configuration.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let rows = documented_defaults(&text).unwrap();
    let code: HashMap<String, toml::Value> = code_defaults().into_iter().collect();
    let mut failures = Vec::new();
    for (key, documented, line) in &rows {
        let at = format!("docs/configuration.md:{line}: {key}");
        let Some(documented) = documented else {
            // `—`: a table of tables, or a key with no default (a backend's address).
            if !key.starts_with("[[") {
                failures.push(format!("{at}: no default given"));
            }
            continue;
        };
        // Written with a note after it, e.g. `"0s"` (off): the value is in the backticks.
        let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {documented}")) {
            Ok(mut table) => table.remove("v").unwrap(),
            Err(e) => {
                failures.push(format!(
                    "{at}: default {documented} is not a TOML value: {e}"
                ));
                continue;
            }
        };
        if key.starts_with("[[") {
            // Backends are not in the default document: the loader's own default must give
            // the same configuration as the documented value written out.
            let base = document_setting("[[backend]] address", "");
            let written = document_setting(key, documented);
            match (ServeConfig::parse(&base), ServeConfig::parse(&written)) {
                (Ok(a), Ok(b)) if format!("{a:?}") == format!("{b:?}") => {}
                (Ok(_), Ok(_)) => failures.push(format!(
                    "{at}: documented {documented}, but the code's default differs"
                )),
                (Err(e), _) | (_, Err(e)) => failures.push(format!("{at}: {e}")),
            }
            continue;
        }
        match code.get(key) {
            None => failures.push(format!("{at}: not a key of the default configuration")),
            Some(used) if *used != value => failures.push(format!(
                "{at}: documented {documented}, but the code uses {used}"
            )),
            Some(_) => {}
        }
    }
    let documented: std::collections::HashSet<&str> =
        rows.iter().map(|(key, ..)| key.as_str()).collect();
    for (key, value) in code_defaults() {
        if !documented.contains(key.as_str()) {
            failures.push(format!(
                "docs/configuration.md: {key} (default {value}) is missing from the table"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(rows.len() >= code.len(), "{} rows read", rows.len());
}

#[test]
fn the_defaults_table_reader_expands_shared_prefixes_and_fails_on_mismatches() {
    let table = "| key | default | meaning |\n|---|---|---|\n\
        | `user`, `group` | `\"\"` | x |\n\
        | `tls.passphrase`, `_env` | `\"\"` | x |\n\
        | `tls.sni_timeout`, `sni_cache_ttl` | `\"2s\"`, `\"5m\"` | x |\n\
        | `balance.health_check_interval` | `\"0s\"` (off) | x |\n\
        | `[[backend]] x_forwarded`, `forwarded` | `false` | x |\n\
        | `[[context]]` | — | x |\n\nafter";
    let rows = documented_defaults(table).unwrap();
    let keys: Vec<(&str, Option<&str>)> = rows
        .iter()
        .map(|(k, d, _)| (k.as_str(), d.as_deref()))
        .collect();
    assert_eq!(
        keys,
        [
            ("user", Some("\"\"")),
            ("group", Some("\"\"")),
            ("tls.passphrase", Some("\"\"")),
            ("tls.passphrase_env", Some("\"\"")),
            ("tls.sni_timeout", Some("\"2s\"")),
            ("tls.sni_cache_ttl", Some("\"5m\"")),
            ("balance.health_check_interval", Some("\"0s\"")),
            ("[[backend]] x_forwarded", Some("false")),
            ("[[backend]] forwarded", Some("false")),
            ("[[context]]", None),
        ]
    );
    let uneven = "| key | default | meaning |\n|---|---|---|\n| `a`, `b`, `c` | `1`, `2` | x |\n";
    assert!(documented_defaults(uneven)
        .unwrap_err()
        .contains("3 key(s) but 2 default(s)"));
    // The loader tells a documented backend default from the code's.
    let base = ServeConfig::parse(&document_setting("[[backend]] address", "")).unwrap();
    let other =
        ServeConfig::parse(&document_setting("[[backend]] proxy_protocol", "\"v2\"")).unwrap();
    assert_ne!(format!("{base:?}"), format!("{other:?}"));
}
