//! A TLS echo server on glommio with fastedge's TLS context and fastedge's boring ⇄ futures-io
//! adapter (`fastedge_tls::accept`): what a glommio application embeds to terminate TLS itself.
//!
//! Usage: `glommio_echo ADDR CERT.pem KEY.pem` — prints `listening on ADDR`, then sends every
//! client back what it sends, until it closes.

use std::rc::Rc;

use fastedge_tls::{
    boring::{pkey::PKey, x509::X509},
    ServerContext,
};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::{net::TcpListener, LocalExecutorBuilder, Placement};

type Error = Box<dyn std::error::Error>;

async fn echo(context: Rc<ServerContext>, stream: glommio::net::TcpStream) -> Result<(), Error> {
    let mut tls = fastedge_tls::accept(context.new_session()?, stream).await?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        tls.write_all(&buf[..n]).await?;
        tls.flush().await?;
    }
    tls.close().await?;
    Ok(())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, cert, key] = args.as_slice() else {
        return Err("usage: glommio_echo ADDR CERT.pem KEY.pem".into());
    };
    let chain = X509::stack_from_pem(&std::fs::read(cert)?)?;
    let key = PKey::private_key_from_pem(&std::fs::read(key)?)?;
    let context = ServerContext::from_parts(&chain, &key, &["echo"])?;
    let addr = addr.clone();
    // One executor on this thread's CPU set; a real application would run one per core.
    let executor = LocalExecutorBuilder::new(Placement::Unbound).spawn(move || async move {
        let context = Rc::new(context);
        let listener = TcpListener::bind(addr.as_str()).map_err(|e| format!("bind {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        println!("listening on {local}");
        loop {
            let stream = listener
                .accept()
                .await
                .map_err(|e| format!("accept: {e}"))?;
            let context = context.clone();
            glommio::spawn_local(async move {
                if let Err(error) = echo(context, stream).await {
                    eprintln!("connection: {error}");
                }
            })
            .detach();
        }
        #[allow(unreachable_code)]
        Ok::<(), String>(())
    })?;
    let ended = executor.join().map_err(|e| format!("executor: {e:?}"))?;
    Ok(ended?)
}
