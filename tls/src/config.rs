//! The configuration of `fastedge serve`: TOML in, validated settings out.
//!
//! [`DEFAULT_CONFIG`] is the reference: every field, its default and what it means, in one
//! place (`fastedge serve --print-default-config` prints it). It is also where the defaults
//! come from: a document is read over it, so a key the document leaves out takes the value
//! written there, and there is no second copy to keep in step. [`ServeConfig::parse`] turns a
//! document into validated settings; errors name the key. Nothing downstream re-checks.
//! Settings given on a command line ([`ServeOverrides`]) replace the document's before it is
//! validated ([`ServeConfig::parse_with`]), so a bad value is reported once, under its option.

use std::{
    net::{SocketAddr, ToSocketAddrs},
    path::PathBuf,
    sync::OnceLock,
    time::Duration,
};

use fastedge_runtime::{CpuList, Engine};
pub use fastedge_wire::sni::ServerName;
use fastedge_wire::{
    balance::{BalanceMode, HealthSettings},
    net::IpPrefix,
};
use serde::Deserialize;
use toml::{de::DeTable, Spanned};

use crate::tickets::parse_keys;
pub use crate::tickets::TicketKeySource;

/// The documented default configuration, and the source of the built-in defaults: every
/// document is read over it (a key the document leaves out takes its value here).
pub const DEFAULT_CONFIG: &str = r#"# fastedge serve configuration (TOML). Every key is optional; shown with its default.
# Durations are written with a unit: "250ms", "10s", "5m", "1h".

# CPUs to run on, one executor each, as a Linux CPU list ("0-7", "0,2,4", "1-3,6"), or "all"
# for every CPU the process may use. `fastedge serve --cores` overrides it.
cores = "all"

# The executor engine: "uring" (fastedge's own io_uring engine: no interrupt per completion,
# multishot accept and receive into a per-core buffer pool, one submission per loop turn; needs
# Linux 6.1, or 5.19 with a warning) or "glommio". `fastedge serve --engine` overrides it.
engine = "uring"

# After binding every listener, drop privileges to this user (and group; default: the user's
# primary group). Supplementary groups are cleared. Empty: keep running as started.
user = ""
group = ""

# Address to serve Prometheus metrics on (GET /metrics), e.g. "127.0.0.1:9100". Empty: off.
metrics_listen = ""

[frontend]
# Addresses to accept TLS on. IPv6 listeners are IPv6-only, so list "0.0.0.0:443" and
# "[::]:443" both for dual stack.
listen = ["127.0.0.1:8443"]
# Accept queue length of each listener (one listener per core per address).
backlog = 1024
# A client that has not finished the TLS handshake by then is disconnected.
handshake_timeout = "10s"
# A connection with no bytes moving in either direction for this long is closed (at most 1193h).
idle_timeout = "5m"
# Backends with x_forwarded or forwarded: a request head (request line and header fields) must
# arrive whole within this long of its first byte, or the connection is closed (a client that
# trickles a head byte by byte would otherwise hold it for as long as it likes; at most 1193h).
request_head_timeout = "10s"
# Most connections open at once on each core; further clients wait in the accept queue.
max_connections = 10000
# When one side closes its sending direction, keep the other direction open until it closes
# too (half-close). false: close both sides at the first close.
allow_half_open = true
# On SIGTERM/SIGINT: stop accepting, give open connections this long to finish, then exit.
drain_timeout = "30s"
# Peers whose X-Forwarded-For / Forwarded headers are kept (and appended to); for every other
# client those headers are replaced. CIDR prefixes or addresses.
trusted_proxies = []

[tls]
# PEM certificate chain (leaf first) and its PEM private key. Empty: a self-signed demo
# certificate for localhost, created once in the state directory.
cert = ""
key = ""
# Keyless: instead of key, the UNIX socket ("unix:/run/signer.sock") of a signer that holds the
# key and signs handshakes for us (`fastedge keyserver`; protocol in docs/serve.md).
key_server = ""
# A DER OCSP response to staple for this certificate (see OCSP stapling below).
ocsp_staple = ""
# Passphrase of an encrypted key, from at most one of: inline, an environment variable, the
# first line of a file, or the first line of a command's standard output (run with sh -c).
passphrase = ""
passphrase_env = ""
passphrase_file = ""
passphrase_cmd = ""
# More certificate/key pairs (e.g. RSA beside ECDSA), one [[tls.certificate]] table each, with
# the same keys as above (cert, key, passphrase…). Each client gets the first pair, in order
# (tls.cert first), whose key type it can verify.
#
# [[tls.certificate]]
# cert = "rsa.pem"
# key = "rsa.key"
# Protocol versions: "1.2" or "1.3".
min_version = "1.2"
max_version = "1.3"
# TLS 1.2 cipher list (BoringSSL syntax). Empty: AEAD suites only (Mozilla "intermediate":
# ECDHE with AES-GCM or ChaCha20-Poly1305); name CBC suites here to offer them too.
ciphers = ""
# Key-exchange groups, most preferred first. X25519MLKEM768 is skipped where the linked
# BoringSSL lacks it.
groups = ["X25519MLKEM768", "X25519", "P-256", "P-384"]
# ALPN protocols accepted, most preferred first; list only what the backends speak. "h2" is
# left out where the backends get X-Forwarded-*/Forwarded (x_forwarded, forwarded): only
# HTTP/1 requests can carry them.
alpn = ["http/1.1"]
# Choose the cipher by the server's order rather than the client's.
server_preference = true
# Client certificates: "none" (not asked for), "optional" (asked for; a connection without one
# goes on, one that fails verification is refused), "required" (no valid certificate: refused).
# The result reaches backends in PROXY v2 TLVs, bud's JSON line, and X-Client-* headers.
client_verify = "none"
# PEM bundle of the CAs client certificates must chain to (needed unless client_verify = "none"),
# and an optional PEM CRL file checked against the client's certificate. Given here with
# client_verify = "none", they are what [[context]] tables asking for certificates inherit.
client_ca = ""
client_crl = ""
# SNI: a client naming a server that no [[context]] serves gets the default context above, or,
# with sni_strict = true, its handshake is refused with an unrecognized_name alert.
sni_strict = false
# Dynamic SNI (bud's protocol): names no [[context]] lists are asked of this HTTP service,
# "http://127.0.0.1:9000/bud/sni/%s" (%s: the name, percent-encoded); 404: no such name; 200:
# JSON {"cert", "key", "passphrase"?, "ciphers"?, "npn"?}. One cache for all cores keeps answers
# for sni_cache_ttl and 404s for sni_negative_ttl (at most sni_cache_size names in all, the
# least recently used dropped first; "a.test." is "a.test"); sni_fetchers
# threads ask the service, each request within sni_timeout. Empty: off.
sni_url = ""
sni_timeout = "2s"
sni_cache_ttl = "5m"
sni_negative_ttl = "30s"
sni_cache_size = 10000
sni_fetchers = 4
# Session resumption. Tickets (TLS 1.2 and 1.3) are encrypted with a key that changes every
# ticket_rotate; the ticket_previous keys before it still decrypt, so a ticket lives up to
# (ticket_previous + 1) × ticket_rotate. Keys are random at start unless one of:
#  - ticket_secret_file: a file holding a secret shared by a fleet (at least 32 bytes; make one
#    with `fastedge ticket-secret FILE`); every box derives the key of each rotation period from
#    it (HKDF-SHA256), so boxes agree with no coordination and no traffic; clocks must agree to
#    well under ticket_rotate. While a fleet changes its secret, ticket_secret_accept_file names
#    a second one whose keys decrypt (and whose sealed sessions open) but never encrypt (the
#    three steps are in docs/fleet.md).
#  - ticket_key_file: a file of keys, one base64 line of 48 bytes each, newest first; reread
#    when it changes.
tickets = true
ticket_rotate = "1h"
ticket_previous = 2
ticket_secret_file = ""
ticket_secret_accept_file = ""
ticket_key_file = ""
# Or fixed keys written here (base64 of 48 bytes, one per line, newest first), as bud's
# ticket_key: never rotated.
ticket_key = ""
# Also take keys from bud's IPC messages on standard input (0x03, u32 size 52, u32 context,
# 48-byte key): each becomes the current key, and rotation stops.
ticket_key_stdin = false
# Server-side session cache for clients that resume by session ID (TLS 1.2 without tickets):
# at most this many sessions (0: off), each valid for session_timeout (also tickets' lifetime
# as told to clients).
session_cache_size = 20480
session_timeout = "1h"
# A session store shared by a fleet, behind that cache, so a client resuming by session ID
# resumes on any box: "redis://host:6379", "redis://host:6379/2" or "unix:/run/redis.sock".
# Sessions are sealed (AES-256-GCM) with a key derived from ticket_secret_file, which it
# needs. A session ID the local cache lacks is looked up without blocking the core; with no
# answer within session_store_timeout (or Redis down) the handshake goes on as a full one.
# Empty: off.
session_store = ""
session_store_timeout = "20ms"
# OCSP stapling. A certificate may name a DER OCSP response file to staple (ocsp_staple =
# "cert.ocsp", beside cert and key; reread when it changes). Otherwise, with ocsp_fetch, the
# responder named in the certificate is asked (the issuer must follow the leaf in the cert
# file), again halfway to the response's nextUpdate; or, with ocsp_url, bud's stapling service
# ("http://127.0.0.1:9000/bud/stapling/%s": GET, then POST on a miss). Every staple is checked
# (for this certificate, good, current, signed by the issuer or its delegate) before use; a
# failed refresh keeps the last good one until it expires. Handshakes never wait for it.
ocsp_fetch = true
ocsp_url = ""
ocsp_timeout = "5s"
# TLS 1.3 early data (0-RTT) from resuming clients: their first request skips a round trip, but
# early data can be replayed by an attacker. Off by default. When on, up to early_data_max
# bytes are passed to the backend at once (BoringSSL accepts at most 14336 per connection);
# more waits for the handshake to complete. Requests that arrived in early data get
# "Early-Data: 1" (RFC 8470) on backends with x_forwarded or forwarded, so the application can
# answer "425 Too Early" to what must not be replayed.
early_data = false
early_data_max = 14336

