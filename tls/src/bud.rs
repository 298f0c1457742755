//! bud's JSON configuration as a serve configuration: the translation into fastedge's TOML lives
//! in `fastedge_wire::bud_config` (pure, fuzzed); this maps its errors to [`ConfigError`].

use crate::config::{ConfigError, ServeConfig, ServeOverrides};
pub use fastedge_wire::bud_config::{is_bud_json, BudError, Translation};

/// Parses and validates a serve configuration written in fastedge's TOML or in bud's JSON
/// (told apart by content), with `overrides` applied before validation; for bud's, also
/// returns its translation into TOML with the notes on what could not be carried over.
pub fn parse_any(
    text: &str,
    overrides: &ServeOverrides,
) -> Result<(ServeConfig, Option<Translation>), ConfigError> {
    if !is_bud_json(text) {
        return Ok((ServeConfig::parse_with(text, overrides)?, None));
    }
    let translation = translate(text)?;
    let config = ServeConfig::parse_with(&translation.toml, overrides)?;
    Ok((config, Some(translation)))
}

/// Translates a bud JSON configuration.
pub fn translate(json: &str) -> Result<Translation, ConfigError> {
    fastedge_wire::bud_config::translate(json).map_err(|error| match error {
        BudError::Syntax(message) => ConfigError::Syntax(message),
        BudError::Invalid { key, message } => ConfigError::Invalid { key, message },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClientVerify, ProxyPrefix, TicketKeySource};

    #[test]
    fn a_bud_config_with_everything() {
        let json = r#"{
          "workers": 4,
          "log": {"level": "info"},
          "availability": {"death_timeout": 1000, "revive_interval": 2500, "retry_interval": 250, "max_retries": 5},
          "frontend": {
            "port": 1443, "host": "0.0.0.0",
            "interfaces": [{"port": 1444, "host": "127.0.0.1"}, {"port": 1445, "host": "::1"}],
            "security": "ssl23", "keepalive": 3600, "allow_half_open": true,
            "cert": ["ec.pem", "rsa.pem"], "key": ["ec.key", "rsa.key"], "passphrase": [null, "secret"],
            "ciphers": "ECDHE+AESGCM", "ecdh": "prime256v1", "npn": ["http/1.1"],
            "server_preference": true, "ticket_timeout": 3600, "ticket_rotate": 3600,
            "request_cert": true, "optional_cert": true, "ca": "clients.pem"
          },
          "balance": "sni",
          "backend": [{"host": "127.0.0.1", "port": 8000, "proxyline": "json", "x-forward": true, "keepalive": 3600}],
          "sni": {"enabled": true, "port": 9000, "url": "/bud/sni/%s"},
          "stapling": {"enabled": false},
          "contexts": [{"servername": "a.example.com", "cert": "a.pem", "key": "a.key",
                        "backend": [{"port": 8001, "proxyline": "haproxy"}]}],
          "mystery": 1
        }"#;
        let t = translate(json);
        // A null passphrase is not a string: the whole array is refused, with its key.
        let err = t.unwrap_err().to_string();
        assert!(err.contains("frontend.passphrase"), "{err}");
        let json = json.replace("[null, \"secret\"]", "\"secret\"");
        let t = translate(&json).unwrap();
        let config = ServeConfig::parse(&t.toml).unwrap_or_else(|e| panic!("{e}\n{}", t.toml));
        assert_eq!(
            config.frontend.listen,
            vec![
                "127.0.0.1:1444".parse().unwrap(),
                "[::1]:1445".parse().unwrap()
            ]
        );
        assert!(config.frontend.allow_half_open);
        assert_eq!(config.tls.certificates.len(), 2);
        assert_eq!(config.tls.certificates[1].cert.to_str(), Some("rsa.pem"));
        assert_eq!(config.tls.alpn, vec!["http/1.1".to_owned()]);
        assert_eq!(config.tls.client_auth.verify, ClientVerify::Optional);
        assert_eq!(
            config.tls.dynamic_sni.as_ref().map(|d| d.url.as_str()),
            Some("http://127.0.0.1:9000/bud/sni/%s")
        );
        assert!(config.tls.stapling.url.is_none());
        assert_eq!(config.backends[0].proxy_protocol, ProxyPrefix::BudJson);
        assert!(config.backends[0].x_forwarded);
        let ctx = &config.tls.contexts[0];
        assert_eq!(ctx.names, vec!["a.example.com".to_owned()]);
        assert_eq!(ctx.backends[0].proxy_protocol, ProxyPrefix::V1);
        assert_eq!(ctx.backends[0].name, "127.0.0.1:8001");
        assert_eq!(config.tls.resumption.ticket_keys, TicketKeySource::Random);
        for key in [
            "workers",
            "log",
            "frontend.keepalive",
            "backend[0].keepalive",
            "mystery",
        ] {
            assert!(
                t.notes.iter().any(|n| n.starts_with(&format!("{key}:"))),
                "{key} in {:?}",
                t.notes
            );
        }
    }

    #[test]
    fn bud_defaults_and_errors() {
        let t = translate("{}").unwrap();
        let config = ServeConfig::parse(&t.toml).unwrap();
        assert_eq!(
            config.frontend.listen,
            vec!["0.0.0.0:1443".parse().unwrap()]
        );
        assert!(!config.frontend.allow_half_open);
        assert_eq!(config.backends[0].name, "127.0.0.1:8000");
        assert!(is_bud_json("  \n{\"frontend\": {}}"));
        assert!(!is_bud_json("[tls]\n"));
        for (json, key) in [
            ("[]", "must be an object"),
            ("{\"frontend\": 1}", "frontend"),
            (
                "{\"backend\": [{\"proxyline\": 3}]}",
                "backend[0].proxyline",
            ),
            (
                "{\"availability\": {\"death_timeout\": \"1s\"}}",
                "availability.death_timeout",
            ),
            ("{\"frontend\": {\"cert\": 7}}", "frontend.cert"),
            ("{\"frontend\"", "bud JSON"),
        ] {
            let err = translate(json).unwrap_err().to_string();
            assert!(err.contains(key), "{json}: {err}");
        }
    }
}
