//! The crates' insides stay untangled: within each library crate (and the binary), no two
//! top-level modules reach each other through `crate::…`, directly or around a circle. A
//! circle means neither module can be understood, tested or moved without the other.
//!
//! Read from the sources: every `crate::NAME` (and `crate::{NAME, …}`) outside comments and
//! outside a file's `#[cfg(test)]` part counts as a use of module NAME.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// The crates checked, by directory (capi is one file).
const CRATES: &[&str] = &["wire", "runtime", "tls", "rings", "ebpf", "tools"];

/// Top-level module → the top-level modules of the same crate it uses.
type Uses = BTreeMap<String, BTreeSet<String>>;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The names a piece of code reaches through `crate::`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for item in inner.split(',') {
                let name = item.trim().split("::").next().unwrap_or("").trim();
                if !name.is_empty() {
                    names.insert(name.to_owned());
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

fn uses_of(krate: &str) -> Uses {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut uses = Uses::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative
            .components()
            .next()
            .expect("a file")
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if first == "lib" || first == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("readable source");
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or("")
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let entry = uses.entry(first.clone()).or_default();
        entry.extend(crate_paths(&code).into_iter().filter(|n| *n != first));
    }
    let modules: BTreeSet<String> = uses.keys().cloned().collect();
    for used in uses.values_mut() {
        used.retain(|name| modules.contains(name));
    }
    uses
}

/// A circle through `from`, if there is one: the modules in order, `from` first and last.
fn circle_through(uses: &Uses, from: &str) -> Option<Vec<String>> {
    fn walk(
        uses: &Uses,
        at: &str,
        target: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in uses.get(at).into_iter().flatten() {
            if next == target {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(uses, next, target, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![from.to_owned()];
    let mut seen = BTreeSet::new();
    walk(uses, from, from, &mut path, &mut seen).then_some(path)
}

#[test]
fn no_crate_has_an_import_circle_between_its_modules() {
    let mut circles = Vec::new();
    for krate in CRATES {
        let uses = uses_of(krate);
        assert!(uses.len() > 1, "{krate}: no modules found");
        for module in uses.keys() {
            if let Some(circle) = circle_through(&uses, module) {
                circles.push(format!("{krate}: {}", circle.join(" → ")));
                break;
            }
        }
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_reader_of_crate_paths_sees_both_forms() {
    let code = "use crate::{a::B, c};\nlet x = crate::d::e();";
    let names: Vec<String> = crate_paths(code).into_iter().collect();
    assert_eq!(names, ["a", "c", "d"]);
    let mut uses = Uses::new();
    uses.entry("a".into()).or_default().insert("b".into());
    uses.entry("b".into()).or_default().insert("c".into());
    uses.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        circle_through(&uses, "a"),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    uses.get_mut("c").expect("c").clear();
    assert_eq!(circle_through(&uses, "a"), None);
}
