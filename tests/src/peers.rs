//! Small real peers for the suites: a blocking TLS client (BoringSSL, no certificate check)
//! that can write byte by byte, and plain TCP backends that record what reaches them.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use fastedge_tls::boring::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};
use fastedge_wire::http1::{parse_request_head, BodyFraming, Status, DEFAULT_MAX_HEAD};

/// A TLS connection to `addr` with SNI `server_name` and ALPN `alpn` (wire format, may be
/// empty); the server's certificate is not checked.
pub fn tls_connect(addr: SocketAddr, server_name: &str, alpn: &[u8]) -> SslStream<TcpStream> {
    let mut builder = SslConnector::builder(SslMethod::tls()).expect("connector");
    builder.set_verify(SslVerifyMode::NONE);
    if !alpn.is_empty() {
        builder.set_alpn_protos(alpn).expect("alpn");
    }
    let connector = builder.build();
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    tcp.set_nodelay(true).expect("nodelay");
    let mut config = connector.configure().expect("configure");
    config.set_verify_hostname(false);
    config.connect(server_name, tcp).expect("TLS handshake")
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns (head, body).
pub fn read_response<R: Read>(stream: &mut R) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("reading response head");
        assert!(
            n > 0,
            "connection closed inside a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("Content-Length in response");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("reading response body");
    (head, body)
}

/// What a recording backend saw on one connection.
pub type Recorded = Arc<Mutex<Vec<Vec<u8>>>>;

/// A plain HTTP/1.1 backend on loopback: answers each request with its head as the body
/// (`Content-Length`), reading and discarding request bodies. Each connection's raw bytes are
/// recorded. Runs until the test process ends.
pub fn echo_backend() -> (SocketAddr, Recorded) {
    echo_backend_on("127.0.0.1:0".parse().expect("address"))
}

/// [`echo_backend`] on a given address.
pub fn echo_backend_on(addr: SocketAddr) -> (SocketAddr, Recorded) {
    let listener = TcpListener::bind(addr).expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    (addr, echo_on(move || listener.accept().map(|(s, _)| s)))
}

/// [`echo_backend`] on a UNIX stream socket at `path`.
pub fn echo_backend_unix(path: &std::path::Path) -> Recorded {
    let listener = std::os::unix::net::UnixListener::bind(path).expect("bind UNIX backend");
    echo_on(move || listener.accept().map(|(s, _)| s))
}

/// Serves echo connections from `accept` on threads until it fails.
fn echo_on<S, A>(mut accept: A) -> Recorded
where
    S: Read + Write + Send + 'static,
    A: FnMut() -> std::io::Result<S> + Send + 'static,
{
    let recorded: Recorded = Arc::default();
    let sink = recorded.clone();
    thread::spawn(move || {
        while let Ok(stream) = accept() {
            let sink = sink.clone();
            thread::spawn(move || serve_echo(stream, &sink));
        }
    });
    recorded
}

fn serve_echo<S: Read + Write>(mut stream: S, sink: &Recorded) {
    let index = {
        let mut all = sink.lock().expect("lock");
        all.push(Vec::new());
        all.len() - 1
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    // A PROXY header or bud's JSON line, when present, is recorded and skipped.
    let mut skipped_proxy = false;
    loop {
        if !skipped_proxy && buf.starts_with(b"BUD ") {
            if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                buf.drain(..end + 2);
                skipped_proxy = true;
            }
        } else if !skipped_proxy {
            match fastedge_wire::proxy::parse(&buf) {
                Ok(Status::Complete((_, used))) => {
                    buf.drain(..used);
                    skipped_proxy = true;
                    continue;
                }
                Ok(Status::Partial) if !buf.is_empty() => {}
                _ if !buf.is_empty() => skipped_proxy = true,
                _ => {}
            }
        }
        if skipped_proxy {
            if let Ok(Status::Complete(head)) = parse_request_head(&buf, DEFAULT_MAX_HEAD) {
                let body = match head.body {
                    BodyFraming::ContentLength(n) => n as usize,
                    _ => 0,
                };
                if buf.len() >= head.head_len + body {
                    let text = buf[..head.head_len].to_vec();
                    buf.drain(..head.head_len + body);
                    let mut response =
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", text.len())
                            .into_bytes();
                    response.extend_from_slice(&text);
                    if stream.write_all(&response).is_err() {
                        return;
                    }
                    continue;
                }
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                sink.lock().expect("lock")[index].extend_from_slice(&chunk[..n]);
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// A free TCP port on loopback (bound, then closed), for a peer that takes a port number.
pub fn free_port() -> u16 {
    dead_port().port()
}

/// A port on loopback with nothing listening (bound, then closed).
pub fn dead_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}
