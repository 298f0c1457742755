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
    try_read_response(stream).expect("reading a response")
}

/// [`read_response`] that reports a failure instead of panicking.
pub fn try_read_response<R: Read>(stream: &mut R) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed inside a response head: {:?}",
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no Content-Length in {head:?}")))?;
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body)?;
    Ok((head, body))
}

/// What a [`RestartableBackend`] does with each connection it accepts (on a thread of its own).
pub type ConnectionHandler = Arc<dyn Fn(TcpStream) + Send + Sync>;

/// An [`echo_backend`] (or any [`ConnectionHandler`]) that can be killed (listener closed,
/// every open connection shut) and started again on the same address, as a backend process
/// that restarts.
pub struct RestartableBackend {
    addr: SocketAddr,
    handler: ConnectionHandler,
    running: Option<RunningBackend>,
}

impl std::fmt::Debug for RestartableBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestartableBackend")
            .field("addr", &self.addr)
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct RunningBackend {
    stop: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: thread::JoinHandle<()>,
}

impl RestartableBackend {
    /// Starts an echo backend on a free loopback port.
    pub fn start() -> Self {
        let sink = Recorded::default();
        Self::start_with(Arc::new(move |stream| serve_echo(stream, &sink)))
    }

    /// Starts on a free loopback port, serving each connection with `handler`.
    pub fn start_with(handler: ConnectionHandler) -> Self {
        let mut backend = Self {
            addr: dead_port(),
            handler,
            running: None,
        };
        backend.restart();
        backend
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the listener (connects are refused) and shuts every open connection.
    pub fn kill(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        running
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        running.acceptor.join().expect("acceptor thread");
        for stream in running.connections.lock().expect("lock").drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Listens again on the same address (after [`Self::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        let listener = TcpListener::bind(self.addr).expect("bind the backend again");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let acceptor = {
            let (stop, connections) = (stop.clone(), connections.clone());
            let handler = self.handler.clone();
            thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(false).expect("blocking");
                            if let Ok(clone) = stream.try_clone() {
                                connections.lock().expect("lock").push(clone);
                            }
                            let handler = handler.clone();
                            thread::spawn(move || {
                                // The copy kept for `kill` must not hold the connection open
                                // once the handler is done with it.
                                let closer = stream.try_clone();
                                handler(stream);
                                if let Ok(closer) = closer {
                                    let _ = closer.shutdown(std::net::Shutdown::Both);
                                }
                            });
                        }
                        Err(_) => thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        self.running = Some(RunningBackend {
            stop,
            connections,
            acceptor,
        });
    }
}

impl Drop for RestartableBackend {
    fn drop(&mut self) {
        self.kill();
    }
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

/// [`echo_backend`] on a listener the test set up itself.
pub fn echo_backend_from(listener: TcpListener) -> Recorded {
    echo_on(move || listener.accept().map(|(s, _)| s))
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

/// A TLS 1.3 ClientHello handshake message (TLS 1.2 offered too) for SNI `server_name`,
/// written by hand so a test can send it in pieces, follow it with garbage or make it as large
/// as it likes: `padding` bytes go into a padding extension (RFC 7685).
pub fn client_hello(server_name: &str, padding: usize) -> Vec<u8> {
    fn extension(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(
            &u16::try_from(body.len())
                .expect("extension size")
                .to_be_bytes(),
        );
        out.extend_from_slice(body);
    }
    let mut extensions = Vec::new();
    let name = server_name.as_bytes();
    let mut sni = Vec::new();
    sni.extend_from_slice(&u16::try_from(name.len() + 3).expect("name").to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&u16::try_from(name.len()).expect("name").to_be_bytes());
    sni.extend_from_slice(name);
    extension(&mut extensions, 0x0000, &sni);
    // supported_groups: x25519, secp256r1.
    extension(&mut extensions, 0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17]);
    // ec_point_formats: uncompressed.
    extension(&mut extensions, 0x000b, &[1, 0]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256.
    extension(&mut extensions, 0x000d, &[0, 6, 4, 3, 8, 4, 4, 1]);
    // supported_versions: TLS 1.3, TLS 1.2.
    extension(&mut extensions, 0x002b, &[4, 3, 4, 3, 3]);
    // key_share: one x25519 share (the base point: a valid public value).
    let mut share = vec![0, 36, 0x00, 0x1d, 0, 32, 9];
    share.extend_from_slice(&[0; 31]);
    extension(&mut extensions, 0x0033, &share);
    if padding > 0 {
        extension(&mut extensions, 0x0015, &vec![0; padding]);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0x5a; 32]);
    body.push(0);
    // Cipher suites: the TLS 1.3 AEADs, ECDHE-ECDSA/RSA-AES128-GCM.
    body.extend_from_slice(&[
        0, 10, 0x13, 0x01, 0x13, 0x02, 0x13, 0x03, 0xc0, 0x2b, 0xc0, 0x2f,
    ]);
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(
        &u16::try_from(extensions.len())
            .expect("extensions")
            .to_be_bytes(),
    );
    body.extend_from_slice(&extensions);
    let mut message = vec![1];
    message.extend_from_slice(&u32::try_from(body.len()).expect("size").to_be_bytes()[1..]);
    message.extend_from_slice(&body);
    message
}

/// `message` framed as TLS handshake records of at most 16 KiB each.
pub fn handshake_records(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in message.chunks(16 * 1024) {
        out.extend_from_slice(&[0x16, 3, 1]);
        out.extend_from_slice(&u16::try_from(chunk.len()).expect("record").to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}
