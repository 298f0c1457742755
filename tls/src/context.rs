//! Server contexts: certificate chains + keys (PEM, optionally encrypted), SNI contexts, client
//! certificate policy, session resumption and TLS settings into BoringSSL `SslContext`s.
//!
//! One `SslContext` is built per certificate/key pair. Connections start on the default
//! context's first pair (which also holds the session cache and the ticket keys); BoringSSL's
//! select-certificate callback, run once on each ClientHello, matches the server name against
//! the SNI contexts ([`fastedge_wire::sni::NameTable`]), picks the pair the client can verify
//! within the matched context, switches the connection to it, and records the choice on the
//! connection ([`ServerContext::hello_choice`]) so the proxy can pick that context's backends.

use std::{
    ffi::CString,
    path::Path,
    sync::{Arc, OnceLock},
};

use boring::{
    ex_data::Index,
    pkey::{PKey, Private},
    ssl::{
        AsyncSelectCertError, BoxSelectCertFinish, BoxSelectCertFuture, ClientHello, ExtensionType,
        NameType, SniError, Ssl, SslAlert, SslContext, SslRef, SslVerifyMode,
    },
    x509::X509,
};
use fastedge_wire::sni::NameTable;

use crate::{
    certset::{
        context_builder, set_session_cache, verify_mode, CertSet, KeyKind, PairKey,
        DEFAULT_TLS12_CIPHERS,
    },
    config::{CertificateSpec, ServeConfig, Stapling, TlsSettings, TlsVersion},
    dynsni::{DynamicSni, Lookup},
    exdata::set_refusal,
    ffi,
    ocsp::{Job, OcspCert, Source, StapleSlot},
    pem::{describe_pem, read_pem},
    tickets::TicketKeys,
    TlsError,
};

/// A server-side TLS context: what every accepted connection on a listener starts from.
#[derive(Clone)]
pub struct ServerContext {
    context: SslContext,
    tickets: Option<Arc<TicketKeys>>,
    early_data: Option<usize>,
}

impl std::fmt::Debug for ServerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerContext").finish_non_exhaustive()
    }
}

/// What the ClientHello decided for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloChoice {
    /// Index of the matched SNI context in `TlsSettings::contexts`; `None`: the default one
    /// (or a dynamic one).
    pub context: Option<usize>,
    /// A context from the dynamic SNI service serves the connection.
    pub dynamic: bool,
    /// Whether a client certificate is asked for (the verify mode the chosen context set).
    /// Kept here because the connection's configuration is freed after the handshake.
    pub cert_requested: bool,
}

