//! OCSP stapling: where staples come from, how they are checked, and the thread that keeps them
//! fresh.
//!
//! Three sources, per certificate:
//! - a **staple file** (`ocsp_staple`, DER), reread when it changes;
//! - the **responder named in the certificate** (Authority Information Access), asked over
//!   HTTP (`ocsp_fetch`), again halfway to the staple's nextUpdate;
//! - **bud's stapling service** (`ocsp_url` with `%s`): `GET` with the base64 CertID, and on a
//!   miss `POST` `{"url": responder, "ocsp": base64 request}`; the answer is
//!   `{"response": base64 OCSPResponse}`.
//!
//! Every staple is checked before use: it must be a successful basic response for this
//! certificate, status good, current (thisUpdate not in the future, nextUpdate not past), and
//! signed by the issuer or by a responder certificate the issuer signed for OCSP. A fetch that
//! fails keeps the last good staple until it expires. Handshakes never wait for any of this:
//! they staple whatever is current, or nothing.

use std::{
    path::PathBuf,
    sync::{Arc, Weak},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::http::http;
use arc_swap::ArcSwapOption;
use boring::{
    hash::{hash, MessageDigest},
    pkey::{PKey, Public},
    sign::Verifier,
    x509::X509,
};
use fastedge_wire::logtext::Untrusted;
use fastedge_wire::ocsp::{
    cert_fields, encode_request, parse_response, CertId, CertStatus, SignatureAlgorithm, OID_SHA1,
    OID_SHA256,
};

/// Largest OCSP response accepted.
const MAX_RESPONSE: usize = 64 * 1024;
/// Clock skew tolerated on thisUpdate.
const SKEW_SECONDS: i64 = 300;
/// A response without nextUpdate is used for at most this long after its thisUpdate.
const MAX_AGE_WITHOUT_NEXT_UPDATE: i64 = 7 * 86_400;
/// The reason given for a revoked certificate (the staple is dropped at once).
const REVOKED: &str = "the responder says the certificate is REVOKED";
/// After a failed fetch, the next attempt.
const RETRY: Duration = Duration::from_secs(30);

/// The staple of one certificate, read by handshakes.
#[derive(Debug, Default)]
pub(crate) struct StapleSlot {
    pub staple: ArcSwapOption<Vec<u8>>,
}

/// What stapling needs to know about one certificate.
#[derive(Clone)]
pub(crate) struct OcspCert {
    /// For logs: the certificate file.
    pub name: String,
    pub leaf: X509,
    /// The issuer, when the chain file includes it.
    pub issuer: Option<X509>,
    /// The responder URL from the certificate's AIA, if any.
    pub responder: Option<String>,
}

impl OcspCert {
    pub fn new(name: String, chain: &[X509]) -> Option<Self> {
        let leaf = chain.first()?.clone();
        let issuer = chain.get(1).cloned().filter(|issuer| {
            // The next certificate of the chain is the issuer only if it signed the leaf.
            issuer
                .public_key()
                .and_then(|key| leaf.verify(&key))
                .unwrap_or(false)
        });
        let responder = leaf
            .ocsp_responders()
            .ok()
            .and_then(|list| list.iter().next().map(|url| url.to_string()));
        Some(Self {
            name,
            leaf,
            issuer,
            responder,
        })
    }

    /// This certificate's CertID with the hash `hash_oid` (SHA-1 or SHA-256).
    fn cert_id(&self, hash_oid: &[u8]) -> Result<CertId, String> {
        let issuer = self
            .issuer
            .as_ref()
            .ok_or("the chain file does not include the issuer certificate")?;
        let md = match hash_oid {
            OID_SHA1 => MessageDigest::sha1(),
            OID_SHA256 => MessageDigest::sha256(),
            _ => return Err("CertID hash algorithm not supported".into()),
        };
        let leaf_der = self.leaf.to_der().map_err(|e| e.to_string())?;
        let issuer_der = issuer.to_der().map_err(|e| e.to_string())?;
        let leaf = cert_fields(&leaf_der).map_err(|e| format!("certificate: {e}"))?;
        let issuer = cert_fields(&issuer_der).map_err(|e| format!("issuer: {e}"))?;
        let digest = |data: &[u8]| {
            hash(md, data)
                .map(|d| d.to_vec())
                .map_err(|e| e.to_string())
        };
        Ok(CertId {
            hash_oid: hash_oid.to_vec(),
            issuer_name_hash: digest(leaf.issuer)?,
            issuer_key_hash: digest(issuer.public_key)?,
            serial: leaf.serial.to_vec(),
        })
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// How long a checked staple is good for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Validity {
    pub this_update: i64,
    pub next_update: Option<i64>,
}

fn digest_of(alg: SignatureAlgorithm) -> Option<MessageDigest> {
    use SignatureAlgorithm::*;
    match alg {
        RsaSha1 | EcdsaSha1 => Some(MessageDigest::sha1()),
        RsaSha256 | EcdsaSha256 => Some(MessageDigest::sha256()),
        RsaSha384 | EcdsaSha384 => Some(MessageDigest::sha384()),
        RsaSha512 | EcdsaSha512 => Some(MessageDigest::sha512()),
        Ed25519 => None,
    }
}

fn signature_ok(key: &PKey<Public>, alg: SignatureAlgorithm, signed: &[u8], sig: &[u8]) -> bool {
    let verifier = match digest_of(alg) {
        Some(md) => Verifier::new(md, key),
        None => Verifier::new_without_digest(key),
    };
    verifier
        .and_then(|mut v| v.verify_oneshot(sig, signed))
        .unwrap_or(false)
}

/// Checks a staple for `cert` at `now` (seconds since the epoch); see the module docs.
pub(crate) fn verify(response: &[u8], cert: &OcspCert, now: i64) -> Result<Validity, String> {
    let parsed = parse_response(response).map_err(|e| e.to_string())?;
    // An entry with a CertID hash we do not compute is about no certificate of ours.
    let single = parsed
        .responses
        .iter()
        .find(|single| {
            cert.cert_id(&single.cert_id.hash_oid)
                .is_ok_and(|ours| ours == single.cert_id)
        })
        .ok_or("the response is about another certificate")?;
    if single.this_update > now + SKEW_SECONDS {
        return Err("the response's thisUpdate is in the future".into());
    }
    if single.next_update.is_some_and(|next| next <= now) {
        return Err("the response has expired (nextUpdate passed)".into());
    }
    if single.next_update.is_none() && now - single.this_update > MAX_AGE_WITHOUT_NEXT_UPDATE {
        return Err("the response has no nextUpdate and is older than 7 days".into());
    }
    let issuer = cert
        .issuer
        .as_ref()
        .ok_or("cannot check the signature: the issuer is not in the chain file")?;
    let issuer_key = issuer.public_key().map_err(|e| e.to_string())?;
    let alg = parsed
        .algorithm
        .ok_or("the response is signed with an unsupported algorithm")?;
    let mut signed_ok = signature_ok(&issuer_key, alg, parsed.signed, parsed.signature);
    if !signed_ok {
        // A delegated responder: a certificate the issuer signed, for OCSP signing.
        for der in &parsed.certs {
            let Ok(responder) = X509::from_der(der) else {
                continue;
            };
            let now_asn1 = boring::asn1::Asn1Time::from_unix(now as _).ok();
            let current = now_asn1
                .as_ref()
                .is_some_and(|t| responder.not_before() <= t && responder.not_after() >= t);
            let delegated = current
                && cert_fields(der).is_ok_and(|f| f.ocsp_signing)
                && responder.verify(&issuer_key).unwrap_or(false);
            if delegated
                && responder
                    .public_key()
                    .is_ok_and(|key| signature_ok(&key, alg, parsed.signed, parsed.signature))
            {
                signed_ok = true;
                break;
            }
        }
    }
    if !signed_ok {
        return Err("the response's signature does not check out".into());
    }
    // The status counts only once the response is known to be genuine.
    match single.status {
        CertStatus::Good => {}
        CertStatus::Revoked => return Err(REVOKED.into()),
        CertStatus::Unknown => return Err("the responder does not know the certificate".into()),
    }
    Ok(Validity {
        this_update: single.this_update,
        next_update: single.next_update,
    })
}

/// Where one certificate's staples come from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    File(PathBuf),
    Responder(String),
    /// bud's stapling service URL, with `%s`.
    Bud(String),
}

/// One certificate the refresher looks after.
pub(crate) struct Job {
    pub slot: Weak<StapleSlot>,
    pub cert: OcspCert,
    pub source: Source,
    pub due: Instant,
    /// The current staple's nextUpdate, to drop it when it expires.
    pub good_until: Option<i64>,
    /// File source: what the file looked like when last read.
    pub stamp: Option<(SystemTime, u64)>,
}

/// Loads or fetches a staple for `job` now; on success installs it and returns when to look
/// again; on failure logs why and returns when to retry.
pub(crate) fn run_job(job: &mut Job, slot: &StapleSlot, timeout: Duration) {
    let now = now_unix();
    let result: Result<Option<(Vec<u8>, Validity)>, String> = match &job.source {
        Source::File(path) => {
            let stamp = std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            if stamp.is_some() && stamp == job.stamp {
                Ok(None)
            } else {
                job.stamp = stamp;
                std::fs::read(path)
                    .map_err(|e| format!("reading {}: {e}", path.display()))
                    .and_then(|der| {
                        let validity = verify(&der, &job.cert, now)?;
                        Ok(Some((der, validity)))
                    })
            }
        }
        Source::Responder(url) => fetch_from_responder(url, &job.cert, timeout).and_then(|der| {
            let validity = verify(&der, &job.cert, now)?;
            Ok(Some((der, validity)))
        }),
        Source::Bud(template) => fetch_from_bud(template, &job.cert, timeout).and_then(|der| {
            let validity = verify(&der, &job.cert, now)?;
            Ok(Some((der, validity)))
        }),
    };
    let source = match &job.source {
        Source::File(path) => format!("file {}", path.display()),
        Source::Responder(url) => format!("responder {url}"),
        Source::Bud(url) => format!("stapling service {url}"),
    };
    match result {
        Ok(Some((der, validity))) => {
            tracing::info!(
                certificate = %job.cert.name,
                %source,
                next_update = validity.next_update.unwrap_or(0),
                "OCSP staple updated"
            );
            slot.staple.store(Some(Arc::new(der)));
            job.good_until = Some(
                validity
                    .next_update
                    .unwrap_or(validity.this_update + MAX_AGE_WITHOUT_NEXT_UPDATE),
            );
            job.due = match (&job.source, validity.next_update) {
                (Source::File(_), _) => Instant::now() + Duration::from_secs(1),
                (_, Some(next)) => {
                    // Halfway from now to nextUpdate, between a minute and a day.
                    let half = ((next - now) / 2).clamp(60, 86_400) as u64;
                    Instant::now() + Duration::from_secs(half)
                }
                (_, None) => Instant::now() + Duration::from_secs(3600),
            };
        }
        Ok(None) => job.due = Instant::now() + Duration::from_secs(1),
        Err(why) => {
            if why == REVOKED {
                // Never keep stapling "good" for a certificate known to be revoked.
                slot.staple.store(None);
                job.good_until = None;
            }
            tracing::warn!(
                certificate = %job.cert.name,
                %source,
                // Partly the responder's words.
                reason = %Untrusted(&why),
                "OCSP staple not updated; the previous one (if any) stays until it expires"
            );
            job.due = Instant::now()
                + match job.source {
                    Source::File(_) => Duration::from_secs(1),
                    _ => RETRY,
                };
        }
    }
    if job.good_until.is_some_and(|until| until <= now_unix()) {
        tracing::warn!(certificate = %job.cert.name, "OCSP staple expired; stapling stops until a fresh one comes");
        slot.staple.store(None);
        job.good_until = None;
    }
}

/// Runs `jobs` on a thread of their own until every slot is gone (the contexts were replaced
/// and their connections ended).
pub(crate) fn start_refresher(mut jobs: Vec<Job>, timeout: Duration) {
    if jobs.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("fastedge-ocsp".into())
        .spawn(move || loop {
            let mut alive = 0;
            for job in &mut jobs {
                let Some(slot) = job.slot.upgrade() else {
                    continue;
                };
                alive += 1;
                if job.due <= Instant::now() {
                    run_job(job, &slot, timeout);
                }
            }
            if alive == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "could not start the OCSP thread; no stapling");
    }
}

fn fetch_from_responder(url: &str, cert: &OcspCert, timeout: Duration) -> Result<Vec<u8>, String> {
    let request = encode_request(&cert.cert_id(OID_SHA1)?);
    let (status, body) = http(
        "POST",
        url,
        "application/ocsp-request",
        &request,
        timeout,
        MAX_RESPONSE,
    )?;
    if status != 200 {
        return Err(format!("responder answered HTTP {status}"));
    }
    Ok(body)
}

fn fetch_from_bud(template: &str, cert: &OcspCert, timeout: Duration) -> Result<Vec<u8>, String> {
    let id = cert.cert_id(OID_SHA1)?;
    let mut id_der = Vec::new();
    id.encode(&mut id_der);
    let mut escaped = Vec::new();
    fastedge_wire::forwarded::percent_encode(&boring::base64::encode_block(&id_der), &mut escaped);
    let url = template.replacen("%s", &String::from_utf8_lossy(&escaped), 1);
    let (status, body) = http("GET", &url, "", &[], timeout, MAX_RESPONSE)?;
    let body = if (200..300).contains(&status) {
        body
    } else {
        // A miss: hand the service what to ask the responder.
        let responder = cert
            .responder
            .as_deref()
            .ok_or("stapling service miss, and the certificate names no responder")?;
        let request = boring::base64::encode_block(&encode_request(&id));
        let json = serde_json::json!({ "url": responder, "ocsp": request }).to_string();
        let (status, body) = http(
            "POST",
            &url,
            "application/json",
            json.as_bytes(),
            timeout,
            MAX_RESPONSE,
        )?;
        if !(200..300).contains(&status) {
            return Err(format!("stapling service answered HTTP {status}"));
        }
        body
    };
    let answer: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("stapling service answer: {e}"))?;
    let text = answer
        .get("response")
        .and_then(|r| r.as_str())
        .ok_or("stapling service answer has no \"response\" string")?;
    boring::base64::decode_block(text.trim())
        .map_err(|_| "stapling service response is not base64".to_owned())
}