# SNI contexts, one [[context]] table each: server names (exact, or "*.example.com" for one
# label), with their own certificates and, optionally, their own ALPN, ciphers, client
# certificate policy and backends. Keys not given are taken from [tls] (and the global
# backends). An exact name wins over a wildcard.
#
# [[context]]
# servername = ["example.com", "*.example.com"]
# cert = "example.pem"
# key = "example.key"
# alpn = ["h2", "http/1.1"]
# client_verify = "required"
# client_ca = "clients-ca.pem"
# [[context.backend]]
# address = "127.0.0.1:9001"

[balance]
# How a backend is chosen: "roundrobin", "on-fail" (first live backend in list order), or
# "least-conn" (fewest open connections from this core). Connections matched to a [[context]]
# with its own backends are balanced over those ("sni", as bud calls it, is roundrobin).
mode = "roundrobin"
# A backend connect that has not completed by then has failed.
connect_timeout = "5s"
# After a failed connect, wait this long, then try the next backend.
retry_interval = "250ms"
# Connect attempts after the first, over the backends, before the client is disconnected.
max_retries = 5
# A backend whose connects keep failing for this long (no success between) is dead: skipped.
death_timeout = "1s"
# A dead backend gets one probe connection after this long; success revives it.
revive_interval = "2500ms"
# Active health check: every this long, each core opens (and closes) a TCP connection to each
# backend; failures count like failed connects, a success revives a dead backend. "0s": off.
health_check_interval = "0s"
# The backend connect starts during the handshake. A connection so made for a client that then
# cut its connection without sending a byte (or whose handshake failed) is kept, unused, for
# the next client of that backend: up to this many per backend on each core. 0: closed at once.
spare_connections = 8
# A kept connection is not used from this long after its connect, and closed within twice
# that: keep it well below the backend's own timeout for a connection that sends no request.
spare_max_age = "1s"

# Backends, one [[backend]] table each. None: a built-in demo backend on loopback that answers
# every request with the request head as it reached it.
#
# [[backend]]
# address = "127.0.0.1:8080"   # host:port (a name is resolved at load), or unix:/path
# proxy_protocol = "none"      # "none", "v1", "v2" (with ALPN, SNI and TLS TLVs), "bud-json"
# x_forwarded = false          # X-Forwarded-For/-Proto/-Port into every HTTP/1.x request
# forwarded = false            # RFC 7239 Forwarded: for=…;proto=https into every request
# send_client_cert = false     # the client certificate too: X-Client-Cert (PEM, percent-
#                              # encoded) and PROXY v2 TLV 0xE0 (DER). X-Client-Verify and
#                              # X-Client-Subject come with x_forwarded when client
#                              # certificates are asked for.
"#;

/// A configuration error; the text names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The document is not TOML, or has an unknown key or a value of the wrong type (the parser's
    /// message names the key and line).
    #[error("{0}")]
    Syntax(String),
    /// A value is not acceptable.
    #[error("{key}: {message}")]
    Invalid {
        /// The key, dotted (`frontend.listen`, `context[1].cert`), or the command-line option
        /// that set it.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// A document as written, read over [`DEFAULT_CONFIG`] ([`RawConfig::read`]). Its tables are
/// strict: every key must be present after that (so the default document must hold them all),
/// except the lists of tables, which the default document leaves empty.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cores: String,
    engine: String,
    user: String,
    group: String,
    metrics_listen: String,
    frontend: RawFrontend,
    tls: RawTls,
    balance: RawBalance,
    #[serde(default)]
    backend: Vec<RawBackend>,
    #[serde(default)]
    context: Vec<RawContext>,
    /// Which keys came from [`ServeOverrides`], so that errors name the option.
    #[serde(skip)]
    origins: Origins,
}

/// The names errors give to values that may come from a command-line override.
#[derive(Debug, PartialEq)]
struct Origins {
    cores: &'static str,
    alpn: &'static str,
    /// The `--backend` text when the backends came from it.
    backend: Option<String>,
}

impl Default for Origins {
    fn default() -> Self {
        Self {
            cores: "cores",
            alpn: "tls.alpn",
            backend: None,
        }
    }
}

/// Settings that replace the configuration document's own, as `fastedge serve`'s options do.
/// Applied to the document before validation ([`ServeConfig::parse_with`]); errors in them
/// name the option (`--cores`, `--backend "…"`, `--alpn`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeOverrides {
    /// Replaces `cores`: a Linux CPU list (`0-7`, `0,2,4`).
    pub cores: Option<String>,
    /// Replaces `engine`.
    pub engine: Option<Engine>,
    /// Replaces `frontend.listen` when not empty.
    pub listen: Vec<SocketAddr>,
    /// Replaces every `[[backend]]` with this one address (`host:port` or `unix:/path`), with
    /// the default backend settings.
    pub backend: Option<String>,
    /// Replaces the certificate pairs with this one (certificate chain, key). The key's
    /// passphrase, if any, is the one configured for the first pair. Paths that are not UTF-8
    /// are taken lossily.
    pub certificate: Option<(PathBuf, PathBuf)>,
    /// Replaces `tls.alpn`; empty names are left out.
    pub alpn: Option<Vec<String>>,
}

impl ServeOverrides {
    /// Writes the overrides into the raw document.
    fn apply(&self, raw: &mut RawConfig) {
        if let Some(cores) = &self.cores {
            raw.cores = cores.clone();
            raw.origins.cores = "--cores";
        }
        if let Some(engine) = self.engine {
            raw.engine = engine.to_string();
        }
        if !self.listen.is_empty() {
            raw.frontend.listen = self.listen.iter().map(ToString::to_string).collect();
        }
        if let Some(address) = &self.backend {
            raw.backend = vec![RawBackend {
                address: address.clone(),
                proxy_protocol: default_proxy_protocol(),
                x_forwarded: false,
                forwarded: false,
                send_client_cert: false,
            }];
            raw.origins.backend = Some(format!("--backend {address:?}"));
        }
        if let Some((cert, key)) = &self.certificate {
            let t = &mut raw.tls;
            // The passphrase of the first configured pair goes with the new one.
            let shorthand = t.shorthand();
            let first = if shorthand.given() {
                shorthand
            } else {
                t.certificate.first().cloned().unwrap_or_default()
            };
            let own_key = first.key_server.trim().is_empty();
            t.certificate.clear();
            t.cert = cert.to_string_lossy().into_owned();
            t.key = key.to_string_lossy().into_owned();
            t.key_server = String::new();
            t.ocsp_staple = String::new();
            let keep = |value: &String| {
                if own_key {
                    value.clone()
                } else {
                    String::new()
                }
            };
            t.passphrase = keep(&first.passphrase);
            t.passphrase_env = keep(&first.passphrase_env);
            t.passphrase_file = keep(&first.passphrase_file);
            t.passphrase_cmd = keep(&first.passphrase_cmd);
        }
        if let Some(alpn) = &self.alpn {
            raw.tls.alpn = alpn.iter().filter(|p| !p.is_empty()).cloned().collect();
            raw.origins.alpn = "--alpn";
        }
    }
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawFrontend {
    listen: Vec<String>,
    backlog: i32,
    handshake_timeout: String,
    idle_timeout: String,
    request_head_timeout: String,
    max_connections: u32,
    allow_half_open: bool,
    drain_timeout: String,
    trusted_proxies: Vec<String>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: String,
    key: String,
    key_server: String,
    ocsp_staple: String,
    passphrase: String,
    passphrase_env: String,
    passphrase_file: String,
    passphrase_cmd: String,
    #[serde(default)]
    certificate: Vec<RawCertificate>,
    min_version: String,
    max_version: String,
    ciphers: String,
    groups: Vec<String>,
    alpn: Vec<String>,
    server_preference: bool,
    client_verify: String,
    client_ca: String,
    client_crl: String,
    sni_strict: bool,
    tickets: bool,
    ticket_rotate: String,
    ticket_previous: u32,
    ticket_secret_file: String,
    ticket_secret_accept_file: String,
    ticket_key_file: String,
    ticket_key: String,
    ticket_key_stdin: bool,
    session_cache_size: u32,
    session_timeout: String,
    session_store: String,
    session_store_timeout: String,
    ocsp_fetch: bool,
    ocsp_url: String,
    ocsp_timeout: String,
    sni_url: String,
    sni_timeout: String,
    sni_cache_ttl: String,
    sni_negative_ttl: String,
    sni_cache_size: usize,
    sni_fetchers: usize,
    early_data: bool,
    early_data_max: usize,
}

/// One `[[context]]`: absent keys inherit from `[tls]`.
#[derive(Debug, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
struct RawContext {
    servername: Vec<String>,
    cert: String,
    key: String,
    key_server: String,
    ocsp_staple: String,
    passphrase: String,
    passphrase_env: String,
    passphrase_file: String,
    passphrase_cmd: String,
    certificate: Vec<RawCertificate>,
    alpn: Option<Vec<String>>,
    ciphers: Option<String>,
    client_verify: Option<String>,
    client_ca: Option<String>,
    client_crl: Option<String>,
    backend: Vec<RawBackend>,
}

#[derive(Debug, Deserialize, PartialEq, Default, Clone)]
#[serde(deny_unknown_fields, default)]
struct RawCertificate {
    cert: String,
    key: String,
    key_server: String,
    ocsp_staple: String,
    passphrase: String,
    passphrase_env: String,
    passphrase_file: String,
    passphrase_cmd: String,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawBalance {
    mode: String,
    connect_timeout: String,
    retry_interval: String,
    max_retries: u32,
    death_timeout: String,
    revive_interval: String,
    health_check_interval: String,
    spare_connections: u32,
    spare_max_age: String,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: String,
    #[serde(default = "default_proxy_protocol")]
    proxy_protocol: String,
    #[serde(default)]
    x_forwarded: bool,
    #[serde(default)]
    forwarded: bool,
    #[serde(default)]
    send_client_cert: bool,
}

fn default_proxy_protocol() -> String {
    "none".into()
}

/// [`DEFAULT_CONFIG`] parsed, once: the layer every document is read over.
fn default_table() -> Result<&'static DeTable<'static>, ConfigError> {
    static TABLE: OnceLock<Result<DeTable<'static>, String>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            DeTable::parse(DEFAULT_CONFIG)
                .map(Spanned::into_inner)
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| ConfigError::Syntax(format!("the default configuration: {e}")))
}

/// Gives `document` every key of `defaults` it lacks, table by table (a table the document
/// gives is filled in key by key; any other value it gives replaces the default whole).
fn fill_in<'i>(document: &mut DeTable<'i>, defaults: &DeTable<'static>) {
    for (key, default) in defaults.iter() {
        match document.get_mut(key.get_ref().as_ref()) {
            None => {
                document.insert(key.clone(), default.clone());
            }
            Some(given) => {
                if let (toml::de::DeValue::Table(given), toml::de::DeValue::Table(default)) =
                    (given.get_mut(), default.get_ref())
                {
                    fill_in(given, default);
                }
            }
        }
    }
}

