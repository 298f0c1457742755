//! Server contexts: certificate chain + key (PEM, optionally encrypted) and TLS settings into a
//! BoringSSL `SslContext`.

use std::path::Path;

use boring::{
    nid::Nid,
    pkey::{Id, PKey, Private},
    ssl::{ExtensionType, SelectCertError},
    ssl::{SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslVersion},
    x509::X509,
};

use crate::{
    config::{CertificateSpec, ServeConfig, TlsSettings, TlsVersion},
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
            certificates: vec![CertificateSpec {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
                passphrase: None,
            }],
            ..ServeConfig::default().tls
        };
        Self::from_settings(&settings)
    }

    /// Loads every certificate/key pair of `settings` (decrypting keys with their passphrase)
    /// and builds the context. With several pairs, each client gets the first pair whose key
    /// type it can verify (from its signature_algorithms, or its cipher suites for TLS 1.2
    /// clients that send none).
    pub fn from_settings(settings: &TlsSettings) -> Result<Self, TlsError> {
        let mut pairs = Vec::with_capacity(settings.certificates.len());
        for spec in &settings.certificates {
            let (chain, key) = load_pair(spec)?;
            let kind = KeyKind::of(&key).ok_or_else(|| {
                TlsError::Invalid(format!(
                    "{}: unsupported key type (RSA, ECDSA P-256/P-384/P-521 or Ed25519)",
                    spec.key.display()
                ))
            })?;
            pairs.push((kind, chain, key));
        }
        let Some(((_, chain, key), others)) = pairs.split_first() else {
            return Err(TlsError::Invalid("no certificate configured".into()));
        };
        let mut alternatives = Vec::with_capacity(others.len());
        for (kind, chain, key) in others {
            alternatives.push((*kind, Self::builder(chain, key, settings)?.build()));
        }
        let mut builder = Self::builder(chain, key, settings)?;
        if !alternatives.is_empty() {
            let kinds: Vec<KeyKind> = pairs.iter().map(|(kind, _, _)| *kind).collect();
            builder.set_select_certificate_callback(move |mut hello| {
                let sigalgs = hello.get_extension(ExtensionType::SIGNATURE_ALGORITHMS);
                let choice = choose_certificate(&kinds, sigalgs, hello.ciphers());
                if choice > 0 {
                    let context = &alternatives[choice - 1].1;
                    hello
                        .ssl_mut()
                        .set_ssl_context(context)
                        .map_err(|_| SelectCertError::ERROR)?;
                }
                Ok(())
            });
        }
        Ok(Self {
            context: builder.build(),
        })
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
        Ok(Self {
            context: Self::builder(chain, key, settings)?.build(),
        })
    }

    fn builder(
        chain: &[X509],
        key: &PKey<Private>,
        settings: &TlsSettings,
    ) -> Result<SslContextBuilder, TlsError> {
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
        Ok(builder)
    }

    /// A fresh per-connection `Ssl` from this context.
    pub fn new_session(&self) -> Result<boring::ssl::Ssl, TlsError> {
        boring::ssl::Ssl::new(&self.context).map_err(TlsError::Setup)
    }
}

/// Reads one chain and its key, decrypting the key with its passphrase.
fn load_pair(spec: &CertificateSpec) -> Result<(Vec<X509>, PKey<Private>), TlsError> {
    let read = |what, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::ReadFile {
            what,
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read("certificate", &spec.cert)?;
    let key_pem = read("private key", &spec.key)?;
    let chain = X509::stack_from_pem(&cert_pem).map_err(TlsError::config("parsing certificate"))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: spec.cert.clone(),
        });
    }
    let key = match &spec.passphrase {
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
    Ok((chain, key))
}

/// The kind of a certificate's key, as far as choosing by client support goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    EcdsaP256,
    EcdsaP384,
    EcdsaP521,
    Ed25519,
}

