//! The control socket: a UNIX stream socket (mode 0600 by default, never TCP) speaking JSON
//! lines. Each request is one JSON object on one line, `{"cmd": "stats", …}`; each answer is
//! one JSON object on one line, `{"ok": true, …}` or `{"ok": false, "error": "…"}`. A client
//! may send many requests on one connection. Bad JSON, a missing `cmd`, an over-long line or a
//! handler's error get an error answer; a client that goes away mid-request only ends its own
//! connection. Request lines are parsed by `fastedge_wire::control`.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{
        fs::PermissionsExt,
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::{json, Map, Value};

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 1 << 20;

/// Errors of the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A system call on the socket failed.
    #[error("control socket {path}: {step}: {source}")]
    Io {
        /// The socket's path.
        path: PathBuf,
        /// What was being done (`bind`, `creating its directory`, …).
        step: &'static str,
        /// The error of the call.
        source: std::io::Error,
    },
    /// A process already answers on this path (a stale socket file is removed instead).
    #[error("control socket {0} is in use by a running process")]
    InUse(PathBuf),
}

/// What a handler answers: the fields of a successful answer, or an error message.
pub type Answer = Result<Map<String, Value>, String>;

/// Binds a UNIX stream socket at `path` under a restrictive umask (0177: the socket is never,
/// even briefly, open to anyone but the owner), then gives it `mode` (e.g. 0o600, or 0o660
/// for a group). The umask is process-wide: call this before other threads create files.
pub fn bind_private(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Permission bits written in octal as a command line gives them (`600`, `0660`): at most
/// 0o777.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{text:?} is not an octal mode like 600"))
}

/// Removes the socket file a previous run left at `path`, before binding there again. Nothing
/// at `path` is fine; anything but a socket is not ours to remove: an `AlreadyExists` error
/// that says so.
pub fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    std::fs::remove_file(path)
}

/// A bound control socket, serving on its own threads until dropped.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlServer {
    /// Binds `path` with permissions `mode` (e.g. 0o600) and serves requests with `handler`
    /// (called with the command name and the whole request object). A stale socket file left
    /// by a dead process is replaced; a live one is an error.
    pub fn start(
        path: &Path,
        mode: u32,
        handler: impl Fn(&str, &Map<String, Value>) -> Answer + Send + Sync + 'static,
    ) -> Result<Self, ControlError> {
        let io = |step: &'static str| {
            move |source| ControlError::Io {
                path: path.to_owned(),
                step,
                source,
            }
        };
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(io("removing the stale socket"))?;
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io("creating its directory"))?;
        }
        let listener = bind_private(path, mode).map_err(io("bind"))?;
        listener.set_nonblocking(true).map_err(io("nonblocking"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let handler = handler.clone();
                            let _ = std::thread::Builder::new()
                                .name("control-client".into())
                                .spawn(move || serve_client(stream, &*handler));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        Err(error) => {
                            tracing::warn!(%error, "control socket accept failed");
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            })
            .map_err(io("starting its thread"))?;
        tracing::info!(path = %path.display(), "control socket listening");
        Ok(Self {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
        })
    }

    /// Where the socket listens.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Answers one request line.
pub fn answer_line(line: &str, handler: &dyn Fn(&str, &Map<String, Value>) -> Answer) -> Value {
    let request = match fastedge_wire::control::parse_request(line) {
        Ok(request) => request,
        Err(message) => return error(message),
    };
    match handler(&request.cmd, &request.fields) {
        Ok(mut fields) => {
            // A handler may answer `"ok": false` itself, with fields of its own.
            fields.entry("ok").or_insert(Value::Bool(true));
            Value::Object(fields)
        }
        Err(message) => error(message),
    }
}

fn error(message: String) -> Value {
    json!({ "ok": false, "error": message })
}

