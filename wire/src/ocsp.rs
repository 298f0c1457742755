//! OCSP (RFC 6960) as far as stapling needs: the certificate fields a request is built from, the
//! request itself, and a parsed view of a response. Hashing and signature checks are the
//! caller's (this crate has no crypto): [`CertId`] takes the hashes, [`BasicResponse`] hands out
//! the signed bytes, the algorithm and the signature.

use crate::der::{self, elements, expect, DerError, Tlv};

/// DER content of the SHA-1 OID (1.3.14.3.2.26), the hash of request CertIDs.
pub const OID_SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
/// DER content of the SHA-256 OID (2.16.840.1.101.3.4.2.1).
pub const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
/// id-pkix-ocsp-basic (1.3.6.1.5.5.7.48.1.1).
const OID_OCSP_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];
/// id-kp-OCSPSigning (1.3.6.1.5.5.7.3.9).
const OID_KP_OCSP_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x09];
/// extKeyUsage (2.5.29.37).
const OID_EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];

/// Signature algorithms of responses, as the caller maps them to a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    /// sha1WithRSAEncryption.
    RsaSha1,
    /// sha256WithRSAEncryption.
    RsaSha256,
    /// sha384WithRSAEncryption.
    RsaSha384,
    /// sha512WithRSAEncryption.
    RsaSha512,
    /// ecdsa-with-SHA1.
    EcdsaSha1,
    /// ecdsa-with-SHA256.
    EcdsaSha256,
    /// ecdsa-with-SHA384.
    EcdsaSha384,
    /// ecdsa-with-SHA512.
    EcdsaSha512,
    /// Ed25519 (no separate digest).
    Ed25519,
}

impl SignatureAlgorithm {
    fn from_oid(oid: &[u8]) -> Option<Self> {
        const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
        const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
        if let Some(&[n]) = oid.strip_prefix(RSA) {
            return match n {
                5 => Some(Self::RsaSha1),
                11 => Some(Self::RsaSha256),
                12 => Some(Self::RsaSha384),
                13 => Some(Self::RsaSha512),
                _ => None,
            };
        }
        match oid.strip_prefix(ECDSA) {
            Some([0x01]) => return Some(Self::EcdsaSha1),
            Some([0x03, 0x02]) => return Some(Self::EcdsaSha256),
            Some([0x03, 0x03]) => return Some(Self::EcdsaSha384),
            Some([0x03, 0x04]) => return Some(Self::EcdsaSha512),
            _ => {}
        }
        (oid == [0x2b, 0x65, 0x70]).then_some(Self::Ed25519)
    }
}

/// The fields of an X.509 certificate that OCSP needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFields<'a> {
    /// Content of the serialNumber INTEGER.
    pub serial: &'a [u8],
    /// The issuer Name, whole DER element.
    pub issuer: &'a [u8],
    /// The subject Name, whole DER element.
    pub subject: &'a [u8],
    /// The subjectPublicKey BIT STRING's bits (without the unused-bits byte).
    pub public_key: &'a [u8],
    /// Whether extKeyUsage lists id-kp-OCSPSigning (a delegated responder).
    pub ocsp_signing: bool,
}

/// Reads the OCSP-relevant fields of a DER certificate.
pub fn cert_fields(cert: &[u8]) -> Result<CertFields<'_>, DerError> {
    let (cert, _) = expect(cert, der::SEQUENCE, "a Certificate")?;
    let (tbs, _) = expect(cert.value, der::SEQUENCE, "a TBSCertificate")?;
    let mut rest = tbs.value;
    let (first, after) = der::read(rest)?;
    if first.tag == der::explicit(0) {
        rest = after; // version
    }
    let (serial, rest) = expect(rest, der::INTEGER, "the serial number")?;
    let (_signature, rest) = expect(rest, der::SEQUENCE, "the signature algorithm")?;
    let (issuer, rest) = expect(rest, der::SEQUENCE, "the issuer")?;
    let (_validity, rest) = expect(rest, der::SEQUENCE, "the validity")?;
    let (subject, rest) = expect(rest, der::SEQUENCE, "the subject")?;
    let (spki, rest) = expect(rest, der::SEQUENCE, "the public key info")?;
    let (_alg, after_alg) = expect(spki.value, der::SEQUENCE, "the key algorithm")?;
    let (bits, _) = expect(after_alg, der::BIT_STRING, "the public key")?;
    let public_key = bits.value.get(1..).ok_or(DerError::Truncated)?;
    let mut ocsp_signing = false;
    for item in elements(rest) {
        let item = item?;
        if item.tag != der::explicit(3) {
            continue;
        }
        let (exts, _) = expect(item.value, der::SEQUENCE, "the extensions")?;
        for ext in elements(exts.value) {
            let ext = ext?;
            let (oid, after) = expect(ext.value, der::OID, "an extension OID")?;
            if oid.value != OID_EXT_KEY_USAGE {
                continue;
            }
            // critical BOOLEAN (optional), then the OCTET STRING holding SEQUENCE OF OID.
            let mut value = after;
            let (next, after_next) = der::read(value)?;
            if next.tag == 0x01 {
                value = after_next;
            }
            let (octets, _) = expect(value, der::OCTET_STRING, "the extension value")?;
            let (usages, _) = expect(octets.value, der::SEQUENCE, "the key usages")?;
            for usage in elements(usages.value) {
                ocsp_signing |= usage?.value == OID_KP_OCSP_SIGNING;
            }
        }
    }
    Ok(CertFields {
        serial: serial.value,
        issuer: issuer.raw,
        subject: subject.raw,
        public_key,
        ocsp_signing,
    })
}

