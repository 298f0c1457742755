//! A hyper HTTP/1.1 server on tokio whose TLS is fastedge's: the context (certificate,
//! protocol versions, cipher policy, session tickets, ALPN) comes from a `[tls]` table written
//! as in `fastedge serve`'s configuration, and each connection's handshake runs through
//! `tokio-boring`.
//!
//! Usage: `tokio_hyper ADDR CERT.pem KEY.pem` — prints `listening on ADDR`, then answers every
//! request with the TLS version and the server name the client asked for.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use fastedge_tls::{
    boring::{pkey::PKey, x509::X509},
    config::ServeConfig,
    ServerContext,
};
use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// fastedge's TLS context from a `[tls]` table as `fastedge serve` reads it.
fn context(cert: &str, key: &str) -> Result<ServerContext, Error> {
    let config = ServeConfig::parse(&format!(
        "[tls]\ncert = {cert:?}\nkey = {key:?}\nalpn = [\"http/1.1\"]\nmin_version = \"1.2\"\n"
    ))?;
    let chain = X509::stack_from_pem(&std::fs::read(cert)?)?;
    let key = PKey::private_key_from_pem(&std::fs::read(key)?)?;
    Ok(ServerContext::build(&chain, &key, &config.tls)?)
}

async fn answer(
    request: Request<hyper::body::Incoming>,
    tls: Arc<String>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = format!(
        "hello from hyper over fastedge's TLS ({tls}), you asked for {}\n",
        request.uri()
    );
    Ok(Response::new(Full::new(Bytes::from(text))))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, cert, key] = args.as_slice() else {
        return Err("usage: tokio_hyper ADDR CERT.pem KEY.pem".into());
    };
    let addr: SocketAddr = addr.parse()?;
    let context = Arc::new(context(cert, key)?);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (tcp, peer) = listener.accept().await?;
        let context = context.clone();
        tokio::spawn(async move {
            let result: Result<(), Error> = async {
                let ssl = context.new_session()?;
                let tls = tokio_boring::SslStreamBuilder::new(ssl, tcp)
                    .accept()
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
                let facts = Arc::new(format!(
                    "{}, server name {}",
                    tls.ssl().version_str(),
                    tls.ssl()
                        .servername(fastedge_tls::boring::ssl::NameType::HOST_NAME)
                        .unwrap_or("-")
                ));
                http1::Builder::new()
                    .serve_connection(
                        TokioIo::new(tls),
                        service_fn(move |request| answer(request, facts.clone())),
                    )
                    .await?;
                Ok(())
            }
            .await;
            if let Err(error) = result {
                eprintln!("{peer}: {error}");
            }
        });
    }
}
