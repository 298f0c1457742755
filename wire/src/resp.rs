//! Redis's wire protocol (RESP2), as far as a session-store client needs it: commands out, and
//! the replies it expects back (simple strings, errors, integers, bulk strings), parsed from a
//! stream of bytes one reply at a time.
//!
//! The store speaks to Redis from each core's own ring (no thread between the handshake and
//! Redis), so the parser is sans-IO: it answers "a reply, and the bytes it used", "not all of
//! it yet", or an error after which the connection cannot be trusted. Redis is another
//! process: every length is bounded before it is used (a bulk string by the caller's limit,
//! a line by [`MAX_LINE`]), and anything the client never asks for (arrays, RESP3 types) is an
//! error, not a guess.
//!
//! ```
//! use fastedge_wire::resp::{command, parse_reply, Reply};
//!
//! let mut out = Vec::new();
//! command(&[b"GET", b"k"], &mut out);
//! assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
//!
//! let stream = b"$5\r\nhello\r\n+OK\r\n$-1\r\n";
//! let (first, used) = parse_reply(stream, 1024).unwrap().unwrap();
//! assert_eq!(first, Reply::Bulk(b"hello"));
//! let (second, more) = parse_reply(&stream[used..], 1024).unwrap().unwrap();
//! assert_eq!(second, Reply::Simple(b"OK"));
//! let (third, _) = parse_reply(&stream[used + more..], 1024).unwrap().unwrap();
//! assert_eq!(third, Reply::Nil);
//! // Not all of a reply yet: ask again with more bytes.
//! assert_eq!(parse_reply(b"$5\r\nhel", 1024), Ok(None));
//! ```

/// The longest status, error or integer line accepted (Redis's own are far shorter).
pub const MAX_LINE: usize = 4096;

/// One reply of Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// A status line (`+OK`).
    Simple(&'a [u8]),
    /// An error line (`-ERR …`), without the `-`.
    Error(&'a [u8]),
    /// An integer (`:1`).
    Integer(i64),
    /// A bulk string (`$5\r\nhello`).
    Bulk(&'a [u8]),
    /// The null bulk string (`$-1`): no such key.
    Nil,
}

/// Why the bytes are not a reply this client can take; the connection must be dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespError {
    /// A reply type the client never asks for (an array, RESP3, or not RESP at all).
    UnexpectedType(u8),
    /// A line longer than [`MAX_LINE`] without its end.
    LineTooLong,
    /// A bulk string longer than the caller allows.
    BulkTooLong(u64),
    /// A length or an integer that is not a number, or a bulk string not ended by CRLF.
    Malformed,
}

impl std::fmt::Display for RespError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnexpectedType(byte) => write!(f, "unexpected reply type {byte:#04x}"),
            Self::LineTooLong => write!(f, "a reply line longer than {MAX_LINE} bytes"),
            Self::BulkTooLong(len) => write!(f, "a bulk reply of {len} bytes, more than asked for"),
            Self::Malformed => write!(f, "a malformed reply"),
        }
    }
}

impl std::error::Error for RespError {}