/// A select-certificate future that is ready at once.
fn ready_finish(
    finish: impl FnOnce(ClientHello<'_>) -> Result<(), AsyncSelectCertError> + Send + 'static,
) -> BoxSelectCertFuture {
    Box::pin(async move {
        let finish: BoxSelectCertFinish = Box::new(finish);
        Ok(finish)
    })
}

/// Serves the connection from `set` (the context the ClientHello matched): picks the pair the
/// client can verify, switches to it (`switch`: unless it is the starting one), staples, and
/// installs what the switch does not carry over.
fn select(
    mut hello: ClientHello<'_>,
    set: &CertSet,
    mut choice: HelloChoice,
    switch: bool,
    tls13_allowed: bool,
) -> Result<(), AsyncSelectCertError> {
    let pair = if set.kinds.len() > 1 {
        let sigalgs = hello.get_extension(ExtensionType::SIGNATURE_ALGORITHMS);
        let tls13 =
            tls13_allowed && offers_tls13(hello.get_extension(ExtensionType::SUPPORTED_VERSIONS));
        choose_certificate(&set.kinds, sigalgs, hello.ciphers(), tls13)
    } else {
        0
    };
    let wants_staple = hello.get_extension(ExtensionType::STATUS_REQUEST).is_some();
    let ssl = hello.ssl_mut();
    if switch || pair > 0 {
        ssl.set_ssl_context(&set.contexts[pair])
            .map_err(|_| AsyncSelectCertError)?;
    }
    if wants_staple {
        if let Some(staple) = set.staples.get(pair).and_then(|s| s.staple.load_full()) {
            // A staple that cannot be set is left out; the handshake goes on.
            let _ = ssl.set_ocsp_status(&staple);
        }
    }
    if let Some(list) = &set.ciphers {
        if !ffi::set_cipher_list(ssl, list) {
            return Err(AsyncSelectCertError);
        }
    }
    if let Some(mode) = set.verify {
        ssl.set_verify(mode);
    }
    choice.cert_requested = ssl.verify_mode() != SslVerifyMode::NONE;
    ssl.set_ex_data(hello_index(), choice);
    Ok(())
}

/// Serves the connection from a dynamic SNI answer, or the default context when there is none.
fn select_dynamic(
    hello: ClientHello<'_>,
    sets: &[CertSet],
    found: Option<&CertSet>,
    tls13_allowed: bool,
) -> Result<(), AsyncSelectCertError> {
    match found {
        Some(set) => {
            let choice = HelloChoice {
                context: None,
                dynamic: true,
                cert_requested: false,
            };
            select(hello, set, choice, true, tls13_allowed)
        }
        None => {
            let choice = HelloChoice {
                context: None,
                dynamic: false,
                cert_requested: false,
            };
            select(hello, &sets[0], choice, false, tls13_allowed)
        }
    }
}

fn hello_index() -> Index<Ssl, HelloChoice> {
    static INDEX: OnceLock<Index<Ssl, HelloChoice>> = OnceLock::new();
    *INDEX.get_or_init(|| {
        Ssl::new_ex_index().unwrap_or_else(|e| panic!("BoringSSL ex_data index: {e}"))
    })
}

/// The settings of one context, resolved: the default context's from [`TlsSettings`], an SNI
/// context's from its table with the rest inherited.
fn sni_view(settings: &TlsSettings, index: usize) -> TlsSettings {
    let c = &settings.contexts[index];
    TlsSettings {
        certificates: c.certificates.clone(),
        ciphers: c.ciphers.clone(),
        alpn: c.alpn.clone(),
        client_auth: c.client_auth.clone(),
        contexts: Vec::new(),
        ..settings.clone()
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
                key_server: None,
                ocsp_staple: None,
            }],
            ..ServeConfig::default().tls
        };
        Self::from_settings(&settings)
    }

    /// Loads every certificate/key pair of `settings` (decrypting keys with their passphrase),
    /// of the default context and of each SNI context, and builds the contexts. Within a
    /// context, each client gets the first pair whose key type it can verify (from its
    /// signature_algorithms, or its cipher suites for TLS 1.2 clients that send none).
    pub fn from_settings(settings: &TlsSettings) -> Result<Self, TlsError> {
        Self::from_settings_keeping(settings, None)
    }

    /// As [`from_settings`](Self::from_settings), for a reload: the random session ticket keys
    /// of `previous` are kept when the resumption settings allow, so outstanding tickets stay
    /// valid.
    pub fn from_settings_keeping(
        settings: &TlsSettings,
        previous: Option<&ServerContext>,
    ) -> Result<Self, TlsError> {
        let r = &settings.resumption;
        let tickets = if r.tickets {
            match previous.and_then(|p| p.tickets.as_ref()) {
                Some(keys) if keys.keep_for(&r.ticket_keys, r.ticket_rotate, r.ticket_previous) => {
                    Some(keys.clone())
                }
                _ => Some(Arc::new(TicketKeys::new(
                    &r.ticket_keys,
                    r.ticket_rotate,
                    r.ticket_previous,
                )?)),
            }
        } else {
            None
        };
        // The names were checked when the configuration was validated.
        let mut table = NameTable::new();
        for (i, c) in settings.contexts.iter().enumerate() {
            for name in &c.names {
                table.add(name, i);
            }
        }

        let mut sets = Vec::with_capacity(settings.contexts.len() + 1);
        let mut first = None;
        let mut jobs = Vec::new();
        for index in std::iter::once(None).chain((0..settings.contexts.len()).map(Some)) {
            let view = match index {
                None => settings.clone(),
                Some(i) => sni_view(settings, i),
            };
            let mut kinds = Vec::new();
            let mut contexts = Vec::new();
            let mut staples = Vec::new();
            for spec in &view.certificates {
                let (chain, key) = load_pair(spec)?;
                let slot = Arc::new(StapleSlot::default());
                if let Some(job) = stapling_job(spec, &chain, &settings.stapling, &slot)? {
                    jobs.push(job);
                }
                staples.push(slot);
                let public = chain[0]
                    .public_key()
                    .map_err(TlsError::config("reading the certificate's public key"))?;
                let kind = KeyKind::of(&public).ok_or_else(|| {
                    TlsError::Invalid(format!(
                        "{}: unsupported key type (RSA, ECDSA P-256/P-384/P-521 or Ed25519)",
                        describe_pem(&spec.key)
                    ))
                })?;
                if index.is_none() && first.is_none() {
                    first = Some(context_builder(&chain, &key, &view, tickets.as_ref())?);
                }
                kinds.push(kind);
                contexts.push(context_builder(&chain, &key, &view, tickets.as_ref())?.build());
            }
            let (ciphers, verify) = match index {
                None => (None, None),
                Some(_) => {
                    let ciphers = if view.ciphers == settings.ciphers {
                        None
                    } else {
                        let list = view
                            .ciphers
                            .clone()
                            .unwrap_or_else(|| DEFAULT_TLS12_CIPHERS.into());
                        Some(CString::new(list).map_err(|_| {
                            TlsError::Invalid("ciphers: a NUL byte in the list".into())
                        })?)
                    };
                    (ciphers, Some(verify_mode(view.client_auth.verify)))
                }
            };
            sets.push(CertSet {
                kinds,
                contexts,
                staples,
                ciphers,
                verify,
            });
        }
        let Some(mut builder) = first else {
            return Err(TlsError::Invalid("no certificate configured".into()));
        };
        let dynamic = match &settings.dynamic_sni {
            Some(dynamic) => Some(Arc::new(DynamicSni::new(
                dynamic.clone(),
                TlsSettings {
                    contexts: Vec::new(),
                    ..settings.clone()
                },
                tickets.clone(),
            )?)),
            None => None,
        };
        let simple = sets.len() == 1 && sets[0].kinds.len() == 1 && dynamic.is_none();
        let tls13_allowed = settings.max_version == TlsVersion::Tls13;
        let sets = Arc::new(sets);
        builder.set_async_select_certificate_callback(move |hello| {
            let name = hello.servername(NameType::HOST_NAME);
            let matched = if simple {
                None
            } else {
                name.and_then(|name| table.lookup(name))
            };
            let sets = sets.clone();
            if let (None, Some(dynamic), Some(name)) = (matched, &dynamic, name) {
                let name = name.to_ascii_lowercase();
                match dynamic.lookup(&name) {
                    Lookup::Ready(found) => {
                        return Ok(ready_finish(move |hello| {
                            select_dynamic(hello, &sets, found.as_deref(), tls13_allowed)
                        }))
                    }
                    Lookup::Wait(waiting) => {
                        let dynamic = dynamic.clone();
                        let fetch_id = waiting.fetch_id();
                        return Ok(Box::pin(async move {
                            let outcome = waiting.await;
                            let finish: BoxSelectCertFinish = Box::new(move |hello| {
                                let found = dynamic.settle(&name, fetch_id, outcome);
                                select_dynamic(hello, &sets, found.as_deref(), tls13_allowed)
                            });
                            Ok(finish)
                        }));
                    }
                }
            }
            Ok(ready_finish(move |hello| {
                let index = matched.map_or(0, |i| i + 1);
                let choice = HelloChoice {
                    context: matched,
                    dynamic: false,
                    cert_requested: false,
                };
                select(hello, &sets[index], choice, index > 0, tls13_allowed)
            }))
        });
        if settings.sni_strict {
            // Runs after the callback above, on the starting context even when the connection
            // switched: refuses a name that matched no SNI context.
            builder.set_servername_callback(|ssl, alert| {
                let named = ssl.servername(NameType::HOST_NAME).is_some();
                let matched = ssl
                    .ex_data(hello_index())
                    .is_some_and(|h| h.context.is_some() || h.dynamic);
                if named && !matched {
                    set_refusal(
                        ssl,
                        "server name matches no context (sni_strict = true): refused with \
                         unrecognized_name"
                            .to_owned(),
                    );
                    *alert = SslAlert::UNRECOGNIZED_NAME;
                    return Err(SniError::ALERT_FATAL);
                }
                Ok(())
            });
        }
        set_session_cache(&mut builder, r)?;
        // Staple files are read now, so the first handshakes staple them; the rest is fetched
        // by the refresher thread.
        for job in &mut jobs {
            if let (crate::ocsp::Source::File(_), Some(slot)) = (&job.source, job.slot.upgrade()) {
                crate::ocsp::run_job(job, &slot, settings.stapling.timeout);
            }
        }
        crate::ocsp::start_refresher(jobs, settings.stapling.timeout);
        Ok(Self {
            context: builder.build(),
            tickets,
            early_data: settings.early_data,
        })
    }

    /// What the ClientHello of `ssl` decided; `None` until BoringSSL has processed it.
    pub fn hello_choice(ssl: &SslRef) -> Option<HelloChoice> {
        ssl.ex_data(hello_index()).copied()
    }

    /// Bytes of early data passed on before the handshake completes; `None`: 0-RTT is off.
    pub fn early_data_cap(&self) -> Option<usize> {
        self.early_data
    }

    /// The session ticket key ring, when tickets are on.
    pub fn ticket_keys(&self) -> Option<&Arc<TicketKeys>> {
        self.tickets.as_ref()
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

    /// Builds a context from a parsed chain (leaf first), its key, and `settings` (whose
    /// certificates and SNI contexts are ignored).
    pub fn build(
        chain: &[X509],
        key: &PKey<Private>,
        settings: &TlsSettings,
    ) -> Result<Self, TlsError> {
        let r = &settings.resumption;
        let tickets = if r.tickets {
            Some(Arc::new(TicketKeys::new(
                &r.ticket_keys,
                r.ticket_rotate,
                r.ticket_previous,
            )?))
        } else {
            None
        };
        let key = PairKey::Local(key.clone());
        let mut builder = context_builder(chain, &key, settings, tickets.as_ref())?;
        set_session_cache(&mut builder, r)?;
        Ok(Self {
            context: builder.build(),
            tickets,
            early_data: settings.early_data,
        })
    }

    /// A fresh per-connection `Ssl` from this context.
    /// Its configuration is freed when the handshake completes (read what you need of it, such
    /// as the verify mode, before).
    pub fn new_session(&self) -> Result<boring::ssl::Ssl, TlsError> {
        let mut ssl = boring::ssl::Ssl::new(&self.context).map_err(TlsError::Setup)?;
        ffi::shed_handshake_config(&mut ssl);
        Ok(ssl)
    }
}

