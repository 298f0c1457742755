//! `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Port` and RFC 7239 `Forwarded`, added
//! to **every** HTTP/1.x request on a connection.
//!
//! [`Injector`] is a sans-IO state machine over the client → backend byte stream: feed it the
//! bytes as they arrive ([`Injector::feed`]) and send on what it appends to `out`. It finds each
//! request head (even one split into one-byte reads, even several pipelined in one read),
//! rewrites it, and passes bodies through untouched, framing them by Content-Length or by the
//! chunked coding so that the next head is found exactly where it starts. After a `CONNECT` or
//! an `Upgrade` request, and on an HTTP/2 connection preface, the rest of the stream is opaque
//! and passes through as is.

use std::net::IpAddr;

use crate::http1::{parse_request_head, BodyFraming, HeadError, Status};

/// Which headers to set, and the head size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardedConfig {
    /// `X-Forwarded-For`, `X-Forwarded-Proto: https` and `X-Forwarded-Port`.
    pub x_forwarded: bool,
    /// RFC 7239 `Forwarded: for=…;proto=https`.
    pub forwarded: bool,
    /// Largest request head accepted.
    pub max_head: usize,
}

/// What the injector states about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFacts {
    /// The client's address.
    pub client: IpAddr,
    /// The port the client connected to.
    pub local_port: u16,
    /// Whether the client is a trusted proxy: then an existing `X-Forwarded-For`/`Forwarded`
    /// is kept and the client appended; otherwise those headers are replaced.
    pub trusted: bool,
}

/// The client certificate as backends learn it in headers, with `X-Forwarded-*`:
/// `X-Client-Verify` (`SUCCESS` or `NONE`), `X-Client-Subject` (the subject DN, RFC 2253) and,
/// if asked, `X-Client-Cert` (the PEM, percent-encoded onto one line, as nginx's
/// `$ssl_client_escaped_cert`). With `x_forwarded`, headers of these names sent by the client
/// are always removed, whether or not the connection states a certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCertHeaders {
    /// Whether a client certificate was presented and verified.
    pub verified: bool,
    pub subject: Option<String>,
    pub cert_pem: Option<String>,
}

/// Header names the client may not set when `x_forwarded` is on.
const CLIENT_CERT_HEADERS: [&[u8]; 3] = [b"x-client-verify", b"x-client-subject", b"x-client-cert"];

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(text: &str, out: &mut Vec<u8>) {
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
}

/// Why the stream cannot be rewritten; the connection must end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InjectError {
    Head(HeadError),
    /// A chunked body that breaks the chunked coding.
    BadChunk(&'static str),
}

impl std::fmt::Display for InjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InjectError::Head(error) => error.fmt(f),
            InjectError::BadChunk(what) => write!(f, "malformed chunked body: {what}"),
        }
    }
}

impl std::error::Error for InjectError {}

/// Where in the stream the injector is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before or inside a request head (buffered in `head`).
    Head,
    /// Inside a Content-Length body.
    Fixed { remaining: u64 },
    /// Inside a chunked body.
    Chunked(Chunk),
    /// After CONNECT/Upgrade or an HTTP/2 preface: pass everything through.
    Opaque,
    /// After an error: accepts nothing more.
    Failed,
}

/// Position inside the chunked coding (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading hex digits of a chunk size; `digits` so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: extensions until the end of the line.
    Extension {
        size: u64,
    },
    /// Saw CR after a size line; expecting LF.
    SizeLf {
        size: u64,
    },
    Data {
        remaining: u64,
    },
    /// After chunk data: expecting CR LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    /// Saw CR at the start of a line: expecting the final LF.
    EndLf,
}

/// The HTTP/2 connection preface: a stream that starts with it is not HTTP/1.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Adds forwarding headers to every request of one client → backend stream.
#[derive(Debug)]
pub struct Injector {
    config: ForwardedConfig,
    facts: ClientFacts,
    state: State,
    /// Bytes of a request head not complete yet.
    head: Vec<u8>,
    requests: u64,
    h2: bool,
    early: bool,
    /// What every request of the connection gets, rendered once.
    text: Rendered,
}

