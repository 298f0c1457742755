//! `fastedge keyserver`: the reference signer for keyless certificates. It holds private keys
//! and signs handshakes for `fastedge serve` processes configured with `key_server`.

use std::path::PathBuf;

use anyhow::{anyhow, Context as _};
use clap::Args;
use fastedge_runtime::control::parse_mode;
use fastedge_tls::keyless::{serve_signer, signer_keys};

use crate::Failure;

/// Hold private keys and sign TLS handshakes for `fastedge serve` (keyless).
///
/// Listens on a UNIX stream socket (mode 0600 unless --mode says otherwise) and answers sign
/// requests for the keys given with --key, named by the SHA-256 of their public key. In the serve
/// configuration, give the certificate with `key_server = "unix:PATH"` instead of `key`. The
/// protocol is documented in docs/serve.md ("Keyless").
#[derive(Debug, Args)]
pub struct KeyServerArgs {
    /// PEM private key to hold (unencrypted); repeat for several.
    #[arg(long = "key", value_name = "FILE", required = true)]
    keys: Vec<PathBuf>,

    /// Path of the UNIX socket to listen on (replaced if a stale one exists).
    #[arg(long, value_name = "PATH")]
    listen: PathBuf,

    /// Permission bits of the socket, in octal.
    #[arg(long, default_value = "600", value_parser = parse_mode)]
    mode: u32,
}

pub fn run(args: KeyServerArgs) -> Result<(), Failure> {
    let keys = signer_keys(&args.keys).map_err(Failure::config)?;
    fastedge_runtime::control::remove_stale_socket(&args.listen).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Failure::config(e),
        _ => Failure::runtime(e),
    })?;
    // Never, even between bind and chmod, open to more than the owner.
    let listener = fastedge_runtime::control::bind_private(&args.listen, args.mode)
        .with_context(|| format!("binding {} (mode {:o})", args.listen.display(), args.mode))
        .map_err(Failure::config)?;
    tracing::info!(socket = %args.listen.display(), keys = keys.len(), "key server listening");
    fastedge_runtime::notify::ready(&format!(
        "signing on {} ({} {})",
        args.listen.display(),
        keys.len(),
        if keys.len() == 1 { "key" } else { "keys" }
    ));
    serve_signer(keys, || listener.accept().map(|(stream, _)| stream));
    Err(Failure::runtime(anyhow!(
        "accepting on {} failed",
        args.listen.display()
    )))
}
