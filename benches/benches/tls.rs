//! TLS 1.3 in memory: full handshakes, and records through our adapter.
//!
//! The server is fastedge's: a `ServerContext` built by `from_settings` from the default
//! `[tls]` settings (certificate and key given as inline PEM), one `new_session()` per
//! connection, driven by `fastedge_tls::accept`, and data read and written through `TlsStream`.
//! The client is a plain boring `SslConnector` over a non-blocking in-memory stream. Both run on
//! one thread, alternately, so a handshake's time is client plus server CPU.
//!
//! Resumed handshakes offer a ticket from an earlier connection of the same client context
//! (`SslRef::set_session`, `unsafe` in boring 5: the one unsafe block here).

use std::{
    cell::RefCell,
    collections::VecDeque,
    future::Future,
    io::{self, Read, Write},
    path::PathBuf,
    pin::{pin, Pin},
    rc::Rc,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use fastedge_tls::{
    accept,
    boring::{
        asn1::Asn1Time,
        bn::{BigNum, MsbOption},
        hash::MessageDigest,
        nid::Nid,
        pkey::{PKey, Private},
        rsa::Rsa,
        ssl::{
            HandshakeError, MidHandshakeSslStream, SslConnector, SslSession, SslSessionCacheMode,
            SslSessionRef, SslStream,
        },
        x509::{extension::SubjectAlternativeName, X509Name, X509},
    },
    config::{CertificateSpec, ServeConfig, TlsSettings},
    SelfSigned, ServerContext, TlsStream,
};
use futures_io::{AsyncRead, AsyncWrite};

const SERVER_NAME: &str = "bench.test";

/// Bytes in flight one way, and the task waiting for them.
#[derive(Default)]
struct Queue {
    bytes: VecDeque<u8>,
    reader: Option<Waker>,
}

/// One end of an in-memory duplex pipe: futures-io for our server, non-blocking std::io
/// (`WouldBlock` when empty) for the boring client. Writes never block.
struct End {
    incoming: Rc<RefCell<Queue>>,
    outgoing: Rc<RefCell<Queue>>,
}

fn pipe() -> (End, End) {
    let a = Rc::new(RefCell::new(Queue::default()));
    let b = Rc::new(RefCell::new(Queue::default()));
    (
        End {
            incoming: a.clone(),
            outgoing: b.clone(),
        },
        End {
            incoming: b,
            outgoing: a,
        },
    )
}

impl Read for End {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut queue = self.incoming.borrow_mut();
        if queue.bytes.is_empty() && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        queue.bytes.read(buf)
    }
}