/// The stapling job of one certificate, if it has a staple source.
fn stapling_job(
    spec: &CertificateSpec,
    chain: &[X509],
    stapling: &Stapling,
    slot: &Arc<StapleSlot>,
) -> Result<Option<Job>, TlsError> {
    let name = describe_pem(&spec.cert);
    let Some(cert) = OcspCert::new(name.clone(), chain) else {
        return Ok(None);
    };
    let source = if let Some(path) = &spec.ocsp_staple {
        if !path.is_file() {
            return Err(TlsError::Invalid(format!(
                "ocsp_staple {}: no such file",
                path.display()
            )));
        }
        Source::File(path.clone())
    } else if let Some(url) = &stapling.url {
        Source::Bud(url.clone())
    } else if let (true, Some(url)) = (stapling.fetch, &cert.responder) {
        if cert.issuer.is_none() {
            tracing::warn!(
                certificate = %name,
                "the certificate names an OCSP responder, but its file lacks the issuer \
                 certificate after the leaf: no stapling"
            );
            return Ok(None);
        }
        Source::Responder(url.clone())
    } else {
        return Ok(None);
    };
    Ok(Some(Job {
        slot: Arc::downgrade(slot),
        cert,
        source,
        due: std::time::Instant::now(),
        good_until: None,
        stamp: None,
    }))
}

