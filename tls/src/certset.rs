//! Certificate sets: the certificate/key pairs of one context (the default one, an SNI
//! context, or a dynamic SNI answer) built into BoringSSL contexts with the TLS settings
//! (versions, ciphers, groups, ALPN, client certificates, session resumption), and what a
//! connection that switches to the set must get beyond its context.
//!
//! Used by [`crate::context`] (static contexts) and [`crate::dynsni`] (sets made at run time);
//! knows neither.

use std::{ffi::CString, sync::Arc};

use boring::{
    nid::Nid,
    pkey::{Id, PKey, Private},
    ssl::{
        SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslSessionCacheMode,
        SslVerifyMode, SslVersion,
    },
    x509::{store::X509StoreBuilder, verify::X509VerifyFlags, X509Name, X509},
};

use crate::{
    config::{ClientAuth, ClientVerify, Resumption, TlsSettings, TlsVersion},
    ffi,
    ocsp::StapleSlot,
    pem::{describe_pem, read_pem},
    tickets::TicketKeys,
    TlsError,
};

/// TLS 1.2 suites when the configuration names none: Mozilla's "intermediate" profile, AEAD
/// only (ECDHE with AES-GCM or ChaCha20-Poly1305; BoringSSL has no DHE). CBC suites and RSA key
/// exchange are offered only when `ciphers` asks for them. TLS 1.3 suites are not affected.
pub(crate) const DEFAULT_TLS12_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:\
ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

/// The pairs of one context (default or SNI), and what must be set on a connection that
/// switches to it beyond what `SSL_set_SSL_CTX` carries over.
pub(crate) struct CertSet {
    /// The key kind of each pair.
    pub(crate) kinds: Vec<KeyKind>,
    /// One context per pair.
    pub(crate) contexts: Vec<SslContext>,
    /// The OCSP staple of each pair.
    pub(crate) staples: Vec<Arc<StapleSlot>>,
    /// Cipher list to install on the connection (when it differs from the default context's).
    pub(crate) ciphers: Option<CString>,
    /// Client certificate mode to install on the connection.
    pub(crate) verify: Option<SslVerifyMode>,
}

/// A context made from certificate/key pairs handed over at run time (a dynamic SNI answer),
/// with `view`'s settings; `default_ciphers` is the starting context's list.
pub(crate) fn runtime_set(
    pairs: Vec<(Vec<X509>, PKey<Private>)>,
    view: &TlsSettings,
    default_ciphers: &Option<String>,
    tickets: Option<&Arc<TicketKeys>>,
) -> Result<CertSet, TlsError> {
    let mut kinds = Vec::with_capacity(pairs.len());
    let mut contexts = Vec::with_capacity(pairs.len());
    for (chain, key) in pairs {
        let kind = KeyKind::of(&key).ok_or_else(|| {
            TlsError::Invalid(
                "unsupported key type (RSA, ECDSA P-256/P-384/P-521 or Ed25519)".into(),
            )
        })?;
        let key = PairKey::Local(key);
        kinds.push(kind);
        contexts.push(context_builder(&chain, &key, view, tickets)?.build());
    }
    if contexts.is_empty() {
        return Err(TlsError::Invalid("no certificate".into()));
    }
    let ciphers = if &view.ciphers == default_ciphers {
        None
    } else {
        let list = view
            .ciphers
            .clone()
            .unwrap_or_else(|| DEFAULT_TLS12_CIPHERS.into());
        Some(
            CString::new(list)
                .map_err(|_| TlsError::Invalid("ciphers: a NUL byte in the list".into()))?,
        )
    };
    Ok(CertSet {
        kinds,
        contexts,
        staples: Vec::new(),
        ciphers,
        verify: None,
    })
}