impl Write for End {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut queue = self.outgoing.borrow_mut();
        queue.bytes.extend(buf);
        if let Some(reader) = queue.reader.take() {
            reader.wake();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsyncRead for End {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut queue = self.incoming.borrow_mut();
        if queue.bytes.is_empty() && !buf.is_empty() {
            queue.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(queue.bytes.read(buf))
    }
}

impl AsyncWrite for End {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(self.get_mut().write(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// An ECDSA P-256 certificate (fastedge's own generator) and an RSA-2048 one.
fn certificates() -> [(&'static str, X509, PKey<Private>); 2] {
    let p256 = SelfSigned::generate(&[SERVER_NAME], 2).expect("P-256 certificate");
    let rsa = PKey::from_rsa(Rsa::generate(2048).expect("RSA key")).expect("RSA PKey");
    let rsa_cert = self_signed(&rsa);
    [("p256", p256.cert, p256.key), ("rsa2048", rsa_cert, rsa)]
}

/// A self-signed certificate for [`SERVER_NAME`] over `key`.
fn self_signed(key: &PKey<Private>) -> X509 {
    let mut name = X509Name::builder().expect("name");
    name.append_entry_by_nid(Nid::COMMONNAME, SERVER_NAME)
        .expect("CN");
    let name = name.build();
    let mut builder = X509::builder().expect("X509 builder");
    builder.set_version(2).expect("version");
    let mut serial = BigNum::new().expect("serial");
    serial
        .rand(127, MsbOption::MAYBE_ZERO, false)
        .expect("serial");
    builder
        .set_serial_number(&serial.to_asn1_integer().expect("serial"))
        .expect("serial");
    builder.set_subject_name(&name).expect("subject");
    builder.set_issuer_name(&name).expect("issuer");
    builder.set_pubkey(key).expect("public key");
    builder
        .set_not_before(&Asn1Time::days_from_now(0).expect("time"))
        .expect("not before");
    builder
        .set_not_after(&Asn1Time::days_from_now(2).expect("time"))
        .expect("not after");
    let san = SubjectAlternativeName::new()
        .dns(SERVER_NAME)
        .build(&builder.x509v3_context(None, None))
        .expect("SAN");
    builder.append_extension(&san).expect("SAN");
    builder.sign(key, MessageDigest::sha256()).expect("signing");
    builder.build()
}

/// The server context as `fastedge serve` builds it from a config with only this pair: the
/// default `[tls]` settings (TLS 1.2–1.3, groups X25519MLKEM768:X25519:P-256:P-384, ALPN
/// http/1.1, tickets on).
fn server_context(cert: &X509, key: &PKey<Private>) -> ServerContext {
    let inline = |pem: Vec<u8>| PathBuf::from(String::from_utf8(pem).expect("PEM is ASCII"));
    let settings = TlsSettings {
        certificates: vec![CertificateSpec {
            cert: inline(cert.to_pem().expect("certificate PEM")),
            key: inline(key.private_key_to_pem_pkcs8().expect("key PEM")),
            passphrase: None,
            key_server: None,
            ocsp_staple: None,
        }],
        ..ServeConfig::default().tls
    };
    ServerContext::from_settings(&settings).expect("server context")
}

/// A TLS 1.3 client that offers exactly `group` (so the server must choose it) and no
/// certificate check.
fn connector(group: &str, sessions: Arc<Mutex<Option<SslSession>>>) -> SslConnector {
    let mut builder = fastedge_benches::tls13_client(group)
        .unwrap_or_else(|e| panic!("group {group} not supported by this BoringSSL: {e}"));
    builder.set_session_cache_mode(SslSessionCacheMode::CLIENT);
    builder.set_new_session_callback(move |_, session| {
        *sessions.lock().expect("session slot") = Some(session)
    });
    builder.set_alpn_protos(b"\x08http/1.1").expect("ALPN");
    builder.build()
}

type Client = SslStream<End>;
type Server = TlsStream<End>;

/// One handshake over a fresh pipe, client and server stepped in turn. The server's session
/// tickets are made here but sent only with its first write (BoringSSL): their making is timed,
/// their sending is not.
fn handshake(
    context: &ServerContext,
    connector: &SslConnector,
    session: Option<&SslSessionRef>,
) -> (Client, Server) {
    let (client_end, server_end) = pipe();
    let ssl = context.new_session().expect("server session");
    let mut server = pin!(accept(ssl, server_end));
    let mut config = connector
        .configure()
        .expect("client configuration")
        .verify_hostname(false);
    if let Some(session) = session {
        // SAFETY: the session was issued to a connection of this same client context.
        unsafe { config.set_session(session) }.expect("offering the session");
    }
    let mut client: Result<Client, MidHandshakeSslStream<End>> =
        match config.connect(SERVER_NAME, client_end) {
            Ok(stream) => Ok(stream),
            Err(HandshakeError::WouldBlock(mid)) => Err(mid),
            Err(e) => panic!("client handshake: {e}"),
        };
    let mut cx = Context::from_waker(Waker::noop());
    let mut accepted = None;
    // A TLS 1.3 handshake takes two turns each; allow a few more.
    for _ in 0..8 {
        client = match client {
            Err(mid) => match mid.handshake() {
                Ok(stream) => Ok(stream),
                Err(HandshakeError::WouldBlock(mid)) => Err(mid),
                Err(e) => panic!("client handshake: {e}"),
            },
            done => done,
        };
        if accepted.is_none() {
            if let Poll::Ready(result) = server.as_mut().poll(&mut cx) {
                accepted = Some(result.expect("server handshake"));
            }
        }
        (client, accepted) = match (client, accepted) {
            (Ok(client), Some(server)) => return (client, server),
            unfinished => unfinished,
        };
    }
    panic!("handshake did not finish");
}

fn handshakes(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    for (cert_name, cert, key) in certificates() {
        let context = server_context(&cert, &key);
        for (group_name, tls_group) in [("x25519", "X25519"), ("x25519mlkem768", "X25519MLKEM768")]
        {
            let slot = Arc::new(Mutex::new(None));
            let connector = connector(tls_group, slot.clone());
            let (mut client, mut server) = handshake(&context, &connector, None);
            for ssl in [client.ssl(), server.ssl()] {
                assert_eq!(ssl.version_str(), "TLSv1.3");
                assert_eq!(ssl.curve_name(), Some(tls_group));
            }
            assert!(!server.ssl().session_reused());
            group.bench_function(format!("full/{cert_name}/{group_name}"), |b| {
                b.iter(|| handshake(&context, &connector, None))
            });
            // BoringSSL sends the tickets with the server's first write.
            let mut byte = [0u8; 1];
            server_to_client(&mut client, &mut server, b"x", &mut byte);
            let session = slot
                .lock()
                .expect("session slot")
                .clone()
                .expect("a ticket");
            let (_, server) = handshake(&context, &connector, Some(&session));
            assert!(server.ssl().session_reused());
            group.bench_function(format!("resumed/{cert_name}/{group_name}"), |b| {
                b.iter(|| handshake(&context, &connector, Some(&session)))
            });
        }
    }
    group.finish();
}

/// Client writes `payload`; our server reads it back through `TlsStream` into `buf`.
fn client_to_server(client: &mut Client, server: &mut Server, payload: &[u8], buf: &mut [u8]) {
    client.write_all(payload).expect("client write");
    let mut cx = Context::from_waker(Waker::noop());
    let mut got = 0;
    while got < payload.len() {
        match Pin::new(&mut *server).poll_read(&mut cx, &mut buf[got..payload.len()]) {
            Poll::Ready(Ok(n)) if n > 0 => got += n,
            other => panic!("server read: {other:?}"),
        }
    }
}

/// Our server writes `payload` through `TlsStream`; the client reads it into `buf`.
fn server_to_client(client: &mut Client, server: &mut Server, payload: &[u8], buf: &mut [u8]) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut sent = 0;
    while sent < payload.len() {
        match Pin::new(&mut *server).poll_write(&mut cx, &payload[sent..]) {
            Poll::Ready(Ok(n)) if n > 0 => sent += n,
            other => panic!("server write: {other:?}"),
        }
    }
    client
        .read_exact(&mut buf[..payload.len()])
        .expect("client read");
}

fn records(c: &mut Criterion) {
    let [(_, cert, key), _] = certificates();
    let context = server_context(&cert, &key);
    let (mut client, mut server) = handshake(
        &context,
        &connector("X25519", Arc::new(Mutex::new(None))),
        None,
    );
    let mut group = c.benchmark_group("record");
    for (size_name, size) in [("1k", 1024), ("16k", 16 * 1024)] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 7 + i / 256) as u8).collect();
        let mut buf = vec![0u8; size];
        client_to_server(&mut client, &mut server, &payload, &mut buf);
        assert_eq!(buf, payload);
        buf.fill(0);
        server_to_client(&mut client, &mut server, &payload, &mut buf);
        assert_eq!(buf, payload);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(
            format!("encrypt+decrypt/client-to-server/{size_name}"),
            |b| {
                b.iter(|| client_to_server(&mut client, &mut server, black_box(&payload), &mut buf))
            },
        );
        group.bench_function(
            format!("encrypt+decrypt/server-to-client/{size_name}"),
            |b| {
                b.iter(|| server_to_client(&mut client, &mut server, black_box(&payload), &mut buf))
            },
        );
    }
    group.finish();
    // BoringSSL offers no TLS 1.3 cipher choice; with AES instructions it picks AES-128-GCM.
    let ssl = server.ssl();
    println!(
        "record benches ran with {} over {}",
        ssl.current_cipher().map_or("no cipher", |c| c.name()),
        ssl.curve_name().unwrap_or("no group"),
    );
}

criterion_group!(benches, handshakes, records);
criterion_main!(benches);
