//! Session ticket keys: a ring of one current key (encrypts new tickets) and the previous ones
//! (still decrypt), rotated every `ticket_rotate`.
//!
//! Keys come from one of three sources ([`TicketKeySource`]):
//! - **random**: made in this process, one per rotation period, never all-zero;
//! - **shared secret**: the key of period `floor(unix_time / rotate)` is
//!   HKDF-SHA256(secret, salt = "fastedge ticket keys v1", info = period as u64 big-endian),
//!   48 bytes, so every box of a fleet with the same secret (and clocks that agree) computes the
//!   same keys with no traffic between them;
//! - **file**: base64 lines of 48 bytes each, newest first, reread at most once a second when
//!   the file's modification time or size changes;
//! - **fixed**: such keys given in the configuration (bud's `ticket_key`), never rotated.
//!
//! A 48-byte key is laid out as OpenSSL's and bud's: 16 bytes of name, 16 of HMAC-SHA256 key,
//! 16 of AES-128-CBC key. The ring is shared by every core; a handshake takes one atomic load
//! on the fast path.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use boring::{
    hash::MessageDigest,
    hkdf::HkdfSuite,
    hmac::HmacCtxRef,
    ssl::TicketKeyCallbackResult,
    symm::{Cipher, CipherCtxRef},
};

use crate::TlsError;

/// Bytes in one ticket key (name, HMAC key, AES key).
pub const TICKET_KEY_LEN: usize = 48;
/// Shortest shared secret accepted.
pub const MIN_SECRET_LEN: usize = 32;
const HKDF_SALT: &[u8] = b"fastedge ticket keys v1";
/// How often a key file is checked for changes.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Where session ticket keys come from (`tls.ticket_secret_file`, `tls.ticket_key_file`,
/// `tls.ticket_key`; random when none is given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketKeySource {
    /// Random keys made in this process.
    Random,
    /// Derived per rotation period from a secret shared by a fleet (`path`); while the fleet
    /// changes its secret, the keys of a second one (`accept`) decrypt too, but never encrypt.
    SharedSecret {
        /// The secret that encrypts (`tls.ticket_secret_file`).
        path: std::path::PathBuf,
        /// A secret whose keys only decrypt (`tls.ticket_secret_accept_file`).
        accept: Option<std::path::PathBuf>,
    },
    /// Read from a file of base64 keys, newest first.
    File(std::path::PathBuf),
    /// Keys given in the configuration, newest first (parsed when it was validated); never
    /// rotated.
    Fixed(Vec<TicketKey>),
}

/// One ticket key.
#[derive(Clone, PartialEq, Eq)]
pub struct TicketKey {
    /// The key name: the first 16 bytes of every ticket sealed with this key, how an incoming
    /// ticket finds its key.
    pub name: [u8; 16],
    hmac: [u8; 16],
    aes: [u8; 16],
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TicketKey")
            .field("name", &hex::encode(self.name))
            .finish_non_exhaustive()
    }
}

impl TicketKey {
    /// A key from its 48 bytes: name, HMAC secret, AES key (16 each), as bud and
    /// `SSL_CTX_set_tlsext_ticket_keys` lay them out.
    pub fn from_bytes(bytes: &[u8; TICKET_KEY_LEN]) -> Self {
        let mut key = Self {
            name: [0; 16],
            hmac: [0; 16],
            aes: [0; 16],
        };
        key.name.copy_from_slice(&bytes[..16]);
        key.hmac.copy_from_slice(&bytes[16..32]);
        key.aes.copy_from_slice(&bytes[32..]);
        key
    }

    fn random() -> Result<Self, TlsError> {
        let mut bytes = [0u8; TICKET_KEY_LEN];
        boring::rand::rand_bytes(&mut bytes).map_err(TlsError::Setup)?;
        Ok(Self::from_bytes(&bytes))
    }