/// A BoringSSL context builder for one certificate chain (leaf first) and its key, with
/// `settings` (whose certificates and SNI contexts are ignored) and the process's ticket keys.
pub(crate) fn context_builder(
    chain: &[X509],
    key: &PairKey,
    settings: &TlsSettings,
    tickets: Option<&Arc<TicketKeys>>,
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
    if tickets.is_none() {
        options |= SslOptions::NO_TICKET;
    }
    builder.set_options(options);
    builder.set_mode(
        SslMode::AUTO_RETRY | SslMode::ACCEPT_MOVING_WRITE_BUFFER | SslMode::ENABLE_PARTIAL_WRITE,
    );
    // Equal on contexts with the same client-certificate policy, so a session made under
    // one resumes under another; different otherwise, so that resuming a session from a
    // context that asked for no certificate (or trusted other CAs) cannot get past one
    // that requires it.
    builder
        .set_session_id_context(&session_id_context(&settings.client_auth)?)
        .map_err(TlsError::config("setting the session ID context"))?;
    if let Some(keys) = tickets {
        ffi::set_ticket_keys(&mut builder, keys.clone());
    }
    if settings.early_data.is_some() {
        ffi::set_early_data_enabled(&mut builder, true);
    }
    let ciphers = settings.ciphers.as_deref().unwrap_or(DEFAULT_TLS12_CIPHERS);
    builder.set_cipher_list(ciphers).map_err(TlsError::config(
        "tls.ciphers: no usable cipher in the list",
    ))?;
    set_groups(&mut builder, &settings.groups)?;
    set_client_auth(&mut builder, &settings.client_auth)?;
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
    match key {
        PairKey::Local(key) => {
            builder
                .set_private_key(key)
                .map_err(TlsError::config("installing private key"))?;
            builder.check_private_key().map_err(TlsError::KeyMismatch)?;
        }
        PairKey::Keyless(path) => {
            let spki = leaf
                .public_key()
                .and_then(|k| k.public_key_to_der())
                .map_err(TlsError::config("reading the certificate's public key"))?;
            let key_id = crate::keyless::key_id(&spki).map_err(TlsError::Setup)?;
            builder.set_async_private_key_method(crate::keyless::KeylessKey {
                server: crate::keyless::KeyServer::for_path(path),
                key_id,
            });
        }
    }
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

/// The session ID context of a client-certificate policy: a digest of the mode and of the CA
/// and CRL contents (32 bytes, BoringSSL's limit).
fn session_id_context(auth: &ClientAuth) -> Result<Vec<u8>, TlsError> {
    let mut material = b"fastedge session context v1".to_vec();
    if auth.verify != ClientVerify::None {
        material.push(auth.verify as u8);
        for path in [auth.ca.as_deref(), auth.crl.as_deref()]
            .into_iter()
            .flatten()
        {
            let bytes = read_pem("client CA or CRL", path)?;
            material.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            material.extend_from_slice(&bytes);
        }
    }
    boring::hash::hash(boring::hash::MessageDigest::sha256(), &material)
        .map(|digest| digest.to_vec())
        .map_err(TlsError::Setup)
}

pub(crate) fn verify_mode(verify: ClientVerify) -> SslVerifyMode {
    match verify {
        ClientVerify::None => SslVerifyMode::NONE,
        ClientVerify::Optional => SslVerifyMode::PEER,
        ClientVerify::Required => SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
    }
}

/// Client certificates: the mode, the CA store they must chain to (with CRLs), and the CA
/// names sent in the CertificateRequest.
fn set_client_auth(builder: &mut SslContextBuilder, auth: &ClientAuth) -> Result<(), TlsError> {
    let Some(ca) = auth
        .ca
        .as_deref()
        .filter(|_| auth.verify != ClientVerify::None)
    else {
        return Ok(());
    };
    let cas = X509::stack_from_pem(&read_pem("client CA bundle", ca)?)
        .map_err(TlsError::config("parsing the client CA bundle"))?;
    if cas.is_empty() {
        return Err(TlsError::NoCertificate {
            path: describe_pem(ca).into(),
        });
    }
    let mut store = X509StoreBuilder::new().map_err(TlsError::Setup)?;
    for cert in &cas {
        store
            .add_cert(cert)
            .map_err(TlsError::config("adding a client CA"))?;
    }
    if let Some(crl) = &auth.crl {
        let count = ffi::add_crls(&mut store, &read_pem("client CRL", crl)?)
            .map_err(TlsError::config("parsing the client CRL"))?;
        if count == 0 {
            return Err(TlsError::Invalid(format!(
                "{}: no PEM CRL in the file",
                crl.display()
            )));
        }
        store.set_flags(X509VerifyFlags::CRL_CHECK);
    }
    builder
        .set_verify_cert_store(store.build())
        .map_err(TlsError::config("installing the client CA store"))?;
    let mut names = boring::stack::Stack::new().map_err(TlsError::Setup)?;
    for cert in &cas {
        let name = cert
            .subject_name()
            .to_der()
            .and_then(|der| X509Name::from_der(&der))
            .map_err(TlsError::config("reading client CA names"))?;
        names.push(name).map_err(TlsError::Setup)?;
    }
    builder.set_client_ca_list(names);
    builder.set_verify(verify_mode(auth.verify));
    Ok(())
}

/// The server-side session cache and session lifetime, on the context connections start on.
/// Sets up the session cache of the context that starts handshakes, and the fleet's shared
/// store behind it when there is one.
pub(crate) fn set_session_cache(
    builder: &mut SslContextBuilder,
    r: &Resumption,
) -> Result<(), TlsError> {
    if r.session_cache_size == 0 {
        builder.set_session_cache_mode(SslSessionCacheMode::OFF);
    } else {
        builder.set_session_cache_mode(SslSessionCacheMode::SERVER);
        builder.set_session_cache_size(r.session_cache_size);
    }
    let seconds = u32::try_from(r.session_timeout.as_secs()).unwrap_or(u32::MAX);
    ffi::set_session_timeout(builder, seconds.max(1));
    if let Some(store) = &r.session_store {
        let secrets = crate::tickets::read_fleet_secrets(&store.secret, store.accept.as_deref())?;
        let secrets: Vec<&[u8]> = secrets.iter().map(Vec::as_slice).collect();
        let seal = crate::session_store::SessionSeal::from_secrets(&secrets)?;
        let client = crate::session_store::StoreClient::for_url(&store.url)?;
        crate::session_store::install(
            builder,
            client,
            std::sync::Arc::new(seal),
            store.timeout,
            r.session_timeout,
        );
    }
    Ok(())
}

/// A certificate's private key: here, or held by a key server.
pub(crate) enum PairKey {
    Local(PKey<Private>),
    Keyless(std::path::PathBuf),
}

/// The kind of a certificate's key, as far as choosing by client support goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA (PKCS#1 v1.5 signatures in TLS 1.2, RSA-PSS in both versions).
    Rsa,
    /// ECDSA on P-256.
    EcdsaP256,
    /// ECDSA on P-384.
    EcdsaP384,
    /// ECDSA on P-521.
    EcdsaP521,
    /// Ed25519.
    Ed25519,
}

impl KeyKind {
    pub(crate) fn of<T: boring::pkey::HasParams>(key: &PKey<T>) -> Option<Self> {
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
    pub(crate) fn signs(self, scheme: u16, tls13: bool) -> bool {
        const ECDSA_ANY_CURVE: [u16; 4] = [0x0203, 0x0403, 0x0503, 0x0603];
        match self {
            // rsa_pkcs1_*, rsa_pss_rsae_*
            KeyKind::Rsa => matches!(scheme, 0x0201 | 0x0401 | 0x0501 | 0x0601 | 0x0804..=0x0806),
            // TLS 1.2 names only the hash (any curve signs ecdsa_*_sha384 there); TLS 1.3 ties
            // each scheme to its curve.
            KeyKind::EcdsaP256 | KeyKind::EcdsaP384 | KeyKind::EcdsaP521 if !tls13 => {
                ECDSA_ANY_CURVE.contains(&scheme)
            }
            KeyKind::EcdsaP256 => scheme == 0x0403,
            KeyKind::EcdsaP384 => scheme == 0x0503,
            KeyKind::EcdsaP521 => scheme == 0x0603,
            KeyKind::Ed25519 => scheme == 0x0807,
        }
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
