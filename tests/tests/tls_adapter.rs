//! The boring ⇄ futures-io adapter over the runtime's TcpStream (either engine), against the real
//! `openssl s_client`: a TLS 1.3 handshake, a megabyte each way (many TLS records), and clean
//! close_notify in both directions; a client that vanishes without close_notify is reported as
//! a truncation, never as a clean end of data.

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    io::{Read, Write},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use fastedge_runtime::{bind_reuseport, net::TcpStream, CpuList, Executors};
use fastedge_tests::require_tool;
use fastedge_tls::{accept, SelfSigned, ServerContext, TlsStream};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

const PAYLOAD: usize = 1 << 20;

fn payload() -> Vec<u8> {
    (0..PAYLOAD).map(|i| (i * 7 + i / 256) as u8).collect()
}

/// What the server saw of one connection.
#[derive(Debug)]
struct ServerReport {
    version: String,
    received_ok: bool,
    /// The read after our close_notify: Ok(0) when the client answered with its close_notify.
    after_close: Result<usize, String>,
    peer_closed_cleanly: bool,
}

/// Runs a one-connection TLS server on one executor: the connection, once its handshake is done
/// (or the reason it failed), goes to `serve`, whose answer comes back on the channel.
fn serve_one<T, F, Fut>(serve: F) -> (SocketAddr, mpsc::Receiver<T>, Executors<()>)
where
    F: Fn(Result<TlsStream<TcpStream>, String>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    let cert = SelfSigned::generate(&["localhost"], 1).expect("certificate");
    let context =
        ServerContext::from_parts(&[cert.cert], &cert.key, &["http/1.1"]).expect("context");
    let cpus: CpuList = CpuList::available().unwrap().cpus()[0]
        .to_string()
        .parse()
        .unwrap();
    let mut listeners = bind_reuseport("127.0.0.1:0".parse().unwrap(), 1, 16).expect("bind");
    let addr = listeners[0].local_addr();
    let mut listener = listeners.pop();
    let (tx, rx) = mpsc::channel();
    let executors = Executors::spawn_on(fastedge_tests::engine(), "tls-test", &cpus, |_| {
        let listener = listener.take().expect("single executor");
        let context = context.clone();
        let tx = tx.clone();
        let serve = serve.clone();
        move || async move {
            let listener = listener.into_listener().expect("listener");
            let stream = listener.accept().await.expect("accept");
            let tls = match context.new_session() {
                Ok(ssl) => accept(ssl, stream).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            tx.send(serve(tls).await).expect("report");
        }
    })
    .expect("executor");
    (addr, rx, executors)
}

/// Runs a one-connection TLS server on one executor. It reads the payload; with `echo` it sends
/// back each byte plus one, sends close_notify and reads once more; without, it only reads once
/// more (to see how a vanished client is reported).
fn one_shot_server(
    echo: bool,
) -> (
    SocketAddr,
    mpsc::Receiver<Result<ServerReport, String>>,
    Executors<()>,
) {
    serve_one(move |tls| async move {
        let mut tls = tls?;
        let version = tls.ssl().version_str().to_owned();
        let mut got = vec![0u8; PAYLOAD];
        tls.read_exact(&mut got)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let received_ok = got == payload();
        if !echo {
            // Wait for the client to vanish; report what the next read says.
            let mut byte = [0u8; 1];
            let after = tls
                .read(&mut byte)
                .await
                .map_err(|e| format!("{:?}: {e}", e.kind()));
            return Ok(ServerReport {
                version,
                received_ok,
                after_close: after,
                peer_closed_cleanly: tls.peer_closed_cleanly(),
            });
        }
        let answer: Vec<u8> = got.iter().map(|b| b.wrapping_add(1)).collect();
        tls.write_all(&answer)
            .await
            .map_err(|e| format!("write: {e}"))?;
        tls.close().await.map_err(|e| format!("close: {e}"))?;
        let mut byte = [0u8; 1];
        let after = tls
            .read(&mut byte)
            .await
            .map_err(|e| format!("{:?}: {e}", e.kind()));
        Ok(ServerReport {
            version,
            received_ok,
            after_close: after,
            peer_closed_cleanly: tls.peer_closed_cleanly(),
        })
    })
}

fn s_client(addr: SocketAddr) -> Child {
    Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-tls1_3",
            "-quiet",
            "-servername",
            "localhost",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting openssl s_client")
}

#[test]
fn s_client_round_trip_with_close_notify() {
    require_tool("openssl", "openssl");
    let (addr, reports, executors) = one_shot_server(true);
    let mut client = s_client(addr);
    let mut stdin = client.stdin.take().unwrap();
    let writer = thread::spawn(move || {
        stdin.write_all(&payload()).expect("feeding s_client");
        // Keep stdin open until the server has answered and closed: s_client exits on the
        // server's close_notify, answering with its own.
        stdin
    });
    let mut answer = Vec::new();
    client
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut answer)
        .expect("reading s_client");
    drop(writer.join().unwrap());
    let status = client.wait().unwrap();
    let mut stderr = String::new();
    client
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();

    let report = reports
        .recv_timeout(Duration::from_secs(30))
        .expect("server report")
        .unwrap_or_else(|e| panic!("server failed: {e}\ns_client stderr:\n{stderr}"));
    executors.join().unwrap();
    assert!(status.success(), "s_client exited with {status}: {stderr}");
    assert_eq!(report.version, "TLSv1.3");
    assert!(
        report.received_ok,
        "server received the client's megabyte intact"
    );
    let expected: Vec<u8> = payload().iter().map(|b| b.wrapping_add(1)).collect();
    assert_eq!(answer.len(), expected.len(), "bytes s_client printed");
    assert!(
        answer == expected,
        "s_client received the server's megabyte intact"
    );
    assert_eq!(report.after_close, Ok(0), "client answered close_notify");
    assert!(report.peer_closed_cleanly);
}