    /// The key of rotation period `epoch` derived from a fleet's shared `secret`.
    pub fn derive(secret: &[u8], epoch: u64) -> Result<Self, TlsError> {
        let hkdf = HkdfSuite::new(MessageDigest::sha256());
        let prk = hkdf.extract(HKDF_SALT, secret).map_err(TlsError::Setup)?;
        let mut bytes = [0u8; TICKET_KEY_LEN];
        hkdf.expand(&prk, &epoch.to_be_bytes(), &mut bytes)
            .map_err(TlsError::Setup)?;
        Ok(Self::from_bytes(&bytes))
    }
}

/// The keys in use at one moment: `keys[0]` encrypts; all decrypt.
#[derive(Debug)]
struct Ring {
    /// The rotation period these keys are for (unused for file keys).
    epoch: u64,
    /// Epoch of each key, parallel to `keys` (random source: to expire old ones).
    epochs: Vec<u64>,
    keys: Vec<TicketKey>,
    /// File source: when the file was last looked at, and what it looked like.
    checked: Option<(Instant, Option<(SystemTime, u64)>)>,
}

/// The ticket key ring of one `fastedge serve` process, shared by all its contexts and cores.
#[derive(Debug)]
pub struct TicketKeys {
    source: TicketKeySource,
    rotate: Duration,
    previous: u32,
    /// Shared-secret source: the secret that encrypts, then the one only accepted.
    secrets: Vec<Vec<u8>>,
    ring: ArcSwap<Ring>,
    /// Serializes rotations (readers never wait on it).
    rotating: Mutex<()>,
    /// Keys come from outside (bud's IPC message): no rotation of our own any more.
    external: std::sync::atomic::AtomicBool,
}

fn epoch_at(now: SystemTime, rotate: Duration) -> u64 {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    (since.as_millis() / rotate.as_millis().max(1)) as u64
}

/// The periods whose fleet keys a box holds at `epoch`: the current one first (it encrypts),
/// the `previous` ones, and the next one, so that a box whose clock runs a little behind
/// another's still takes the tickets the other issues just after a rotation.
fn fleet_epochs(epoch: u64, previous: u32) -> Vec<u64> {
    let mut epochs: Vec<u64> = (0..=u64::from(previous))
        .map(|back| epoch.saturating_sub(back))
        .collect();
    epochs.push(epoch + 1);
    epochs.dedup();
    epochs
}

/// Reads a key file: base64 lines of 48 bytes, newest first; `#` comments and blank lines
/// ignored.
pub fn read_key_file(path: &Path) -> Result<Vec<TicketKey>, TlsError> {
    let text = std::fs::read_to_string(path).map_err(|source| TlsError::ReadFile {
        what: "ticket key file",
        path: path.to_owned(),
        source,
    })?;
    parse_keys(&text, &path.display().to_string())
}

/// Parses base64 keys of 48 bytes, one per line, newest first; `origin` names them in errors.
pub fn parse_keys(text: &str, origin: &str) -> Result<Vec<TicketKey>, TlsError> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || {
            TlsError::Invalid(format!(
                "{origin} line {}: not base64 of {TICKET_KEY_LEN} bytes",
                n + 1
            ))
        };
        let bytes = boring::base64::decode_block(line).map_err(|_| bad())?;
        let bytes: [u8; TICKET_KEY_LEN] = bytes.as_slice().try_into().map_err(|_| bad())?;
        if bytes.iter().all(|&b| b == 0) {
            return Err(TlsError::Invalid(format!(
                "{origin} line {}: an all-zero ticket key is refused",
                n + 1
            )));
        }
        keys.push(TicketKey::from_bytes(&bytes));
    }
    if keys.is_empty() {
        return Err(TlsError::Invalid(format!("{origin}: no ticket key")));
    }
    Ok(keys)
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Reads a fleet's shared secret from `path`: the file's bytes without surrounding whitespace,
/// at least [`MIN_SECRET_LEN`] of them (errors name the file).
pub fn read_secret(path: &Path) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::ReadFile {
        what: "ticket secret file",
        path: path.to_path_buf(),
        source,
    })?;
    let trimmed = bytes.trim_ascii();
    if trimmed.len() < MIN_SECRET_LEN {
        return Err(TlsError::Invalid(format!(
            "{}: a ticket secret needs at least {MIN_SECRET_LEN} bytes (e.g. `fastedge \
             ticket-secret FILE`)",
            path.display()
        )));
    }
    Ok(trimmed.to_vec())
}