/// Reads one chain and its key, decrypting the key with its passphrase.
fn load_pair(spec: &CertificateSpec) -> Result<(Vec<X509>, PairKey), TlsError> {
    let cert_pem = read_pem("certificate", &spec.cert)?;
    let chain = X509::stack_from_pem(&cert_pem).map_err(TlsError::config("parsing certificate"))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: describe_pem(&spec.cert).into(),
        });
    }
    if let Some(server) = &spec.key_server {
        return Ok((chain, PairKey::Keyless(server.clone())));
    }
    let key_pem = read_pem("private key", &spec.key)?;
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
    Ok((chain, PairKey::Local(key)))
}

/// Which of `kinds` (in order of preference) to present to a client: the first whose key can
/// make a signature the client accepts (its signature_algorithms extension, `sigalgs`: a 2-byte
/// length then 2-byte schemes) and, unless the connection will be TLS 1.3 (`tls13`), that an
/// offered cipher suite can use (ECDHE-ECDSA suites for ECDSA and Ed25519 keys, RSA suites for
/// RSA keys). Falls back to the first pair.
pub fn choose_certificate(
    kinds: &[KeyKind],
    sigalgs: Option<&[u8]>,
    ciphers: &[u8],
    tls13: bool,
) -> usize {
    let schemes: Option<Vec<u16>> = sigalgs.and_then(|ext| ext.get(2..)).map(|list| {
        list.chunks_exact(2)
            .map(|p| u16::from_be_bytes([p[0], p[1]]))
            .collect()
    });
    const ECDSA_SUITES: [u16; 8] = [
        0xc02b, 0xc02c, 0xcca9, 0xc009, 0xc00a, 0xc023, 0xc024, 0xc0ad,
    ];
    const RSA_SUITES: [u16; 13] = [
        0xc02f, 0xc030, 0xcca8, 0xc013, 0xc014, 0xc027, 0xc028, 0x009c, 0x009d, 0x002f, 0x0035,
        0x003c, 0x003d,
    ];
    let offered = |suites: &[u16]| {
        ciphers
            .chunks_exact(2)
            .any(|p| suites.contains(&u16::from_be_bytes([p[0], p[1]])))
    };
    let (ecdsa_suite, rsa_suite) = (offered(&ECDSA_SUITES), offered(&RSA_SUITES));
    kinds
        .iter()
        .position(|&kind| {
            let signs = match &schemes {
                Some(schemes) => schemes.iter().any(|&s| kind.signs(s, tls13)),
                None => true,
            };
            let suite = tls13
                || match kind {
                    KeyKind::Rsa => rsa_suite,
                    _ => ecdsa_suite,
                };
            signs && suite
        })
        .unwrap_or(0)
}

