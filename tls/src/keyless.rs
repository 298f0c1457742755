//! Keyless: private keys that live outside the process. The handshake's signature goes to a
//! signer over a UNIX stream socket (`key_server = "unix:/run/signer.sock"`), asynchronously:
//! the core that runs the handshake goes on with other connections while the signer works.
//!
//! The protocol (all integers big-endian; requests may be pipelined, answers may come in any
//! order and are matched by id):
//!
//! ```text
//! request:  u32 length of what follows | u8 op (1 = sign) | u32 id | u16 TLS SignatureScheme
//!           | 32 bytes SHA-256 of the certificate's SubjectPublicKeyInfo (DER) | the input
//! response: u32 length of what follows | u32 id | u8 status | the signature
//! status:   0 ok, 1 unknown key, 2 unsupported algorithm, 3 signing failed, 4 bad request
//! ```
//!
//! The input is what TLS signs (not a digest): the signer hashes it as the scheme says.
//! `fastedge keyserver` is the reference signer ([`serve_signer`]).
//!
//! Each key server path gets one client per process: a writer thread (connects, reconnects,
//! writes requests) and a reader thread per connection (completes requests by id). A signer that
//! is down or goes away fails the pending handshakes at once, with the reason in the log.

use crate::oneshot::OneShot;
use std::{
    collections::HashMap,
    future::Future,
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex, OnceLock,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use boring::{
    hash::{hash, MessageDigest},
    pkey::{Id, PKey, Private},
    rsa::Padding,
    sign::{RsaPssSaltlen, Signer},
    ssl::{
        AsyncPrivateKeyMethod, AsyncPrivateKeyMethodError, BoxPrivateKeyMethodFuture, SslRef,
        SslSignatureAlgorithm,
    },
};

// The frames are parsed and encoded in `fastedge_wire::keyless`.
pub use fastedge_wire::keyless::{
    MAX_FRAME, OP_SIGN, STATUS_BAD_REQUEST, STATUS_FAILED, STATUS_OK, STATUS_UNKNOWN_KEY,
    STATUS_UNSUPPORTED,
};
use fastedge_wire::{http1::Status, keyless as frames};
/// A request not answered by then fails (the handshake timeout usually comes first); one that
/// waited this long to be sent is not sent at all.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests waiting to be written at most (every core together); more fail at once, so a
/// signer that stops reading cannot make memory grow without bound.
pub const MAX_QUEUED: usize = 1024;

/// The SHA-256 of a public key's SubjectPublicKeyInfo: how requests name the key.
pub fn key_id(spki_der: &[u8]) -> Result<[u8; 32], boring::error::ErrorStack> {
    let digest = hash(MessageDigest::sha256(), spki_der)?;
    let mut id = [0u8; 32];
    id.copy_from_slice(&digest);
    Ok(id)
}

/// The TLS SignatureScheme code of `alg` (boring keeps it private).
fn scheme_code(alg: SslSignatureAlgorithm) -> Option<u16> {
    const ALL: [(SslSignatureAlgorithm, u16); 12] = [
        (SslSignatureAlgorithm::RSA_PKCS1_SHA1, 0x0201),
        (SslSignatureAlgorithm::RSA_PKCS1_SHA256, 0x0401),
        (SslSignatureAlgorithm::RSA_PKCS1_SHA384, 0x0501),
        (SslSignatureAlgorithm::RSA_PKCS1_SHA512, 0x0601),
        (SslSignatureAlgorithm::ECDSA_SHA1, 0x0203),
        (SslSignatureAlgorithm::ECDSA_SECP256R1_SHA256, 0x0403),
        (SslSignatureAlgorithm::ECDSA_SECP384R1_SHA384, 0x0503),
        (SslSignatureAlgorithm::ECDSA_SECP521R1_SHA512, 0x0603),
        (SslSignatureAlgorithm::RSA_PSS_RSAE_SHA256, 0x0804),
        (SslSignatureAlgorithm::RSA_PSS_RSAE_SHA384, 0x0805),
        (SslSignatureAlgorithm::RSA_PSS_RSAE_SHA512, 0x0806),
        (SslSignatureAlgorithm::ED25519, 0x0807),
    ];
    ALL.iter().find(|(a, _)| *a == alg).map(|(_, code)| *code)
}

/// How one request ends: the signature, or why not.
type Outcome = Result<Vec<u8>, String>;

/// Where a pending request's answer lands.
type Slot = OneShot<Outcome>;

/// Requests in flight on one connection, by id, with when they were sent; and whether the
/// connection still reads.
#[derive(Default)]
struct Connection {
    pending: Mutex<HashMap<u32, (Arc<Slot>, Instant)>>,
    alive: AtomicBool,
}

type Pending = Arc<Connection>;

/// A request for the writer thread: id, frame, where the answer goes, and when it was queued.
type Request = (u32, Vec<u8>, Arc<Slot>, Instant);

/// The client of one key server, shared by every core of the process.
pub struct KeyServer {
    path: PathBuf,
    requests: Mutex<mpsc::SyncSender<Request>>,
    next_id: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for KeyServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyServer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl KeyServer {
    /// The process's client of the signer at `path` (made on first use).
    pub fn for_path(path: &Path) -> Arc<KeyServer> {
        static ALL: OnceLock<Mutex<HashMap<PathBuf, Arc<KeyServer>>>> = OnceLock::new();
        let mut all = ALL
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        all.entry(path.to_owned())
            .or_insert_with(|| Arc::new(KeyServer::start(path)))
            .clone()
    }

    fn start(path: &Path) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Request>(MAX_QUEUED);
        let writer_path = path.to_owned();
        std::thread::Builder::new()
            .name("fastedge-keyless".into())
            .spawn(move || writer(&writer_path, rx))
            .unwrap_or_else(|e| panic!("starting the key server thread: {e}"));
        Self {
            path: path.to_owned(),
            requests: Mutex::new(tx),
            next_id: std::sync::atomic::AtomicU32::new(1),
        }
    }

    /// Asks for a signature of `input` with `scheme` by the key named `key_id`.
    fn sign(&self, key_id: &[u8; 32], scheme: u16, input: &[u8]) -> SignFuture {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut frame = Vec::with_capacity(4 + 1 + 4 + 2 + 32 + input.len());
        frames::encode_request(id, scheme, key_id, input, &mut frame);
        let slot = Arc::new(Slot::default());
        // Never waits: a core must not block on a slow signer.
        let sent = self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_send((id, frame, slot.clone(), Instant::now()));
        match sent {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => slot.complete(Err(format!(
                "{MAX_QUEUED} requests already wait for the key server"
            ))),
            Err(mpsc::TrySendError::Disconnected(_)) => {
                slot.complete(Err("the key server thread has stopped".into()))
            }
        }
        SignFuture {
            slot,
            path: self.path.clone(),
        }
    }
}

/// Connects, writes requests in order, and reconnects after a failure.
fn writer(path: &Path, requests: mpsc::Receiver<Request>) {
    let mut connection: Option<(UnixStream, Pending)> = None;
    while let Ok((id, frame, slot, queued)) = requests.recv() {
        // The writer holds the only other reference: the handshake that asked has ended
        // (timed out, failed, closed), so nobody needs the signature.
        if Arc::strong_count(&slot) == 1 {
            continue;
        }
        if queued.elapsed() >= REQUEST_TIMEOUT {
            slot.complete(Err(format!(
                "waited {} s for the key server to take the request",
                REQUEST_TIMEOUT.as_secs()
            )));
            continue;
        }
        if connection
            .as_ref()
            .is_some_and(|(_, c)| !c.alive.load(Ordering::Acquire))
        {
            connection = None;
        }
        if connection.is_none() {
            match connect(path) {
                Ok(connected) => connection = Some(connected),
                Err(error) => {
                    tracing::warn!(key_server = %path.display(), %error, "key server unreachable");
                    slot.complete(Err(format!("connect: {error}")));
                    continue;
                }
            }
        }
        let Some((stream, c)) = connection.as_mut() else {
            continue;
        };
        {
            // Checked and inserted under the lock the reader takes to end the connection, so
            // no request lands in a map nobody reads any more.
            let mut pending = c.pending.lock().unwrap_or_else(|p| p.into_inner());
            if !c.alive.load(Ordering::Acquire) {
                drop(pending);
                slot.complete(Err("the key server connection ended".into()));
                connection = None;
                continue;
            }
            pending.insert(id, (slot, Instant::now()));
        }
        if let Err(error) = stream.write_all(&frame) {
            tracing::warn!(key_server = %path.display(), %error, "writing to the key server failed");
            c.alive.store(false, Ordering::Release);
            fail_all(c, &format!("write: {error}"));
            let _ = stream.shutdown(std::net::Shutdown::Both);
            connection = None;
        }
    }
}

/// A fresh connection with its reader thread.
fn connect(path: &Path) -> std::io::Result<(UnixStream, Pending)> {
    let stream = UnixStream::connect(path)?;
    // A signer that stops reading must not stall every handshake behind it.
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let read_half = stream.try_clone()?;
    read_half.set_read_timeout(Some(Duration::from_millis(500)))?;
    let connection = Arc::new(Connection {
        pending: Mutex::default(),
        alive: AtomicBool::new(true),
    });
    let reader_connection = connection.clone();
    let reader_path = path.to_owned();
    std::thread::Builder::new()
        .name("fastedge-keyless-read".into())
        .spawn(move || reader(read_half, &reader_connection, &reader_path))?;
    tracing::info!(key_server = %path.display(), "connected to the key server");
    Ok((stream, connection))
}

fn fail_all(connection: &Connection, why: &str) {
    let slots: Vec<Arc<Slot>> = connection
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .map(|(_, (slot, _))| slot)
        .collect();
    for slot in slots {
        slot.complete(Err(why.to_owned()));
    }
}

/// Fails requests older than [`REQUEST_TIMEOUT`]: a signer that hangs must not hold handshakes.
fn expire(connection: &Connection) {
    let now = Instant::now();
    let expired: Vec<Arc<Slot>> = {
        let mut pending = connection.pending.lock().unwrap_or_else(|p| p.into_inner());
        let old: Vec<u32> = pending
            .iter()
            .filter(|(_, (_, sent))| now.duration_since(*sent) >= REQUEST_TIMEOUT)
            .map(|(id, _)| *id)
            .collect();
        old.iter()
            .filter_map(|id| pending.remove(id).map(|(slot, _)| slot))
            .collect()
    };
    for slot in expired {
        slot.complete(Err(format!(
            "no answer within {} s",
            REQUEST_TIMEOUT.as_secs()
        )));
    }
}

/// Reads answers until the connection ends, then fails what is left and marks the connection
/// dead, so the writer reconnects for the next request.
fn reader(mut stream: UnixStream, connection: &Connection, path: &Path) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    let why = 'read: loop {
        match stream.read(&mut chunk) {
            Ok(0) => break "key server closed the connection".to_owned(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                expire(connection);
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => break format!("reading from the key server: {error}"),
        }
        loop {
            let (answer, used) = match frames::parse_answer(&buf) {
                Ok(Status::Complete(complete)) => complete,
                Ok(Status::Partial) => break,
                Err(error) => break 'read format!("key server sent {error}"),
            };
            let slot = connection
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&answer.id);
            if let Some((slot, _)) = slot {
                slot.complete(match answer.status {
                    STATUS_OK => Ok(answer.signature.to_vec()),
                    STATUS_UNKNOWN_KEY => Err("the key server does not hold this key".into()),
                    STATUS_UNSUPPORTED => Err("the key server cannot sign with this scheme".into()),
                    other => Err(format!("the key server failed to sign (status {other})")),
                });
            }
            buf.drain(..used);
        }
        expire(connection);
    };
    {
        let _pending = connection.pending.lock().unwrap_or_else(|p| p.into_inner());
        connection.alive.store(false, Ordering::Release);
    }
    tracing::warn!(key_server = %path.display(), reason = %why, "key server connection ended");
    fail_all(connection, &why);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// A signature on its way back.
