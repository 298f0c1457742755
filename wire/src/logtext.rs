//! Peer-chosen text in log lines. A server name, an ALPN protocol or a service's answer may hold
//! any byte a peer likes: written raw, a line feed starts a forged log entry (in text logs and in
//! syslog, where each line is an entry), and terminal escapes rewrite what an operator sees.
//! [`Untrusted`] writes such text quoted and escaped, so it can never leave its field.

use std::fmt;

/// Displays peer-chosen text as one quoted, escaped token: `"a.test"`, `"x\nWARN forged"`.
/// Control characters (line breaks, escapes), quotes, backslashes and invisible Unicode
/// (bidirectional overrides and the like) are escaped the way Rust's `Debug` does.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Untrusted<'a>(pub &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// [`Untrusted`] for bytes that may not even be UTF-8 (an ALPN protocol name): invalid
/// sequences become U+FFFD, then the text is escaped.
pub fn untrusted_bytes(bytes: &[u8]) -> String {
    Untrusted(&String::from_utf8_lossy(bytes)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_and_escapes_stay_inside_the_token() {
        let forged = "x.test\n2026-01-01T00:00:00Z  WARN forged\r\x1b[2J\u{202e}\"q\"\\";
        let shown = Untrusted(forged).to_string();
        assert!(!shown.contains(['\n', '\r', '\x1b', '\u{202e}']), "{shown}");
        assert_eq!(
            shown,
            "\"x.test\\n2026-01-01T00:00:00Z  WARN forged\\r\\u{1b}[2J\\u{202e}\\\"q\\\"\\\\\""
        );
        assert_eq!(Untrusted("example.com").to_string(), "\"example.com\"");
        assert_eq!(untrusted_bytes(b"h2\n\xff"), "\"h2\\n\u{fffd}\"");
    }
}