impl RawConfig {
    /// Reads a TOML document over [`DEFAULT_CONFIG`]. Leading and trailing whitespace is fine.
    /// Errors show where in `text` they are, as the TOML parser words them.
    fn read(text: &str) -> Result<Self, ConfigError> {
        let text = text.trim();
        let syntax = |e: toml::de::Error| ConfigError::Syntax(e.to_string());
        let document = DeTable::parse(text).map_err(syntax)?;
        let span = document.span();
        let mut table = document.into_inner();
        fill_in(&mut table, default_table()?);
        RawConfig::deserialize(toml::Deserializer::from(Spanned::new(span, table))).map_err(
            |mut e| {
                e.set_input(Some(text));
                syntax(e)
            },
        )
    }

    /// The built-in defaults: [`DEFAULT_CONFIG`] as it reads.
    fn documented() -> Result<Self, ConfigError> {
        Self::read("")
    }
}

impl RawTls {
    /// The `[tls]` table's shorthand pair (`cert`, `key`, …) as a certificate entry.
    fn shorthand(&self) -> RawCertificate {
        RawCertificate {
            cert: self.cert.clone(),
            key: self.key.clone(),
            key_server: self.key_server.clone(),
            ocsp_staple: self.ocsp_staple.clone(),
            passphrase: self.passphrase.clone(),
            passphrase_env: self.passphrase_env.clone(),
            passphrase_file: self.passphrase_file.clone(),
            passphrase_cmd: self.passphrase_cmd.clone(),
        }
    }
}

impl RawCertificate {
    /// Whether any of the pair's keys is written.
    fn given(&self) -> bool {
        [
            &self.cert,
            &self.key,
            &self.key_server,
            &self.ocsp_staple,
            &self.passphrase,
            &self.passphrase_env,
            &self.passphrase_file,
            &self.passphrase_cmd,
        ]
        .iter()
        .any(|v| !v.trim().is_empty())
    }
}

/// Validated settings of `fastedge serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The CPUs to run on, `None` for every CPU the process may use (whether the listed ones
    /// are available is checked at start).
    pub cores: Option<CpuList>,
    /// The executor engine.
    pub engine: Engine,
    /// `user`: the user to switch to after binding; `None`: stay.
    pub user: Option<String>,
    /// `group`: the group to switch to after binding; `None`: the user's primary group.
    pub group: Option<String>,
    /// `metrics_listen`: where Prometheus text is served on `GET /metrics`; `None`: off.
    pub metrics_listen: Option<SocketAddr>,
    /// The `[frontend]` table: listeners and client-side timeouts.
    pub frontend: FrontendSettings,
    /// The `[tls]` table and the `[[context]]` tables.
    pub tls: TlsSettings,
    /// The `[balance]` table: backend choice, retries and health.
    pub balance: BalanceSettings,
    /// Empty: the built-in demo backend.
    pub backends: Vec<BackendSpec>,
}

/// The validated `[frontend]` table: what faces the clients.
#[derive(Debug, Clone)]
pub struct FrontendSettings {
    /// TLS listen addresses (`frontend.listen`), at least one.
    pub listen: Vec<SocketAddr>,
    /// Accept queue length per listener (`frontend.backlog`).
    pub backlog: i32,
    /// Time a client has to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// A connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// How long a request head may take to arrive whole (backends that get headers injected).
    pub request_head_timeout: Duration,
    /// Open connections per core; more clients wait in the accept queue.
    pub max_connections: u32,
    /// Keep the other direction open after one side closes its sending half.
    pub allow_half_open: bool,
    /// On a stop or drain, how long open connections get to finish.
    pub drain_timeout: Duration,
    /// Clients whose `X-Forwarded-For`/`Forwarded` are kept and appended to.
    pub trusted_proxies: Vec<IpPrefix>,
}

/// Where an encrypted key's passphrase comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Passphrase {
    /// Written in the configuration (`passphrase`).
    Inline(String),
    /// The value of this environment variable (`passphrase_env`).
    Env(String),
    /// The first line of this file (`passphrase_file`).
    File(PathBuf),
    /// The first line of what this shell command (`passphrase_cmd`, run with `sh -c`) prints.
    Command(String),
}

/// One certificate chain with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSpec {
    /// The PEM certificate chain file, leaf first (or the PEM text itself).
    pub cert: PathBuf,
    /// The PEM key file; unused (empty) when `key_server` holds the key.
    pub key: PathBuf,
    /// The passphrase of an encrypted key; `None`: the key is not encrypted.
    pub passphrase: Option<Passphrase>,
    /// Keyless: the UNIX socket of the signer that holds the key.
    pub key_server: Option<PathBuf>,
    /// A DER OCSP response to staple, reread when it changes.
    pub ocsp_staple: Option<PathBuf>,
}

/// The validated `[tls]` table: the default context's certificates and protocol settings, the SNI
/// contexts, resumption and stapling.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Certificate/key pairs in order of preference; empty for the demo certificate.
    pub certificates: Vec<CertificateSpec>,
    /// Lowest protocol version offered.
    pub min_version: TlsVersion,
    /// Highest protocol version offered.
    pub max_version: TlsVersion,
    /// TLS 1.2 cipher list in BoringSSL syntax; `None`: AEAD suites with ECDHE only.
    pub ciphers: Option<String>,
    /// Key-exchange groups, preferred first (`X25519MLKEM768`, `X25519`, `P-256`, …).
    pub groups: Vec<String>,
    /// ALPN protocols accepted, in the server's order of preference.
    pub alpn: Vec<String>,
    /// Leave `h2` out of the ALPN lists dynamic SNI answers give: the global backends get
    /// forwarding headers, which only HTTP/1 requests can carry (set by
    /// [`ServeConfig::leave_out_h2_where_injecting`]).
    pub alpn_no_h2: bool,
    /// The server's cipher order wins over the client's.
    pub server_preference: bool,
    /// Client certificates of the default context.
    pub client_auth: ClientAuth,
    /// SNI contexts, in configuration order.
    pub contexts: Vec<SniContext>,
    /// Refuse server names no context serves (`unrecognized_name`) instead of using the default
    /// context.
    pub sni_strict: bool,
    /// Session tickets and the session cache.
    pub resumption: Resumption,
    /// Where OCSP staples come from.
    pub stapling: Stapling,
    /// Contexts for unlisted names from an HTTP service.
    pub dynamic_sni: Option<DynamicSniSettings>,
    /// TLS 1.3 early data (0-RTT): bytes passed on before the handshake completes; off: None.
    pub early_data: Option<usize>,
}

/// Dynamic SNI (`tls.sni_url`): contexts for unlisted names, asked of an HTTP service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicSniSettings {
    /// `http://…` with `%s` for the server name.
    pub url: String,
    /// Per request to the service.
    pub timeout: Duration,
    /// How long an answer with a context is cached.
    pub cache_ttl: Duration,
    /// How long a 404 (no such name) is cached.
    pub negative_ttl: Duration,
    /// Names cached in all (one cache for every core, least recently used dropped first);
    /// 0: no cache.
    pub cache_size: usize,
    /// Helper threads, so connections to the service at once.
    pub fetchers: usize,
}

/// Where OCSP staples come from when a certificate has no `ocsp_staple` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stapling {
    /// Ask the responder named in each certificate.
    pub fetch: bool,
    /// bud's stapling service, a URL with `%s`; used instead of the responders.
    pub url: Option<String>,
    /// Per request to a responder or the stapling service.
    pub timeout: Duration,
}

/// Whether and how clients present certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientVerify {
    /// No certificate asked for.
    None,
    /// Asked for; a client may send none, but a bad one is refused.
    Optional,
    /// Every client must present a good certificate.
    Required,
}

/// Client-certificate policy of one context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// Whether a certificate is asked for or required.
    pub verify: ClientVerify,
    /// CA bundle; present unless `verify` is `None`.
    pub ca: Option<PathBuf>,
    /// A PEM CRL; a certificate it revokes is refused.
    pub crl: Option<PathBuf>,
}

/// One SNI context: the names it serves and what differs from the default context.
#[derive(Debug, Clone)]
pub struct SniContext {
    /// Exact names and `*.` wildcards, checked when the configuration was validated (the
    /// context builder puts them in its name table as they are).
    pub names: Vec<ServerName>,
    /// Its certificate/key pairs, in order of preference.
    pub certificates: Vec<CertificateSpec>,
    /// Its TLS 1.2 cipher list; `None`: the `[tls]` one.
    pub ciphers: Option<String>,
    /// Its ALPN protocols.
    pub alpn: Vec<String>,
    /// Its client-certificate policy.
    pub client_auth: ClientAuth,
    /// Empty: the global backends.
    pub backends: Vec<BackendSpec>,
}

