//! HTTP/1.x request heads: find where a head ends in a byte stream and how its body is framed.
//!
//! Sans-IO: [`parse_request_head`] takes the bytes received so far and answers
//! [`Status::Partial`] (need more), [`Status::Complete`] (a whole head, with its length), or a
//! typed [`HeadError`]. Callers that buffer keep calling it as bytes arrive; a head split into
//! one-byte reads parses the same as a head in one read.

/// Default largest request head accepted, in bytes (the request line plus all header fields).
pub const DEFAULT_MAX_HEAD: usize = 16 * 1024;
/// Largest number of header fields accepted in one head.
pub const MAX_HEADERS: usize = 100;

/// The outcome of parsing over a stream: a value with the bytes it used, or a need for more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status<T> {
    /// Parsed: the value (which records how many bytes it used).
    Complete(T),
    /// The bytes so far are a valid prefix; call again with more.
    Partial,
}

/// How the body after a request head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (no Content-Length, no Transfer-Encoding).
    None,
    /// Exactly this many bytes follow the head.
    ContentLength(u64),
    /// A chunked body follows the head.
    Chunked,
}

/// A parsed request head, borrowing from the buffer it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead<'a> {
    /// The request method as sent (`GET`, `CONNECT`, …).
    pub method: &'a str,
    /// The request target as sent (origin form `/path?q`, or authority/absolute form).
    pub target: &'a str,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Bytes of the head, including the empty line that ends it.
    pub head_len: usize,
    /// How the request's body is delimited (none, `Content-Length`, chunked).
    pub body: BodyFraming,
    /// Whether the connection stays open after this request (HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// Whether the head asks to switch protocols (`Upgrade` with `Connection: upgrade`).
    pub upgrade: bool,
    /// Whether an HTTP/1.1 client waits for `100 Continue` before it sends its body
    /// (`Expect: 100-continue`, RFC 9110 §10.1.1).
    pub expect_continue: bool,
}

/// Why a request head was rejected; the connection cannot go on after any of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// No complete head within `limit` bytes.
    TooLarge {
        /// The most bytes a head may have.
        limit: usize,
    },
    /// More than [`MAX_HEADERS`] header fields.
    TooManyHeaders,
    /// The bytes are not an HTTP/1.x request head; the text says where it broke.
    Malformed(&'static str),
    /// A Content-Length that is not a decimal number, or several that disagree.
    BadContentLength,
    /// Both Transfer-Encoding and Content-Length, or a Transfer-Encoding that does not end in
    /// `chunked`: ambiguous framing, the root of request smuggling.
    AmbiguousFraming,
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadError::TooLarge { limit } => write!(f, "request head longer than {limit} bytes"),
            HeadError::TooManyHeaders => write!(f, "more than {MAX_HEADERS} header fields"),
            HeadError::Malformed(what) => write!(f, "malformed request head: {what}"),
            HeadError::BadContentLength => f.write_str("invalid or conflicting Content-Length"),
            HeadError::AmbiguousFraming => {
                f.write_str("ambiguous body framing (Transfer-Encoding with Content-Length)")
            }
        }
    }
}

impl std::error::Error for HeadError {}

/// What httparse's answer over a window of `window` bytes (at most `max_head`) means for a head:
/// its length, `None` while it may still complete, or why it never will.
fn head_length(
    parsed: httparse::Result<usize>,
    window: usize,
    max_head: usize,
) -> Result<Option<usize>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(len)) => Ok(Some(len)),
        Ok(httparse::Status::Partial) if window < max_head => Ok(None),
        Ok(httparse::Status::Partial) => Err(HeadError::TooLarge { limit: max_head }),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyHeaders),
        Err(error) => Err(HeadError::Malformed(malformed_reason(error))),
    }
}

