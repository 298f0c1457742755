//! Self-signed certificates: the demo default of `fastedge serve` and test fixtures.

use std::{fs, io::Write, os::unix::fs::OpenOptionsExt, path::Path};

use boring::{
    asn1::Asn1Time,
    bn::{BigNum, MsbOption},
    ec::{EcGroup, EcKey},
    hash::MessageDigest,
    nid::Nid,
    pkey::{PKey, Private},
    x509::{
        extension::{BasicConstraints, ExtendedKeyUsage, SubjectAlternativeName},
        X509Name, X509,
    },
};

use crate::TlsError;

/// A certificate with its private key.
pub struct SelfSigned {
    /// The certificate (X.509 v3, with subject alternative names).
    pub cert: X509,
    /// Its private key.
    pub key: PKey<Private>,
}

impl std::fmt::Debug for SelfSigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfSigned")
            .field("subject", &self.cert.subject_name())
            .finish_non_exhaustive()
    }
}

impl SelfSigned {
    /// An ECDSA P-256 certificate for `names` (DNS names or IP addresses), valid for `days`.
    pub fn generate(names: &[&str], days: u32) -> Result<Self, TlsError> {
        let c = TlsError::config;
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(c("EC group"))?;
        let key = PKey::from_ec_key(EcKey::generate(&group).map_err(c("generating key"))?)
            .map_err(c("wrapping key"))?;
        let mut name = X509Name::builder().map_err(c("subject"))?;
        let common_name = names.first().copied().unwrap_or("fastedge");
        name.append_entry_by_nid(Nid::COMMONNAME, common_name)
            .map_err(c("subject CN"))?;
        let name = name.build();
        let mut builder = X509::builder().map_err(c("certificate builder"))?;
        builder.set_version(2).map_err(c("certificate version"))?;
        let mut serial = BigNum::new().map_err(c("serial"))?;
        serial
            .rand(127, MsbOption::MAYBE_ZERO, false)
            .map_err(c("serial"))?;
        let serial = serial.to_asn1_integer().map_err(c("serial"))?;
        builder.set_serial_number(&serial).map_err(c("serial"))?;
        builder.set_subject_name(&name).map_err(c("subject"))?;
        builder.set_issuer_name(&name).map_err(c("issuer"))?;
        builder.set_pubkey(&key).map_err(c("public key"))?;
        let not_before = Asn1Time::days_from_now(0).map_err(c("not before"))?;
        builder
            .set_not_before(&not_before)
            .map_err(c("not before"))?;
        let not_after = Asn1Time::days_from_now(days).map_err(c("not after"))?;
        builder.set_not_after(&not_after).map_err(c("not after"))?;
        let mut san = SubjectAlternativeName::new();
        for entry in names {
            if entry.parse::<std::net::IpAddr>().is_ok() {
                san.ip(entry);
            } else {
                san.dns(entry);
            }
        }
        let san = san
            .build(&builder.x509v3_context(None, None))
            .map_err(c("subjectAltName"))?;
        builder
            .append_extension(&san)
            .map_err(c("subjectAltName"))?;
        let basic = BasicConstraints::new()
            .critical()
            .build()
            .map_err(c("basicConstraints"))?;
        builder
            .append_extension(&basic)
            .map_err(c("basicConstraints"))?;
        let usage = ExtendedKeyUsage::new()
            .server_auth()
            .build()
            .map_err(c("extendedKeyUsage"))?;
        builder
            .append_extension(&usage)
            .map_err(c("extendedKeyUsage"))?;
        builder
            .sign(&key, MessageDigest::sha256())
            .map_err(c("signing certificate"))?;
        Ok(Self {
            cert: builder.build(),
            key,
        })
    }

    /// Writes the certificate (0644) and the key (0600) as PEM files.
    pub fn write_pem(&self, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
        let cert = self
            .cert
            .to_pem()
            .map_err(TlsError::config("encoding certificate"))?;
        let key = self
            .key
            .private_key_to_pem_pkcs8()
            .map_err(TlsError::config("encoding key"))?;
        write_file("private key", key_path, &key, 0o600)?;
        write_file("certificate", cert_path, &cert, 0o644)
    }
}

/// Writes through a temporary file and a rename, so a crash never leaves half a file behind.
fn write_file(what: &'static str, path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let err = |source| TlsError::WriteFile {
        what,
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}
