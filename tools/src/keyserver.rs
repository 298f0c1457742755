//! `fastedge keyserver`: the reference signer for keyless certificates. It holds private keys
//! and signs handshakes for `fastedge serve` processes configured with `key_server`.

use std::{collections::HashMap, path::PathBuf};

use anyhow::{anyhow, Context as _};
use clap::Args;
use fastedge_tls::{
    boring::pkey::PKey,
    keyless::{key_id, serve_signer},
};

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

pub fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{text:?} is not an octal mode like 600"))
}

pub fn run(args: KeyServerArgs) -> Result<(), Failure> {
    let mut keys = HashMap::new();
    for path in &args.keys {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading key {}", path.display()))
            .map_err(Failure::config)?;
        let key = PKey::private_key_from_pem(&pem).map_err(|e| {
            Failure::config(anyhow!("{}: not a PEM private key: {e}", path.display()))
        })?;
        let spki = key
            .public_key_to_der()
            .map_err(|e| Failure::config(anyhow!("{}: {e}", path.display())))?;
        let id = key_id(&spki).map_err(Failure::runtime)?;
        tracing::info!(key = %path.display(), id = %hex(&id), "holding key");
        keys.insert(id, key);
    }
    if args.listen.exists() {
        // A socket left by a previous run; anything else is not ours to remove.
        let meta = std::fs::symlink_metadata(&args.listen).map_err(Failure::runtime)?;
        if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
            return Err(Failure::config(anyhow!(
                "{} exists and is not a socket",
                args.listen.display()
            )));
        }
        std::fs::remove_file(&args.listen).map_err(Failure::runtime)?;
    }
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
