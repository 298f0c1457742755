//! Passing open descriptors to another process: a UNIX `SOCK_SEQPACKET` socket whose messages
//! carry bytes and SCM_RIGHTS descriptors together, for handing listening sockets to a new
//! binary without closing them ([`HandoverSocket`], [`HandoverConn`]).
//!
//! Messages keep their bounds (one `send`, one `recv`), so what they say is parsed whole; the
//! meaning of the bytes belongs to the caller (`fastedge_wire::takeover` for serve). Received
//! descriptors close on exec. Owns only the moving of bytes and descriptors.

use std::{
    io::{self, IoSlice, IoSliceMut},
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::fs::PermissionsExt,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use socket2::{Domain, SockAddr, Socket, Type};

/// The most descriptors one message may carry (the kernel's SCM_MAX_FD).
pub const MAX_FDS: usize = 253;

/// Why a handover socket operation failed, naming the socket path and the operation.
#[derive(Debug, thiserror::Error)]
#[error("handover socket {path}: {operation}: {source}")]
pub struct HandoverError {
    /// The UNIX socket path.
    pub path: PathBuf,
    /// What was being done.
    pub operation: &'static str,
    /// The system's error.
    pub source: io::Error,
}

/// A listening handover socket at a path in the file system, mode 0600 (only its owner, and
/// root, may connect). The path is removed when it is dropped.
#[derive(Debug)]
pub struct HandoverSocket {
    socket: Socket,
    path: PathBuf,
}

impl HandoverSocket {
    /// Listens at `path`, replacing a socket file left there by a process that is gone (a path
    /// a live process listens on is refused: `AddrInUse`).
    pub fn bind(path: &Path) -> Result<Self, HandoverError> {
        let failed = |operation| {
            move |source| HandoverError {
                path: path.to_owned(),
                operation,
                source,
            }
        };
        let socket = seqpacket().map_err(failed("creating the socket"))?;
        let addr = SockAddr::unix(path).map_err(failed("socket path"))?;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            // A stale socket file: nobody answers on it.
            let probe = seqpacket().map_err(failed("creating the socket"))?;
            if meta.file_type().is_socket() && probe.connect(&addr).is_err() {
                std::fs::remove_file(path).map_err(failed("removing a stale socket"))?;
            }
        }
        socket.bind(&addr).map_err(failed("binding"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(failed("setting mode 0600"))?;
        socket.listen(4).map_err(failed("listening"))?;
        Ok(Self {
            socket,
            path: path.to_owned(),
        })
    }

    /// The path it listens at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `wait` for the next process to connect (`None` if none did). Its receives
    /// time out after `timeout`.
    pub fn accept(
        &self,
        wait: Duration,
        timeout: Duration,
    ) -> Result<Option<HandoverConn>, HandoverError> {
        let failed = |operation| {
            move |source| HandoverError {
                path: self.path.clone(),
                operation,
                source,
            }
        };
        // SO_RCVTIMEO bounds accept(2) too.
        self.socket
            .set_read_timeout(Some(wait))
            .map_err(failed("setting the accept timeout"))?;
        match self.socket.accept() {
            Ok((socket, _)) => HandoverConn::new(socket, &self.path, timeout).map(Some),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(failed("accepting")(e)),
        }
    }
}

impl Drop for HandoverSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One end of a handover connection.
#[derive(Debug)]
pub struct HandoverConn {
    socket: Socket,
    path: PathBuf,
}

impl HandoverConn {
    /// Connects to the handover socket at `path`; receives time out after `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, HandoverError> {
        let failed = |operation| {
            move |source| HandoverError {
                path: path.to_owned(),
                operation,
                source,
            }
        };
        let socket = seqpacket().map_err(failed("creating the socket"))?;
        let addr = SockAddr::unix(path).map_err(failed("socket path"))?;
        socket.connect(&addr).map_err(failed("connecting"))?;
        Self::new(socket, path, timeout)
    }

    fn new(socket: Socket, path: &Path, timeout: Duration) -> Result<Self, HandoverError> {
        socket
            .set_read_timeout(Some(timeout))
            .map_err(|source| HandoverError {
                path: path.to_owned(),
                operation: "setting the receive timeout",
                source,
            })?;
        Ok(Self {
            socket,
            path: path.to_owned(),
        })
    }

    fn error(&self, operation: &'static str, source: io::Error) -> HandoverError {
        HandoverError {
            path: self.path.clone(),
            operation,
            source,
        }
    }

    /// Sends one message: `bytes` with `fds` (at most [`MAX_FDS`]) attached.
    pub fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), HandoverError> {
        if fds.len() > MAX_FDS {
            return Err(self.error(
                "sending",
                io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"),
            ));
        }
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
        let iov = [IoSlice::new(bytes)];
        let sent = sendmsg::<()>(
            self.socket.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|e| self.error("sending", e.into()))?;
        if sent != bytes.len() {
            return Err(self.error("sending", io::Error::from(io::ErrorKind::WriteZero)));
        }
        Ok(())
    }

    /// Receives one message of at most `max_bytes` bytes and the descriptors attached to it
    /// (owned from here on, closing on exec). A longer message, or more descriptors than
    /// [`MAX_FDS`], is an error (the descriptors that came are closed). The peer closing the
    /// connection is an `UnexpectedEof` error.
    pub fn recv(&self, max_bytes: usize) -> Result<(Vec<u8>, Vec<OwnedFd>), HandoverError> {
        let mut buf = vec![0u8; max_bytes];
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (len, truncated, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(|e| self.error("receiving", e.into()))?;
            let mut fds = Vec::new();
            let cmsgs = msg
                .cmsgs()
                .map_err(|e| self.error("reading control messages", e.into()))?;
            for cmsg in cmsgs {
                if let ControlMessageOwned::ScmRights(received) = cmsg {
                    for fd in received {
                        // SAFETY: the kernel installed `fd` in our table for this message
                        // (SCM_RIGHTS); nothing else owns it.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
            let truncated = msg
                .flags
                .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
            (msg.bytes, truncated, fds)
        };
        if truncated {
            return Err(self.error(
                "receiving",
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "message or descriptors truncated",
                ),
            ));
        }
        if len == 0 && fds.is_empty() {
            return Err(self.error("receiving", io::Error::from(io::ErrorKind::UnexpectedEof)));
        }
        buf.truncate(len);
        Ok((buf, fds))
    }
}

fn seqpacket() -> io::Result<Socket> {
    let socket = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
    socket.set_cloexec(true)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use std::{io::Read, os::fd::AsFd};

    use super::*;

    #[test]
    fn passes_bytes_and_descriptors() {
        let dir = std::env::temp_dir().join(format!("fastedge-handover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.sock");
        let listening = HandoverSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (mut reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        let sender = std::thread::spawn(move || {
            let conn = listening
                .accept(Duration::from_secs(5), Duration::from_secs(5))
                .unwrap()
                .unwrap();
            conn.send(b"hello", &[writer.as_fd()]).unwrap();
            conn.recv(16)
        });
        let conn = HandoverConn::connect(&path, Duration::from_secs(5)).unwrap();
        let (bytes, fds) = conn.recv(64).unwrap();
        assert_eq!(bytes, b"hello");
        assert_eq!(fds.len(), 1);
        // The received descriptor is the same socket: what goes in comes out of its peer.
        let passed = std::os::unix::net::UnixStream::from(fds.into_iter().next().unwrap());
        std::io::Write::write_all(&mut &passed, b"x").unwrap();
        let mut got = [0u8; 1];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
        // Too long a message is an error, not a silent truncation.
        conn.send(b"0123456789abcdefXYZ", &[]).unwrap();
        let refused = sender.join().unwrap().unwrap_err().to_string();
        assert!(refused.contains("truncated"), "{refused}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
