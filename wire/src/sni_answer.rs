//! The dynamic SNI service's answer (bud-compatible): `{"cert": PEM or [PEM…], "key": PEM or
//! [PEM…], "passphrase"?: string or [string…], "ciphers"?: string, "npn"?: [protocol…]}`. The
//! service, its cache and the contexts built from an answer live in `fastedge-tls`.

use serde_json::Value;

/// One certificate chain with its key, as PEM text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKey {
    /// The certificate chain, leaf first, as PEM.
    pub cert: String,
    /// The private key of the leaf, as PEM (possibly encrypted).
    pub key: String,
    /// The passphrase of an encrypted key.
    pub passphrase: Option<String>,
}

/// A parsed answer: at least one certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniAnswer {
    /// The certificate and key pairs (e.g. RSA beside ECDSA), in the service's order.
    pub pairs: Vec<CertKey>,
    /// A cipher list for this name instead of the configured one.
    pub ciphers: Option<String>,
    /// ALPN protocols for this name instead of the configured ones (empty or over-long names
    /// left out).
    pub npn: Option<Vec<String>>,
}

/// Why an answer was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerError {
    /// The body is not JSON: the parser's message.
    NotJson(String),
    /// The body is JSON but not an object.
    NotObject,
    /// A key is missing or holds the wrong kind of value.
    Invalid(String),
}

impl std::fmt::Display for AnswerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnswerError::NotJson(e) => write!(f, "is not JSON: {e}"),
            AnswerError::NotObject => f.write_str("is not a JSON object"),
            AnswerError::Invalid(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for AnswerError {}

/// PEM strings from a JSON string or array of strings.
fn pem_list(value: Option<&Value>, what: &str) -> Result<Vec<String>, AnswerError> {
    match value {
        None => Err(AnswerError::Invalid(format!(
            "the answer has no \"{what}\""
        ))),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| AnswerError::Invalid(format!("\"{what}\" must hold strings")))
            })
            .collect(),
        Some(_) => Err(AnswerError::Invalid(format!(
            "\"{what}\" must be a PEM string or a non-empty list of them"
        ))),
    }
}

/// Parses the body of a `200` answer.
pub fn parse(body: &[u8]) -> Result<SniAnswer, AnswerError> {
    let answer: Value =
        serde_json::from_slice(body).map_err(|e| AnswerError::NotJson(e.to_string()))?;
    if !answer.is_object() {
        return Err(AnswerError::NotObject);
    }
    let certs = pem_list(answer.get("cert"), "cert")?;
    let keys = pem_list(answer.get("key"), "key")?;
    if certs.len() != keys.len() {
        return Err(AnswerError::Invalid(format!(
            "the answer has {} certificates and {} keys",
            certs.len(),
            keys.len()
        )));
    }
    let passphrases: Vec<Option<String>> = match answer.get("passphrase") {
        None | Some(Value::Null) => vec![None; keys.len()],
        Some(Value::String(p)) => vec![Some(p.clone()); keys.len()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .chain(std::iter::repeat(None))
            .take(keys.len())
            .collect(),
        Some(_) => {
            return Err(AnswerError::Invalid(
                "\"passphrase\" must be a string or a list".into(),
            ))
        }
    };
    let pairs = certs
        .into_iter()
        .zip(keys)
        .zip(passphrases)
        .map(|((cert, key), passphrase)| CertKey {
            cert,
            key,
            passphrase,
        })
        .collect();
    Ok(SniAnswer {
        pairs,
        ciphers: answer
            .get("ciphers")
            .and_then(Value::as_str)
            .map(str::to_owned),
        npn: answer.get("npn").and_then(Value::as_array).map(|npn| {
            npn.iter()
                .filter_map(Value::as_str)
                .filter(|p| !p.is_empty() && p.len() < 256)
                .map(str::to_owned)
                .collect()
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_refusals() {
        let answer = parse(
            br#"{"cert": ["C1", "C2"], "key": ["K1", "K2"], "passphrase": ["p"],
                 "ciphers": "ECDHE", "npn": ["h2", "", "http/1.1", 7]}"#,
        )
        .expect("a good answer");
        assert_eq!(answer.pairs.len(), 2);
        assert_eq!(answer.pairs[0].passphrase.as_deref(), Some("p"));
        assert_eq!(answer.pairs[1].passphrase, None);
        assert_eq!(answer.pairs[1].key, "K2");
        assert_eq!(answer.ciphers.as_deref(), Some("ECDHE"));
        assert_eq!(
            answer.npn,
            Some(vec!["h2".to_owned(), "http/1.1".to_owned()])
        );
        for (body, why) in [
            (&b"<html>"[..], "is not JSON"),
            (b"[]", "is not a JSON object"),
            (b"{}", "has no \"cert\""),
            (br#"{"cert": "C", "key": []}"#, "non-empty list"),
            (
                br#"{"cert": "C", "key": ["K", "L"]}"#,
                "1 certificates and 2 keys",
            ),
            (
                br#"{"cert": "C", "key": "K", "passphrase": 1}"#,
                "string or a list",
            ),
        ] {
            let error = parse(body).expect_err(why).to_string();
            assert!(error.contains(why), "{error}");
        }
    }
}
