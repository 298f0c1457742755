//! The built-in demo backend of the terminator when no backend is configured: a small HTTP/1.1 server
//! on loopback that answers every request with the request head exactly as it reached the
//! backend, so a user sees what fastedge forwards (and, later, what it adds).
//!
//! `GET /bytes/N` answers N bytes of a fixed pattern (for large transfers); a request body
//! (Content-Length) is read and reported as its length and FNV-1a 64 hash; a client that
//! expects `100 Continue` gets it before the body is read.

use std::rc::Rc;

use fastedge_runtime::net::{TcpListener, TcpStream};
use fastedge_wire::http1::{parse_request_head, BodyFraming, HeadError, Status, DEFAULT_MAX_HEAD};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

/// The repeating pattern of `/bytes/N` answers.
const PATTERN: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789\n";
/// Largest `/bytes/N` answer.
const MAX_BYTES: u64 = 1 << 30;

/// Accepts demo connections on `listener` until `stop` completes; each open connection holds a
/// permit of `open`, so the executor can wait for them to finish before it exits (a connection
/// here may serve a proxied connection of another core).
pub(crate) async fn run(
    listener: TcpListener,
    core: fastedge_runtime::Core,
    stop: fastedge_runtime::Shutdown,
    open: fastedge_runtime::ConnectionLimit,
) {
    let core = Rc::new(core);
    loop {
        let accepted = stop.until(listener.accept()).await;
        match accepted {
            None => {
                // Nobody else holds the demo's socket.
                if let Err(error) = listener.close() {
                    tracing::warn!(%error, "demo backend listener could not be closed");
                }
                return;
            }
            Some(Ok(stream)) => {
                let core = core.clone();
                let permit = open.acquire().await;
                fastedge_runtime::spawn_detached(async move {
                    if let Err(error) = serve(stream, &core).await {
                        tracing::debug!(%error, "demo backend connection ended");
                    }
                    drop(permit);
                });
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "demo backend accept failed");
                fastedge_runtime::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve(mut stream: TcpStream, core: &fastedge_runtime::Core) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        // Read until a whole head is buffered.
        let head = loop {
            match parse_request_head(&buf, DEFAULT_MAX_HEAD) {
                Ok(Status::Complete(head)) => {
                    break Ok((
                        head.head_len,
                        head.body,
                        head.keep_alive,
                        head.target.to_owned(),
                        head.expect_continue,
                    ))
                }
                Ok(Status::Partial) => {}
                Err(error) => break Err(error),
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let (head_len, body, keep_alive, target, expect_continue) = match head {
            Ok(parts) => parts,
            Err(error) => return reject(&mut stream, &error).await,
        };
        let head_text = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        buf.drain(..head_len);
        let body_report = match body {
            BodyFraming::None => None,
            BodyFraming::ContentLength(length) => {
                if expect_continue && buf.is_empty() {
                    // The client waits for this before it sends the body (curl, for a
                    // second, on uploads over 1 MiB).
                    stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                    stream.flush().await?;
                }
                Some(read_body(&mut stream, &mut buf, &mut chunk, length).await?)
            }
            BodyFraming::Chunked => {
                let msg = "the demo backend does not take chunked bodies\n";
                respond(&mut stream, "501 Not Implemented", msg.as_bytes(), false).await?;
                return Ok(());
            }
        };
        if let Some(count) = target
            .strip_prefix("/bytes/")
            .and_then(|n| n.parse::<u64>().ok())
        {
            if count > MAX_BYTES {
                let msg = format!("at most {MAX_BYTES} bytes\n");
                respond(&mut stream, "400 Bad Request", msg.as_bytes(), keep_alive).await?;
            } else {
                send_pattern(&mut stream, count, keep_alive).await?;
            }
        } else {
            let mut text = format!(
                "fastedge demo backend (core {}, cpu {}): your request as it reached the backend\n\n{}",
                core.index, core.cpu, head_text
            );
            if let Some((length, hash)) = body_report {
                text.push_str(&format!("body: {length} bytes, fnv1a64 {hash:016x}\n"));
            }
            respond(&mut stream, "200 OK", text.as_bytes(), keep_alive).await?;
        }
        if !keep_alive {
            stream.close().await?;
            return Ok(());
        }
    }
}

/// Reads a body of `length` bytes (some may already be in `buf`), returning its length and
/// FNV-1a 64 hash.
async fn read_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
    length: u64,
) -> std::io::Result<(u64, u64)> {
    let mut hash = Fnv1a64::new();
    let mut left = length;
    let buffered = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
    hash.update(&buf[..buffered]);
    buf.drain(..buffered);
    left -= buffered as u64;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        hash.update(&chunk[..n]);
        left -= n as u64;
    }
    Ok((length, hash.finish()))
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    body: &[u8],
    keep_alive: bool,
) -> std::io::Result<()> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let head = format!(
        "HTTP/1.1 {status}\r\nServer: fastedge-demo\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out).await?;
    stream.flush().await
}

async fn send_pattern(stream: &mut TcpStream, count: u64, keep_alive: bool) -> std::io::Result<()> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let head = format!(
        "HTTP/1.1 200 OK\r\nServer: fastedge-demo\r\nContent-Type: application/octet-stream\r\nContent-Length: {count}\r\nConnection: {connection}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    let block: Vec<u8> = PATTERN
        .iter()
        .copied()
        .cycle()
        .take(PATTERN.len() * 1024)
        .collect();
    let mut sent = 0u64;
    while sent < count {
        // Every block starts at a multiple of the pattern length, so the stream stays aligned.
        let n = usize::try_from(count - sent)
            .unwrap_or(usize::MAX)
            .min(block.len());
        stream.write_all(&block[..n]).await?;
        sent += n as u64;
    }
    stream.flush().await
}

async fn reject(stream: &mut TcpStream, error: &HeadError) -> std::io::Result<()> {
    let status = match error {
        HeadError::TooLarge { .. } | HeadError::TooManyHeaders => {
            "431 Request Header Fields Too Large"
        }
        _ => "400 Bad Request",
    };
    tracing::debug!(%error, "demo backend rejected a request");
    respond(stream, status, format!("{error}\n").as_bytes(), false).await
}

/// FNV-1a, 64 bits: a small documented hash so users and tests can check bodies.
struct Fnv1a64(u64);

impl Fnv1a64 {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_reference_values() {
        let hash = |b: &[u8]| {
            let mut h = Fnv1a64::new();
            h.update(b);
            h.finish()
        };
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
