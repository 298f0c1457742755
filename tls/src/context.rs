//! Server contexts: certificate chain + key (PEM, optionally encrypted) and TLS settings into a
//! BoringSSL `SslContext`.

use std::path::Path;

use boring::{
    pkey::{PKey, Private},
    ssl::{SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslVersion},
    x509::X509,
};

use crate::{
    config::{ServeConfig, TlsSettings, TlsVersion},
    TlsError,
};

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
    /// Loads a PEM certificate chain (leaf first) and its PEM private key with default settings
    /// and the ALPN list `alpn` (most preferred first; empty: no ALPN).
    pub fn from_pem_files(
        cert_path: &Path,
        key_path: &Path,
        alpn: &[&str],
    ) -> Result<Self, TlsError> {
        let settings = TlsSettings {
            alpn: alpn.iter().map(|p| (*p).to_owned()).collect(),
            ..ServeConfig::default().tls
        };
        Self::load(&settings, cert_path, key_path)
    }

    /// Loads the certificate chain and key (decrypting it with the configured passphrase) and
    /// builds a context with `settings`.
    pub fn load(
        settings: &TlsSettings,
        cert_path: &Path,
        key_path: &Path,
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
        let key = match &settings.passphrase {
            None => PKey::private_key_from_pem(&key_pem).map_err(TlsError::config(
                "parsing private key (encrypted? then configure a passphrase)",
            ))?,
            Some(source) => {
                let passphrase = crate::passphrase::resolve(source)?;
                PKey::private_key_from_pem_passphrase(&key_pem, passphrase.as_bytes()).map_err(
                    TlsError::config("decrypting private key (wrong passphrase?)"),
                )?
            }
        };
        Self::build(&chain, &key, settings)
    }

    /// Builds a context from a parsed chain (leaf first) and key with default settings and the
    /// ALPN list `alpn`.
    pub fn from_parts(
        chain: &[X509],
        key: &PKey<Private>,
        alpn: &[&str],
    ) -> Result<Self, TlsError> {
        let settings = TlsSettings {
            alpn: alpn.iter().map(|p| (*p).to_owned()).collect(),
            ..ServeConfig::default().tls
        };
        Self::build(chain, key, &settings)
    }

    /// Builds a context from a parsed chain (leaf first), its key, and `settings`.
    pub fn build(
        chain: &[X509],
        key: &PKey<Private>,
        settings: &TlsSettings,
    ) -> Result<Self, TlsError> {
        let version = |v: TlsVersion| match v {
            TlsVersion::Tls12 => SslVersion::TLS1_2,
            TlsVersion::Tls13 => SslVersion::TLS1_3,
        };
        let mut builder = SslContextBuilder::new(SslMethod::tls())
            .map_err(TlsError::config("creating TLS context"))?;
        builder
            .set_min_proto_version(Some(version(settings.min_version)))
            .map_err(TlsError::config("setting minimum TLS version"))?;
        builder
            .set_max_proto_version(Some(version(settings.max_version)))
            .map_err(TlsError::config("setting maximum TLS version"))?;
        let mut options = SslOptions::NO_RENEGOTIATION;
        if settings.server_preference {
            options |= SslOptions::CIPHER_SERVER_PREFERENCE;
        }
        builder.set_options(options);
        builder.set_mode(
            SslMode::AUTO_RETRY
                | SslMode::ACCEPT_MOVING_WRITE_BUFFER
                | SslMode::ENABLE_PARTIAL_WRITE,
        );
        if let Some(ciphers) = &settings.ciphers {
            builder.set_cipher_list(ciphers).map_err(TlsError::config(
                "tls.ciphers: no usable cipher in the list",
            ))?;
        }
        set_groups(&mut builder, &settings.groups)?;
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
        if !settings.alpn.is_empty() {
            let ours: Vec<Vec<u8>> = settings
                .alpn
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect();
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

/// Sets the key-exchange groups; a post-quantum group the linked BoringSSL lacks is dropped
/// (with a warning) rather than failing the whole list.
fn set_groups(builder: &mut SslContextBuilder, groups: &[String]) -> Result<(), TlsError> {
    if builder.set_curves_list(&groups.join(":")).is_ok() {
        return Ok(());
    }
    let mut usable = Vec::new();
    for group in groups {
        if builder.set_curves_list(group).is_ok() {
            usable.push(group.as_str());
        } else {
            tracing::warn!(group = %group, "key-exchange group not supported by this BoringSSL; skipped");
        }
    }
    if usable.is_empty() {
        return Err(TlsError::Invalid(format!(
            "tls.groups: none of {groups:?} is supported"
        )));
    }
    builder
        .set_curves_list(&usable.join(":"))
        .map_err(TlsError::config("setting key-exchange groups"))
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
