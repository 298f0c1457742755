//! `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Port` and RFC 7239 `Forwarded`, added
//! to **every** HTTP/1.x request on a connection.
//!
//! [`Injector`] is a sans-IO state machine over the client → backend byte stream: feed it the
//! bytes as they arrive ([`Injector::feed`]) and send on what it appends to `out`. It finds each
//! request head (even one split into one-byte reads, even several pipelined in one read),
//! rewrites it, and passes bodies through untouched, framing them by Content-Length or by the
//! chunked coding so that the next head is found exactly where it starts.
//!
//! The stream becomes opaque (passes through as is) only when the backend switched protocols:
//! the injector also observes the backend → client stream ([`Injector::observe_response`], a
//! [`ResponseReader`]). After a `CONNECT` or `Upgrade` request it takes no more client bytes
//! until the backend's answer arrives: a `101 Switching Protocols` (to `Upgrade`) or a 2xx (to
//! `CONNECT`) makes the rest opaque; any other final answer, a backend that closes, or responses
//! that cannot be followed, and the next bytes are parsed as requests again — rewritten like
//! every other, so a client cannot smuggle forged forwarding headers behind an upgrade the
//! backend ignored. An HTTP/2 connection preface is refused: its requests cannot be rewritten.

use std::net::IpAddr;

use crate::{
    chunked::{chunked_step, Chunk},
    http1::{parse_request_head, BodyFraming, HeadError, Status, DEFAULT_MAX_RESPONSE_HEAD},
    response::{RequestKind, ResponseReader},
};

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
/// `$ssl_client_escaped_cert`). Headers of these names sent by the client are always removed,
/// whether or not the connection states a certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCertHeaders {
    /// Whether a client certificate was presented and verified.
    pub verified: bool,
    /// The certificate's subject as an RFC 2253 distinguished name (`X-Client-Subject`).
    pub subject: Option<String>,
    /// The certificate as PEM, sent percent-encoded in `X-Client-Cert` when the backend asks for it
    /// (`send_client_cert`).
    pub cert_pem: Option<String>,
}

/// Header names the client may not set when headers are injected.
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
    /// A request head that cannot be parsed or is too large.
    Head(HeadError),
    /// A chunked body that breaks the chunked coding.
    BadChunk(&'static str),
    /// The HTTP/2 connection preface: its requests cannot be rewritten, and passing them on
    /// unrewritten would let the client state its own forwarding headers.
    Http2,
}

impl std::fmt::Display for InjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InjectError::Head(error) => error.fmt(f),
            InjectError::BadChunk(what) => write!(f, "malformed chunked body: {what}"),
            InjectError::Http2 => f.write_str(
                "HTTP/2 preface, but this backend gets forwarding headers (HTTP/1 only)",
            ),
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
    /// After a CONNECT/Upgrade request (and its body): waiting for the backend's answer.
    AwaitingSwitch,
    /// After the backend switched protocols: pass everything through.
    Opaque,
    /// After an error: accepts nothing more.
    Failed,
}

/// Bytes [`Injector::feed`] emits in one call before it stops taking input (it may pass this by
/// one rewritten head): injected headers multiply a burst of small pipelined requests many
/// times over (a hundredfold with a client certificate), so the caller writes what came out
/// before feeding the rest, and reads nothing more from the client meanwhile.
pub const OUTPUT_HIGH_WATER: usize = 32 * 1024;