#[test]
fn vanished_client_is_a_truncation_not_an_end() {
    require_tool("openssl", "openssl");
    let (addr, reports, executors) = one_shot_server(false);
    let mut client = s_client(addr);
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(&payload()).expect("feeding s_client");
    stdin.flush().unwrap();
    // Give the server time to read the payload, then kill the client: no close_notify.
    thread::sleep(Duration::from_millis(500));
    client.kill().unwrap();
    client.wait().unwrap();
    let report = reports
        .recv_timeout(Duration::from_secs(30))
        .expect("server report")
        .expect("server handled the connection");
    executors.join().unwrap();
    assert!(report.received_ok);
    let error = report
        .after_close
        .expect_err("a read after a vanished peer is an error");
    assert!(error.starts_with("UnexpectedEof"), "{error}");
    assert!(!report.peer_closed_cleanly);
}

/// A client's transport that keeps a copy of every byte it reads (the server's TLS records).
#[derive(Debug)]
struct Tap {
    stream: std::net::TcpStream,
    seen: Vec<u8>,
}

impl Read for Tap {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.stream.read(buf)?;
        self.seen.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

impl Write for Tap {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

/// Lengths of the TLS records in `bytes` (header excluded), whole records only.
fn record_lengths(bytes: &[u8]) -> Vec<usize> {
    let mut lengths = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + 5) {
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        lengths.push(len);
        at += 5 + len;
    }
    lengths
}

#[test]
fn records_start_small_then_grow_and_start_small_again_after_a_pause() {
    const BULK: usize = 96 * 1024;
    const LATER: usize = 4096;
    let cert = SelfSigned::generate(&["localhost"], 1).expect("certificate");
    let context =
        ServerContext::from_parts(&[cert.cert], &cert.key, &["http/1.1"]).expect("context");
    let cpus: CpuList = CpuList::available().unwrap().cpus()[0]
        .to_string()
        .parse()
        .unwrap();
    let mut listeners = bind_reuseport("127.0.0.1:0".parse().unwrap(), 1, 16).expect("bind");
    let addr = listeners[0].local_addr();
    let mut listener = listeners.pop();
    let executors = Executors::spawn_on(fastedge_tests::engine(), "tls-records", &cpus, |_| {
        let listener = listener.take().expect("single executor");
        let context = context.clone();
        move || async move {
            let listener = listener.into_listener().expect("listener");
            let stream = listener.accept().await.expect("accept");
            let mut tls = accept(context.new_session().unwrap(), stream)
                .await
                .expect("handshake");
            tls.write_all(&vec![b'a'; BULK]).await.expect("bulk");
            // The client pauses, then asks for more.
            let mut ask = [0u8; 1];
            tls.read_exact(&mut ask).await.expect("ask");
            tls.write_all(&vec![b'b'; LATER]).await.expect("later");
            // The client may be gone already (it hangs up once it has read): no check here.
            let _ = tls.close().await;
        }
    })
    .expect("executor");

    let mut connector = fastedge_tls::boring::ssl::SslConnector::builder(
        fastedge_tls::boring::ssl::SslMethod::tls(),
    )
    .unwrap();
    connector.set_verify(fastedge_tls::boring::ssl::SslVerifyMode::NONE);
    connector
        .set_min_proto_version(Some(fastedge_tls::boring::ssl::SslVersion::TLS1_3))
        .unwrap();
    let tap = Tap {
        stream: std::net::TcpStream::connect(addr).unwrap(),
        seen: Vec::new(),
    };
    let mut client = connector
        .build()
        .connect("localhost", tap)
        .expect("client handshake");
    let mut bulk = vec![0u8; BULK];
    client.read_exact(&mut bulk).unwrap();
    // Every record the bulk may have come in is whole by now.
    let after_bulk = client.get_ref().seen.len();
    thread::sleep(Duration::from_millis(1300));
    client.write_all(b"?").unwrap();
    let mut later = vec![0u8; LATER];
    client.read_exact(&mut later).unwrap();
    assert!(bulk.iter().all(|&b| b == b'a') && later.iter().all(|&b| b == b'b'));
    let seen = client.get_ref().seen.clone();
    drop(client);
    executors.join().unwrap();

    // Records up to the end of the bulk: the server's hello, its encrypted handshake, tickets,
    // then the bulk. Small records (at most 1,400 bytes on the wire, header included) carry
    // the first 16 KiB of it, full ones the rest. TLS 1.3 adds 17 bytes to the plaintext.
    let first = record_lengths(&seen[..after_bulk]);
    let later_records = record_lengths(&seen[after_bulk..]);
    eprintln!("records: {first:?} then {later_records:?}");
    let small = |len: usize| len + 5 <= 1400;
    let big = first
        .iter()
        .position(|&len| len > 4096)
        .expect("the bulk goes on in full records");
    let small_payload: usize = first[..big]
        .iter()
        .filter(|&&len| len > 1000 && small(len))
        .map(|len| len - 17)
        .sum();
    assert!(
        small_payload >= 16 * 1024,
        "the first 16 KiB go in records of ≤ 1,400 bytes: {first:?}"
    );
    assert!(
        first[big..].iter().any(|&len| len >= 16 * 1024),
        "bulk records are full: {first:?}"
    );
    // After a pause of over a second: small records again (the 4 KiB answer in ≥ 3 records).
    let data: Vec<usize> = later_records.iter().copied().filter(|&l| l > 100).collect();
    assert!(
        data.len() >= 3 && data.iter().all(|&len| small(len)),
        "after a pause, small records again: {later_records:?}"
    );
}

/// A TLS 1.3 client of `addr` that completes its handshake, then resets the connection.
fn handshake_and_reset(addr: SocketAddr) {
    use fastedge_tls::boring::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
    let mut builder = SslConnector::builder(SslMethod::tls()).unwrap();
    builder.set_verify(SslVerifyMode::NONE);
    builder
        .set_min_proto_version(Some(SslVersion::TLS1_3))
        .unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    let mut config = builder.build().configure().unwrap();
    config.set_verify_hostname(false);
    let tls = config.connect("localhost", tcp).unwrap();
    socket2::SockRef::from(tls.get_ref())
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(tls);
}

/// A flush that writes what BoringSSL held (TLS 1.3 session tickets wait in it until a first
/// write) onto a connection the client reset reports the transport's error, as a write would,
/// not a bare SSL error code.
#[test]
fn a_flush_onto_a_reset_connection_reports_the_transport_error() {
    let (addr, rx, executors) = serve_one(|tls| async move {
        let mut tls = tls.expect("handshake");
        // The client resets the connection meanwhile.
        fastedge_runtime::sleep(Duration::from_millis(300)).await;
        let flushed = tls.flush().await;
        flushed.map_err(|e| (e.kind(), e.raw_os_error(), e.to_string()))
    });
    handshake_and_reset(addr);
    let flushed = rx.recv_timeout(Duration::from_secs(10)).expect("report");
    executors.join().unwrap();
    let (kind, os_error, text) = flushed.expect_err("a flush onto a reset connection");
    assert!(
        os_error.is_some()
            && matches!(
                kind,
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
        "{kind:?} {os_error:?}: {text}"
    );
}

/// After a write that failed on the transport, later writes, flushes and the close report
/// that failure's kind, not BoringSSL's complaint about a write not retried
/// (BAD_WRITE_RETRY).
#[test]
fn writes_after_a_failed_one_report_the_transport_error() {
    let (addr, rx, executors) = serve_one(|tls| async move {
        let mut tls = tls.expect("handshake");
        // The client resets the connection meanwhile.
        fastedge_runtime::sleep(Duration::from_millis(300)).await;
        let chunk = vec![7u8; 16 * 1024];
        let mut first = None;
        for _ in 0..1000 {
            if let Err(e) = async {
                tls.write_all(&chunk).await?;
                tls.flush().await
            }
            .await
            {
                first = Some(e);
                break;
            }
        }
        let first = first.map(|e| (e.kind(), e.to_string()));
        let again = tls.write_all(b"different bytes").await.err();
        let flushed = tls.flush().await.err();
        let closed = tls.close().await.err();
        let describe = |e: Option<std::io::Error>| e.map(|e| (e.kind(), e.to_string()));
        [first, describe(again), describe(flushed), describe(closed)]
    });
    handshake_and_reset(addr);
    let errors = rx.recv_timeout(Duration::from_secs(10)).expect("report");
    executors.join().unwrap();
    for (i, error) in errors.iter().enumerate() {
        let (kind, text) = error
            .clone()
            .unwrap_or_else(|| panic!("call {i} did not fail: {errors:?}"));
        assert!(
            matches!(
                kind,
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "call {i}: {kind:?}: {text} ({errors:?})"
        );
    }
}

/// What `poll_ended_before_data` said, then what a read found.
type EndReport = (bool, Result<Vec<u8>, String>);

/// A server that waits for the client's first word or its end, without taking any data.
fn first_word_server() -> (
    SocketAddr,
    mpsc::Receiver<Result<EndReport, String>>,
    Executors<()>,
) {
    serve_one(|tls| async move {
        let mut tls = tls?;
        let ended = futures_lite::future::poll_fn(|cx| tls.poll_ended_before_data(cx)).await;
        let mut got = vec![0u8; 64];
        let read = tls
            .read(&mut got)
            .await
            .map(|n| got[..n].to_vec())
            .map_err(|e| format!("{:?}: {e}", e.kind()));
        Ok((ended, read))
    })
}

/// A BoringSSL client of `addr`; no certificate check.
fn client_of(addr: SocketAddr) -> fastedge_tls::boring::ssl::SslStream<std::net::TcpStream> {
    fastedge_tests::peers::tls_connect(addr, "localhost", b"")
}

/// Runs [`first_word_server`] against a client that does `then` after its handshake, then
/// leaves, or stays until the server has answered if `then` says so; returns what the server
/// saw.
fn first_word_after(
    then: impl FnOnce(&mut fastedge_tls::boring::ssl::SslStream<std::net::TcpStream>) -> bool,
) -> EndReport {
    let (addr, reports, executors) = first_word_server();
    let mut client = client_of(addr);
    thread::sleep(Duration::from_millis(100));
    let staying = then(&mut client).then_some(client);
    let report = reports.recv_timeout(Duration::from_secs(30));
    executors.join().unwrap();
    drop(staying);
    report.unwrap().unwrap()
}

#[test]
fn a_client_that_ends_before_sending_is_told_from_one_that_speaks() {
    // Leaves without a word (no close_notify): ended, and the read is a truncation.
    let (ended, read) = first_word_after(|_| false);
    assert!(ended);
    assert!(read.unwrap_err().starts_with("UnexpectedEof"));
    // Leaves with close_notify: ended, and the read is a clean end.
    let (ended, read) = first_word_after(|client| {
        client.shutdown().unwrap();
        false
    });
    assert!(ended);
    assert_eq!(read.unwrap(), b"");
    // Speaks (and stays): not ended, and the bytes are still there for the read.
    let (ended, read) = first_word_after(|client| {
        client.write_all(b"hello").unwrap();
        true
    });
    assert!(!ended);
    assert_eq!(read.unwrap(), b"hello");
}