/// Whether a ClientHello's supported_versions extension (a 1-byte length then 2-byte versions)
/// offers TLS 1.3.
fn offers_tls13(supported_versions: Option<&[u8]>) -> bool {
    supported_versions
        .and_then(|ext| ext.get(1..))
        .is_some_and(|list| list.chunks_exact(2).any(|v| v == [0x03, 0x04]))
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
        // TLS 1.3: by signature algorithms alone.
        let v13 = |kinds: &[KeyKind], schemes: &[u16]| {
            choose_certificate(kinds, Some(&ext(schemes)), &[0x13, 0x01], true)
        };
        assert_eq!(v13(&both, &[0x0403, 0x0804]), 0);
        assert_eq!(v13(&both, &[0x0804, 0x0401]), 1);
        assert_eq!(v13(&[Rsa, EcdsaP256], &[0x0403, 0x0804]), 0);
        assert_eq!(v13(&[EcdsaP384, Rsa], &[0x0403, 0x0804]), 1);
        assert_eq!(v13(&both, &[0x0807]), 0, "nothing fits: first");
        // TLS 1.2: the cipher suites must fit the key too.
        let rsa_suite = [0xc0, 0x2f];
        let ecdsa_suite = [0xc0, 0x2b];
        let sigalgs = ext(&[0x0403, 0x0401]);
        assert_eq!(
            choose_certificate(&both, Some(&sigalgs), &rsa_suite, false),
            1
        );
        assert_eq!(
            choose_certificate(&both, Some(&sigalgs), &ecdsa_suite, false),
            0
        );
        assert_eq!(choose_certificate(&both, None, &rsa_suite, false), 1);
        assert_eq!(
            choose_certificate(&both, None, &[0xc0, 0x2f, 0xc0, 0x2b], false),
            0
        );
        // Truncated extension: no panic; treated as absent.
        assert_eq!(
            choose_certificate(&both, Some(&[0x00]), &rsa_suite, false),
            1
        );
        assert_eq!(
            choose_certificate(&both, Some(&[0x00, 0x02, 0x08]), &[], true),
            0
        );
        // TLS 1.2 ecdsa_secp384r1_sha384 is "ECDSA with SHA-384", any curve: the P-256 pair.
        let p384_hash_only = ext(&[0x0503, 0x0401]);
        assert_eq!(
            choose_certificate(&both, Some(&p384_hash_only), &ecdsa_suite, false),
            0
        );
        assert_eq!(
            choose_certificate(&both, Some(&p384_hash_only), &[0x13, 0x01], true),
            1,
            "TLS 1.3 ties the scheme to P-384: the RSA pair"
        );
        assert!(offers_tls13(Some(&[4, 0x03, 0x04, 0x03, 0x03])));
        assert!(!offers_tls13(Some(&[2, 0x03, 0x03])));
        assert!(!offers_tls13(Some(&[])));
        assert!(!offers_tls13(None));
    }
}