struct SignFuture {
    slot: Arc<Slot>,
    path: PathBuf,
}

impl Future for SignFuture {
    type Output = Result<Vec<u8>, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.slot.poll_value(cx).map(|outcome| {
            outcome.map_err(|why| format!("key server unix:{}: {why}", self.path.display()))
        })
    }
}

/// BoringSSL's private-key hooks for one certificate whose key is held by a key server.
pub(crate) struct KeylessKey {
    pub server: Arc<KeyServer>,
    pub key_id: [u8; 32],
}

impl AsyncPrivateKeyMethod for KeylessKey {
    fn sign(
        &self,
        _ssl: &mut SslRef,
        input: &[u8],
        signature_algorithm: SslSignatureAlgorithm,
        _output: &mut [u8],
    ) -> Result<BoxPrivateKeyMethodFuture, AsyncPrivateKeyMethodError> {
        let scheme = scheme_code(signature_algorithm).ok_or(AsyncPrivateKeyMethodError)?;
        let pending = self.server.sign(&self.key_id, scheme, input);
        Ok(Box::pin(async move {
            let outcome = pending.await;
            let finish: boring::ssl::BoxPrivateKeyMethodFinish =
                Box::new(move |ssl: &mut SslRef, output: &mut [u8]| match outcome {
                    Ok(signature) if signature.len() <= output.len() => {
                        output[..signature.len()].copy_from_slice(&signature);
                        Ok(signature.len())
                    }
                    Ok(signature) => {
                        crate::exdata::set_refusal(
                            ssl,
                            format!(
                                "keyless signing: the key server's signature is {} bytes, \
                                 longer than the key allows",
                                signature.len()
                            ),
                        );
                        Err(AsyncPrivateKeyMethodError)
                    }
                    Err(why) => {
                        crate::exdata::set_refusal(ssl, format!("keyless signing failed: {why}"));
                        Err(AsyncPrivateKeyMethodError)
                    }
                });
            Ok(finish)
        }))
    }