/// A fleet's secrets: the one at `path` (it encrypts tickets and seals sessions), then the one
/// at `accept` if given (only decrypts and opens, while the fleet changes its secret).
pub fn read_fleet_secrets(path: &Path, accept: Option<&Path>) -> Result<Vec<Vec<u8>>, TlsError> {
    let mut secrets = vec![read_secret(path)?];
    if let Some(accept) = accept {
        secrets.push(read_secret(accept)?);
    }
    Ok(secrets)
}

/// The ticket keys of the periods `epochs` from each of `secrets`, with the period of each: the
/// first secret's first (its current key encrypts), then the accepted secret's.
fn fleet_keys(secrets: &[Vec<u8>], epochs: &[u64]) -> Result<(Vec<TicketKey>, Vec<u64>), TlsError> {
    let mut keys = Vec::with_capacity(secrets.len() * epochs.len());
    let mut periods = Vec::with_capacity(keys.capacity());
    for secret in secrets {
        for &epoch in epochs {
            keys.push(TicketKey::derive(secret, epoch)?);
            periods.push(epoch);
        }
    }
    Ok((keys, periods))
}

/// Creates a new fleet secret at `path`: 48 random bytes, base64 on one line, in a file made
/// with permission bits `mode` (e.g. 0o600) that must not exist yet (an existing secret is
/// never overwritten: a fleet whose boxes disagree on it stops resuming each other's sessions).
pub fn write_secret(path: &Path, mode: u32) -> Result<(), TlsError> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut secret = [0u8; 48];
    boring::rand::rand_bytes(&mut secret).map_err(TlsError::Setup)?;
    let text = format!("{}\n", boring::base64::encode_block(&secret));
    let write_error = |source| TlsError::WriteFile {
        what: "ticket secret file",
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(write_error)?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(source) = written {
        // No half-written secret left behind for the next try to refuse to overwrite.
        let _ = std::fs::remove_file(path);
        return Err(write_error(source));
    }
    Ok(())
}

