//! Server-name matching for SNI: which configured context serves a client's `server_name`.
//!
//! Names are compared case-insensitively, with one trailing dot ignored. A pattern is either an
//! exact name (`www.example.com`) or a wildcard whose `*` stands for exactly one leftmost label
//! (`*.example.com` matches `a.example.com`, not `example.com` nor `a.b.example.com`, as in
//! RFC 6125 §6.4.3). The most specific pattern wins: an exact name over a wildcard; between the
//! same pattern listed twice, the first context.

use std::collections::HashMap;

/// Why a server-name pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternError {
    /// An empty name or pattern.
    Empty,
    /// A `*` anywhere but as the whole leftmost label.
    MisplacedWildcard,
    /// A wildcard over a single label (`*.com`) would catch a whole top-level domain.
    WildcardTooBroad,
    /// A character that cannot be in a host name.
    BadCharacter(char),
}

impl std::fmt::Display for PatternError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PatternError::Empty => f.write_str("empty server name"),
            PatternError::MisplacedWildcard => {
                f.write_str("a wildcard must be the whole leftmost label, as in \"*.example.com\"")
            }
            PatternError::WildcardTooBroad => {
                f.write_str("a wildcard needs at least two labels after it (\"*.example.com\")")
            }
            PatternError::BadCharacter(c) => write!(f, "{c:?} cannot appear in a host name"),
        }
    }
}

impl std::error::Error for PatternError {}

/// Lower-cases `name` and drops one trailing dot; `None` if nothing is left.
pub fn normalize(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

/// A server-name pattern checked once: an exact name or a `*.` wildcard that a [`NameTable`]
/// takes without checking it again. Keeps the text as written (for logs and equality) beside
/// the form it is matched in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerName {
    /// As written.
    written: String,
    /// Lower case without the trailing dot; for a wildcard, what follows `*.`.
    key: String,
    /// `*.` then `key`.
    wildcard: bool,
}

impl ServerName {
    /// Checks `pattern`: an exact name (`www.example.com`) or a wildcard for one leftmost
    /// label (`*.example.com`), of host-name characters, with no empty label.
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        let name = normalize(pattern).ok_or(PatternError::Empty)?;
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '*')))
        {
            return Err(PatternError::BadCharacter(bad));
        }
        if name.split('.').any(str::is_empty) {
            return Err(PatternError::Empty);
        }
        let (key, wildcard) = match name.strip_prefix("*.") {
            Some(rest) => {
                if rest.contains('*') {
                    return Err(PatternError::MisplacedWildcard);
                }
                if !rest.contains('.') {
                    return Err(PatternError::WildcardTooBroad);
                }
                (rest.to_owned(), true)
            }
            None if name.contains('*') => return Err(PatternError::MisplacedWildcard),
            None => (name, false),
        };
        Ok(Self {
            written: pattern.to_owned(),
            key,
            wildcard,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.written
    }

    /// Whether it is a `*.` wildcard.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }
}

impl std::fmt::Display for ServerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.written)
    }
}

impl PartialEq<str> for ServerName {
    fn eq(&self, other: &str) -> bool {
        self.written == other
    }
}

impl PartialEq<&str> for ServerName {
    fn eq(&self, other: &&str) -> bool {
        self.written == *other
    }
}

impl PartialEq<String> for ServerName {
    fn eq(&self, other: &String) -> bool {
        &self.written == other
    }
}

/// Server-name patterns → context index.
#[derive(Debug, Clone, Default)]
pub struct NameTable {
    exact: HashMap<String, usize>,
    /// Keyed by what follows `*.`.
    wildcard: HashMap<String, usize>,
}

impl NameTable {
    /// An empty table: no name matches.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `pattern` for `context`, checking it first ([`ServerName::parse`]). A pattern
    /// already present keeps its first context.
    pub fn insert(&mut self, pattern: &str, context: usize) -> Result<(), PatternError> {
        self.add(&ServerName::parse(pattern)?, context);
        Ok(())
    }

