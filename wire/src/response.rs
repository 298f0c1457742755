//! Follows the backend → client byte stream of an HTTP/1.x connection far enough to know, for
//! each request sent, how the backend answered it — and above all whether it switched
//! protocols (`101 Switching Protocols` to an `Upgrade` request, a 2xx to `CONNECT`).
//!
//! [`ResponseReader`] is sans-IO and only observes: the caller tells it each request it sent
//! ([`ResponseReader::request_sent`]) and shows it the backend's bytes as they arrive
//! ([`ResponseReader::feed`]), which pass on to the client unchanged. Responses are matched to
//! requests in order (HTTP/1.1 answers pipelined requests in order); interim 1xx responses (100
//! Continue, 103 Early Hints) precede the final one; bodies are skipped by their framing, so a
//! body that looks like a response head is never read as one. A response the reader cannot
//! follow (malformed, a head over the size limit, a body that runs until the close) ends the
//! tracking: from then on nothing counts as a switch, so the caller keeps treating the client's
//! bytes as requests — the safe side when the question is whether to stop rewriting them.

use std::collections::VecDeque;

use crate::{
    chunked::{chunked_step, Chunk},
    http1::{parse_response_head, ResponseBody, Status},
};

/// What a request asks for, as far as the framing and meaning of its response go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Any request whose response is framed by its own head.
    Plain,
    /// `HEAD`: the response has no body whatever its head says.
    Head,
    /// A request with `Connection: upgrade` and `Upgrade`: a 101 switches protocols.
    Upgrade,
    /// `CONNECT`: a 2xx makes the connection a tunnel.
    Connect,
}

/// Largest number of runs of requests sent and not yet answered (consecutive requests of one
/// kind count once): past it, [`ResponseReader::can_take_request`] is false and the caller
/// waits for answers before sending more.
pub const MAX_PENDING_RUNS: usize = 1024;

/// Where in the backend's stream the reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before or inside a response head (buffered in `head`).
    Head,
    /// Inside a Content-Length body.
    Fixed { remaining: u64 },
    /// Inside a chunked body.
    Chunked(Chunk),
    /// The backend switched protocols: the rest is not HTTP/1.
    Switched,
    /// The stream cannot be followed any more (see the module documentation).
    Untracked,
}

/// Observes the responses of one backend connection (see the module documentation).
#[derive(Debug)]
pub struct ResponseReader {
    state: State,
    /// Bytes of a response head not complete yet.
    head: Vec<u8>,
    max_head: usize,
    /// Requests sent and not yet finally answered, oldest first, as runs of one kind.
    pending: VecDeque<(RequestKind, u64)>,
}

impl ResponseReader {
    /// A reader accepting response heads of up to `max_head` bytes.
    pub fn new(max_head: usize) -> Self {
        Self {
            state: State::Head,
            head: Vec::new(),
            max_head,
            pending: VecDeque::new(),
        }
    }

    /// Whether the backend switched protocols in answer to an `Upgrade` or `CONNECT` request.
    pub fn switched(&self) -> bool {
        self.state == State::Switched
    }

    /// Whether the reader still follows the responses (it has neither switched nor given up).
    pub fn is_tracking(&self) -> bool {
        !matches!(self.state, State::Switched | State::Untracked)
    }

    /// Requests sent and not yet finally answered.
    pub fn pending(&self) -> u64 {
        self.pending.iter().map(|(_, n)| n).sum()
    }

    /// Whether one more request may be sent without growing the queue past its bound.
    pub fn can_take_request(&self) -> bool {
        !self.is_tracking() || self.pending.len() < MAX_PENDING_RUNS
    }

    /// Records that a request of `kind` was sent to the backend.
    pub fn request_sent(&mut self, kind: RequestKind) {
        if !self.is_tracking() {
            return;
        }
        match self.pending.back_mut() {
            Some((last, n)) if *last == kind => *n += 1,
            _ => self.pending.push_back((kind, 1)),
        }
    }

    /// The backend closed its sending side: no answer (and no switch) can come any more.
    pub fn closed(&mut self) {
        if self.state != State::Switched {
            self.untrack();
        }
    }

    /// Observes the next bytes the backend sent.
    pub fn feed(&mut self, mut input: &[u8]) {
        while !input.is_empty() {
            let used = match self.state {
                State::Switched | State::Untracked => return,
                State::Head => self.feed_head(input),
                State::Fixed { remaining } => {
                    let n = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    let remaining = remaining - n as u64;
                    self.state = if remaining == 0 {
                        State::Head
                    } else {
                        State::Fixed { remaining }
                    };
                    n
                }
                State::Chunked(chunk) => match chunked_step(chunk, input) {
                    Ok((n, next)) => {
                        self.state = next.map_or(State::Head, State::Chunked);
                        n
                    }
                    Err(_) => {
                        self.untrack();
                        return;
                    }
                },
            };
            input = &input[used..];
        }
    }

    fn untrack(&mut self) {
        self.state = State::Untracked;
        self.head = Vec::new();
        self.pending.clear();
    }