/// A certificate's identity in OCSP: hashes of its issuer's name and key, and its serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertId {
    /// DER content of the hash algorithm's OID ([`OID_SHA1`], [`OID_SHA256`]).
    pub hash_oid: Vec<u8>,
    /// Hash of the issuer's distinguished name (DER), under `hash_oid`.
    pub issuer_name_hash: Vec<u8>,
    /// Hash of the issuer's public key (the BIT STRING's content), under `hash_oid`.
    pub issuer_key_hash: Vec<u8>,
    /// Content of the serial number INTEGER.
    pub serial: Vec<u8>,
}

impl CertId {
    /// Appends the CertID SEQUENCE.
    pub fn encode(&self, out: &mut Vec<u8>) {
        der::nested(der::SEQUENCE, out, |id| {
            der::nested(der::SEQUENCE, id, |alg| {
                der::write(der::OID, &self.hash_oid, alg);
                der::write(der::NULL, &[], alg);
            });
            der::write(der::OCTET_STRING, &self.issuer_name_hash, id);
            der::write(der::OCTET_STRING, &self.issuer_key_hash, id);
            der::write(der::INTEGER, &self.serial, id);
        });
    }

    pub(crate) fn parse(tlv: Tlv<'_>) -> Result<Self, DerError> {
        let (alg, rest) = expect(tlv.value, der::SEQUENCE, "a hash algorithm")?;
        let (oid, _) = expect(alg.value, der::OID, "a hash OID")?;
        let (name, rest) = expect(rest, der::OCTET_STRING, "the issuer name hash")?;
        let (key, rest) = expect(rest, der::OCTET_STRING, "the issuer key hash")?;
        let (serial, _) = expect(rest, der::INTEGER, "the serial number")?;
        Ok(Self {
            hash_oid: oid.value.to_vec(),
            issuer_name_hash: name.value.to_vec(),
            issuer_key_hash: key.value.to_vec(),
            serial: serial.value.to_vec(),
        })
    }
}

/// An OCSPRequest for one certificate, no extensions (so responders can cache it).
pub fn encode_request(id: &CertId) -> Vec<u8> {
    let mut out = Vec::new();
    der::nested(der::SEQUENCE, &mut out, |req| {
        der::nested(der::SEQUENCE, req, |tbs| {
            der::nested(der::SEQUENCE, tbs, |list| {
                der::nested(der::SEQUENCE, list, |one| id.encode(one));
            });
        });
    });
    out
}

/// A certificate's status in one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatus {
    /// Not revoked (as far as the responder knows).
    Good,
    /// Revoked: a staple saying so is never served.
    Revoked,
    /// The responder does not know the certificate.
    Unknown,
}

/// The status of one certificate in a basic response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SingleResponse {
    /// Which certificate this is about.
    pub cert_id: CertId,
    /// Its status.
    pub status: CertStatus,
    /// Seconds since the Unix epoch.
    pub this_update: i64,
    /// Seconds since the Unix epoch after which the answer is stale; `None`: the responder gives no
    /// bound (newer information is always available).
    pub next_update: Option<i64>,
}

/// A successful basic OCSP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicResponse<'a> {
    /// The signed bytes: the whole tbsResponseData element.
    pub signed: &'a [u8],
    /// The signature algorithm, `None` when it is not one of those fastedge verifies.
    pub algorithm: Option<SignatureAlgorithm>,
    /// The signature bits.
    pub signature: &'a [u8],
    /// Certificates the responder included (DER), e.g. a delegated responder's.
    pub certs: Vec<&'a [u8]>,
    /// One entry per certificate the response is about.
    pub responses: Vec<SingleResponse>,
}