/// Session resumption: tickets (TLS 1.2 and 1.3) and the TLS 1.2 session-ID cache.
#[derive(Debug, Clone)]
pub struct Resumption {
    /// Issue and accept session tickets.
    pub tickets: bool,
    /// A new ticket key every this long.
    pub ticket_rotate: Duration,
    /// How many keys before the current one still decrypt tickets.
    pub ticket_previous: u32,
    /// Where the keys come from.
    pub ticket_keys: TicketKeySource,
    /// Read bud's ticket-key messages on standard input.
    pub ticket_key_stdin: bool,
    /// 0: no server-side session cache.
    pub session_cache_size: u32,
    /// Lifetime of a session (ticket or cache entry).
    pub session_timeout: Duration,
    /// The fleet's shared session store, behind the local cache.
    pub session_store: Option<crate::session_store::StoreSettings>,
}

/// A TLS protocol version (`"1.2"`, `"1.3"` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

/// The validated `[balance]` table.
#[derive(Debug, Clone, Copy)]
pub struct BalanceSettings {
    /// How a backend is chosen (round robin, first live, least connections).
    pub mode: BalanceMode,
    /// Deadline of one backend connect.
    pub connect_timeout: Duration,
    /// Wait between retries after a failed connect.
    pub retry_interval: Duration,
    /// Retries over the backends after a failed connect.
    pub max_retries: u32,
    /// Passive health: when a failing backend counts as dead and when it is probed again.
    pub health: HealthSettings,
    /// Active TCP health checks every this long; `None`: off.
    pub health_check_interval: Option<Duration>,
    /// Backend connections left unused by their clients that each core keeps per backend for
    /// its next clients (0: none).
    pub spare_connections: usize,
    /// How long after its connect a kept connection is closed.
    pub spare_max_age: Duration,
}

/// The longest `balance.spare_max_age` may be.
pub const SPARE_MAX_AGE_MAX: Duration = Duration::from_secs(3600);

/// The most `balance.spare_connections` may say.
pub const SPARE_CONNECTIONS_MAX: u32 = 1024;

/// What a backend is told about the client at the start of its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyPrefix {
    /// Nothing: the client's bytes from the first one.
    None,
    /// A PROXY protocol v1 text line.
    V1,
    /// A PROXY protocol v2 binary header with TLVs (ALPN, SNI, TLS version and cipher, client
    /// certificate).
    V2,
    /// bud's JSON line (`BUD {...}\r\n`).
    BudJson,
}

/// Where a backend listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A UNIX stream socket (`unix:/path`).
    Unix(PathBuf),
}

impl std::fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendAddr::Tcp(addr) => addr.fmt(f),
            BackendAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// One backend and what it is told about clients.
#[derive(Debug, Clone)]
pub struct BackendSpec {
    /// The address as written, for logs.
    pub name: String,
    /// Where it listens.
    pub addr: BackendAddr,
    /// The prefix written before the client's bytes.
    pub proxy_protocol: ProxyPrefix,
    /// Add `X-Forwarded-For`/`-Proto`/`-Port` to every HTTP/1.x request.
    pub x_forwarded: bool,
    /// Add an RFC 7239 `Forwarded` field to every HTTP/1.x request.
    pub forwarded: bool,
    /// The client certificate itself goes to the backend too (X-Client-Cert, PROXY v2 TLV).
    pub send_client_cert: bool,
}

impl BackendSpec {
    /// Whether fastedge rewrites this backend's HTTP/1 requests (forwarding headers).
    pub fn injects(&self) -> bool {
        self.x_forwarded || self.forwarded
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        // The default document is complete and valid; `tests::default_document_is_the_defaults`
        // and `tests::defaults_are_valid` check.
        RawConfig::documented()
            .and_then(validate)
            .unwrap_or_else(|e| unreachable!("built-in defaults: {e}"))
    }
}

impl ServeConfig {
    /// Leaves `h2` out of every ALPN list whose connections go to backends that get forwarding
    /// headers (`x_forwarded`/`forwarded`): only HTTP/1 requests can be rewritten, and an
    /// HTTP/2 connection passed on unrewritten would let clients state their own. Such clients
    /// negotiate `http/1.1` instead. Returns the keys whose list lost `h2`, for a notice.
    /// Call it once the configuration is final (after command-line overrides).
    pub fn leave_out_h2_where_injecting(&mut self) -> Vec<String> {
        fn without_h2(alpn: &mut Vec<String>) -> bool {
            let before = alpn.len();
            alpn.retain(|p| p != "h2");
            alpn.len() != before
        }
        let global = self.backends.iter().any(BackendSpec::injects);
        let mut changed = Vec::new();
        if global {
            self.tls.alpn_no_h2 = true;
            if without_h2(&mut self.tls.alpn) {
                changed.push("tls.alpn".to_owned());
            }
        }
        for (i, context) in self.tls.contexts.iter_mut().enumerate() {
            let injects = if context.backends.is_empty() {
                global
            } else {
                context.backends.iter().any(BackendSpec::injects)
            };
            if injects && without_h2(&mut context.alpn) {
                changed.push(format!("context[{i}].alpn"));
            }
        }
        changed
    }

    /// Parses and validates a TOML document. Leading and trailing whitespace is fine.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::parse_with(text, &ServeOverrides::default())
    }

    /// Parses a TOML document, replaces its settings by `overrides`, and validates the result
    /// (once: a bad override is reported under its option's name).
    pub fn parse_with(text: &str, overrides: &ServeOverrides) -> Result<Self, ConfigError> {
        let mut raw = RawConfig::read(text)?;
        overrides.apply(&mut raw);
        validate(raw)
    }

    /// The built-in defaults with `overrides` applied, validated.
    pub fn defaults_with(overrides: &ServeOverrides) -> Result<Self, ConfigError> {
        let mut raw = RawConfig::documented()?;
        overrides.apply(&mut raw);
        validate(raw)
    }
}

/// Parses a duration written with a unit: `250ms`, `10s`, `5m`, `1h`.
pub fn parse_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || {
        invalid(
            key,
            format!("{text:?} is not a duration like \"250ms\", \"10s\", \"5m\" or \"1h\""),
        )
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    let millis = match unit.trim() {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(bad)?;
    Ok(Duration::from_millis(millis))
}

/// The longest idle or request-head timeout (`u32::MAX` milliseconds, about 49.7 days): the
/// pump keeps its limits as milliseconds in 4 bytes each, for as long as a connection lives.
pub const TIMEOUT_MAX: Duration = Duration::from_millis(u32::MAX as u64);

/// A limit the pump keeps for each connection: positive, and at most [`TIMEOUT_MAX`].
fn pump_limit(key: &str, text: &str) -> Result<Duration, ConfigError> {
    let d = positive_duration(key, text)?;
    if d > TIMEOUT_MAX {
        return Err(invalid(
            key,
            format!(
                "{text:?} is too long: at most {}h (49 days)",
                TIMEOUT_MAX.as_secs() / 3600
            ),
        ));
    }
    Ok(d)
}

fn positive_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    let d = parse_duration(key, text)?;
    if d.is_zero() {
        return Err(invalid(key, "must be longer than zero"));
    }
    Ok(d)
}

