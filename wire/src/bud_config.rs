//! bud's JSON configuration, translated into fastedge's TOML (the serve config in `fastedge-tls`
//! reads the result), so `fastedge serve --config
//! bud.json` runs a bud configuration unchanged and `fastedge check-config bud.json` shows how
//! it was understood. Keys with no equivalent are named in notes (logged as warnings); bud's
//! defaults apply where bud's differ from ours (port 1443, half-close off, backend
//! 127.0.0.1:8000, SNI and stapling services on port 9000).

use serde_json::{Map, Value};
use toml::{Table, Value as Toml};

/// Why a bud document was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudError {
    /// Not JSON, not an object, or not expressible as TOML.
    Syntax(String),
    /// A key holds a value of the wrong kind.
    Invalid {
        /// The key, as a dotted path in bud's document (`frontend.port`, `contexts[2].key`).
        key: String,
        /// What is wrong with its value.
        message: String,
    },
}

impl std::fmt::Display for BudError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BudError::Syntax(message) => f.write_str(message),
            BudError::Invalid { key, message } => write!(f, "{key}: {message}"),
        }
    }
}

impl std::error::Error for BudError {}

/// Whether `text` looks like a bud JSON document rather than TOML.
pub fn is_bud_json(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

/// A translation: the TOML document, and what could not be carried over.
#[derive(Debug, Clone, PartialEq)]
pub struct Translation {
    /// The equivalent fastedge TOML configuration, ready for `ServeConfig::parse`.
    pub toml: String,
    /// One line per bud key that has no equivalent and was left out (`workers`, `log`, …), for a
    /// warning.
    pub notes: Vec<String>,
}

fn bad(key: &str, message: impl Into<String>) -> BudError {
    BudError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// Translates a bud JSON configuration.
pub fn translate(json: &str) -> Result<Translation, BudError> {
    let root: Value =
        serde_json::from_str(json).map_err(|e| BudError::Syntax(format!("bud JSON: {e}")))?;
    let root = root
        .as_object()
        .ok_or_else(|| BudError::Syntax("bud JSON: the document must be an object".into()))?;
    let mut t = Translator::default();
    t.top(root)?;
    Ok(Translation {
        toml: toml::to_string(&t.out).map_err(|e| BudError::Syntax(e.to_string()))?,
        notes: t.notes,
    })
}

#[derive(Default)]
struct Translator {
    out: Table,
    notes: Vec<String>,
}

fn table<'a>(out: &'a mut Table, name: &str) -> &'a mut Table {
    let entry = out
        .entry(name.to_owned())
        .or_insert_with(|| Toml::Table(Table::new()));
    match entry {
        Toml::Table(t) => t,
        _ => unreachable!("only tables are stored under {name}"),
    }
}

fn millis(key: &str, v: &Value) -> Result<Toml, BudError> {
    let ms = v
        .as_u64()
        .ok_or_else(|| bad(key, "expected a number of milliseconds"))?;
    Ok(Toml::String(format!("{ms}ms")))
}

fn seconds(key: &str, v: &Value) -> Result<Toml, BudError> {
    let s = v
        .as_u64()
        .ok_or_else(|| bad(key, "expected a number of seconds"))?;
    Ok(Toml::String(format!("{s}s")))
}

fn string(key: &str, v: &Value) -> Result<String, BudError> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| bad(key, "expected a string"))
}

fn boolean(key: &str, v: &Value) -> Result<bool, BudError> {
    v.as_bool()
        .ok_or_else(|| bad(key, "expected true or false"))
}

/// A string or a list of strings.
fn strings(key: &str, v: &Value) -> Result<Vec<String>, BudError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items.iter().map(|i| string(key, i)).collect(),
        _ => Err(bad(key, "expected a string or a list of strings")),
    }
}

/// `host:port` for TOML, with IPv6 hosts bracketed.
fn host_port(host: &str, port: u64) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// bud's `request_cert` / `optional_cert` of one context as `client_verify`.
fn client_verify(path: &str, obj: &Map<String, Value>, tls: &mut Table) -> Result<(), BudError> {
    let flag = |key: &str| match obj.get(key) {
        None => Ok(false),
        Some(v) => boolean(&format!("{path}.{key}"), v),
    };
    let (request, optional) = (flag("request_cert")?, flag("optional_cert")?);
    if obj.contains_key("request_cert") || obj.contains_key("optional_cert") {
        let mode = match (request, optional) {
            (false, _) => "none",
            (true, true) => "optional",
            (true, false) => "required",
        };
        tls.insert("client_verify".into(), Toml::String(mode.into()));
    }
    Ok(())
}

