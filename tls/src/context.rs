//! Server contexts: certificate chain + key from PEM files into a BoringSSL `SslContext`.

use std::path::Path;

use boring::{
    pkey::PKey,
    ssl::{SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslVersion},
    x509::X509,
};

use crate::TlsError;

/// Key-exchange groups, most preferred first. The post-quantum hybrid comes first where the
/// linked BoringSSL knows it.
const GROUPS: &str = "X25519MLKEM768:X25519:P-256:P-384";

/// A server-side TLS context: what every accepted connection on a listener starts from.
#[derive(Clone)]
pub struct ServerContext {
    context: SslContext,
}

impl std::fmt::Debug for ServerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerContext").finish_non_exhaustive()
    }
}

impl ServerContext {
    /// Loads a PEM certificate chain (leaf first) and its PEM private key; `alpn` lists the
    /// protocols accepted, most preferred first (empty: no ALPN).
    pub fn from_pem_files(
        cert_path: &Path,
        key_path: &Path,
        alpn: &[&str],
    ) -> Result<Self, TlsError> {
        let read = |what, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::ReadFile {
                what,
                path: path.to_owned(),
                source,
            })
        };
        let cert_pem = read("certificate", cert_path)?;
        let key_pem = read("private key", key_path)?;
        let chain =
            X509::stack_from_pem(&cert_pem).map_err(TlsError::config("parsing certificate"))?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: cert_path.to_owned(),
            });
        }
        let key = PKey::private_key_from_pem(&key_pem)
            .map_err(TlsError::config("parsing private key"))?;
        Self::from_parts(&chain, &key, alpn)
    }

    /// Builds a context from a parsed chain (leaf first) and key; `alpn` lists the protocols
    /// the server accepts, most preferred first.
    pub fn from_parts(
        chain: &[X509],
        key: &PKey<boring::pkey::Private>,
        alpn: &[&str],
    ) -> Result<Self, TlsError> {
        let mut builder = SslContextBuilder::new(SslMethod::tls())
            .map_err(TlsError::config("creating TLS context"))?;
        builder
            .set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(TlsError::config("setting minimum TLS version"))?;
        builder
            .set_max_proto_version(Some(SslVersion::TLS1_3))
            .map_err(TlsError::config("setting maximum TLS version"))?;
        builder.set_options(SslOptions::CIPHER_SERVER_PREFERENCE | SslOptions::NO_RENEGOTIATION);
        builder.set_mode(
            SslMode::AUTO_RETRY
                | SslMode::ACCEPT_MOVING_WRITE_BUFFER
                | SslMode::ENABLE_PARTIAL_WRITE,
        );
        builder
            .set_curves_list(GROUPS)
            .or_else(|_| builder.set_curves_list("X25519:P-256:P-384"))
            .map_err(TlsError::config("setting key-exchange groups"))?;
        let (leaf, intermediates) = chain.split_first().ok_or(TlsError::NoCertificate {
            path: "(inline)".into(),
        })?;
        builder
            .set_certificate(leaf)
            .map_err(TlsError::config("installing certificate"))?;
        for cert in intermediates {
            builder
                .add_extra_chain_cert(cert.clone())
                .map_err(TlsError::config("adding chain certificate"))?;
        }
        builder
            .set_private_key(key)
            .map_err(TlsError::config("installing private key"))?;
        builder.check_private_key().map_err(TlsError::KeyMismatch)?;
        if !alpn.is_empty() {
            let ours: Vec<Vec<u8>> = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
            builder.set_alpn_select_callback(move |_, client| {
                select_alpn(&ours, client).ok_or(boring::ssl::AlpnError::NOACK)
            });
        }
        Ok(Self {
            context: builder.build(),
        })
    }

    /// A fresh per-connection `Ssl` from this context.
    pub fn new_session(&self) -> Result<boring::ssl::Ssl, TlsError> {
        boring::ssl::Ssl::new(&self.context).map_err(TlsError::Setup)
    }
}

/// Picks the first of `ours` (server preference) that the client offers in `client`, an ALPN
/// list in wire format (each name prefixed by its length). Returns the client's copy of the name.
fn select_alpn<'c>(ours: &[Vec<u8>], client: &'c [u8]) -> Option<&'c [u8]> {
    let offered = || {
        let mut rest = client;
        std::iter::from_fn(move || {
            let (&len, tail) = rest.split_first()?;
            let name = tail.get(..usize::from(len))?;
            rest = &tail[usize::from(len)..];
            Some(name)
        })
    };
    ours.iter()
        .find_map(|want| offered().find(|name| *name == want.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_server_preference() {
        let ours = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        assert_eq!(select_alpn(&ours, b"\x08http/1.1\x02h2"), Some(&b"h2"[..]));
        assert_eq!(select_alpn(&ours, b"\x08http/1.1"), Some(&b"http/1.1"[..]));
        assert_eq!(select_alpn(&ours, b"\x03foo"), None);
        // A truncated list yields what is whole and never reads past the end.
        assert_eq!(select_alpn(&ours, b"\x02h"), None);
        assert_eq!(select_alpn(&ours, b""), None);
    }
}