/// The HTTP/2 connection preface (a stream that starts with it is not HTTP/1).
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
    /// The request being read asked to switch protocols (`Upgrade` or `CONNECT`).
    switch_asked: bool,
    /// The backend's answers, to learn whether it switched protocols.
    responses: ResponseReader,
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
    /// An injector for one client connection: `config` says which header families to write and whom
    /// to trust, `facts` what to state about this client. Start it at the first byte the client
    /// sends.
    pub fn new(config: ForwardedConfig, facts: ClientFacts) -> Self {
        Self {
            config,
            facts,
            state: State::Head,
            head: Vec::new(),
            requests: 0,
            h2: false,
            early: false,
            switch_asked: false,
            responses: ResponseReader::new(DEFAULT_MAX_RESPONSE_HEAD),
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

    /// Whether the stream turned out to be HTTP/2 (prior knowledge preface): it is refused
    /// ([`InjectError::Http2`]); PROXY v2 is the way to tell an HTTP/2 backend about clients.
    pub fn saw_http2(&self) -> bool {
        self.h2
    }

    /// Whether the stream passes through untouched: the backend switched protocols.
    pub fn is_opaque(&self) -> bool {
        self.state == State::Opaque
    }

    /// Whether part of a request head has arrived and the rest has not: the caller bounds how
    /// long that may last (a client trickling a head byte by byte holds the connection).
    pub fn in_head(&self) -> bool {
        self.state == State::Head && !self.head.is_empty()
    }

    /// Whether [`feed`](Self::feed) takes no client bytes until the backend answers: after a
    /// `CONNECT`/`Upgrade` request, or with too many requests unanswered. The caller stops
    /// reading from the client and feeds the backend's bytes to
    /// [`observe_response`](Self::observe_response) meanwhile.
    pub fn waits_for_backend(&self) -> bool {
        match self.state {
            State::AwaitingSwitch => !self.switch_decided(),
            State::Head => !self.responses.can_take_request(),
            _ => false,
        }
    }

    /// Observes bytes the backend sent to the client (they pass on unchanged).
    pub fn observe_response(&mut self, input: &[u8]) {
        self.responses.feed(input);
    }

    /// The backend closed its sending side: it switches nothing any more.
    pub fn backend_closed(&mut self) {
        self.responses.closed();
    }

    /// Whether the backend's answer to the `CONNECT`/`Upgrade` request is known.
    fn switch_decided(&self) -> bool {
        // The switching request is the last one sent: with none unanswered, it was answered.
        self.responses.switched() || !self.responses.is_tracking() || self.responses.pending() == 0
    }

    /// The state after a request ended (its head, and its body if any).
    fn after_request(&self) -> State {
        if self.switch_asked {
            State::AwaitingSwitch
        } else {
            State::Head
        }
    }

    /// Consumes client bytes, appending what the backend must receive to `out`; returns how
    /// many of `input` it took. Bytes of an incomplete head stay buffered inside until the rest
    /// arrives. It takes fewer than all (maybe none) while it
    /// [waits for the backend](Self::waits_for_backend), and once it appended
    /// [`OUTPUT_HIGH_WATER`] bytes to `out`: the caller keeps the rest and offers it again
    /// after writing `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<usize, InjectError> {
        let offered = input.len();
        let out_before = out.len();
        while !input.is_empty() {
            if out.len() - out_before >= OUTPUT_HIGH_WATER {
                break;
            }
            let used = match self.state {
                State::Failed => return Err(InjectError::BadChunk("stream already failed")),
                State::Opaque => {
                    out.extend_from_slice(input);
                    input.len()
                }
                State::AwaitingSwitch => {
                    if !self.switch_decided() {
                        break;
                    }
                    self.switch_asked = false;
                    self.state = if self.responses.switched() {
                        State::Opaque
                    } else {
                        State::Head
                    };
                    0
                }
                State::Head => {
                    if !self.responses.can_take_request() {
                        break;
                    }
                    self.feed_head(input, out)
                        .inspect_err(|_| self.state = State::Failed)?
                }
                State::Fixed { remaining } => {
                    let n = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    out.extend_from_slice(&input[..n]);
                    let remaining = remaining - n as u64;
                    self.state = if remaining == 0 {
                        self.after_request()
                    } else {
                        State::Fixed { remaining }
                    };
                    n
                }
                State::Chunked(chunk) => {
                    let (n, next) = chunked_step(chunk, input).map_err(|what| {
                        self.state = State::Failed;
                        InjectError::BadChunk(what)
                    })?;
                    out.extend_from_slice(&input[..n]);
                    self.state = match next {
                        Some(chunk) => State::Chunked(chunk),
                        None => self.after_request(),
                    };
                    n
                }
            };
            input = &input[used..];
        }
        Ok(offered - input.len())
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
                return Err(InjectError::Http2);
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
        let kind = if head.method.eq_ignore_ascii_case("CONNECT") {
            RequestKind::Connect
        } else if head.upgrade {
            RequestKind::Upgrade
        } else if head.method.eq_ignore_ascii_case("HEAD") {
            RequestKind::Head
        } else {
            RequestKind::Plain
        };
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
        self.responses.request_sent(kind);
        self.switch_asked = matches!(kind, RequestKind::Connect | RequestKind::Upgrade);
        self.state = match body {
            BodyFraming::None => self.after_request(),
            BodyFraming::ContentLength(remaining) => State::Fixed { remaining },
            BodyFraming::Chunked => State::Chunked(Chunk::Size { size: 0, digits: 0 }),
        };
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

/// Whether a client's header of this name is removed from every request: the forwarding
/// families (`X-Forwarded-*`, `Forwarded`), `X-Real-IP` and the client certificate's headers
/// are stated by fastedge alone.
fn is_managed(name: &[u8]) -> bool {
    const PREFIX: &[u8] = b"x-forwarded-";
    (name.len() > PREFIX.len() && name[..PREFIX.len()].eq_ignore_ascii_case(PREFIX))
        || name.eq_ignore_ascii_case(b"forwarded")
        || name.eq_ignore_ascii_case(b"x-real-ip")
        || CLIENT_CERT_HEADERS
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
}

/// Writes a `Connection` field without the tokens that name headers fastedge manages (a
/// next hop deletes the fields `Connection` lists: it would delete ours); nothing when no
/// token remains.
fn write_connection(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    let kept = value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty() && !is_managed(t) && !t.eq_ignore_ascii_case(b"early-data"));
    let mut first = true;
    for token in kept {
        if first {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            first = false;
        } else {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(token);
    }
    if !first {
        out.extend_from_slice(b"\r\n");
    }
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
        // Every header we manage starts with x, f, e or c: others pass without comparisons.
        if matches!(
            name.first(),
            Some(b'x' | b'X' | b'f' | b'F' | b'e' | b'E' | b'c' | b'C')
        ) {
            if is_managed(name) {
                // A trusted proxy's chain is kept, in the family we state.
                if config.x_forwarded && name.eq_ignore_ascii_case(b"x-forwarded-for") {
                    if !value.is_empty() {
                        prior_xff.push(value);
                    }
                } else if config.forwarded
                    && name.eq_ignore_ascii_case(b"forwarded")
                    && !value.is_empty()
                {
                    prior_forwarded.push(value);
                }
                continue;
            }
            // Ours replaces a client's (the same value: RFC 8470 allows only "1").
            if early && name.eq_ignore_ascii_case(b"early-data") {
                continue;
            }
            if name.eq_ignore_ascii_case(b"connection") {
                write_connection(name, value, out);
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
        let used = injector.feed(input, &mut out)?;
        assert_eq!(used, input.len(), "took every byte");
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
            assert_eq!(injector.feed(piece, &mut out).unwrap(), piece.len());
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

    const UPGRADE: &[u8] =
        b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: foo\r\nContent-Length: 2\r\n\r\nok";
    const FORGED: &[u8] =
        b"GET /2 HTTP/1.1\r\nX-Forwarded-For: 10.9.9.9\r\nX-Client-Verify: SUCCESS\r\n\r\n";

    /// Feeds the upgrade request and the forged one in one read; returns the injector, what
    /// it emitted and how many bytes it took.
    fn upgrade_then_forged() -> (Injector, Vec<u8>, usize) {
        let mut injector =
            Injector::new(X, facts(false)).with_client_cert(ClientCertHeaders::default());
        let mut out = Vec::new();
        let input = [UPGRADE, FORGED].concat();
        let used = injector.feed(&input, &mut out).unwrap();
        (injector, out, used)
    }

    #[test]
    fn upgrade_ignored_by_the_backend_keeps_injecting() {
        let (mut injector, mut out, used) = upgrade_then_forged();
        assert_eq!(
            used,
            UPGRADE.len(),
            "holds what follows the upgrade request"
        );
        assert!(injector.waits_for_backend());
        assert!(!injector.is_opaque());
        // An interim response, then the backend ignores the upgrade.
        injector.observe_response(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-");
        assert!(
            injector.waits_for_backend(),
            "100 Continue is not the answer"
        );
        injector.observe_response(b"Length: 0\r\n\r\n");
        assert!(!injector.waits_for_backend());
        assert_eq!(injector.feed(FORGED, &mut out).unwrap(), FORGED.len());
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("10.9.9.9"), "{out}");
        assert!(!out.contains("SUCCESS"), "{out}");
        assert_eq!(
            out.matches("X-Forwarded-For: 192.0.2.7").count(),
            2,
            "{out}"
        );
        assert!(out.ends_with(&format!(
            "GET /2 HTTP/1.1\r\n{XFF}X-Client-Verify: NONE\r\n\r\n"
        )));
    }

    #[test]
    fn backend_closing_or_unreadable_answers_keep_injecting() {
        let (mut injector, mut out, _) = upgrade_then_forged();
        injector.backend_closed();
        assert_eq!(injector.feed(FORGED, &mut out).unwrap(), FORGED.len());
        assert!(!String::from_utf8(out).unwrap().contains("10.9.9.9"));
        let (mut injector, mut out, _) = upgrade_then_forged();
        injector.observe_response(b"\x16\x03\x01 not HTTP\r\n\r\n");
        assert_eq!(injector.feed(FORGED, &mut out).unwrap(), FORGED.len());
        assert!(!String::from_utf8(out).unwrap().contains("10.9.9.9"));
        // A 101 to a request that did not ask is not a switch either.
        let mut injector = Injector::new(X, facts(false));
        let mut out = Vec::new();
        injector.feed(b"GET / HTTP/1.1\r\n\r\n", &mut out).unwrap();
        injector.observe_response(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        injector.feed(FORGED, &mut out).unwrap();
        assert!(!injector.is_opaque());
        assert!(!String::from_utf8(out).unwrap().contains("10.9.9.9"));
    }

    #[test]
    fn switched_protocols_pass_through() {
        let (mut injector, mut out, _) = upgrade_then_forged();
        injector.observe_response(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\n\r\n");
        assert!(!injector.waits_for_backend());
        let before = out.len();
        assert_eq!(injector.feed(FORGED, &mut out).unwrap(), FORGED.len());
        assert!(injector.is_opaque());
        assert_eq!(&out[before..], FORGED, "untouched after the switch");

        let mut injector = Injector::new(X, facts(false));
        let mut out = Vec::new();
        let input = b"CONNECT a:443 HTTP/1.1\r\n\r\n\x16\x03\x01";
        assert_eq!(injector.feed(input, &mut out).unwrap(), input.len() - 3);
        injector.observe_response(b"HTTP/1.1 200 Connection established\r\n\r\n");
        assert_eq!(injector.feed(b"\x16\x03\x01", &mut out).unwrap(), 3);
        assert!(out.ends_with(b"\r\n\r\n\x16\x03\x01"));
        assert!(injector.is_opaque());
    }

    #[test]
    fn refused_connect_keeps_injecting() {
        let mut injector = Injector::new(X, facts(false));
        let mut out = Vec::new();
        let input = [&b"CONNECT a:443 HTTP/1.1\r\n\r\n"[..], FORGED].concat();
        let used = injector.feed(&input, &mut out).unwrap();
        injector.observe_response(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nno!");
        injector.feed(&input[used..], &mut out).unwrap();
        assert!(!String::from_utf8(out).unwrap().contains("10.9.9.9"));
    }

    #[test]
    fn output_per_feed_is_bounded() {
        let cert = ClientCertHeaders {
            verified: true,
            subject: Some("CN=alice".into()),
            cert_pem: Some("x".repeat(1500)),
        };
        let mut injector = Injector::new(X, facts(false)).with_client_cert(cert);
        let burst = b"GET / HTTP/1.1\r\n\r\n".repeat(32 * 1024 / 18);
        let mut rest = &burst[..];
        let mut calls = 0;
        while !rest.is_empty() {
            let mut out = Vec::new();
            let used = injector.feed(rest, &mut out).unwrap();
            assert!(used > 0, "progress");
            assert!(
                out.len() < OUTPUT_HIGH_WATER + 8 * 1024,
                "{} bytes out of one feed",
                out.len()
            );
            rest = &rest[used..];
            calls += 1;
        }
        assert_eq!(injector.requests(), (32 * 1024 / 18) as u64);
        assert!(
            calls > 50,
            "a 32 KiB burst multiplied ~100x came out in {calls} pieces"
        );
    }

    #[test]
    fn in_head_while_a_head_is_partial() {
        let mut injector = Injector::new(X, facts(false));
        let mut out = Vec::new();
        assert!(!injector.in_head());
        injector.feed(b"GET / HTTP/1.1\r\nHo", &mut out).unwrap();
        assert!(injector.in_head());
        injector
            .feed(
                b"st: a\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nbo",
                &mut out,
            )
            .unwrap();
        assert!(!injector.in_head(), "inside a body");
        injector.feed(b"dy not!", &mut out).unwrap();
        assert!(!injector.in_head(), "between requests");
        injector.feed(b"G", &mut out).unwrap();
        assert!(injector.in_head());
    }

    #[test]
    fn h2_preface_is_refused() {
        let input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04";
        for size in [1, 5, 100] {
            let mut injector = Injector::new(X, facts(false));
            let mut out = Vec::new();
            let refused = input
                .chunks(size)
                .any(|piece| injector.feed(piece, &mut out) == Err(InjectError::Http2));
            assert!(refused, "pieces of {size}");
            assert!(injector.saw_http2());
            assert!(out.is_empty(), "nothing passed on");
        }
    }

    #[test]
    fn client_copies_of_managed_headers_are_removed() {
        let input =
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Host: evil\r\nx-real-ip: 10.9.9.9\r\n\
Forwarded: for=10.9.9.9\r\nX-Forwarded-For: 10.9.9.9\r\nX-Forwarded-Ssl: on\r\n\
X-Client-Verify: SUCCESS\r\nConnection: keep-alive, X-Forwarded-For, forwarded, Early-Data\r\n\r\n";
        // Only one family configured: the other's client copies go too.
        let out = String::from_utf8(run(X, facts(false), input).unwrap()).unwrap();
        assert_eq!(
            out,
            format!("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n{XFF}\r\n")
        );
        let forwarded_only = ForwardedConfig {
            x_forwarded: false,
            forwarded: true,
            max_head: DEFAULT_MAX_HEAD,
        };
        let out = String::from_utf8(run(forwarded_only, facts(false), input).unwrap()).unwrap();
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\
             Forwarded: for=192.0.2.7;proto=https\r\n\r\n"
        );
        // A Connection field that named only managed headers goes altogether.
        let out = run(
            X,
            facts(false),
            b"GET / HTTP/1.1\r\nconnection: x-real-ip\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("GET / HTTP/1.1\r\n{XFF}\r\n")
        );
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