fn serve_client(stream: UnixStream, handler: &dyn Fn(&str, &Map<String, Value>) -> Answer) {
    let _ = stream.set_nonblocking(false);
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    let mut writer = std::io::BufWriter::new(writer);
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        let read = std::io::Read::take(&mut reader, MAX_REQUEST as u64 + 1).read_line(&mut line);
        let answer = match read {
            Ok(0) => return, // the client closed
            Ok(_) if line.len() > MAX_REQUEST && !line.ends_with('\n') => {
                let answer = error(format!("request longer than {MAX_REQUEST} bytes"));
                let _ = writeln!(writer, "{answer}").and_then(|()| writer.flush());
                return;
            }
            Ok(_) if line.trim().is_empty() => continue,
            Ok(_) => answer_line(line.trim(), handler),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                error("a request line must be UTF-8 JSON".into())
            }
            Err(_) => return, // the client went away mid-request
        };
        if writeln!(writer, "{answer}")
            .and_then(|()| writer.flush())
            .is_err()
        {
            return;
        }
    }
}

/// Sends one request to the control socket at `path` and returns the answer.
pub fn request(path: &Path, request: &Value) -> Result<Value, std::io::Error> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    writeln!(writer, "{request}")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad answer {line:?}: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    #[test]
    fn only_a_stale_socket_is_removed() {
        let dir = std::env::temp_dir().join(format!("fastedge-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (socket, file) = (dir.join("s.sock"), dir.join("file"));
        super::remove_stale_socket(&socket).unwrap(); // nothing there
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        super::remove_stale_socket(&socket).unwrap();
        assert!(!socket.exists());
        std::fs::write(&file, b"keep").unwrap();
        let error = super::remove_stale_socket(&file).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(
            error.to_string(),
            format!("{} exists and is not a socket", file.display())
        );
        assert!(file.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn modes_are_octal_permission_bits() {
        assert_eq!(super::parse_mode("600"), Ok(0o600));
        assert_eq!(super::parse_mode("0660"), Ok(0o660));
        for bad in ["", "800", "1000", "rw", "-1"] {
            assert_eq!(
                super::parse_mode(bad),
                Err(format!("{bad:?} is not an octal mode like 600"))
            );
        }
    }

    use super::*;

    fn handler(cmd: &str, request: &Map<String, Value>) -> Answer {
        match cmd {
            "echo" => Ok(request.clone()),
            "fail" => Err("it failed".into()),
            other => Err(format!("unknown command {other:?}")),
        }
    }

    #[test]
    fn answers_commands_and_errors() {
        let ok = answer_line(r#"{"cmd":"echo","x":1}"#, &handler);
        assert_eq!(ok["ok"], true);
        assert_eq!(ok["x"], 1);
        for (line, expected) in [
            ("{", "bad JSON"),
            ("[1]", "a request is a JSON object"),
            (r#"{"x":1}"#, "missing \"cmd\""),
            (r#"{"cmd":"fail"}"#, "it failed"),
            (r#"{"cmd":"nope"}"#, "unknown command"),
        ] {
            let answer = answer_line(line, &handler);
            assert_eq!(answer["ok"], false, "{line}");
            assert!(
                answer["error"].as_str().unwrap().contains(expected),
                "{line}: {answer}"
            );
        }
    }

    #[test]
    fn serves_over_a_socket_with_mode_0600_and_survives_a_vanishing_client() {
        let path = std::env::temp_dir().join(format!("fastedge-ctl-{}.sock", std::process::id()));
        let server = ControlServer::start(&path, 0o600, handler).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second server on the same live socket is refused.
        assert!(matches!(
            ControlServer::start(&path, 0o600, handler),
            Err(ControlError::InUse(_))
        ));
        // A client that sends half a request and goes away.
        {
            let mut s = UnixStream::connect(&path).unwrap();
            s.write_all(br#"{"cmd":"ec"#).unwrap();
        }
        let answer = request(&path, &json!({"cmd": "echo", "y": "z"})).unwrap();
        assert_eq!(answer["y"], "z");
        drop(server);
        assert!(!path.exists());
    }
}