    /// Adds a checked pattern for `context`; a pattern already present keeps its first
    /// context.
    pub fn add(&mut self, name: &ServerName, context: usize) {
        let table = if name.wildcard {
            &mut self.wildcard
        } else {
            &mut self.exact
        };
        table.entry(name.key.clone()).or_insert(context);
    }

    /// The context for a client's server name, if any pattern matches.
    pub fn lookup(&self, server_name: &str) -> Option<usize> {
        let name = server_name.strip_suffix('.').unwrap_or(server_name);
        // Fast path without allocating when the client already sent lower case.
        let lowered;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = name.to_ascii_lowercase();
            lowered.as_str()
        } else {
            name
        };
        if let Some(&context) = self.exact.get(name) {
            return Some(context);
        }
        let (first, parent) = name.split_once('.')?;
        if first.is_empty() {
            return None;
        }
        self.wildcard.get(parent).copied()
    }

    /// Whether the table holds no names and no wildcards.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(patterns: &[(&str, usize)]) -> NameTable {
        let mut t = NameTable::new();
        for (p, c) in patterns {
            t.insert(p, *c).unwrap();
        }
        t
    }

    #[test]
    fn exact_beats_wildcard() {
        let t = table(&[
            ("*.example.com", 1),
            ("www.example.com", 2),
            ("Example.COM.", 3),
        ]);
        assert_eq!(t.lookup("www.example.com"), Some(2));
        assert_eq!(t.lookup("WWW.Example.com."), Some(2));
        assert_eq!(t.lookup("api.example.com"), Some(1));
        assert_eq!(t.lookup("example.com"), Some(3));
        assert_eq!(t.lookup("a.b.example.com"), None, "one label only");
        assert_eq!(t.lookup(".example.com"), None);
        assert_eq!(t.lookup("example.org"), None);
        assert_eq!(t.lookup(""), None);
    }

    #[test]
    fn deeper_wildcards_are_separate() {
        let t = table(&[("*.example.com", 1), ("*.eu.example.com", 2)]);
        assert_eq!(t.lookup("a.eu.example.com"), Some(2));
        assert_eq!(t.lookup("eu.example.com"), Some(1));
    }

    #[test]
    fn first_context_keeps_a_duplicate() {
        let t = table(&[("a.example.com", 1), ("A.example.com", 2)]);
        assert_eq!(t.lookup("a.example.com"), Some(1));
    }

    #[test]
    fn checked_names_go_in_as_written_and_match_as_inserted_ones() {
        let names: Vec<ServerName> = ["Example.COM.", "*.Example.com", "www.example.com"]
            .iter()
            .map(|p| ServerName::parse(p).unwrap())
            .collect();
        assert_eq!(names[0], "Example.COM.");
        assert_eq!(names[1].to_string(), "*.Example.com");
        assert!(names[1].is_wildcard() && !names[0].is_wildcard());
        let mut added = NameTable::new();
        for (i, name) in names.iter().enumerate() {
            added.add(name, i);
        }
        let inserted = table(&[
            ("Example.COM.", 0),
            ("*.Example.com", 1),
            ("www.example.com", 2),
        ]);
        for probe in [
            "example.com",
            "a.example.com",
            "WWW.example.com.",
            "a.b.example.com",
        ] {
            assert_eq!(added.lookup(probe), inserted.lookup(probe), "{probe}");
        }
        assert_eq!(added.lookup("a.example.com"), Some(1));
    }

    #[test]
    fn bad_patterns() {
        let mut t = NameTable::new();
        for (p, e) in [
            ("", PatternError::Empty),
            (".", PatternError::Empty),
            ("a..b", PatternError::Empty),
            ("w*.example.com", PatternError::MisplacedWildcard),
            ("*.*.example.com", PatternError::MisplacedWildcard),
            ("*.com", PatternError::WildcardTooBroad),
            ("*", PatternError::MisplacedWildcard),
            ("exa mple.com", PatternError::BadCharacter(' ')),
        ] {
            assert_eq!(ServerName::parse(p), Err(e.clone()), "{p:?}");
            assert_eq!(t.insert(p, 0), Err(e), "{p:?}");
        }
        assert!(t.is_empty());
    }
}