/// Parses the request head at the start of `buf`, accepting at most `max_head` bytes of head.
pub fn parse_request_head(
    buf: &[u8],
    max_head: usize,
) -> Result<Status<RequestHead<'_>>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let window = &buf[..buf.len().min(max_head)];
    let Some(head_len) = head_length(request.parse(window), window.len(), max_head)? else {
        return Ok(Status::Partial);
    };
    let (Some(method), Some(target), Some(minor_version)) =
        (request.method, request.path, request.version)
    else {
        return Err(HeadError::Malformed("incomplete request line"));
    };
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut connection_upgrade = false;
    let mut upgrade_header = false;
    let mut expect_continue = false;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let value = parse_content_length(header.value)?;
            if content_length.is_some_and(|seen| seen != value) {
                return Err(HeadError::BadContentLength);
            }
            content_length = Some(value);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            // Several Transfer-Encoding fields form one list; only the last coding matters.
            transfer_encoding = Some(header.value);
        } else if header.name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                connection_close |= token.eq_ignore_ascii_case(b"close");
                connection_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                connection_upgrade |= token.eq_ignore_ascii_case(b"upgrade");
            }
        } else if header.name.eq_ignore_ascii_case("upgrade") {
            upgrade_header = true;
        } else if header.name.eq_ignore_ascii_case("expect") {
            expect_continue |= header
                .value
                .trim_ascii()
                .eq_ignore_ascii_case(b"100-continue");
        }
    }
    let body = match (transfer_encoding, content_length) {
        (Some(_), Some(_)) => return Err(HeadError::AmbiguousFraming),
        (Some(codings), None) => {
            let last = codings.rsplit(|&b| b == b',').next().unwrap_or_default();
            if !last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(HeadError::AmbiguousFraming);
            }
            BodyFraming::Chunked
        }
        (None, Some(0)) | (None, None) => BodyFraming::None,
        (None, Some(length)) => BodyFraming::ContentLength(length),
    };
    let keep_alive = match minor_version {
        0 => connection_keep_alive && !connection_close,
        _ => !connection_close,
    };
    Ok(Status::Complete(RequestHead {
        method,
        target,
        minor_version,
        head_len,
        body,
        keep_alive,
        upgrade: upgrade_header && connection_upgrade,
        // HTTP/1.0 clients know no 100 Continue (RFC 9110 §10.1.1).
        expect_continue: expect_continue && minor_version >= 1,
    }))
}

/// Largest response head accepted by [`parse_response_head`]'s callers by default: backends send
/// larger heads than clients (cookies, CSP).
pub const DEFAULT_MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Largest number of header fields accepted in one response head.
pub const MAX_RESPONSE_HEADERS: usize = 256;

/// How the body after a response head is delimited, as the head alone tells it. The request
/// it answers may override this: no body after a response to `HEAD`, after 1xx, 204 and 304,
/// nor after a 2xx to `CONNECT` (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody {
    /// Exactly this many bytes follow the head (zero included).
    ContentLength(u64),
    /// A chunked body follows the head.
    Chunked,
    /// The body runs until the backend closes the connection.
    UntilClose,
}

/// A parsed response head (status line and header fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code (100–999).
    pub code: u16,
    /// Bytes of the head, including the empty line that ends it.
    pub head_len: usize,
    /// How the response's body is delimited.
    pub body: ResponseBody,
}

/// Parses the response head at the start of `buf`, accepting at most `max_head` bytes of head.
pub fn parse_response_head(buf: &[u8], max_head: usize) -> Result<Status<ResponseHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let window = &buf[..buf.len().min(max_head)];
    let Some(head_len) = head_length(response.parse(window), window.len(), max_head)? else {
        return Ok(Status::Partial);
    };
    let Some(code) = response.code else {
        return Err(HeadError::Malformed("incomplete status line"));
    };
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let value = parse_content_length(header.value)?;
            if content_length.is_some_and(|seen| seen != value) {
                return Err(HeadError::BadContentLength);
            }
            content_length = Some(value);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = Some(header.value);
        }
    }
    // Transfer-Encoding overrides Content-Length in a response (RFC 9112 §6.3 item 3); a
    // coding list that does not end in chunked runs until the close.
    let body = match (transfer_encoding, content_length) {
        (Some(codings), _) => {
            let last = codings.rsplit(|&b| b == b',').next().unwrap_or_default();
            if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                ResponseBody::Chunked
            } else {
                ResponseBody::UntilClose
            }
        }
        (None, Some(length)) => ResponseBody::ContentLength(length),
        (None, None) => ResponseBody::UntilClose,
    };
    Ok(Status::Complete(ResponseHead {
        code,
        head_len,
        body,
    }))
}

fn parse_content_length(value: &[u8]) -> Result<u64, HeadError> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::BadContentLength);
    }
    value
        .iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or(HeadError::BadContentLength)
}