impl KeyKind {
    fn of(key: &PKey<Private>) -> Option<Self> {
        match key.id() {
            Id::RSA => Some(KeyKind::Rsa),
            Id::ED25519 => Some(KeyKind::Ed25519),
            Id::EC => match key.ec_key().ok()?.group().curve_name()? {
                Nid::X9_62_PRIME256V1 => Some(KeyKind::EcdsaP256),
                Nid::SECP384R1 => Some(KeyKind::EcdsaP384),
                Nid::SECP521R1 => Some(KeyKind::EcdsaP521),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether a TLS SignatureScheme can be made with this kind of key.
    fn signs(self, scheme: u16) -> bool {
        match self {
            // rsa_pkcs1_*, rsa_pss_rsae_*
            KeyKind::Rsa => matches!(scheme, 0x0201 | 0x0401 | 0x0501 | 0x0601 | 0x0804..=0x0806),
            // TLS 1.2 names only the hash (0x0403 …); TLS 1.3 ties each to its curve.
            KeyKind::EcdsaP256 => scheme == 0x0403,
            KeyKind::EcdsaP384 => scheme == 0x0503,
            KeyKind::EcdsaP521 => scheme == 0x0603,
            KeyKind::Ed25519 => scheme == 0x0807,
        }
    }

    fn is_ecdsa(self) -> bool {
        matches!(
            self,
            KeyKind::EcdsaP256 | KeyKind::EcdsaP384 | KeyKind::EcdsaP521
        )
    }
}

/// Which of `kinds` (in order of preference) to present to a client, from its
/// signature_algorithms extension (`sigalgs`: a 2-byte length then 2-byte schemes) or, when it
/// sent none (TLS 1.2), from its cipher suites (ECDHE-ECDSA suites mean ECDSA is fine). Falls
/// back to the first pair.
pub fn choose_certificate(kinds: &[KeyKind], sigalgs: Option<&[u8]>, ciphers: &[u8]) -> usize {
    if let Some(list) = sigalgs.and_then(|ext| ext.get(2..)) {
        let schemes: Vec<u16> = list
            .chunks_exact(2)
            .map(|p| u16::from_be_bytes([p[0], p[1]]))
            .collect();
        return kinds
            .iter()
            .position(|kind| schemes.iter().any(|&s| kind.signs(s)))
            .unwrap_or(0);
    }
    const ECDSA_SUITES: [u16; 8] = [
        0xc02b, 0xc02c, 0xcca9, 0xc009, 0xc00a, 0xc023, 0xc024, 0xc0ad,
    ];
    let ecdsa_ok = ciphers
        .chunks_exact(2)
        .any(|p| ECDSA_SUITES.contains(&u16::from_be_bytes([p[0], p[1]])));
    kinds
        .iter()
        .position(|kind| {
            if kind.is_ecdsa() {
                ecdsa_ok
            } else {
                *kind == KeyKind::Rsa
            }
        })
        .unwrap_or(0)
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
    fn certificate_choice() {
        use KeyKind::*;
        let both = [EcdsaP256, Rsa];
        let ext = |schemes: &[u16]| {
            let mut e = ((schemes.len() * 2) as u16).to_be_bytes().to_vec();
            for s in schemes {
                e.extend_from_slice(&s.to_be_bytes());
            }
            e
        };
        assert_eq!(
            choose_certificate(&both, Some(&ext(&[0x0403, 0x0804])), &[]),
            0
        );
        assert_eq!(
            choose_certificate(&both, Some(&ext(&[0x0804, 0x0401])), &[]),
            1
        );
        assert_eq!(
            choose_certificate(&[Rsa, EcdsaP256], Some(&ext(&[0x0403, 0x0804])), &[]),
            0
        );
        assert_eq!(
            choose_certificate(&[EcdsaP384, Rsa], Some(&ext(&[0x0403, 0x0804])), &[]),
            1
        );
        assert_eq!(
            choose_certificate(&both, Some(&ext(&[0x0807])), &[]),
            0,
            "nothing fits: first"
        );
        // TLS 1.2 without signature_algorithms: by cipher suites.
        assert_eq!(choose_certificate(&both, None, &[0xc0, 0x2f]), 1);
        assert_eq!(
            choose_certificate(&both, None, &[0xc0, 0x2f, 0xc0, 0x2b]),
            0
        );
        // Truncated extension: no panic; treated as absent (no ECDSA suite offered: RSA).
        assert_eq!(choose_certificate(&both, Some(&[0x00]), &[]), 1);
        assert_eq!(choose_certificate(&both, Some(&[0x00, 0x02, 0x08]), &[]), 0);
    }

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