fn nonempty(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// `host:port` (resolved now) or `unix:/absolute/path`.
fn parse_backend_addr(key: &str, name: &str) -> Result<BackendAddr, ConfigError> {
    if let Some(path) = name.strip_prefix("unix:") {
        if !path.starts_with('/') {
            let message =
                format!("{name:?}: a UNIX socket path must be absolute (unix:/run/app.sock)");
            return Err(invalid(key, message));
        }
        return Ok(BackendAddr::Unix(PathBuf::from(path)));
    }
    let mut addrs = name.to_socket_addrs().map_err(|e| {
        invalid(
            key,
            format!("{name:?}: {e} (expected host:port or unix:/path)"),
        )
    })?;
    let addr = addrs
        .next()
        .ok_or_else(|| invalid(key, format!("{name:?} resolved to no address")))?;
    Ok(BackendAddr::Tcp(addr))
}

fn certificate_spec(prefix: &str, raw: &RawCertificate) -> Result<CertificateSpec, ConfigError> {
    let needs = "a certificate needs cert and key (or key_server)";
    let cert = nonempty(&raw.cert)
        .map(PathBuf::from)
        .ok_or_else(|| invalid(format!("{prefix}.cert"), needs))?;
    let key_server = match nonempty(&raw.key_server) {
        None => None,
        Some(text) => match text.strip_prefix("unix:") {
            Some(path) if path.starts_with('/') => Some(PathBuf::from(path)),
            _ => {
                return Err(invalid(
                    format!("{prefix}.key_server"),
                    format!("{text:?}: a key server is a UNIX socket: \"unix:/absolute/path\""),
                ))
            }
        },
    };
    let key = match (nonempty(&raw.key), &key_server) {
        (Some(key), None) => PathBuf::from(key),
        (None, Some(_)) => PathBuf::new(),
        (None, None) => return Err(invalid(format!("{prefix}.key"), needs)),
        (Some(_), Some(_)) => {
            return Err(invalid(
                format!("{prefix}.key_server"),
                "give key or key_server, not both",
            ))
        }
    };
    let sources: Vec<Passphrase> = [
        nonempty(&raw.passphrase).map(Passphrase::Inline),
        nonempty(&raw.passphrase_env).map(Passphrase::Env),
        nonempty(&raw.passphrase_file).map(|p| Passphrase::File(p.into())),
        nonempty(&raw.passphrase_cmd).map(Passphrase::Command),
    ]
    .into_iter()
    .flatten()
    .collect();
    if sources.len() > 1 {
        return Err(invalid(
            format!("{prefix}.passphrase"),
            "give at most one of passphrase, passphrase_env, passphrase_file, passphrase_cmd",
        ));
    }
    if key_server.is_some() && !sources.is_empty() {
        return Err(invalid(
            format!("{prefix}.passphrase"),
            "the key server holds the key: no passphrase here",
        ));
    }
    Ok(CertificateSpec {
        cert,
        key,
        passphrase: sources.into_iter().next(),
        key_server,
        ocsp_staple: nonempty(&raw.ocsp_staple).map(PathBuf::from),
    })
}

/// The pairs of a table: its shorthand `cert`/`key` (if given) first, then `certificate[]`.
fn certificate_list(
    prefix: &str,
    shorthand: &RawCertificate,
    list: &[RawCertificate],
) -> Result<Vec<CertificateSpec>, ConfigError> {
    let mut certificates = Vec::new();
    if shorthand.given() {
        certificates.push(certificate_spec(prefix, shorthand)?);
    }
    for (i, raw) in list.iter().enumerate() {
        certificates.push(certificate_spec(
            &format!("{prefix}.certificate[{i}]"),
            raw,
        )?);
    }
    Ok(certificates)
}

fn check_alpn(key: &str, alpn: &[String]) -> Result<(), ConfigError> {
    for (i, name) in alpn.iter().enumerate() {
        if name.is_empty() || name.len() > 255 {
            return Err(invalid(
                format!("{key}[{i}]"),
                "protocol names are 1 to 255 bytes",
            ));
        }
    }
    Ok(())
}

/// `{prefix}.client_verify`.
fn parse_client_verify(prefix: &str, text: &str) -> Result<ClientVerify, ConfigError> {
    match text.trim() {
        "none" => Ok(ClientVerify::None),
        "optional" => Ok(ClientVerify::Optional),
        "required" => Ok(ClientVerify::Required),
        other => Err(invalid(
            format!("{prefix}.client_verify"),
            format!("{other:?} is not one of \"none\", \"optional\", \"required\""),
        )),
    }
}

/// A client-certificate policy from its mode and its `{prefix}.client_ca` and
/// `{prefix}.client_crl`.
fn client_auth(
    prefix: &str,
    verify: ClientVerify,
    ca: &str,
    crl: &str,
) -> Result<ClientAuth, ConfigError> {
    let ca = nonempty(ca).map(PathBuf::from);
    let crl = nonempty(crl).map(PathBuf::from);
    if verify != ClientVerify::None && ca.is_none() {
        return Err(invalid(
            format!("{prefix}.client_ca"),
            "client certificates need the CA bundle they must chain to",
        ));
    }
    if crl.is_some() && ca.is_none() {
        return Err(invalid(
            format!("{prefix}.client_crl"),
            "a CRL needs the client_ca bundle it belongs to",
        ));
    }
    Ok(ClientAuth { verify, ca, crl })
}

/// The backends of `raw`, under keys `{prefix}[i].field`; with `origin`, every error is named
/// by it instead (the backend came from a command-line option).
fn backend_list(
    prefix: &str,
    raw: &[RawBackend],
    origin: Option<&str>,
) -> Result<Vec<BackendSpec>, ConfigError> {
    raw.iter()
        .enumerate()
        .map(|(i, raw)| {
            let key = |field: &str| match origin {
                Some(origin) => origin.to_owned(),
                None => format!("{prefix}[{i}].{field}"),
            };
            let name = raw.address.trim().to_owned();
            let addr = parse_backend_addr(&key("address"), &name)?;
            let proxy_protocol = match raw.proxy_protocol.trim() {
                "none" => ProxyPrefix::None,
                "v1" => ProxyPrefix::V1,
                "v2" => ProxyPrefix::V2,
                "bud-json" => ProxyPrefix::BudJson,
                other => {
                    return Err(invalid(
                        key("proxy_protocol"),
                        format!("{other:?} is not one of \"none\", \"v1\", \"v2\", \"bud-json\""),
                    ))
                }
            };
            Ok(BackendSpec {
                name,
                addr,
                proxy_protocol,
                x_forwarded: raw.x_forwarded,
                forwarded: raw.forwarded,
                send_client_cert: raw.send_client_cert,
            })
        })
        .collect()
}

/// Validates a whole document: each section by its own validator, in document order (so the
/// first error reported is the same whichever way the sections are written).
fn validate(raw: RawConfig) -> Result<ServeConfig, ConfigError> {
    let cores = validate_cores(&raw.cores, raw.origins.cores)?;
    let engine = validate_engine(&raw.engine)?;
    let metrics_listen = validate_metrics_listen(&raw.metrics_listen)?;
    let frontend = validate_frontend(&raw.frontend)?;
    let tls = validate_tls(raw.tls, &raw.context, raw.origins.alpn)?;
    let balance = validate_balance(&raw.balance)?;
    let backends = backend_list("backend", &raw.backend, raw.origins.backend.as_deref())?;
    Ok(ServeConfig {
        cores,
        engine,
        user: nonempty(&raw.user),
        group: nonempty(&raw.group),
        metrics_listen,
        frontend,
        tls,
        balance,
        backends,
    })
}

/// `cores` (or the option named `key` that set it): `None` for every CPU.
fn validate_cores(text: &str, key: &str) -> Result<Option<CpuList>, ConfigError> {
    match text.trim() {
        "" | "all" => Ok(None),
        list => list
            .parse::<CpuList>()
            .map(Some)
            .map_err(|e| invalid(key, format!("{list:?}: {e}"))),
    }
}

/// `engine`.
fn validate_engine(text: &str) -> Result<Engine, ConfigError> {
    text.trim()
        .parse::<Engine>()
        .map_err(|e| invalid("engine", e.to_string()))
}

/// `metrics_listen`: `None` when empty.
fn validate_metrics_listen(text: &str) -> Result<Option<SocketAddr>, ConfigError> {
    match text.trim() {
        "" => Ok(None),
        text => text.parse::<SocketAddr>().map(Some).map_err(|_| {
            invalid(
                "metrics_listen",
                format!("{text:?} is not an IP:port address"),
            )
        }),
    }
}

/// The `[frontend]` table.
fn validate_frontend(f: &RawFrontend) -> Result<FrontendSettings, ConfigError> {
    if f.listen.is_empty() {
        return Err(invalid("frontend.listen", "needs at least one address"));
    }
    let listen = f
        .listen
        .iter()
        .enumerate()
        .map(|(i, text)| {
            text.trim().parse::<SocketAddr>().map_err(|_| {
                invalid(
                    format!("frontend.listen[{i}]"),
                    format!("{text:?} is not an IP:port address"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if f.backlog <= 0 {
        return Err(invalid("frontend.backlog", "must be positive"));
    }
    if f.max_connections == 0 {
        return Err(invalid("frontend.max_connections", "must be positive"));
    }
    let trusted_proxies = f
        .trusted_proxies
        .iter()
        .enumerate()
        .map(|(i, text)| {
            text.parse::<IpPrefix>()
                .map_err(|e| invalid(format!("frontend.trusted_proxies[{i}]"), e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(FrontendSettings {
        listen,
        backlog: f.backlog,
        handshake_timeout: positive_duration("frontend.handshake_timeout", &f.handshake_timeout)?,
        idle_timeout: pump_limit("frontend.idle_timeout", &f.idle_timeout)?,
        request_head_timeout: pump_limit("frontend.request_head_timeout", &f.request_head_timeout)?,
        max_connections: f.max_connections,
        allow_half_open: f.allow_half_open,
        drain_timeout: parse_duration("frontend.drain_timeout", &f.drain_timeout)?,
        trusted_proxies,
    })
}

/// The `[tls]` table and the `[[context]]` tables (which inherit from it); `alpn_key` names
/// `tls.alpn` (or the option that set it).
fn validate_tls(
    t: RawTls,
    contexts: &[RawContext],
    alpn_key: &str,
) -> Result<TlsSettings, ConfigError> {
    let certificates = certificate_list("tls", &t.shorthand(), &t.certificate)?;
    let (min_version, max_version) = validate_versions(&t.min_version, &t.max_version)?;
    if t.groups.is_empty() {
        return Err(invalid("tls.groups", "needs at least one group"));
    }
    check_alpn(alpn_key, &t.alpn)?;
    let verify = parse_client_verify("tls", &t.client_verify)?;
    let client_auth = client_auth("tls", verify, &t.client_ca, &t.client_crl)?;
    let resumption = validate_resumption(&t)?;
    let ciphers = nonempty(&t.ciphers);
    let stapling = validate_stapling(&t)?;
    let dynamic_sni = validate_dynamic_sni(&t)?;
    let inherited = Inherited {
        alpn: &t.alpn,
        ciphers: &ciphers,
        verify,
        client_ca: &t.client_ca,
        client_crl: &t.client_crl,
    };
    let contexts = validate_contexts(contexts, &inherited)?;
    if t.sni_strict && contexts.is_empty() && dynamic_sni.is_none() {
        return Err(invalid(
            "tls.sni_strict",
            "refuses every client unless at least one [[context]] or sni_url is configured",
        ));
    }
    let early_data = if t.early_data {
        if t.early_data_max == 0 {
            return Err(invalid("tls.early_data_max", "must be positive"));
        }
        Some(t.early_data_max)
    } else {
        None
    };
    Ok(TlsSettings {
        certificates,
        min_version,
        max_version,
        ciphers,
        groups: t.groups,
        alpn: t.alpn,
        alpn_no_h2: false,
        server_preference: t.server_preference,
        client_auth,
        contexts,
        sni_strict: t.sni_strict,
        resumption,
        stapling,
        dynamic_sni,
        early_data,
    })
}

/// `tls.min_version` and `tls.max_version`, in that order.
fn validate_versions(min: &str, max: &str) -> Result<(TlsVersion, TlsVersion), ConfigError> {
    let version = |key: &str, text: &str| match text.trim() {
        "1.2" => Ok(TlsVersion::Tls12),
        "1.3" => Ok(TlsVersion::Tls13),
        other => Err(invalid(
            key,
            format!("{other:?} is not a supported TLS version (\"1.2\" or \"1.3\")"),
        )),
    };
    let min_version = version("tls.min_version", min)?;
    let max_version = version("tls.max_version", max)?;
    if min_version > max_version {
        return Err(invalid("tls.min_version", "is above tls.max_version"));
    }
    Ok((min_version, max_version))
}

/// Session resumption: `tls.tickets`, the ticket keys' source (fixed keys parsed here, once),
/// the session cache and the fleet's session store.
fn validate_resumption(t: &RawTls) -> Result<Resumption, ConfigError> {
    let ticket_keys = match (
        nonempty(&t.ticket_secret_file),
        nonempty(&t.ticket_key_file),
        nonempty(&t.ticket_key),
    ) {
        (None, None, None) => TicketKeySource::Random,
        (Some(secret), None, None) => TicketKeySource::SharedSecret {
            path: secret.into(),
            accept: nonempty(&t.ticket_secret_accept_file).map(Into::into),
        },
        (None, Some(file), None) => TicketKeySource::File(file.into()),
        (None, None, Some(keys)) => TicketKeySource::Fixed(
            parse_keys(&keys, "tls.ticket_key")
                .map_err(|e| invalid("tls.ticket_key", e.to_string()))?,
        ),
        _ => {
            return Err(invalid(
                "tls.ticket_key_file",
                "give at most one of ticket_secret_file, ticket_key_file, ticket_key",
            ))
        }
    };
    if !t.ticket_secret_accept_file.is_empty() && t.ticket_secret_file.is_empty() {
        return Err(invalid(
            "tls.ticket_secret_accept_file",
            "needs tls.ticket_secret_file (the secret that encrypts)",
        ));
    }
    if t.ticket_key_stdin && !t.tickets {
        return Err(invalid("tls.ticket_key_stdin", "needs tls.tickets = true"));
    }
    let session_store = validate_session_store(t, &ticket_keys)?;
    Ok(Resumption {
        tickets: t.tickets,
        ticket_rotate: positive_duration("tls.ticket_rotate", &t.ticket_rotate)?,
        ticket_previous: t.ticket_previous,
        ticket_keys,
        ticket_key_stdin: t.ticket_key_stdin,
        session_cache_size: t.session_cache_size,
        session_timeout: positive_duration("tls.session_timeout", &t.session_timeout)?,
        session_store,
    })
}

/// `tls.session_store` and `tls.session_store_timeout`: `None` when no store is named.
fn validate_session_store(
    t: &RawTls,
    ticket_keys: &TicketKeySource,
) -> Result<Option<crate::session_store::StoreSettings>, ConfigError> {
    let Some(address) = nonempty(&t.session_store) else {
        return Ok(None);
    };
    let TicketKeySource::SharedSecret { path, accept } = ticket_keys else {
        return Err(invalid(
            "tls.session_store",
            "needs tls.ticket_secret_file: sessions are sealed with a key derived from \
             the fleet's secret before they leave the box",
        ));
    };
    if t.session_cache_size == 0 {
        return Err(invalid(
            "tls.session_store",
            "needs the local session cache in front (tls.session_cache_size above 0)",
        ));
    }
    let timeout = positive_duration("tls.session_store_timeout", &t.session_store_timeout)?;
    if timeout > Duration::from_secs(1) {
        return Err(invalid(
            "tls.session_store_timeout",
            "at most 1s: a handshake waits this long for the store, and each wait holds a \
             lookup in flight",
        ));
    }
    crate::session_store::StoreSettings::new(&address, timeout, path.clone(), accept.clone())
        .map(Some)
        .map_err(|e| invalid("tls.session_store", e))
}

/// OCSP stapling: `tls.ocsp_fetch`, `tls.ocsp_url`, `tls.ocsp_timeout`.
fn validate_stapling(t: &RawTls) -> Result<Stapling, ConfigError> {
    let url = match nonempty(&t.ocsp_url) {
        None => None,
        Some(url) if url.starts_with("http://") && url.contains("%s") => Some(url),
        Some(url) => {
            return Err(invalid(
                "tls.ocsp_url",
                format!("{url:?}: expected an http:// URL with %s for the certificate ID"),
            ))
        }
    };
    Ok(Stapling {
        fetch: t.ocsp_fetch,
        url,
        timeout: positive_duration("tls.ocsp_timeout", &t.ocsp_timeout)?,
    })
}

/// Dynamic SNI: `tls.sni_url` and the `tls.sni_*` keys that go with it; `None` when off.
fn validate_dynamic_sni(t: &RawTls) -> Result<Option<DynamicSniSettings>, ConfigError> {
    let Some(url) = nonempty(&t.sni_url) else {
        return Ok(None);
    };
    if !(url.starts_with("http://") && url.contains("%s")) {
        return Err(invalid(
            "tls.sni_url",
            format!("{url:?}: expected an http:// URL with %s for the server name"),
        ));
    }
    if t.sni_fetchers == 0 {
        return Err(invalid("tls.sni_fetchers", "must be at least 1"));
    }
    Ok(Some(DynamicSniSettings {
        url,
        timeout: positive_duration("tls.sni_timeout", &t.sni_timeout)?,
        cache_ttl: parse_duration("tls.sni_cache_ttl", &t.sni_cache_ttl)?,
        negative_ttl: parse_duration("tls.sni_negative_ttl", &t.sni_negative_ttl)?,
        cache_size: t.sni_cache_size,
        fetchers: t.sni_fetchers,
    }))
}

/// The `[[context]]` tables, in order; keys a context does not give come from `[tls]` (`t`,
/// whose cipher list is `ciphers`).
fn validate_contexts(
    contexts: &[RawContext],
    inherited: &Inherited<'_>,
) -> Result<Vec<SniContext>, ConfigError> {
    contexts
        .iter()
        .enumerate()
        .map(|(i, c)| validate_context(i, c, inherited))
        .collect()
}

/// What a `[[context]]` takes from `[tls]` when it does not give its own, as validated there
/// (so a context checks only what it gives itself).
struct Inherited<'a> {
    /// `tls.alpn` (or `--alpn`).
    alpn: &'a [String],
    /// `tls.ciphers`; `None`: the default list.
    ciphers: &'a Option<String>,
    /// `tls.client_verify`.
    verify: ClientVerify,
    /// `tls.client_ca` as written (a context asking for certificates inherits it).
    client_ca: &'a str,
    /// `tls.client_crl` as written.
    client_crl: &'a str,
}

/// One `[[context]]` table, `context[i]`.
fn validate_context(
    i: usize,
    c: &RawContext,
    inherited: &Inherited<'_>,
) -> Result<SniContext, ConfigError> {
    let prefix = format!("context[{i}]");
    if c.servername.is_empty() {
        return Err(invalid(
            format!("{prefix}.servername"),
            "needs at least one server name",
        ));
    }
    let names = c
        .servername
        .iter()
        .enumerate()
        .map(|(j, name)| {
            ServerName::parse(name).map_err(|e| {
                invalid(
                    format!("{prefix}.servername[{j}]"),
                    format!("{name:?}: {e}"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let shorthand = RawCertificate {
        cert: c.cert.clone(),
        key: c.key.clone(),
        key_server: c.key_server.clone(),
        ocsp_staple: c.ocsp_staple.clone(),
        passphrase: c.passphrase.clone(),
        passphrase_env: c.passphrase_env.clone(),
        passphrase_file: c.passphrase_file.clone(),
        passphrase_cmd: c.passphrase_cmd.clone(),
    };
    let certificates = certificate_list(&prefix, &shorthand, &c.certificate)?;
    if certificates.is_empty() {
        return Err(invalid(
            format!("{prefix}.cert"),
            "an SNI context needs its own cert and key",
        ));
    }
    let alpn = match &c.alpn {
        Some(own) => {
            check_alpn(&format!("{prefix}.alpn"), own)?;
            own.clone()
        }
        None => inherited.alpn.to_vec(),
    };
    let verify = match &c.client_verify {
        Some(own) => parse_client_verify(&prefix, own)?,
        None => inherited.verify,
    };
    let pick = |own: &Option<String>, global: &str| own.clone().unwrap_or(global.to_owned());
    // A context that turns client certificates off does not inherit CA or CRL.
    let (ca, crl) = if verify == ClientVerify::None {
        (
            c.client_ca.clone().unwrap_or_default(),
            c.client_crl.clone().unwrap_or_default(),
        )
    } else {
        (
            pick(&c.client_ca, inherited.client_ca),
            pick(&c.client_crl, inherited.client_crl),
        )
    };
    let client_auth = client_auth(&prefix, verify, &ca, &crl)?;
    Ok(SniContext {
        names,
        certificates,
        ciphers: match &c.ciphers {
            Some(own) => nonempty(own),
            None => inherited.ciphers.clone(),
        },
        alpn,
        client_auth,
        backends: backend_list(&format!("{prefix}.backend"), &c.backend, None)?,
    })
}

/// The `[balance]` table.
fn validate_balance(b: &RawBalance) -> Result<BalanceSettings, ConfigError> {
    let mode = match b.mode.trim() {
        "roundrobin" | "sni" => BalanceMode::RoundRobin,
        "on-fail" => BalanceMode::OnFail,
        "least-conn" => BalanceMode::LeastConn,
        other => {
            return Err(invalid(
                "balance.mode",
                format!(
                    "{other:?} is not one of \"roundrobin\", \"on-fail\", \"least-conn\", \"sni\""
                ),
            ))
        }
    };
    Ok(BalanceSettings {
        mode,
        connect_timeout: positive_duration("balance.connect_timeout", &b.connect_timeout)?,
        retry_interval: parse_duration("balance.retry_interval", &b.retry_interval)?,
        max_retries: b.max_retries,
        health: HealthSettings {
            death_timeout: parse_duration("balance.death_timeout", &b.death_timeout)?,
            revive_interval: parse_duration("balance.revive_interval", &b.revive_interval)?,
        },
        health_check_interval: Some(parse_duration(
            "balance.health_check_interval",
            &b.health_check_interval,
        )?)
        .filter(|d| !d.is_zero()),
        spare_connections: if b.spare_connections <= SPARE_CONNECTIONS_MAX {
            b.spare_connections as usize
        } else {
            return Err(invalid(
                "balance.spare_connections",
                format!(
                    "{} is more than {SPARE_CONNECTIONS_MAX} (each is an open connection to a \
                     backend, per backend and per core)",
                    b.spare_connections
                ),
            ));
        },
        spare_max_age: match positive_duration("balance.spare_max_age", &b.spare_max_age)? {
            age if age <= SPARE_MAX_AGE_MAX => age,
            _ => {
                return Err(invalid(
                    "balance.spare_max_age",
                    "must be at most 1h (a backend would have closed the connection long before)",
                ))
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2_is_left_out_where_backends_inject() {
        let text = "[tls]\nalpn = [\"h2\", \"http/1.1\"]\n\
                    [[backend]]\naddress = \"127.0.0.1:1\"\nx_forwarded = true\n\
                    [[context]]\nservername = [\"a.test\"]\ncert = \"a\"\nkey = \"b\"\n\
                    [[context]]\nservername = [\"b.test\"]\ncert = \"a\"\nkey = \"b\"\n\
                    [[context.backend]]\naddress = \"127.0.0.1:2\"\nproxy_protocol = \"v2\"\n";
        let mut config = ServeConfig::parse(text).unwrap();
        assert_eq!(
            config.leave_out_h2_where_injecting(),
            vec!["tls.alpn".to_owned(), "context[0].alpn".to_owned()]
        );
        assert_eq!(config.tls.alpn, vec!["http/1.1".to_owned()]);
        assert!(config.tls.alpn_no_h2);
        assert_eq!(config.tls.contexts[0].alpn, vec!["http/1.1".to_owned()]);
        assert_eq!(
            config.tls.contexts[1].alpn,
            vec!["h2".to_owned(), "http/1.1".to_owned()],
            "its own backends get PROXY v2, not headers"
        );
    }

    #[test]
    fn default_document_is_the_defaults() {
        // Read alone (not over itself), the document must hold every key of every table: the
        // tables are strict, so a key missing from it fails here.
        let parsed: RawConfig = toml::from_str(DEFAULT_CONFIG).unwrap();
        assert_eq!(parsed, RawConfig::documented().unwrap());
        let without = DEFAULT_CONFIG.replace("\nbacklog = 1024\n", "\n");
        assert_ne!(without, DEFAULT_CONFIG);
        let missing = toml::from_str::<RawConfig>(&without).unwrap_err();
        assert!(
            missing.to_string().contains("missing field `backlog`"),
            "{missing}"
        );
        let config = ServeConfig::parse(DEFAULT_CONFIG).unwrap();
        assert_eq!(
            config.frontend.listen,
            vec!["127.0.0.1:8443".parse().unwrap()]
        );
        assert!(config.backends.is_empty());
    }

    #[test]
    fn spare_connections_default_and_bound() {
        assert_eq!(ServeConfig::default().balance.spare_connections, 8);
        assert_eq!(
            ServeConfig::default().balance.spare_max_age,
            Duration::from_secs(1)
        );
        for bad in ["\"0s\"", "\"2h\""] {
            let error = ServeConfig::parse(&format!("[balance]\nspare_max_age = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(error.contains("balance.spare_max_age"), "{error}");
        }
        let config = ServeConfig::parse("[balance]\nspare_connections = 0\n").unwrap();
        assert_eq!(config.balance.spare_connections, 0);
        let error = ServeConfig::parse("[balance]\nspare_connections = 1025\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("balance.spare_connections") && error.contains("1024"),
            "{error}"
        );
    }

    #[test]
    fn a_table_given_in_part_takes_the_rest_from_the_default_document() {
        let text = "[frontend]\nbacklog = 5\n[tls]\nalpn = [\"h2\"]\n\
                    [[tls.certificate]]\ncert = \"a\"\nkey = \"b\"\n";
        let config = ServeConfig::parse(text).unwrap();
        assert_eq!(config.frontend.backlog, 5);
        assert_eq!(config.frontend.idle_timeout, Duration::from_secs(300));
        assert_eq!(
            config.frontend.listen,
            ServeConfig::default().frontend.listen
        );
        assert_eq!(config.tls.alpn, vec!["h2".to_owned()]);
        assert_eq!(config.tls.groups.len(), 4);
        assert_eq!(config.tls.certificates.len(), 1);
        assert_eq!(config.tls.resumption.session_cache_size, 20480);
        assert_eq!(config.balance.max_retries, 5);
        // Errors still point into the document given, not into the default one.
        let error = ServeConfig::parse("\n[balance]\nmax_retries = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("TOML parse error at line 2, column 15"),
            "{error}"
        );
    }

    #[test]
    fn the_commented_backend_example_shows_a_backend_s_defaults() {
        // A [[backend]]'s defaults live in RawBackend's serde attributes; the default document
        // shows them in a commented-out example, which must agree.
        let start = DEFAULT_CONFIG.find("# [[backend]]\n").unwrap();
        let example: String = DEFAULT_CONFIG[start..]
            .lines()
            .map(|line| format!("{}\n", line.strip_prefix("# ").unwrap()))
            .collect();
        let shown = RawConfig::read(&example).unwrap();
        let address = shown.backend[0].address.clone();
        let bare = RawConfig::read(&format!("[[backend]]\naddress = {address:?}")).unwrap();
        assert_eq!(shown.backend, bare.backend);
    }

    #[test]
    fn defaults_are_valid() {
        let config = ServeConfig::default();
        assert_eq!(config.balance.mode, BalanceMode::RoundRobin);
        assert_eq!(config.frontend.handshake_timeout, Duration::from_secs(10));
    }

    #[test]
    fn the_engine_is_chosen_by_name_and_a_wrong_name_names_the_key() {
        use fastedge_runtime::Engine;
        assert_eq!(ServeConfig::parse("").unwrap().engine, Engine::Uring);
        let glommio = ServeConfig::parse("engine = \"glommio\"").unwrap();
        assert_eq!(glommio.engine, Engine::Glommio);
        let error = ServeConfig::parse("engine = \"tokio\"")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("engine") && error.contains("tokio"),
            "{error}"
        );
    }

    #[test]
    fn a_full_document() {
        let text = "\n\n  cores = \"0-1\"\n[frontend]\nlisten = [\"0.0.0.0:443\", \"[::]:443\"]\ntrusted_proxies = [\"10.0.0.0/8\"]\n\
                    [balance]\nmode = \"least-conn\"\n\
                    [[backend]]\naddress = \"127.0.0.1:8080\"\nproxy_protocol = \"v2\"\n\
                    [[backend]]\naddress = \"localhost:8081\"\nx_forwarded = true\n\n";
        let config = ServeConfig::parse(text).unwrap();
        assert_eq!(config.cores, Some("0-1".parse().unwrap()));
        assert_eq!(config.frontend.listen.len(), 2);
        assert_eq!(config.backends.len(), 2);
        assert_eq!(config.backends[0].proxy_protocol, ProxyPrefix::V2);
        assert!(config.backends[1].x_forwarded);
        assert!(matches!(config.backends[1].addr, BackendAddr::Tcp(a) if a.port() == 8081));
        let unix = ServeConfig::parse("[[backend]]\naddress = \"unix:/run/app.sock\"").unwrap();
        assert_eq!(
            unix.backends[0].addr,
            BackendAddr::Unix("/run/app.sock".into())
        );
        assert_eq!(config.balance.mode, BalanceMode::LeastConn);
    }

    #[test]
    fn overrides_replace_the_document_before_validation() {
        let text = "cores = \"0\"\nengine = \"uring\"\n[tls]\ncert = \"a.pem\"\nkey = \"a.key\"\n\
                    passphrase_env = \"PASS\"\nalpn = [\"h2\"]\n[[backend]]\naddress = \"127.0.0.1:1\"\n\
                    x_forwarded = true\n";
        let overrides = ServeOverrides {
            cores: Some("0-1".into()),
            engine: Some(Engine::Glommio),
            listen: vec!["127.0.0.1:9443".parse().unwrap()],
            backend: Some("127.0.0.1:2".into()),
            certificate: Some(("b.pem".into(), "b.key".into())),
            alpn: Some(vec!["".into(), "http/1.1".into()]),
        };
        let config = ServeConfig::parse_with(text, &overrides).unwrap();
        assert_eq!(config.cores, Some("0-1".parse().unwrap()));
        assert_eq!(config.engine, Engine::Glommio);
        assert_eq!(config.frontend.listen, overrides.listen);
        assert_eq!(config.backends.len(), 1);
        assert_eq!(config.backends[0].name, "127.0.0.1:2");
        assert!(
            !config.backends[0].x_forwarded,
            "--backend has default settings"
        );
        assert_eq!(
            config.tls.certificates,
            vec![CertificateSpec {
                cert: "b.pem".into(),
                key: "b.key".into(),
                passphrase: Some(Passphrase::Env("PASS".into())),
                key_server: None,
                ocsp_staple: None,
            }]
        );
        assert_eq!(config.tls.alpn, vec!["http/1.1".to_owned()]);
        // The defaults take overrides too; no override changes nothing.
        let defaults = ServeConfig::defaults_with(&overrides).unwrap();
        assert_eq!(defaults.backends[0].name, "127.0.0.1:2");
        let plain = ServeConfig::parse_with(text, &ServeOverrides::default()).unwrap();
        assert_eq!(plain.cores, Some("0".parse().unwrap()));

        // A bad override is named by its option, and by nothing else.
        for (overrides, expected) in [
            (
                ServeOverrides {
                    cores: Some("3-1".into()),
                    ..ServeOverrides::default()
                },
                "--cores: \"3-1\": range",
            ),
            (
                ServeOverrides {
                    backend: Some("nonsense".into()),
                    ..ServeOverrides::default()
                },
                "--backend \"nonsense\": ",
            ),
            (
                ServeOverrides {
                    alpn: Some(vec!["x".repeat(256)]),
                    ..ServeOverrides::default()
                },
                "--alpn[0]: protocol names are 1 to 255 bytes",
            ),
        ] {
            let error = ServeConfig::parse_with(text, &overrides)
                .unwrap_err()
                .to_string();
            assert!(error.starts_with(expected), "{expected:?}: {error}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            ("[frontend]\nlisten = [\"nope\"]", "frontend.listen[0]"),
            (
                "[frontend]\nhandshake_timeout = \"10\"",
                "frontend.handshake_timeout",
            ),
            ("[frontend]\nidle_timeout = \"0s\"", "frontend.idle_timeout"),
            (
                "[frontend]\ntrusted_proxies = [\"10.0.0.0/99\"]",
                "frontend.trusted_proxies[0]",
            ),
            ("[tls]\ncert = \"a.pem\"", "tls.key"),
            ("[tls]\nmin_version = \"1.1\"", "tls.min_version"),
            (
                "[tls]\nmin_version = \"1.3\"\nmax_version = \"1.2\"",
                "tls.min_version",
            ),
            ("[balance]\nmode = \"random\"", "balance.mode"),
            (
                "[tls]\nsession_store = \"redis://127.0.0.1\"",
                "tls.session_store",
            ),
            (
                "[tls]\nticket_secret_file = \"s\"\nsession_cache_size = 0\n\
                 session_store = \"redis://127.0.0.1\"",
                "tls.session_store",
            ),
            (
                "[tls]\nticket_secret_file = \"s\"\nsession_store = \"memcache://h\"",
                "tls.session_store",
            ),
            (
                "[tls]\nticket_secret_file = \"s\"\nsession_store = \"redis://h\"\n\
                 session_store_timeout = \"0s\"",
                "tls.session_store_timeout",
            ),
            (
                "[tls]\nticket_secret_file = \"s\"\nsession_store = \"redis://h\"\n\
                 session_store_timeout = \"5s\"",
                "tls.session_store_timeout",
            ),
            ("[[backend]]\naddress = \"127.0.0.1\"", "backend[0].address"),
            (
                "[[backend]]\naddress = \"unix:run/x\"",
                "backend[0].address",
            ),
            (
                "[balance]\nhealth_check_interval = \"often\"",
                "balance.health_check_interval",
            ),
            (
                "[[backend]]\naddress = \"127.0.0.1:1\"\nproxy_protocol = \"v3\"",
                "backend[0].proxy_protocol",
            ),
            ("[frontend]\nlisten_typo = []", "listen_typo"),
            ("[tls]\nclient_verify = \"maybe\"", "tls.client_verify"),
            ("[tls]\nclient_verify = \"required\"", "tls.client_ca"),
            ("[tls]\nclient_crl = \"c.pem\"", "tls.client_crl"),
            ("[tls]\nsni_strict = true", "tls.sni_strict"),
            ("[tls]\nticket_rotate = \"0s\"", "tls.ticket_rotate"),
            (
                "[tls]\nticket_secret_file = \"s\"\nticket_key_file = \"k\"",
                "tls.ticket_key_file",
            ),
            (
                "[[context]]\ncert = \"a.pem\"\nkey = \"a.key\"",
                "context[0].servername",
            ),
            (
                "[[context]]\nservername = [\"w*.example.com\"]\ncert = \"a\"\nkey = \"b\"",
                "context[0].servername[0]",
            ),
            ("[[context]]\nservername = [\"a.test\"]", "context[0].cert"),
            (
                "[[context]]\nservername = [\"a.test\"]\ncert = \"a\"\nkey = \"b\"\n\
                 [[context.backend]]\naddress = \"nowhere\"",
                "context[0].backend[0].address",
            ),
            (
                "[[context]]\nservername = [\"a.test\"]\ncert = \"a\"\nkey = \"b\"\nalpn = [\"\"]",
                "context[0].alpn[0]",
            ),
            ("[frontend]\nbacklog = \"x\"", "backlog"),
            ("cores = ", "line 1"),
            (
                "cores = \"3-1\"",
                "cores: \"3-1\": range `3-1` in CPU list runs backwards",
            ),
            (
                "[tls]\ntickets = false\nticket_key_stdin = true",
                "tls.ticket_key_stdin",
            ),
        ] {
            let err = ServeConfig::parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?}: expected {key:?} in {err}");
        }
    }

    #[test]
    fn server_names_are_checked_once_at_validation_under_their_key() {
        let text = "[[context]]\nservername = [\"a.test\"]\ncert = \"a\"\nkey = \"b\"\n\
                    [[context]]\nservername = [\"b.test\", \"*.com\"]\ncert = \"a\"\nkey = \"b\"\n";
        let error = ServeConfig::parse(text).unwrap_err().to_string();
        assert_eq!(
            error,
            "context[1].servername[1]: \"*.com\": a wildcard needs at least two labels after it \
             (\"*.example.com\")"
        );
        // What validation hands on is checked already: the context builder's name table takes
        // it with no error path, as written.
        let text = text.replace("\"*.com\"", "\"*.B.test.\"");
        let config = ServeConfig::parse(&text).unwrap();
        let names = &config.tls.contexts[1].names;
        assert_eq!(*names, vec!["b.test".to_owned(), "*.B.test.".to_owned()]);
        let mut table = fastedge_wire::sni::NameTable::new();
        for (i, context) in config.tls.contexts.iter().enumerate() {
            for name in &context.names {
                table.add(name, i);
            }
        }
        assert_eq!(table.lookup("a.test"), Some(0));
        assert_eq!(table.lookup("x.b.test"), Some(1));
    }

    #[test]
    fn what_a_context_inherits_is_checked_once_under_the_tls_key() {
        let context = "[[context]]\nservername = [\"a.test\"]\ncert = \"a\"\nkey = \"b\"\n";
        for (tls, expected) in [
            (
                "alpn = [\"\"]",
                "tls.alpn[0]: protocol names are 1 to 255 bytes",
            ),
            (
                "client_verify = \"maybe\"",
                "tls.client_verify: \"maybe\" is not one of \"none\", \"optional\", \"required\"",
            ),
        ] {
            let text = format!("[tls]\n{tls}\n{context}");
            let error = ServeConfig::parse(&text).unwrap_err().to_string();
            assert_eq!(error, expected);
        }
        // Under --alpn when the list came from it.
        let overrides = ServeOverrides {
            alpn: Some(vec!["x".repeat(256)]),
            ..ServeOverrides::default()
        };
        let error = ServeConfig::parse_with(context, &overrides)
            .unwrap_err()
            .to_string();
        assert_eq!(error, "--alpn[0]: protocol names are 1 to 255 bytes");
        // What the context gives itself is checked under its own key.
        let text = format!("{context}alpn = [\"\"]\nclient_verify = \"maybe\"\n");
        let error = ServeConfig::parse(&text).unwrap_err().to_string();
        assert_eq!(
            error,
            "context[0].alpn[0]: protocol names are 1 to 255 bytes"
        );
        let text = format!("{context}client_verify = \"maybe\"\n");
        let error = ServeConfig::parse(&text).unwrap_err().to_string();
        assert!(
            error.starts_with("context[0].client_verify: \"maybe\""),
            "{error}"
        );
        // An inherited mode with a CA the context drops is the context's own error.
        let text = format!(
            "[tls]\nclient_verify = \"required\"\nclient_ca = \"ca.pem\"\n{context}client_ca = \"\"\n"
        );
        let error = ServeConfig::parse(&text).unwrap_err().to_string();
        assert!(error.starts_with("context[0].client_ca: "), "{error}");
    }

    #[test]
    fn contexts_inherit_from_tls() {
        let text = "[tls]\nalpn = [\"h2\"]\nciphers = \"ECDHE+AESGCM\"\nclient_ca = \"ca.pem\"\n\
                    [[context]]\nservername = [\"a.test\", \"*.b.test\"]\ncert = \"a\"\nkey = \"b\"\n\
                    client_verify = \"optional\"\n[[context.backend]]\naddress = \"127.0.0.1:9\"\n\
                    [[context]]\nservername = [\"c.test\"]\ncert = \"c\"\nkey = \"d\"\nalpn = []\n";
        let config = ServeConfig::parse(text).unwrap();
        let [a, c] = &config.tls.contexts[..] else {
            panic!("two contexts")
        };
        assert_eq!(a.alpn, vec!["h2".to_owned()]);
        assert_eq!(a.ciphers.as_deref(), Some("ECDHE+AESGCM"));
        assert_eq!(a.client_auth.verify, ClientVerify::Optional);
        assert_eq!(a.client_auth.ca, Some(PathBuf::from("ca.pem")));
        assert_eq!(a.backends.len(), 1);
        assert!(c.alpn.is_empty());
        assert_eq!(c.client_auth.verify, ClientVerify::None);
        assert!(c.backends.is_empty());
        assert_eq!(config.tls.client_auth.verify, ClientVerify::None);
        let r = &config.tls.resumption;
        assert!(r.tickets);
        assert_eq!(r.ticket_keys, TicketKeySource::Random);
        assert_eq!(r.ticket_rotate, Duration::from_secs(3600));
        // bud's balance name.
        let sni = ServeConfig::parse("[balance]\nmode = \"sni\"").unwrap();
        assert_eq!(sni.balance.mode, BalanceMode::RoundRobin);
    }

    #[test]
    fn pump_limits_are_refused_beyond_what_the_pump_keeps() {
        assert_eq!(
            pump_limit("k", "1193h").unwrap(),
            Duration::from_secs(1193 * 3600)
        );
        let error = pump_limit("k", "1194h").unwrap_err().to_string();
        assert!(error.contains("at most 1193h"), "{error}");
        assert!(pump_limit("k", "0s").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("k", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_duration("k", "10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("k", "5m").unwrap(), Duration::from_secs(300));
        assert_eq!(
            parse_duration("k", "1h").unwrap(),
            Duration::from_secs(3600)
        );
        for bad in [
            "",
            "10",
            "s",
            "1.5s",
            "-1s",
            "10 days",
            "99999999999999999999h",
        ] {
            assert!(parse_duration("k", bad).is_err(), "{bad:?}");
        }
    }
}