    /// Takes bytes of a response head; returns how many of `input` it used.
    fn feed_head(&mut self, input: &[u8]) -> usize {
        let before = self.head.len();
        let buf: &[u8] = if before == 0 {
            input
        } else {
            self.head.extend_from_slice(input);
            &self.head
        };
        let head = match parse_response_head(buf, self.max_head) {
            Ok(Status::Complete(head)) => head,
            Ok(Status::Partial) => {
                if before == 0 {
                    self.head.extend_from_slice(input);
                }
                return input.len();
            }
            Err(_) => {
                self.untrack();
                return input.len();
            }
        };
        let used = head.head_len - before;
        self.head.clear();
        let kind = self.pending.front().map_or(RequestKind::Plain, |(k, _)| *k);
        let code = head.code;
        if code == 101 {
            // Only a request that asked may be switched; anything else is a broken stream.
            if kind == RequestKind::Upgrade {
                self.switch();
            } else {
                self.untrack();
            }
            return used;
        }
        if (100..200).contains(&code) {
            // Interim: the final response to the same request follows.
            return used;
        }
        if kind == RequestKind::Connect && (200..300).contains(&code) {
            self.switch();
            return used;
        }
        self.answered();
        let no_body = kind == RequestKind::Head || code == 204 || code == 304;
        self.state = match head.body {
            _ if no_body => State::Head,
            ResponseBody::ContentLength(0) => State::Head,
            ResponseBody::ContentLength(remaining) => State::Fixed { remaining },
            ResponseBody::Chunked => State::Chunked(Chunk::Size { size: 0, digits: 0 }),
            ResponseBody::UntilClose => {
                self.untrack();
                State::Untracked
            }
        };
        used
    }

    fn switch(&mut self) {
        self.state = State::Switched;
        self.head = Vec::new();
        self.pending.clear();
    }

    /// The oldest pending request got its final answer (an unsolicited one answers nothing).
    fn answered(&mut self) {
        if let Some((_, n)) = self.pending.front_mut() {
            *n -= 1;
            if *n == 0 {
                self.pending.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::DEFAULT_MAX_RESPONSE_HEAD;

    fn reader(requests: &[RequestKind]) -> ResponseReader {
        let mut reader = ResponseReader::new(DEFAULT_MAX_RESPONSE_HEAD);
        for &kind in requests {
            reader.request_sent(kind);
        }
        reader
    }

    /// Feeds `input` whole and in pieces of every size up to 9; returns the readers.
    fn feed_all(requests: &[RequestKind], input: &[u8]) -> Vec<ResponseReader> {
        let mut readers = Vec::new();
        for size in [input.len().max(1), 1, 2, 3, 5, 9] {
            let mut r = reader(requests);
            for piece in input.chunks(size) {
                r.feed(piece);
            }
            readers.push(r);
        }
        readers
    }

    #[test]
    fn ignored_upgrade_is_not_a_switch() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nHTTP/1.1 101";
        for r in feed_all(&[RequestKind::Upgrade], input) {
            assert!(!r.switched());
            assert!(r.is_tracking());
            assert_eq!(r.pending(), 0, "the upgrade request was answered");
        }
    }

    #[test]
    fn switch_after_pipelined_answers_and_interim_responses() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc\
HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n\
HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nHTTP/\r\n0\r\n\r\n\
HTTP/1.1 100 Continue\r\n\r\n\
HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n\x81\x00";
        let kinds = [
            RequestKind::Plain,
            RequestKind::Head,
            RequestKind::Plain,
            RequestKind::Upgrade,
        ];
        for r in feed_all(&kinds, input) {
            assert!(r.switched());
        }
        // The same stream, cut before the 101: interim and earlier answers switch nothing.
        let before = input
            .windows(12)
            .position(|w| w == b"HTTP/1.1 101")
            .unwrap();
        for r in feed_all(&kinds, &input[..before]) {
            assert!(!r.switched());
            assert_eq!(r.pending(), 1, "only the upgrade is unanswered");
        }
    }

    #[test]
    fn connect_switches_on_2xx_only() {
        for r in feed_all(
            &[RequestKind::Connect],
            b"HTTP/1.1 200 Connection established\r\n\r\n",
        ) {
            assert!(r.switched());
        }
        let refused = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
        for r in feed_all(&[RequestKind::Connect], refused) {
            assert!(!r.switched());
            assert!(r.is_tracking());
        }
    }

    #[test]
    fn unasked_or_untrackable_answers_never_switch() {
        let unasked = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
        for r in feed_all(&[RequestKind::Plain, RequestKind::Upgrade], unasked) {
            assert!(!r.switched());
            assert!(!r.is_tracking());
        }
        // A body until the close hides what follows.
        let until_close = b"HTTP/1.0 200 OK\r\n\r\nHTTP/1.1 101 Switching Protocols\r\n\r\n";
        for r in feed_all(&[RequestKind::Plain, RequestKind::Upgrade], until_close) {
            assert!(!r.switched());
        }
        for r in feed_all(&[RequestKind::Upgrade], b"garbage\r\n\r\n") {
            assert!(!r.switched());
            assert!(!r.is_tracking());
        }
        let mut r = reader(&[RequestKind::Upgrade]);
        r.feed(b"HTTP/1.1 101 Switch");
        r.closed();
        r.feed(b"ing Protocols\r\n\r\n");
        assert!(!r.switched());
    }

    #[test]
    fn head_size_is_bounded() {
        let mut r = ResponseReader::new(64);
        r.request_sent(RequestKind::Upgrade);
        let mut long = b"HTTP/1.1 101 Switching Protocols\r\nX: ".to_vec();
        long.resize(100, b'a');
        for piece in long.chunks(7) {
            r.feed(piece);
        }
        r.feed(b"\r\n\r\n");
        assert!(!r.switched());
        assert!(!r.is_tracking());
        assert!(r.head.capacity() == 0, "the partial head was freed");
    }

    #[test]
    fn pending_runs_are_bounded() {
        let mut r = reader(&[]);
        for _ in 0..10_000 {
            r.request_sent(RequestKind::Plain);
        }
        assert!(r.can_take_request(), "one run");
        for i in 0..MAX_PENDING_RUNS {
            r.request_sent(if i % 2 == 0 {
                RequestKind::Head
            } else {
                RequestKind::Plain
            });
        }
        assert!(!r.can_take_request());
    }
}