/// Appends `args` as one command (an array of bulk strings) to `out`.
pub fn command(args: &[&[u8]], out: &mut Vec<u8>) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "*{}\r\n", args.len());
    for arg in args {
        let _ = write!(out, "${}\r\n", arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// The first reply in `buf` and the bytes it takes, or `None` if `buf` does not hold all of
/// it yet. A bulk string longer than `max_bulk` is an error.
pub fn parse_reply(buf: &[u8], max_bulk: usize) -> Result<Option<(Reply<'_>, usize)>, RespError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    if !matches!(kind, b'+' | b'-' | b':' | b'$') {
        return Err(RespError::UnexpectedType(kind));
    }
    let Some((line, after_line)) = line(&buf[1..])? else {
        return Ok(None);
    };
    let after_line = 1 + after_line;
    match kind {
        b'+' => Ok(Some((Reply::Simple(line), after_line))),
        b'-' => Ok(Some((Reply::Error(line), after_line))),
        b':' => Ok(Some((Reply::Integer(integer(line)?), after_line))),
        _ => {
            let len = integer(line)?;
            if len == -1 {
                return Ok(Some((Reply::Nil, after_line)));
            }
            let len = u64::try_from(len).map_err(|_| RespError::Malformed)?;
            if len > max_bulk as u64 {
                return Err(RespError::BulkTooLong(len));
            }
            // Bounded by `max_bulk` above, so this cannot overflow.
            let end = after_line + len as usize;
            let Some(rest) = buf.get(end..end + 2) else {
                return Ok(None);
            };
            if rest != b"\r\n" {
                return Err(RespError::Malformed);
            }
            Ok(Some((Reply::Bulk(&buf[after_line..end]), end + 2)))
        }
    }
}

/// The line at the start of `buf` (without CRLF) and the bytes up to after its CRLF.
fn line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, RespError> {
    let window = &buf[..buf.len().min(MAX_LINE + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(end) => Ok(Some((&buf[..end], end + 2))),
        None if window.len() >= MAX_LINE + 2 => Err(RespError::LineTooLong),
        None => Ok(None),
    }
}

fn integer(line: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(RespError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        command(
            &[b"GETRANGE", b"fastedge:session:ab", b"0", b"16383"],
            &mut out,
        );
        assert_eq!(
            out,
            b"*4\r\n$8\r\nGETRANGE\r\n$19\r\nfastedge:session:ab\r\n$1\r\n0\r\n$5\r\n16383\r\n"
        );
        // Binary arguments go as they are: lengths, not terminators, frame them.
        out.clear();
        command(&[b"SET", b"k", b"a\r\nb\0"], &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\na\r\nb\0\r\n");
    }

    #[test]
    fn every_reply_kind_parses_with_the_bytes_it_used() {
        let cases: [(&[u8], Reply<'_>); 7] = [
            (b"+OK\r\n", Reply::Simple(b"OK")),
            (b"-ERR no\r\n", Reply::Error(b"ERR no")),
            (b":42\r\n", Reply::Integer(42)),
            (b":-7\r\n", Reply::Integer(-7)),
            (b"$0\r\n\r\n", Reply::Bulk(b"")),
            (b"$4\r\na\r\nb\r\n", Reply::Bulk(b"a\r\nb")),
            (b"$-1\r\n", Reply::Nil),
        ];
        for (bytes, reply) in cases {
            let mut stream = bytes.to_vec();
            stream.extend_from_slice(b"+next\r\n");
            assert_eq!(
                parse_reply(&stream, 64),
                Ok(Some((reply, bytes.len()))),
                "{bytes:?}"
            );
            // Every proper prefix is incomplete, never an error or a shorter reply.
            for cut in 0..bytes.len() {
                assert_eq!(
                    parse_reply(&bytes[..cut], 64),
                    Ok(None),
                    "{bytes:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn what_the_client_never_asks_for_is_an_error() {
        assert_eq!(
            parse_reply(b"*1\r\n$1\r\na\r\n", 64),
            Err(RespError::UnexpectedType(b'*'))
        );
        assert_eq!(
            parse_reply(b"%1\r\n", 64),
            Err(RespError::UnexpectedType(b'%'))
        );
        assert_eq!(
            parse_reply(b"HTTP/1.1 200", 64),
            Err(RespError::UnexpectedType(b'H'))
        );
        assert_eq!(parse_reply(b"$x\r\n", 64), Err(RespError::Malformed));
        assert_eq!(parse_reply(b"$-2\r\n", 64), Err(RespError::Malformed));
        assert_eq!(parse_reply(b":1.5\r\n", 64), Err(RespError::Malformed));
        assert_eq!(
            parse_reply(b"$2\r\nabcd\r\n", 64),
            Err(RespError::Malformed)
        );
    }

    #[test]
    fn lengths_are_bounded_before_they_are_used() {
        // A bulk string over the limit is refused from its header, before its bytes arrive.
        assert_eq!(parse_reply(b"$65\r\n", 64), Err(RespError::BulkTooLong(65)));
        assert_eq!(
            parse_reply(b"$99999999999999999999\r\n", 64),
            Err(RespError::Malformed)
        );
        assert_eq!(
            parse_reply(b"$9223372036854775807\r\n", 64),
            Err(RespError::BulkTooLong(i64::MAX as u64))
        );
        // A line that never ends is refused once it is longer than any real one.
        let mut endless = b"+".to_vec();
        endless.extend(std::iter::repeat_n(b'a', MAX_LINE + 2));
        assert_eq!(parse_reply(&endless[..MAX_LINE], 64), Ok(None));
        assert_eq!(parse_reply(&endless, 64), Err(RespError::LineTooLong));
    }
}