    fn decrypt(
        &self,
        ssl: &mut SslRef,
        _input: &[u8],
        _output: &mut [u8],
    ) -> Result<BoxPrivateKeyMethodFuture, AsyncPrivateKeyMethodError> {
        crate::exdata::set_refusal(
            ssl,
            "keyless: RSA key exchange (decryption) is not supported; the client offered only \
             TLS_RSA_* suites"
                .into(),
        );
        Err(AsyncPrivateKeyMethodError)
    }
}

/// Signs one request with `key`: the reference signer's work, also usable by other signers.
/// Returns the status and the signature.
pub fn sign_with(key: &PKey<Private>, scheme: u16, input: &[u8]) -> (u8, Vec<u8>) {
    let digest = match scheme {
        0x0201 | 0x0203 => Some(MessageDigest::sha1()),
        0x0401 | 0x0403 | 0x0804 => Some(MessageDigest::sha256()),
        0x0501 | 0x0503 | 0x0805 => Some(MessageDigest::sha384()),
        0x0601 | 0x0603 | 0x0806 => Some(MessageDigest::sha512()),
        0x0807 => None,
        _ => return (STATUS_UNSUPPORTED, Vec::new()),
    };
    let fits = match key.id() {
        Id::RSA => matches!(scheme, 0x0201 | 0x0401 | 0x0501 | 0x0601 | 0x0804..=0x0806),
        Id::EC => matches!(scheme, 0x0203 | 0x0403 | 0x0503 | 0x0603),
        Id::ED25519 => scheme == 0x0807,
        _ => false,
    };
    if !fits {
        return (STATUS_UNSUPPORTED, Vec::new());
    }
    let signed = (|| {
        let mut signer = match digest {
            Some(md) => Signer::new(md, key)?,
            None => Signer::new_without_digest(key)?,
        };
        if matches!(scheme, 0x0804..=0x0806) {
            signer.set_rsa_padding(Padding::PKCS1_PSS)?;
            signer.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
        }
        signer.sign_oneshot_to_vec(input)
    })();
    match signed {
        Ok(signature) => (STATUS_OK, signature),
        Err(_) => (STATUS_FAILED, Vec::new()),
    }
}