fn malformed_reason(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid method token",
        httparse::Error::Version => "invalid HTTP version",
        httparse::Error::TooManyHeaders => "too many headers",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> RequestHead<'_> {
        match parse_request_head(buf, DEFAULT_MAX_HEAD) {
            Ok(Status::Complete(head)) => head,
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    #[test]
    fn simple_get() {
        let buf = b"GET /a?b HTTP/1.1\r\nHost: x\r\n\r\nrest";
        let head = complete(buf);
        assert_eq!(head.method, "GET");
        assert_eq!(head.target, "/a?b");
        assert_eq!(head.minor_version, 1);
        assert_eq!(head.head_len, buf.len() - 4);
        assert_eq!(head.body, BodyFraming::None);
        assert!(head.keep_alive);
    }

    #[test]
    fn every_prefix_is_partial() {
        let buf = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n";
        for end in 0..buf.len() {
            assert_eq!(
                parse_request_head(&buf[..end], DEFAULT_MAX_HEAD),
                Ok(Status::Partial),
                "prefix of {end} bytes"
            );
        }
        assert_eq!(complete(buf).body, BodyFraming::ContentLength(5));
    }

    #[test]
    fn lf_only_line_endings() {
        let head = complete(b"GET / HTTP/1.0\nConnection: keep-alive\n\n");
        assert_eq!(head.minor_version, 0);
        assert!(head.keep_alive);
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(!complete(b"GET / HTTP/1.1\r\nConnection: Upgrade, Close\r\n\r\n").keep_alive);
    }

    #[test]
    fn upgrade_needs_both_fields() {
        let ws =
            b"GET /ws HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert!(complete(ws).upgrade);
        assert!(!complete(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").upgrade);
        assert!(!complete(b"GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n").upgrade);
    }

    #[test]
    fn expect_continue_on_http_1_1_only() {
        let head = |b: &[u8]| complete(b).expect_continue;
        assert!(head(
            b"PUT / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n"
        ));
        assert!(!head(b"PUT / HTTP/1.1\r\nContent-Length: 3\r\n\r\n"));
        assert!(!head(
            b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
        ));
        assert!(!head(b"PUT / HTTP/1.1\r\nExpect: something\r\n\r\n"));
    }

    #[test]
    fn chunked_framing() {
        let head = complete(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(head.body, BodyFraming::Chunked);
    }

    #[test]
    fn smuggling_shapes_are_rejected() {
        let bad: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        ];
        for buf in bad {
            assert_eq!(
                parse_request_head(buf, DEFAULT_MAX_HEAD),
                Err(HeadError::AmbiguousFraming)
            );
        }
        for value in ["1, 2", "-1", "+1", "0x10", "", "99999999999999999999"] {
            let buf = format!("POST / HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
            assert_eq!(
                parse_request_head(buf.as_bytes(), DEFAULT_MAX_HEAD),
                Err(HeadError::BadContentLength),
                "{value:?}"
            );
        }
        let conflicting = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(
            parse_request_head(conflicting, DEFAULT_MAX_HEAD),
            Err(HeadError::BadContentLength)
        );
        let same = b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(complete(same).body, BodyFraming::ContentLength(2));
    }

    #[test]
    fn size_limit() {
        let mut buf = b"GET / HTTP/1.1\r\nX: ".to_vec();
        buf.resize(100, b'a');
        assert_eq!(
            parse_request_head(&buf, 100),
            Err(HeadError::TooLarge { limit: 100 })
        );
        assert_eq!(parse_request_head(&buf, 101), Ok(Status::Partial));
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            parse_request_head(b"\x16\x03\x01\x00\x10hello\r\n\r\n", DEFAULT_MAX_HEAD),
            Err(HeadError::Malformed(_))
        ));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_request_head(&many, DEFAULT_MAX_HEAD),
            Err(HeadError::TooManyHeaders)
        );
    }

    #[test]
    fn response_heads() {
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        for end in 0..buf.len() - 5 {
            assert_eq!(
                parse_response_head(&buf[..end], DEFAULT_MAX_RESPONSE_HEAD),
                Ok(Status::Partial),
                "prefix of {end} bytes"
            );
        }
        assert_eq!(
            parse_response_head(buf, DEFAULT_MAX_RESPONSE_HEAD),
            Ok(Status::Complete(ResponseHead {
                code: 200,
                head_len: buf.len() - 5,
                body: ResponseBody::ContentLength(5)
            }))
        );
        let switch = b"HTTP/1.1 101 Switching Protocols\nUpgrade: foo\n\n";
        assert!(matches!(
            parse_response_head(switch, DEFAULT_MAX_RESPONSE_HEAD),
            Ok(Status::Complete(ResponseHead { code: 101, .. }))
        ));
        let chunked = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(
            parse_response_head(chunked, DEFAULT_MAX_RESPONSE_HEAD),
            Ok(Status::Complete(ResponseHead {
                body: ResponseBody::Chunked,
                ..
            }))
        ));
        let close = b"HTTP/1.0 200 OK\r\n\r\n";
        assert!(matches!(
            parse_response_head(close, DEFAULT_MAX_RESPONSE_HEAD),
            Ok(Status::Complete(ResponseHead {
                body: ResponseBody::UntilClose,
                ..
            }))
        ));
        let mut long = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        long.resize(200, b'a');
        assert_eq!(
            parse_response_head(&long, 200),
            Err(HeadError::TooLarge { limit: 200 })
        );
        assert!(matches!(
            parse_response_head(b"GET / HTTP/1.1\r\n\r\n", DEFAULT_MAX_RESPONSE_HEAD),
            Err(HeadError::Malformed(_))
        ));
    }
}