/// The connection's facts as header text, rendered once per connection rather than per request.
#[derive(Debug, Default)]
struct Rendered {
    /// The client address, as `X-Forwarded-For` states it.
    client: Vec<u8>,
    /// `\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: N\r\n`.
    proto_port: Vec<u8>,
    /// `for=…;proto=https\r\n`, the end of a `Forwarded` line.
    forwarded: Vec<u8>,
    /// The `X-Client-*` lines.
    client_cert: Vec<u8>,
}

impl Rendered {
    fn new(facts: &ClientFacts) -> Self {
        let client = facts.client.to_canonical();
        let node = match client {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        Self {
            client: client.to_string().into_bytes(),
            proto_port: format!(
                "\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: {}\r\n",
                facts.local_port
            )
            .into_bytes(),
            forwarded: format!("for={node};proto=https\r\n").into_bytes(),
            client_cert: Vec::new(),
        }
    }
}

impl Injector {
    pub fn new(config: ForwardedConfig, facts: ClientFacts) -> Self {
        Self {
            config,
            facts,
            state: State::Head,
            head: Vec::new(),
            requests: 0,
            h2: false,
            early: false,
            text: Rendered::new(&facts),
        }
    }

    /// Whether the bytes fed next may be TLS early data (0-RTT, replayable): requests whose
    /// head completes with them get `Early-Data: 1` (RFC 8470), so the backend can answer
    /// `425 Too Early` to what must not be replayed.
    pub fn set_early(&mut self, early: bool) {
        self.early = early;
    }

    /// Also states the client certificate in every request ([`ClientCertHeaders`]).
    pub fn with_client_cert(mut self, headers: ClientCertHeaders) -> Self {
        self.text.client_cert = client_cert_lines(&headers);
        self
    }

    /// Request heads rewritten so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Whether the stream turned out to be HTTP/2 (prior knowledge preface): it then passes
    /// through untouched, and PROXY v2 is the way to tell the backend about the client.
    pub fn saw_http2(&self) -> bool {
        self.h2
    }

    /// Whether the stream is past a CONNECT/Upgrade request (or HTTP/2) and passes through.
    pub fn is_opaque(&self) -> bool {
        self.state == State::Opaque
    }

    /// Consumes the next client bytes, appending what the backend must receive to `out`.
    /// Bytes of an incomplete head stay buffered inside until the rest arrives.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), InjectError> {
        while !input.is_empty() {
            let used = match self.state {
                State::Failed => return Err(InjectError::BadChunk("stream already failed")),
                State::Opaque => {
                    out.extend_from_slice(input);
                    input.len()
                }
                State::Head => self
                    .feed_head(input, out)
                    .inspect_err(|_| self.state = State::Failed)?,
                State::Fixed { remaining } => {
                    let n = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    out.extend_from_slice(&input[..n]);
                    let remaining = remaining - n as u64;
                    self.state = if remaining == 0 {
                        State::Head
                    } else {
                        State::Fixed { remaining }
                    };
                    n
                }
                State::Chunked(chunk) => {
                    let (n, next) =
                        chunked_step(chunk, input).inspect_err(|_| self.state = State::Failed)?;
                    out.extend_from_slice(&input[..n]);
                    self.state = next.map_or(State::Head, State::Chunked);
                    n
                }
            };
            input = &input[used..];
        }
        Ok(())
    }

