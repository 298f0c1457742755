//! The backend's introduction to its client: what a backend is told before (PROXY v1/v2, bud's
//! JSON line) and inside (`X-Forwarded-*`, `Forwarded`, client-certificate headers) the
//! client's bytes, as its [`BackendSpec`] asks.

use std::sync::atomic::{AtomicBool, Ordering};

use boring::x509::X509Ref;
use fastedge_wire::{
    forwarded::{ClientCertHeaders, ClientFacts, ForwardedConfig, Injector},
    http1::DEFAULT_MAX_HEAD,
    proxy::{encode_bud_json, encode_v1, encode_v2, ConnectionAddrs, TlsFacts},
};
use futures_io::AsyncWrite;
use futures_lite::AsyncWriteExt;

use super::{CloseReason, Side};
use crate::config::{BackendSpec, ProxyPrefix};

/// What is known about a client once its handshake completed: all a backend can be told.
pub(super) struct Client<'a> {
    /// The client's address and the local address it connected to.
    pub addrs: ConnectionAddrs,
    /// What the handshake settled (ALPN, SNI, version, cipher, client certificate).
    pub tls: TlsFacts,
    /// The client certificate, verified (a failed verification ends the handshake).
    pub cert: Option<&'a X509Ref>,
    /// Whether the client is a trusted proxy (its own forwarding headers are kept).
    pub trusted: bool,
    /// Whether the handshake asked for a client certificate.
    pub cert_requested: bool,
}

/// Writes the prefix `spec` asks for to `backend` and returns the injector that rewrites the
/// client's requests to it, if `spec` asks for forwarding headers. HTTP/2 connections (ALPN
/// `h2`) get no injector: only HTTP/1 requests can be rewritten (a warning is logged once).
pub(super) async fn introduce<W>(
    backend: &mut W,
    spec: &BackendSpec,
    mut client: Client<'_>,
) -> Result<Option<Injector>, CloseReason>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    if spec.send_client_cert {
        client.tls.client_cert_der = client.cert.and_then(|c| c.to_der().ok());
    }
    let prefix = prefix(spec.proxy_protocol, &client);
    if !prefix.is_empty() {
        if let Err(error) = backend.write_all(&prefix).await {
            return Err(CloseReason::Failed {
                side: Side::Backend,
                op: "write",
                error,
            });
        }
    }
    Ok(injector(spec, &client))
}

/// The bytes that go to the backend before the client's.
fn prefix(kind: ProxyPrefix, client: &Client<'_>) -> Vec<u8> {
    let mut prefix = Vec::new();
    match kind {
        ProxyPrefix::None => {}
        ProxyPrefix::V1 => encode_v1(&client.addrs, &mut prefix),
        ProxyPrefix::V2 => encode_v2(&client.addrs, Some(&client.tls), &mut prefix),
        ProxyPrefix::BudJson => {
            let dn = client.cert.and_then(subject_dn);
            encode_bud_json(
                &client.addrs,
                client.tls.client_cn.as_deref(),
                dn.as_deref(),
                &mut prefix,
            )
        }
    }
    prefix
}

/// The request rewriter for a backend that gets forwarding headers.
fn injector(spec: &BackendSpec, client: &Client<'_>) -> Option<Injector> {
    if !spec.injects() {
        return None;
    }
    if client.tls.alpn.as_deref() == Some(b"h2") {
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                backend = %spec.name,
                "HTTP/2 connections pass through without X-Forwarded-* headers; use \
                 proxy_protocol = \"v2\" to tell the backend about clients (logged once)"
            );
        }
        return None;
    }
    let config = ForwardedConfig {
        x_forwarded: spec.x_forwarded,
        forwarded: spec.forwarded,
        max_head: DEFAULT_MAX_HEAD,
    };
    let facts = ClientFacts {
        client: client.addrs.client.ip(),
        local_port: client.addrs.local.port(),
        trusted: client.trusted,
    };
    let mut injector = Injector::new(config, facts);
    if spec.x_forwarded && client.cert_requested {
        injector = injector.with_client_cert(ClientCertHeaders {
            verified: client.cert.is_some(),
            subject: client.cert.and_then(subject_dn),
            cert_pem: client
                .cert
                .filter(|_| spec.send_client_cert)
                .and_then(|c| c.to_pem().ok())
                .and_then(|pem| String::from_utf8(pem).ok()),
        });
    }
    Some(injector)
}