/// Why a response is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseError {
    /// The DER structure is malformed.
    Der(DerError),
    /// responseStatus other than successful(0): 1 malformedRequest, 2 internalError,
    /// 3 tryLater, 5 sigRequired, 6 unauthorized.
    Status(u8),
    /// A successful response of a type other than id-pkix-ocsp-basic.
    NotBasic,
}

impl From<DerError> for ResponseError {
    fn from(e: DerError) -> Self {
        ResponseError::Der(e)
    }
}

impl std::fmt::Display for ResponseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseError::Der(e) => e.fmt(f),
            ResponseError::Status(s) => {
                let name = match s {
                    1 => "malformedRequest",
                    2 => "internalError",
                    3 => "tryLater",
                    5 => "sigRequired",
                    6 => "unauthorized",
                    _ => "unknown",
                };
                write!(f, "responder answered {name} ({s})")
            }
            ResponseError::NotBasic => f.write_str("not a basic OCSP response"),
        }
    }
}

impl std::error::Error for ResponseError {}

/// Parses an OCSPResponse (DER).
pub fn parse_response(input: &[u8]) -> Result<BasicResponse<'_>, ResponseError> {
    let (resp, _) = expect(input, der::SEQUENCE, "an OCSPResponse")?;
    let (status, rest) = expect(resp.value, der::ENUMERATED, "the response status")?;
    match status.value {
        [0] => {}
        [s] => return Err(ResponseError::Status(*s)),
        _ => return Err(DerError::Unexpected("a one-byte response status").into()),
    }
    let (bytes, _) = expect(rest, der::explicit(0), "responseBytes")?;
    let (bytes, _) = expect(bytes.value, der::SEQUENCE, "ResponseBytes")?;
    let (kind, rest) = expect(bytes.value, der::OID, "the response type")?;
    if kind.value != OID_OCSP_BASIC {
        return Err(ResponseError::NotBasic);
    }
    let (octets, _) = expect(rest, der::OCTET_STRING, "the response")?;
    let (basic, _) = expect(octets.value, der::SEQUENCE, "a BasicOCSPResponse")?;
    let (tbs, rest) = expect(basic.value, der::SEQUENCE, "tbsResponseData")?;
    let (alg, rest) = expect(rest, der::SEQUENCE, "the signature algorithm")?;
    let (alg_oid, _) = expect(alg.value, der::OID, "a signature OID")?;
    let (signature, rest) = expect(rest, der::BIT_STRING, "the signature")?;
    let mut certs = Vec::new();
    if let Ok((wrapped, _)) = expect(rest, der::explicit(0), "certs") {
        let (list, _) = expect(wrapped.value, der::SEQUENCE, "a certificate list")?;
        for cert in elements(list.value) {
            certs.push(cert?.raw);
        }
    }
    // ResponseData: [0] version?, responderID ([1] or [2]), producedAt, responses, [1] exts?
    let mut rest = tbs.value;
    let (first, after) = der::read(rest)?;
    if first.tag == der::explicit(0) {
        rest = after;
    }
    let (responder, rest) = der::read(rest)?;
    if responder.tag != der::explicit(1) && responder.tag != der::explicit(2) {
        return Err(DerError::Unexpected("a responder ID").into());
    }
    let (_produced, rest) = expect(rest, der::GENERALIZED_TIME, "producedAt")?;
    let (list, _) = expect(rest, der::SEQUENCE, "the responses")?;
    let mut responses = Vec::new();
    for single in elements(list.value) {
        let single = single?;
        if single.tag != der::SEQUENCE {
            return Err(DerError::Unexpected("a SingleResponse").into());
        }
        let (id, rest) = expect(single.value, der::SEQUENCE, "a CertID")?;
        let (status, rest) = der::read(rest)?;
        let status = match status.tag {
            0x80 => CertStatus::Good,
            0xa1 => CertStatus::Revoked,
            0x82 => CertStatus::Unknown,
            _ => return Err(DerError::Unexpected("a certificate status").into()),
        };
        let (this_update, rest) = expect(rest, der::GENERALIZED_TIME, "thisUpdate")?;
        let this_update = der::generalized_time(this_update.value)
            .ok_or(DerError::Unexpected("a GeneralizedTime"))?;
        let mut next_update = None;
        if let Ok((next, _)) = expect(rest, der::explicit(0), "nextUpdate") {
            let (time, _) = expect(next.value, der::GENERALIZED_TIME, "nextUpdate")?;
            next_update = Some(
                der::generalized_time(time.value)
                    .ok_or(DerError::Unexpected("a GeneralizedTime"))?,
            );
        }
        responses.push(SingleResponse {
            cert_id: CertId::parse(id)?,
            status,
            this_update,
            next_update,
        });
    }
    Ok(BasicResponse {
        signed: tbs.raw,
        algorithm: SignatureAlgorithm::from_oid(alg_oid.value),
        signature: signature.value.get(1..).ok_or(DerError::Truncated)?,
        certs,
        responses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_id() -> CertId {
        CertId {
            hash_oid: OID_SHA1.to_vec(),
            issuer_name_hash: vec![1; 20],
            issuer_key_hash: vec![2; 20],
            serial: vec![0x01, 0x02],
        }
    }

    #[test]
    fn request_layout() {
        let request = encode_request(&sample_id());
        // OCSPRequest { TBSRequest { requestList { Request { CertID } } } }
        let (outer, rest) = expect(&request, der::SEQUENCE, "req").unwrap();
        assert!(rest.is_empty());
        let (tbs, _) = expect(outer.value, der::SEQUENCE, "tbs").unwrap();
        let (list, _) = expect(tbs.value, der::SEQUENCE, "list").unwrap();
        let (one, _) = expect(list.value, der::SEQUENCE, "one").unwrap();
        let (id, _) = expect(one.value, der::SEQUENCE, "id").unwrap();
        assert_eq!(CertId::parse(id).unwrap(), sample_id());
        assert_eq!(request.len(), 2 + 2 + 2 + 2 + 2 + 11 + 22 + 22 + 4);
    }

    /// A response assembled by hand: good status, times, a certificate list.
    fn sample_response(status: u8, cert_status: &[u8]) -> Vec<u8> {
        let mut tbs = Vec::new();
        der::nested(der::SEQUENCE, &mut tbs, |t| {
            der::nested(der::explicit(2), t, |r| {
                der::write(der::OCTET_STRING, &[9; 20], r)
            });
            der::write(der::GENERALIZED_TIME, b"20261125170000Z", t);
            der::nested(der::SEQUENCE, t, |list| {
                der::nested(der::SEQUENCE, list, |single| {
                    sample_id().encode(single);
                    single.extend_from_slice(cert_status);
                    der::write(der::GENERALIZED_TIME, b"20261125170000Z", single);
                    der::nested(der::explicit(0), single, |n| {
                        der::write(der::GENERALIZED_TIME, b"20261202170000Z", n)
                    });
                });
            });
        });
        let mut basic = Vec::new();
        der::nested(der::SEQUENCE, &mut basic, |b| {
            b.extend_from_slice(&tbs);
            der::nested(der::SEQUENCE, b, |a| {
                der::write(
                    der::OID,
                    &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02],
                    a,
                )
            });
            der::write(der::BIT_STRING, &[0, 0xaa, 0xbb], b);
            der::nested(der::explicit(0), b, |c| {
                der::nested(der::SEQUENCE, c, |l| der::write(der::SEQUENCE, &[], l))
            });
        });
        let mut out = Vec::new();
        der::nested(der::SEQUENCE, &mut out, |r| {
            der::write(der::ENUMERATED, &[status], r);
            if status == 0 {
                der::nested(der::explicit(0), r, |rb| {
                    der::nested(der::SEQUENCE, rb, |s| {
                        der::write(der::OID, OID_OCSP_BASIC, s);
                        der::write(der::OCTET_STRING, &basic, s);
                    })
                });
            }
        });
        out
    }

    #[test]
    fn parses_a_good_response() {
        let der_bytes = sample_response(0, &[0x80, 0x00]);
        let parsed = parse_response(&der_bytes).unwrap();
        assert_eq!(parsed.algorithm, Some(SignatureAlgorithm::EcdsaSha256));
        assert_eq!(parsed.signature, &[0xaa, 0xbb]);
        assert_eq!(parsed.certs, vec![&[0x30, 0x00][..]]);
        let single = &parsed.responses[0];
        assert_eq!(single.cert_id, sample_id());
        assert_eq!(single.status, CertStatus::Good);
        assert_eq!(single.this_update, 1_795_626_000);
        assert_eq!(single.next_update, Some(1_795_626_000 + 7 * 86_400));
        assert_eq!(parsed.signed[0], der::SEQUENCE);
    }

    #[test]
    fn statuses_and_garbage() {
        let revoked = sample_response(0, &[0xa1, 0x00]);
        assert_eq!(
            parse_response(&revoked).unwrap().responses[0].status,
            CertStatus::Revoked
        );
        assert_eq!(
            parse_response(&sample_response(3, &[])),
            Err(ResponseError::Status(3))
        );
        let good = sample_response(0, &[0x80, 0x00]);
        for cut in 0..good.len() {
            assert!(parse_response(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(parse_response(b"<html>not ocsp</html>").is_err());
    }
}