/// A private key the reference signer cannot hold, and why.
#[derive(Debug, thiserror::Error)]
pub enum SignerKeyError {
    /// The file could not be read.
    #[error("reading key {path}: {error}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// The system's answer.
        error: std::io::Error,
    },
    /// The file is not an unencrypted PEM private key, or its public key cannot be encoded.
    #[error("{path}: {why}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// BoringSSL's reason, prefixed with what was tried.
        why: String,
    },
}

/// The keys in the PEM files `paths` (unencrypted private keys), by key id ([`key_id`]), as
/// [`serve_signer`] takes them; each is logged with its id.
pub fn signer_keys(paths: &[PathBuf]) -> Result<HashMap<[u8; 32], PKey<Private>>, SignerKeyError> {
    let mut keys = HashMap::new();
    for path in paths {
        let pem = std::fs::read(path).map_err(|error| SignerKeyError::Read {
            path: path.clone(),
            error,
        })?;
        let failed = |why: String| SignerKeyError::Key {
            path: path.clone(),
            why,
        };
        let key = PKey::private_key_from_pem(&pem)
            .map_err(|e| failed(format!("not a PEM private key: {e}")))?;
        let spki = key.public_key_to_der().map_err(|e| failed(e.to_string()))?;
        let id = key_id(&spki).map_err(|e| failed(e.to_string()))?;
        tracing::info!(key = %path.display(), id = %hex::encode(id), "holding key");
        keys.insert(id, key);
    }
    Ok(keys)
}