/// A certificate's subject as an RFC 2253 string (`CN=alice,O=Example`).
fn subject_dn(cert: &X509Ref) -> Option<String> {
    cert.subject_name()
        .print_ex(boring_sys::XN_FLAG_RFC2253)
        .filter(|dn| !dn.is_empty())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use fastedge_wire::{
        http1::Status,
        proxy::{parse, tlv},
    };
    use futures_lite::future::block_on;

    use super::*;
    use crate::{config::BackendAddr, SelfSigned};

    fn spec(proxy_protocol: ProxyPrefix, x_forwarded: bool, send_client_cert: bool) -> BackendSpec {
        BackendSpec {
            name: "127.0.0.1:9000".into(),
            addr: BackendAddr::Tcp("127.0.0.1:9000".parse().unwrap()),
            proxy_protocol,
            x_forwarded,
            forwarded: false,
            send_client_cert,
        }
    }

    fn client<'a>(cert: Option<&'a X509Ref>, alpn: &[u8]) -> Client<'a> {
        let addrs = ConnectionAddrs {
            client: "192.0.2.7:40000".parse::<SocketAddr>().unwrap(),
            local: "198.51.100.1:8443".parse::<SocketAddr>().unwrap(),
        };
        Client {
            addrs,
            tls: TlsFacts {
                alpn: Some(alpn.to_vec()),
                server_name: Some("a.example".into()),
                version: Some("TLSv1.3".into()),
                cipher: Some("TLS_AES_128_GCM_SHA256".into()),
                client_cn: cert.map(|_| "alice".into()),
                client_cert: cert.is_some(),
                verify_result: 0,
                client_cert_der: None,
            },
            cert,
            trusted: false,
            cert_requested: true,
        }
    }

    /// Introduces a client over an in-memory stream; what the backend received and the
    /// injector.
    fn introduce_to_buffer(spec: &BackendSpec, client: Client<'_>) -> (Vec<u8>, Option<Injector>) {
        let mut backend = futures_lite::io::Cursor::new(Vec::new());
        let injector = block_on(introduce(&mut backend, spec, client)).unwrap();
        (backend.into_inner(), injector)
    }

    #[test]
    fn proxy_v2_carries_addresses_and_tls_facts_and_the_certificate_when_asked() {
        let alice = SelfSigned::generate(&["alice"], 1).unwrap();
        let (sent, injector) = introduce_to_buffer(
            &spec(ProxyPrefix::V2, false, true),
            client(Some(&alice.cert), b"http/1.1"),
        );
        assert!(injector.is_none(), "no forwarding headers asked for");
        let Ok(Status::Complete((header, used))) = parse(&sent) else {
            panic!("not a PROXY v2 header: {sent:?}");
        };
        assert_eq!(used, sent.len(), "nothing but the header");
        assert_eq!(header.version, 2);
        let addrs = header.addrs.unwrap();
        assert_eq!(addrs.client, "192.0.2.7:40000".parse().unwrap());
        assert_eq!(addrs.local, "198.51.100.1:8443".parse().unwrap());
        let tlv = |kind| {
            header
                .tlvs
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(tlv(tlv::ALPN).as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(tlv(tlv::AUTHORITY).as_deref(), Some(&b"a.example"[..]));
        assert_eq!(
            tlv(tlv::FASTEDGE_CLIENT_CERT),
            Some(alice.cert.to_der().unwrap())
        );
        // Without send_client_cert the certificate stays home.
        let (sent, _) = introduce_to_buffer(
            &spec(ProxyPrefix::V2, false, false),
            client(Some(&alice.cert), b"http/1.1"),
        );
        let Ok(Status::Complete((header, _))) = parse(&sent) else {
            panic!("not a PROXY v2 header");
        };
        assert!(header
            .tlvs
            .iter()
            .all(|(k, _)| *k != tlv::FASTEDGE_CLIENT_CERT));
    }

    #[test]
    fn proxy_v1_and_bud_json_lines() {
        let (sent, _) =
            introduce_to_buffer(&spec(ProxyPrefix::V1, false, false), client(None, b"h2"));
        assert_eq!(sent, b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 8443\r\n");
        let alice = SelfSigned::generate(&["alice"], 1).unwrap();
        let (sent, _) = introduce_to_buffer(
            &spec(ProxyPrefix::BudJson, false, false),
            client(Some(&alice.cert), b"h2"),
        );
        let line = String::from_utf8(sent).unwrap();
        assert!(line.starts_with("BUD {"), "{line}");
        assert!(line.ends_with("}\r\n"), "{line}");
        assert!(line.contains("\"cn\":\"alice\""), "{line}");
        assert!(line.contains("\"dn\":\"CN=alice\""), "{line}");
        let (sent, injector) =
            introduce_to_buffer(&spec(ProxyPrefix::None, false, false), client(None, b"h2"));
        assert!(sent.is_empty() && injector.is_none());
    }

    #[test]
    fn forwarding_headers_with_the_client_certificate_and_none_for_http2() {
        let alice = SelfSigned::generate(&["alice"], 1).unwrap();
        let (sent, injector) = introduce_to_buffer(
            &spec(ProxyPrefix::None, true, false),
            client(Some(&alice.cert), b"http/1.1"),
        );
        assert!(sent.is_empty(), "headers go into requests, not before them");
        let mut injector = injector.expect("an injector for x_forwarded");
        let mut out = Vec::new();
        let request = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n";
        let used = injector.feed(request, &mut out).unwrap();
        assert_eq!(used, request.len());
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("X-Forwarded-For: 192.0.2.7\r\n"), "{text}");
        assert!(
            !text.contains("6.6.6.6"),
            "an untrusted client's own header: {text}"
        );
        assert!(text.contains("X-Client-Verify: SUCCESS\r\n"), "{text}");
        assert!(text.contains("X-Client-Subject: CN=alice\r\n"), "{text}");
        assert!(!text.contains("X-Client-Cert:"), "{text}");

        // HTTP/2 is not rewritten.
        let (_, injector) =
            introduce_to_buffer(&spec(ProxyPrefix::None, true, false), client(None, b"h2"));
        assert!(injector.is_none());
    }

    #[test]
    fn a_backend_that_cannot_take_the_prefix_is_named() {
        struct Refusing;
        impl AsyncWrite for Refusing {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                _: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
            }
            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
            fn poll_close(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
        }
        let reason = block_on(introduce(
            &mut Refusing,
            &spec(ProxyPrefix::V1, false, false),
            client(None, b"http/1.1"),
        ))
        .unwrap_err();
        assert!(
            matches!(
                reason,
                CloseReason::Failed {
                    side: Side::Backend,
                    op: "write",
                    ..
                }
            ),
            "{reason}"
        );
    }
}