    /// Takes bytes of a request head; returns how many of `input` it used.
    fn feed_head(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, InjectError> {
        let before = self.head.len();
        if self.requests == 0 {
            // Compare buffered + new bytes with the HTTP/2 preface.
            let total = before + input.len();
            let n = total.min(H2_PREFACE.len());
            let byte = |i: usize| {
                if i < before {
                    self.head[i]
                } else {
                    input[i - before]
                }
            };
            if (0..n).all(|i| byte(i) == H2_PREFACE[i]) {
                if total < H2_PREFACE.len() {
                    self.head.extend_from_slice(input);
                    return Ok(input.len());
                }
                self.h2 = true;
                self.state = State::Opaque;
                out.append(&mut self.head);
                return Ok(0);
            }
        }
        // Parse straight from `input` when nothing is buffered (the common case); otherwise
        // append and parse the buffer, but only when a line could have ended.
        let parsed_from_input = before == 0;
        let buf: &[u8] = if parsed_from_input {
            input
        } else {
            self.head.extend_from_slice(input);
            if !input.contains(&b'\n') && self.head.len() < self.config.max_head {
                return Ok(input.len());
            }
            &self.head
        };
        let head = match parse_request_head(buf, self.config.max_head).map_err(InjectError::Head)? {
            Status::Partial => {
                if parsed_from_input {
                    self.head.extend_from_slice(input);
                }
                return Ok(input.len());
            }
            Status::Complete(head) => head,
        };
        let head_len = head.head_len;
        let upgrade = head.method.eq_ignore_ascii_case("CONNECT") || head.upgrade;
        let body = head.body;
        rewrite_head(
            &buf[..head_len],
            &self.config,
            &self.facts,
            &self.text,
            self.early,
            out,
        );
        self.requests += 1;
        self.state = match body {
            BodyFraming::None => State::Head,
            BodyFraming::ContentLength(remaining) => State::Fixed { remaining },
            BodyFraming::Chunked => State::Chunked(Chunk::Size { size: 0, digits: 0 }),
        };
        if upgrade && body == BodyFraming::None {
            self.state = State::Opaque;
        }
        // Bytes of `input` used: all of it minus what follows the head.
        let after_head = buf.len() - head_len;
        if !parsed_from_input {
            self.head.clear();
        }
        Ok(input.len() - after_head)
    }
}

/// A head without the empty lines that may precede its request line (RFC 9112 §2.2; httparse
/// skips them too).
fn without_leading_empty_lines(head: &[u8]) -> &[u8] {
    let start = head
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(head.len());
    &head[start..]
}

/// The header fields of a head already validated by httparse, as (name, value) pairs.
fn header_lines(head: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    without_leading_empty_lines(head)
        .split(|&b| b == b'\n')
        .skip(1) // request line
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.is_empty())
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            Some((&line[..colon], line[colon + 1..].trim_ascii()))
        })
}