impl Translator {
    fn note(&mut self, key: &str, why: &str) {
        self.notes.push(format!("{key}: {why}"));
    }

    fn top(&mut self, root: &Map<String, Value>) -> Result<(), BudError> {
        // bud's defaults that differ from ours.
        table(&mut self.out, "frontend").insert("allow_half_open".into(), Toml::Boolean(false));
        table(&mut self.out, "frontend").insert(
            "listen".into(),
            Toml::Array(vec![Toml::String("0.0.0.0:1443".into())]),
        );
        let mut backends_given = false;
        for (key, v) in root {
            match key.as_str() {
                "workers" | "restart_timeout" => self.note(
                    key,
                    "no equivalent: fastedge runs one thread per core (set `cores`) and restarts nothing",
                ),
                "master_ipc" => {
                    let on = boolean(key, v)?;
                    table(&mut self.out, "tls").insert("ticket_key_stdin".into(), Toml::Boolean(on));
                }
                "log" => self.note(
                    key,
                    "use --log-format, --syslog and $FASTEDGE_LOG instead",
                ),
                "tracing" => self.note(key, "no equivalent: use metrics_listen (Prometheus)"),
                "user" | "group" => {
                    let value = string(key, v)?;
                    self.out.insert(key.clone(), Toml::String(value));
                }
                "balance" => {
                    let mode = string(key, v)?;
                    table(&mut self.out, "balance").insert("mode".into(), Toml::String(mode));
                }
                "availability" => self.availability(v)?,
                "frontend" => self.frontend(v)?,
                "backend" => {
                    backends_given = true;
                    let list = self.backends("backend", v)?;
                    self.out.insert("backend".into(), Toml::Array(list));
                }
                "sni" => {
                    if let Some(url) = self.service("sni", v, "/bud/sni/%s")? {
                        table(&mut self.out, "tls").insert("sni_url".into(), Toml::String(url));
                    }
                }
                "stapling" => {
                    if let Some(url) = self.service("stapling", v, "/bud/stapling/%s")? {
                        table(&mut self.out, "tls").insert("ocsp_url".into(), Toml::String(url));
                    }
                }
                "contexts" => {
                    let items = v
                        .as_array()
                        .ok_or_else(|| bad("contexts", "expected a list"))?;
                    let mut list = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        list.push(Toml::Table(self.context(&format!("contexts[{i}]"), item)?));
                    }
                    if !list.is_empty() {
                        self.out.insert("context".into(), Toml::Array(list));
                    }
                }
                other => self.note(other, "unknown bud key; ignored"),
            }
        }
        if !backends_given {
            // bud's default backend.
            let mut b = Table::new();
            b.insert("address".into(), Toml::String("127.0.0.1:8000".into()));
            self.out
                .insert("backend".into(), Toml::Array(vec![Toml::Table(b)]));
        }
        Ok(())
    }

    fn availability(&mut self, v: &Value) -> Result<(), BudError> {
        let obj = v
            .as_object()
            .ok_or_else(|| bad("availability", "expected an object"))?;
        for (key, v) in obj {
            let path = format!("availability.{key}");
            let balance = table(&mut self.out, "balance");
            match key.as_str() {
                "death_timeout" | "revive_interval" | "retry_interval" => {
                    balance.insert(key.clone(), millis(&path, v)?);
                }
                "max_retries" => {
                    let n = v.as_i64().ok_or_else(|| bad(&path, "expected a number"))?;
                    balance.insert(key.clone(), Toml::Integer(n));
                }
                _ => self.note(&path, "unknown bud key; ignored"),
            }
        }
        Ok(())
    }

    fn frontend(&mut self, v: &Value) -> Result<(), BudError> {
        let obj = v
            .as_object()
            .ok_or_else(|| bad("frontend", "expected an object"))?;
        let port = obj.get("port").and_then(Value::as_u64).unwrap_or(1443);
        let host = obj.get("host").and_then(Value::as_str).unwrap_or("0.0.0.0");
        let mut listen = vec![Toml::String(host_port(host, port))];
        let mut tls = Table::new();
        for (key, v) in obj {
            let path = format!("frontend.{key}");
            match key.as_str() {
                "port" | "host" => {}
                "interfaces" => {
                    let items = v.as_array().ok_or_else(|| bad(&path, "expected a list"))?;
                    listen.clear();
                    for item in items {
                        let port = item.get("port").and_then(Value::as_u64).unwrap_or(port);
                        let host = item.get("host").and_then(Value::as_str).unwrap_or(host);
                        listen.push(Toml::String(host_port(host, port)));
                    }
                }
                "allow_half_open" => {
                    table(&mut self.out, "frontend")
                        .insert(key.clone(), Toml::Boolean(boolean(&path, v)?));
                }
                "keepalive" => self.note(
                    &path,
                    "no equivalent (TCP keep-alive); idle connections close after frontend.idle_timeout",
                ),
                "reneg_window" | "reneg_limit" => {
                    self.note(&path, "no equivalent: renegotiation is always refused")
                }
                "max_send_fragment" => {
                    self.note(&path, "no equivalent: BoringSSL sizes records itself")
                }
                "security" => {
                    let (min, max) = match string(&path, v)?.as_str() {
                        "ssl23" => ("1.2", "1.3"),
                        "tls1.2" => ("1.2", "1.2"),
                        other => {
                            self.note(
                                &path,
                                &format!("{other:?}: TLS below 1.2 is not offered; using 1.2 and 1.3"),
                            );
                            ("1.2", "1.3")
                        }
                    };
                    tls.insert("min_version".into(), Toml::String(min.into()));
                    tls.insert("max_version".into(), Toml::String(max.into()));
                }
                _ => {
                    if !self.tls_key(&path, key, v, &mut tls)? {
                        self.note(&path, "unknown bud key; ignored");
                    }
                }
            }
        }
        client_verify("frontend", obj, &mut tls)?;
        table(&mut self.out, "frontend").insert("listen".into(), Toml::Array(listen));
        let out_tls = table(&mut self.out, "tls");
        for (k, v) in tls {
            out_tls.insert(k, v);
        }
        Ok(())
    }

    /// One of bud's TLS context keys into `tls` (a `[tls]` or `[[context]]` table); false
    /// when `key` is not one.
    fn tls_key(
        &mut self,
        path: &str,
        key: &str,
        v: &Value,
        tls: &mut Table,
    ) -> Result<bool, BudError> {
        match key {
            "cert" | "key" | "passphrase" => {
                // Pairs: cert[i] with key[i] (and passphrase[i]); the first goes to the
                // shorthand keys, the rest to [[…certificate]].
                let list = strings(path, v)?;
                let mut extra = match tls.remove("certificate") {
                    Some(Toml::Array(a)) => a,
                    _ => Vec::new(),
                };
                for (i, value) in list.into_iter().enumerate() {
                    if i == 0 {
                        tls.insert(key.into(), Toml::String(value));
                    } else {
                        while extra.len() < i {
                            extra.push(Toml::Table(Table::new()));
                        }
                        if let Some(Toml::Table(pair)) = extra.get_mut(i - 1) {
                            pair.insert(key.into(), Toml::String(value));
                        }
                    }
                }
                if !extra.is_empty() {
                    tls.insert("certificate".into(), Toml::Array(extra));
                }
            }
            "ciphers" => {
                tls.insert("ciphers".into(), Toml::String(string(path, v)?));
            }
            "ecdh" => {
                let curve = string(path, v)?;
                let group = match curve.as_str() {
                    "prime256v1" | "P-256" => "P-256",
                    "secp384r1" | "P-384" => "P-384",
                    other => other,
                };
                // bud had one curve; keep the hybrid and X25519 first, as clients prefer.
                let groups = ["X25519MLKEM768", "X25519", group]
                    .iter()
                    .map(|g| Toml::String((*g).to_owned()))
                    .collect();
                tls.insert("groups".into(), Toml::Array(groups));
            }
            "dh" => self.note(path, "no equivalent: no finite-field DH (ECDHE only)"),
            "npn" => {
                let protocols = strings(path, v)?;
                tls.insert(
                    "alpn".into(),
                    Toml::Array(protocols.into_iter().map(Toml::String).collect()),
                );
            }
            "server_preference" => {
                tls.insert(key.into(), Toml::Boolean(boolean(path, v)?));
            }
            "ticket_key" => {
                tls.insert("ticket_key".into(), Toml::String(string(path, v)?));
            }
            "ticket_timeout" => {
                tls.insert("session_timeout".into(), seconds(path, v)?);
            }
            "ticket_rotate" => {
                tls.insert("ticket_rotate".into(), seconds(path, v)?);
            }
            // Resolved from both keys by the caller: see `client_verify`.
            "request_cert" | "optional_cert" => {}
            "ca" => {
                let bundle = strings(path, v)?;
                // A path, or PEM texts (joined into one inline bundle).
                let value = if bundle.len() == 1 {
                    bundle.into_iter().next().unwrap_or_default()
                } else {
                    bundle.join("\n")
                };
                tls.insert("client_ca".into(), Toml::String(value));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn backends(&mut self, path: &str, v: &Value) -> Result<Vec<Toml>, BudError> {
        let items = v.as_array().ok_or_else(|| bad(path, "expected a list"))?;
        let mut list = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let obj = item
                .as_object()
                .ok_or_else(|| bad(&format!("{path}[{i}]"), "expected an object"))?;
            let host = obj
                .get("host")
                .and_then(Value::as_str)
                .unwrap_or("127.0.0.1");
            let port = obj.get("port").and_then(Value::as_u64).unwrap_or(8000);
            let mut b = Table::new();
            b.insert("address".into(), Toml::String(host_port(host, port)));
            for (key, v) in obj {
                let key_path = format!("{path}[{i}].{key}");
                match key.as_str() {
                    "host" | "port" => {}
                    "proxyline" => {
                        let mode = match v {
                            Value::Bool(false) => "none",
                            Value::Bool(true) => "v1",
                            Value::String(s) if s == "haproxy" => "v1",
                            Value::String(s) if s == "json" => "bud-json",
                            _ => {
                                return Err(bad(
                                    &key_path,
                                    "expected false, true, \"haproxy\" or \"json\"",
                                ))
                            }
                        };
                        b.insert("proxy_protocol".into(), Toml::String(mode.into()));
                    }
                    "x-forward" => {
                        b.insert("x_forwarded".into(), Toml::Boolean(boolean(&key_path, v)?));
                    }
                    "keepalive" => self.note(&key_path, "no equivalent (TCP keep-alive)"),
                    "external" => self.note(
                        &key_path,
                        "no equivalent: PROXY and X-Forwarded-* carry the frontend address",
                    ),
                    _ => self.note(&key_path, "unknown bud key; ignored"),
                }
            }
            list.push(Toml::Table(b));
        }
        Ok(list)
    }

    /// bud's `sni` / `stapling` objects into a URL with `%s`, when enabled.
    fn service(
        &mut self,
        name: &str,
        v: &Value,
        default_url: &str,
    ) -> Result<Option<String>, BudError> {
        let obj = v
            .as_object()
            .ok_or_else(|| bad(name, "expected an object"))?;
        if !obj.get("enabled").and_then(Value::as_bool).unwrap_or(false) {
            return Ok(None);
        }
        let host = obj
            .get("host")
            .and_then(Value::as_str)
            .unwrap_or("127.0.0.1");
        let port = obj.get("port").and_then(Value::as_u64).unwrap_or(9000);
        let path = obj
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or(default_url);
        for key in obj.keys() {
            if !matches!(key.as_str(), "enabled" | "host" | "port" | "url") {
                self.note(&format!("{name}.{key}"), "unknown bud key; ignored");
            }
        }
        Ok(Some(format!("http://{}{path}", host_port(host, port))))
    }

    fn context(&mut self, path: &str, v: &Value) -> Result<Table, BudError> {
        let obj = v
            .as_object()
            .ok_or_else(|| bad(path, "expected an object"))?;
        let mut ctx = Table::new();
        for (key, v) in obj {
            let key_path = format!("{path}.{key}");
            match key.as_str() {
                "servername" => {
                    let names = strings(&key_path, v)?;
                    ctx.insert(
                        "servername".into(),
                        Toml::Array(names.into_iter().map(Toml::String).collect()),
                    );
                }
                "backend" => {
                    let list = self.backends(&key_path, v)?;
                    ctx.insert("backend".into(), Toml::Array(list));
                }
                "balance" => self.note(
                    &key_path,
                    "per-context balance is not supported; the global balance.mode applies",
                ),
                _ => {
                    if !self.tls_key(&key_path, key, v, &mut ctx)? {
                        self.note(&key_path, "unknown bud key; ignored");
                    }
                }
            }
        }
        client_verify(path, obj, &mut ctx)?;
        // Session settings are global in fastedge.
        for global in [
            "ticket_key",
            "session_timeout",
            "ticket_rotate",
            "groups",
            "min_version",
            "max_version",
        ] {
            if ctx.remove(global).is_some() {
                self.note(
                    &format!("{path}.{global}"),
                    "global in fastedge; the frontend's value applies",
                );
            }
        }
        Ok(ctx)
    }
}