impl TicketKeys {
    /// Sets up the ring of keys from `source`, rotated every `rotate` with `previous` older
    /// keys still decrypting, reading the secret or key file now (errors name it).
    pub fn new(
        source: &TicketKeySource,
        rotate: Duration,
        previous: u32,
    ) -> Result<Self, TlsError> {
        let epoch = epoch_at(SystemTime::now(), rotate);
        let mut secrets = Vec::new();
        let (keys, epochs, checked) = match source {
            TicketKeySource::Random => (vec![TicketKey::random()?], vec![epoch], None),
            TicketKeySource::SharedSecret { path, accept } => {
                secrets = read_fleet_secrets(path, accept.as_deref())?;
                let (keys, epochs) = fleet_keys(&secrets, &fleet_epochs(epoch, previous))?;
                (keys, epochs, None)
            }
            TicketKeySource::Fixed(keys) => (keys.clone(), Vec::new(), None),
            TicketKeySource::File(path) => (
                read_key_file(path)?,
                Vec::new(),
                Some((Instant::now(), file_stamp(path))),
            ),
        };
        Ok(Self {
            source: source.clone(),
            rotate,
            previous,
            secrets,
            ring: ArcSwap::from_pointee(Ring {
                epoch,
                epochs,
                keys,
                checked,
            }),
            rotating: Mutex::new(()),
            external: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether a reload to keys from `source`, rotated every `rotate` with `previous` older
    /// keys, should keep this ring: random keys with the same rotation (new random keys would
    /// void every outstanding ticket). Secret- and file-based rings are rebuilt, rereading
    /// their file.
    pub fn keep_for(&self, source: &TicketKeySource, rotate: Duration, previous: u32) -> bool {
        self.source == TicketKeySource::Random
            && *source == TicketKeySource::Random
            && self.rotate == rotate
            && self.previous == previous
    }

    /// Makes `key` the current key (bud's ticket IPC): the keys before it still decrypt (up to
    /// `ticket_previous` of them), and the ring stops rotating by itself.
    pub fn install(&self, key: TicketKey) {
        let _guard = self.rotating.lock().unwrap_or_else(|p| p.into_inner());
        self.external
            .store(true, std::sync::atomic::Ordering::Release);
        let old = self.ring.load_full();
        let older: Vec<TicketKey> = old
            .keys
            .iter()
            .filter(|k| **k != key)
            .take(self.previous as usize)
            .cloned()
            .collect();
        let mut keys = vec![key];
        keys.extend(older);
        self.ring.store(Arc::new(Ring {
            epoch: old.epoch,
            epochs: Vec::new(),
            keys,
            checked: None,
        }));
        tracing::info!("session ticket key installed from the IPC message");
    }

    /// The names (first 16 bytes) of the keys in use, the current one first: not secret, for
    /// logs and checks.
    pub fn key_names(&self) -> Vec<[u8; 16]> {
        self.current().keys.iter().map(|k| k.name).collect()
    }

    /// The ring as of now, rotated or reread first if due.
    fn current(&self) -> Arc<Ring> {
        let ring = self.ring.load_full();
        if self.external.load(std::sync::atomic::Ordering::Acquire) {
            return ring;
        }
        let due = match &self.source {
            TicketKeySource::File(_) => ring
                .checked
                .is_some_and(|(at, _)| at.elapsed() >= FILE_CHECK_INTERVAL),
            TicketKeySource::Fixed(_) => false,
            _ => epoch_at(SystemTime::now(), self.rotate) != ring.epoch,
        };
        if !due {
            return ring;
        }
        let Ok(_guard) = self.rotating.try_lock() else {
            // Another core rotates right now; the old ring is still good for a moment.
            return ring;
        };
        match self.next_ring(&ring) {
            Ok(Some(next)) => {
                let next = Arc::new(next);
                self.ring.store(next.clone());
                next
            }
            Ok(None) => ring,
            Err(error) => {
                tracing::warn!(%error, "ticket keys not updated; the previous keys stay in use");
                // Do not retry on every handshake: note the attempt.
                if let TicketKeySource::File(_) = self.source {
                    let next = Arc::new(Ring {
                        epoch: ring.epoch,
                        epochs: ring.epochs.clone(),
                        keys: ring.keys.clone(),
                        checked: ring.checked.map(|(_, stamp)| (Instant::now(), stamp)),
                    });
                    self.ring.store(next.clone());
                    return next;
                }
                ring
            }
        }
    }

    fn next_ring(&self, ring: &Ring) -> Result<Option<Ring>, TlsError> {
        let epoch = epoch_at(SystemTime::now(), self.rotate);
        let keep = u64::from(self.previous);
        match &self.source {
            TicketKeySource::Random => {
                let mut keys = vec![TicketKey::random()?];
                let mut epochs = vec![epoch];
                for (key, &e) in ring.keys.iter().zip(&ring.epochs) {
                    if e < epoch && epoch - e <= keep {
                        keys.push(key.clone());
                        epochs.push(e);
                    }
                }
                tracing::info!(period = epoch, "session ticket key rotated");
                Ok(Some(Ring {
                    epoch,
                    epochs,
                    keys,
                    checked: None,
                }))
            }
            TicketKeySource::SharedSecret { .. } => {
                let (keys, epochs) =
                    fleet_keys(&self.secrets, &fleet_epochs(epoch, self.previous))?;
                tracing::info!(period = epoch, "session ticket key rotated (shared secret)");
                Ok(Some(Ring {
                    epoch,
                    epochs,
                    keys,
                    checked: None,
                }))
            }
            TicketKeySource::Fixed(_) => Ok(None),
            TicketKeySource::File(path) => {
                let stamp = file_stamp(path);
                let unchanged = ring.checked.is_some_and(|(_, old)| old == stamp);
                if unchanged {
                    return Ok(Some(Ring {
                        epoch: ring.epoch,
                        epochs: Vec::new(),
                        keys: ring.keys.clone(),
                        checked: Some((Instant::now(), stamp)),
                    }));
                }
                let keys = read_key_file(path)?;
                tracing::info!(path = %path.display(), keys = keys.len(), "ticket key file reloaded");
                Ok(Some(Ring {
                    epoch: ring.epoch,
                    epochs: Vec::new(),
                    keys,
                    checked: Some((Instant::now(), stamp)),
                }))
            }
        }
    }

    /// BoringSSL's ticket key callback (`SSL_CTX_set_tlsext_ticket_key_cb`): sets up the cipher
    /// and HMAC for a new ticket (`encrypt`), or finds the key named in a ticket.
    pub fn callback(
        &self,
        name: &mut [u8; 16],
        iv: &mut [u8; 16],
        cipher: &mut CipherCtxRef,
        hmac: &mut HmacCtxRef,
        encrypt: bool,
    ) -> TicketKeyCallbackResult {
        let ring = self.current();
        let (key, is_current) = if encrypt {
            let key = &ring.keys[0];
            *name = key.name;
            if boring::rand::rand_bytes(iv).is_err() {
                return TicketKeyCallbackResult::Error;
            }
            (key, true)
        } else {
            match ring.keys.iter().position(|k| k.name == *name) {
                Some(i) => (&ring.keys[i], i == 0),
                None => return TicketKeyCallbackResult::Noop,
            }
        };
        let aes = Cipher::aes_128_cbc();
        let set = if encrypt {
            cipher.init_encrypt(&aes, &key.aes, iv)
        } else {
            cipher.init_decrypt(&aes, &key.aes, iv)
        };
        if set.is_err() || hmac.init(&key.hmac, &MessageDigest::sha256()).is_err() {
            return TicketKeyCallbackResult::Error;
        }
        match (encrypt, is_current) {
            (true, _) | (false, true) => TicketKeyCallbackResult::Success,
            // Decrypted with an older key: resume, and hand the client a ticket under the
            // current key.
            (false, false) => TicketKeyCallbackResult::DecryptSuccessRenew,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_stable_and_per_epoch() {
        let secret = [7u8; 32];
        let a = TicketKey::derive(&secret, 100).unwrap();
        assert_eq!(a, TicketKey::derive(&secret, 100).unwrap());
        assert_ne!(a, TicketKey::derive(&secret, 101).unwrap());
        assert_ne!(a, TicketKey::derive(&[8u8; 32], 100).unwrap());
        assert_ne!(a.name, [0; 16]);
    }

    #[test]
    fn key_files() {
        let dir = std::env::temp_dir().join(format!("fastedge-ticket-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keys");
        let key = boring::base64::encode_block(&[1u8; 48]);
        let older = boring::base64::encode_block(&[2u8; 48]);
        std::fs::write(&file, format!("# newest first\n{key}\n\n{older}\n")).unwrap();
        let keys = read_key_file(&file).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].name, [1u8; 16]);
        for (text, why) in [
            ("", "no ticket key"),
            ("bm90IDQ4IGJ5dGVz\n", "not base64 of 48 bytes"),
            ("!!!\n", "not base64"),
            (
                &format!("{}\n", boring::base64::encode_block(&[0u8; 48])),
                "all-zero",
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            let err = read_key_file(&file).unwrap_err().to_string();
            assert!(err.contains(why), "{text:?}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn epochs() {
        let rotate = Duration::from_secs(3600);
        assert_eq!(epoch_at(UNIX_EPOCH + Duration::from_secs(7199), rotate), 1);
        assert_eq!(epoch_at(UNIX_EPOCH + Duration::from_secs(7200), rotate), 2);
    }
}