/// Writes `head` with the forwarding headers set, lines ending in CRLF. `early`: the head
/// arrived (at least in part) in TLS early data.
fn rewrite_head(
    head: &[u8],
    config: &ForwardedConfig,
    facts: &ClientFacts,
    text: &Rendered,
    early: bool,
    out: &mut Vec<u8>,
) {
    let head = without_leading_empty_lines(head);
    let request_line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    out.extend_from_slice(request_line.strip_suffix(b"\r").unwrap_or(request_line));
    out.extend_from_slice(b"\r\n");
    let mut prior_xff: Vec<&[u8]> = Vec::new();
    let mut prior_forwarded: Vec<&[u8]> = Vec::new();
    for (name, value) in header_lines(head) {
        // Every header we manage starts with x, f or e: others pass without comparisons.
        if matches!(name.first(), Some(b'x' | b'X' | b'f' | b'F' | b'e' | b'E')) {
            let managed_x = config.x_forwarded
                && (name.eq_ignore_ascii_case(b"x-forwarded-for")
                    || name.eq_ignore_ascii_case(b"x-forwarded-proto")
                    || name.eq_ignore_ascii_case(b"x-forwarded-port"));
            let managed_fwd = config.forwarded && name.eq_ignore_ascii_case(b"forwarded");
            // Never let a client state its own certificate.
            let managed_cert = config.x_forwarded
                && CLIENT_CERT_HEADERS
                    .iter()
                    .any(|h| name.eq_ignore_ascii_case(h));
            if managed_cert {
                continue;
            }
            // Ours replaces a client's (the same value: RFC 8470 allows only "1").
            if early && name.eq_ignore_ascii_case(b"early-data") {
                continue;
            }
            if managed_x || managed_fwd {
                if name.eq_ignore_ascii_case(b"x-forwarded-for") && !value.is_empty() {
                    prior_xff.push(value);
                } else if managed_fwd && !value.is_empty() {
                    prior_forwarded.push(value);
                }
                continue;
            }
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if config.x_forwarded {
        out.extend_from_slice(b"X-Forwarded-For: ");
        if facts.trusted {
            for value in &prior_xff {
                out.extend_from_slice(value);
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(&text.client);
        out.extend_from_slice(&text.proto_port);
    }
    if config.forwarded {
        out.extend_from_slice(b"Forwarded: ");
        if facts.trusted {
            for value in &prior_forwarded {
                out.extend_from_slice(value);
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(&text.forwarded);
    }
    if early {
        out.extend_from_slice(b"Early-Data: 1\r\n");
    }
    out.extend_from_slice(&text.client_cert);
    out.extend_from_slice(b"\r\n");
}

/// The `X-Client-*` lines stating `cert`.
fn client_cert_lines(cert: &ClientCertHeaders) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"X-Client-Verify: ");
    out.extend_from_slice(if cert.verified { b"SUCCESS" } else { b"NONE" });
    out.extend_from_slice(b"\r\n");
    if let Some(subject) = &cert.subject {
        out.extend_from_slice(b"X-Client-Subject: ");
        // A DN may hold any character: keep the line a valid field value.
        for &b in subject.as_bytes() {
            out.push(if b == b'\r' || b == b'\n' || b == 0 {
                b' '
            } else {
                b
            });
        }
        out.extend_from_slice(b"\r\n");
    }
    if let Some(pem) = &cert.cert_pem {
        out.extend_from_slice(b"X-Client-Cert: ");
        percent_encode(pem, &mut out);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Advances the chunked-coding state over `input`; returns the bytes used and the next state
/// (`None` when the body ended).
fn chunked_step(mut state: Chunk, input: &[u8]) -> Result<(usize, Option<Chunk>), InjectError> {
    let mut i = 0;
    while i < input.len() {
        if let Chunk::Data { remaining } = state {
            let n = usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .min(input.len() - i);
            i += n;
            let remaining = remaining - n as u64;
            state = if remaining == 0 {
                Chunk::DataCr
            } else {
                Chunk::Data { remaining }
            };
            continue;
        }
        let b = input[i];
        i += 1;
        state = match state {
            Chunk::Size { size, digits } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    if digits >= 15 {
                        return Err(InjectError::BadChunk("chunk size too large"));
                    }
                    let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                    Chunk::Size {
                        size: size * 16 + digit,
                        digits: digits + 1,
                    }
                }
                _ if digits == 0 => return Err(InjectError::BadChunk("missing chunk size")),
                b';' | b' ' | b'\t' => Chunk::Extension { size },
                b'\r' => Chunk::SizeLf { size },
                b'\n' => after_size_line(size),
                _ => return Err(InjectError::BadChunk("invalid character in chunk size")),
            },
            Chunk::Extension { size } => match b {
                b'\r' => Chunk::SizeLf { size },
                b'\n' => after_size_line(size),
                _ => Chunk::Extension { size },
            },
            Chunk::SizeLf { size } => match b {
                b'\n' => after_size_line(size),
                _ => return Err(InjectError::BadChunk("CR without LF after chunk size")),
            },
            Chunk::DataCr => match b {
                b'\r' => Chunk::DataLf,
                b'\n' => Chunk::Size { size: 0, digits: 0 },
                _ => return Err(InjectError::BadChunk("chunk data longer than its size")),
            },
            Chunk::DataLf => match b {
                b'\n' => Chunk::Size { size: 0, digits: 0 },
                _ => return Err(InjectError::BadChunk("CR without LF after chunk data")),
            },
            Chunk::TrailerStart => match b {
                b'\r' => Chunk::EndLf,
                b'\n' => return Ok((i, None)),
                _ => Chunk::TrailerLine,
            },
            Chunk::TrailerLine => match b {
                b'\n' => Chunk::TrailerStart,
                _ => Chunk::TrailerLine,
            },
            Chunk::EndLf => match b {
                b'\n' => return Ok((i, None)),
                _ => return Err(InjectError::BadChunk("CR without LF at end of body")),
            },
            Chunk::Data { .. } => state,
        };
    }
    Ok((i, Some(state)))
}

fn after_size_line(size: u64) -> Chunk {
    if size == 0 {
        Chunk::TrailerStart
    } else {
        Chunk::Data { remaining: size }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::DEFAULT_MAX_HEAD;

    const X: ForwardedConfig = ForwardedConfig {
        x_forwarded: true,
        forwarded: false,
        max_head: DEFAULT_MAX_HEAD,
    };

    fn facts(trusted: bool) -> ClientFacts {
        ClientFacts {
            client: "192.0.2.7".parse().unwrap(),
            local_port: 443,
            trusted,
        }
    }

    fn run(
        config: ForwardedConfig,
        facts: ClientFacts,
        input: &[u8],
    ) -> Result<Vec<u8>, InjectError> {
        let mut injector = Injector::new(config, facts);
        let mut out = Vec::new();
        injector.feed(input, &mut out)?;
        Ok(out)
    }

    /// Feeds `input` in pieces of `size` bytes.
    fn run_split(
        config: ForwardedConfig,
        facts: ClientFacts,
        input: &[u8],
        size: usize,
    ) -> Vec<u8> {
        let mut injector = Injector::new(config, facts);
        let mut out = Vec::new();
        for piece in input.chunks(size) {
            injector.feed(piece, &mut out).unwrap();
        }
        out
    }

    const XFF: &str =
        "X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\n";

    #[test]
    fn client_certificate_headers_replace_the_clients() {
        let cert = ClientCertHeaders {
            verified: true,
            subject: Some("CN=alice,O=Example".into()),
            cert_pem: Some("-----BEGIN CERTIFICATE-----\nAB+/=\n".into()),
        };
        let mut injector = Injector::new(X, facts(false)).with_client_cert(cert);
        let mut out = Vec::new();
        injector
            .feed(
                b"GET / HTTP/1.1\r\nX-Client-Verify: SUCCESS\r\nx-client-subject: CN=root\r\n\r\n",
                &mut out,
            )
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "GET / HTTP/1.1\r\n{XFF}X-Client-Verify: SUCCESS\r\nX-Client-Subject: \
                 CN=alice,O=Example\r\nX-Client-Cert: \
                 -----BEGIN%20CERTIFICATE-----%0AAB%2B%2F%3D%0A\r\n\r\n"
            )
        );
        let none = ClientCertHeaders::default();
        let mut injector = Injector::new(X, facts(true)).with_client_cert(none);
        let mut out = Vec::new();
        injector
            .feed(b"GET / HTTP/1.1\r\nX-Client-Cert: forged\r\n\r\n", &mut out)
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("GET / HTTP/1.1\r\n{XFF}X-Client-Verify: NONE\r\n\r\n")
        );
    }

    #[test]
    fn early_data_requests_are_marked() {
        let mut injector = Injector::new(X, facts(false));
        let mut out = Vec::new();
        injector.set_early(true);
        injector
            .feed(
                b"GET /a HTTP/1.1\r\nEarly-Data: 1\r\n\r\nGET /b HTTP/1.1\r\n",
                &mut out,
            )
            .unwrap();
        injector.set_early(false);
        injector
            .feed(b"\r\nGET /c HTTP/1.1\r\n\r\n", &mut out)
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "GET /a HTTP/1.1\r\n{XFF}Early-Data: 1\r\n\r\n\
                 GET /b HTTP/1.1\r\n{XFF}\r\nGET /c HTTP/1.1\r\n{XFF}\r\n"
            ),
            "only heads completed in early data; never twice"
        );
    }

    #[test]
    fn adds_headers_to_one_request() {
        let out = run(X, facts(false), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("GET / HTTP/1.1\r\nHost: a\r\n{XFF}\r\n")
        );
    }

    #[test]
    fn every_pipelined_request_and_bodies_untouched() {
        let input = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\n\r\n\
POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n\
GET /d HTTP/1.1\r\n\r\n";
        let expected = format!(
            "POST /a HTTP/1.1\r\nContent-Length: 5\r\n{XFF}\r\nhello\
GET /b HTTP/1.1\r\n{XFF}\r\n\
POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n{XFF}\r\n3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n\
GET /d HTTP/1.1\r\n{XFF}\r\n"
        );
        assert_eq!(
            String::from_utf8(run(X, facts(false), input).unwrap()).unwrap(),
            expected
        );
        for size in [1, 2, 3, 7, 16, 50] {
            let out = run_split(X, facts(false), input, size);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                expected,
                "pieces of {size}"
            );
        }
    }

    #[test]
    fn body_that_looks_like_a_request_is_not_rewritten() {
        let input = b"POST / HTTP/1.1\r\nContent-Length: 19\r\n\r\nGET /x HTTP/1.1\r\n\r\n";
        let out = String::from_utf8(run(X, facts(false), input).unwrap()).unwrap();
        assert_eq!(out.matches("X-Forwarded-For").count(), 1);
        assert!(out.ends_with("\r\n\r\nGET /x HTTP/1.1\r\n\r\n"), "{out}");
    }

    #[test]
    fn trust_rules() {
        let input = b"GET / HTTP/1.1\r\nX-Forwarded-For: 10.1.1.1, 10.2.2.2\r\nX-Forwarded-Proto: http\r\n\r\n";
        let untrusted = String::from_utf8(run(X, facts(false), input).unwrap()).unwrap();
        assert_eq!(untrusted, format!("GET / HTTP/1.1\r\n{XFF}\r\n"));
        let trusted = String::from_utf8(run(X, facts(true), input).unwrap()).unwrap();
        assert!(
            trusted.contains("X-Forwarded-For: 10.1.1.1, 10.2.2.2, 192.0.2.7\r\n"),
            "{trusted}"
        );
        assert_eq!(trusted.matches("X-Forwarded-Proto").count(), 1);
    }

    #[test]
    fn rfc7239_forwarded() {
        let config = ForwardedConfig {
            x_forwarded: false,
            forwarded: true,
            max_head: DEFAULT_MAX_HEAD,
        };
        let v6 = ClientFacts {
            client: "2001:db8::1".parse().unwrap(),
            local_port: 8443,
            trusted: true,
        };
        let input = b"GET / HTTP/1.1\r\nForwarded: for=10.0.0.1\r\n\r\n";
        let out = String::from_utf8(run(config, v6, input).unwrap()).unwrap();
        assert!(
            out.contains("Forwarded: for=10.0.0.1, for=\"[2001:db8::1]\";proto=https\r\n"),
            "{out}"
        );
        assert!(!out.contains("X-Forwarded"));
        let mapped = ClientFacts {
            client: "::ffff:192.0.2.7".parse().unwrap(),
            local_port: 1,
            trusted: false,
        };
        let out = String::from_utf8(run(config, mapped, input).unwrap()).unwrap();
        assert!(
            out.contains("Forwarded: for=192.0.2.7;proto=https\r\n"),
            "{out}"
        );
    }

    #[test]
    fn empty_lines_before_a_request_line_are_dropped() {
        let input =
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx\r\n\nGET /next HTTP/1.1\r\n\r\n";
        let out = String::from_utf8(run(X, facts(false), input).unwrap()).unwrap();
        assert!(
            out.ends_with(&format!("\r\n\r\nxGET /next HTTP/1.1\r\n{XFF}\r\n")),
            "{out}"
        );
    }

    #[test]
    fn lf_only_heads() {
        let out = run(X, facts(false), b"GET / HTTP/1.0\nHost: a\n\n").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("GET / HTTP/1.0\r\nHost: a\r\n{XFF}\r\n")
        );
    }

    #[test]
    fn upgrade_and_connect_become_opaque() {
        let input = b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let mut injector = Injector::new(X, facts(false));
        let mut out = Vec::new();
        injector.feed(input, &mut out).unwrap();
        assert!(injector.is_opaque());
        assert_eq!(
            String::from_utf8(out)
                .unwrap()
                .matches("X-Forwarded-For")
                .count(),
            1
        );
        let out = run(
            X,
            facts(false),
            b"CONNECT a:443 HTTP/1.1\r\n\r\n\x16\x03\x01",
        )
        .unwrap();
        assert!(out.ends_with(b"\r\n\r\n\x16\x03\x01"));
    }

    #[test]
    fn h2_preface_passes_through() {
        let input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04";
        for size in [1, 5, 100] {
            let mut injector = Injector::new(X, facts(false));
            let mut out = Vec::new();
            for piece in input.chunks(size) {
                injector.feed(piece, &mut out).unwrap();
            }
            assert!(injector.saw_http2(), "pieces of {size}");
            assert_eq!(out, input);
        }
    }

    #[test]
    fn errors_end_the_stream() {
        assert!(matches!(
            run(X, facts(false), b"\x16\x03\x01garbage\r\n\r\n"),
            Err(InjectError::Head(_))
        ));
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(DEFAULT_MAX_HEAD + 10, b'a');
        assert_eq!(
            run(X, facts(false), &long),
            Err(InjectError::Head(HeadError::TooLarge {
                limit: DEFAULT_MAX_HEAD
            }))
        );
        // Over-long head arriving one byte at a time is caught too.
        let mut injector = Injector::new(X, facts(false));
        let mut out = Vec::new();
        let failed = long.chunks(1).any(|b| injector.feed(b, &mut out).is_err());
        assert!(failed);
        for bad in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
        ] {
            assert!(
                matches!(run(X, facts(false), bad), Err(InjectError::BadChunk(_))),
                "{bad:?}"
            );
        }
    }
}