/// The reference signer: serves the keys `keys` (by key id) on connections from `accept` until
/// it fails, one thread per connection, answering requests in order.
pub fn serve_signer<S, A>(keys: HashMap<[u8; 32], PKey<Private>>, mut accept: A)
where
    S: Read + Write + Send + 'static,
    A: FnMut() -> std::io::Result<S>,
{
    let keys = Arc::new(keys);
    while let Ok(stream) = accept() {
        let keys = keys.clone();
        std::thread::spawn(move || serve_signer_connection(stream, &keys));
    }
}

fn serve_signer_connection<S: Read + Write>(
    mut stream: S,
    keys: &HashMap<[u8; 32], PKey<Private>>,
) {
    loop {
        let mut len = [0u8; 4];
        if stream.read_exact(&mut len).is_err() {
            return;
        }
        let len = match frames::frame_len(len) {
            Ok(len) => len,
            Err(error) => {
                tracing::warn!(%error, "request frame too large; closing the connection");
                return;
            }
        };
        let mut body = vec![0u8; len];
        if stream.read_exact(&mut body).is_err() {
            return;
        }
        let (id, status, signature) = match frames::parse_request_body(&body) {
            frames::Request::Bad { id } => (id, STATUS_BAD_REQUEST, Vec::new()),
            frames::Request::Sign {
                id,
                scheme,
                key_id,
                input,
            } => match keys.get(&key_id) {
                None => (id, STATUS_UNKNOWN_KEY, Vec::new()),
                Some(key) => {
                    let (status, signature) = sign_with(key, scheme, input);
                    (id, status, signature)
                }
            },
        };
        let mut answer = Vec::with_capacity(9 + signature.len());
        frames::encode_answer(id, status, &signature, &mut answer);
        if stream.write_all(&answer).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn poll_now(future: &mut SignFuture) -> Poll<Result<Vec<u8>, String>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(future).poll(&mut cx)
    }

    /// A signer that accepts one connection, reads nothing until `release` is set, then
    /// counts the request frames it gets (answering none) until a second passes without one.
    fn stalling_signer(path: &Path, release: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            while !release.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(5));
            }
            stream
                .set_read_timeout(Some(Duration::from_secs(1)))
                .unwrap();
            let received = AtomicUsize::new(0);
            loop {
                let mut len = [0u8; 4];
                if stream.read_exact(&mut len).is_err() {
                    break;
                }
                let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                if stream.read_exact(&mut body).is_err() {
                    break;
                }
                received.fetch_add(1, Ordering::Relaxed);
            }
            received.into_inner()
        })
    }

    /// Issue 14, defect 5: with a signer that stops reading, requests beyond [`MAX_QUEUED`]
    /// fail at once instead of piling up, and the requests of handshakes that are gone are
    /// never sent once the signer reads again.
    #[test]
    fn a_stalled_signer_bounds_the_queue_and_abandoned_requests_are_skipped() {
        let dir = std::env::temp_dir().join(format!("fastedge-keyless-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("signer.sock");
        let _ = std::fs::remove_file(&path);
        let release = Arc::new(AtomicBool::new(false));
        let signer = stalling_signer(&path, release.clone());
        let server = KeyServer::start(&path);
        let input = vec![7u8; 16 * 1024];
        let total = MAX_QUEUED + 300;
        let mut futures: Vec<SignFuture> = (0..total)
            .map(|_| server.sign(&[1; 32], 0x0403, &input))
            .collect();
        let refused = futures
            .iter_mut()
            .map(poll_now)
            .filter(|p| matches!(p, Poll::Ready(Err(e)) if e.contains("already wait")))
            .count();
        assert!(
            refused >= 100,
            "{refused} of {total} refused at once with the signer stalled"
        );
        // Every handshake gives up (timed out): their requests must not reach the signer.
        drop(futures);
        release.store(true, Ordering::Release);
        let received = signer.join().unwrap();
        assert!(
            received < 100,
            "{received} requests sent for handshakes that had ended"
        );
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
