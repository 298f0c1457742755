//! Sockets of the executors, the same types on either engine.

use std::{
    io,
    net::SocketAddr,
    os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd},
    path::Path,
    pin::Pin,
    task::{Context, Poll},
};

use futures_io::{AsyncRead, AsyncWrite};

use crate::{engine, uring, Engine};

/// A TCP listener served by the calling thread's executor.
#[derive(Debug)]
pub enum TcpListener {
    /// On fastedge's io_uring engine.
    Uring(uring::net::TcpListener),
    /// On glommio.
    Glommio(GlommioListener),
}

/// A glommio listener with its descriptor, which glommio's listener owns and does not tell
/// (for [`TcpListener::close`]).
#[derive(Debug)]
pub struct GlommioListener {
    listener: glommio::net::TcpListener,
    fd: RawFd,
}

impl GlommioListener {
    /// glommio's listener.
    pub fn get_ref(&self) -> &glommio::net::TcpListener {
        &self.listener
    }
}

impl TcpListener {
    /// Takes over a bound, listening socket for the calling thread's engine.
    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        match engine::current() {
            Some(Engine::Glommio) => {
                let fd = fd.into_raw_fd();
                // SAFETY: `fd` is an open, listening TCP socket owned by us (it came out of an
                // `OwnedFd`); glommio takes over ownership and closes it.
                let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
                Ok(Self::Glommio(GlommioListener { listener, fd }))
            }
            Some(Engine::Uring) => Ok(Self::Uring(uring::net::TcpListener::from_fd(fd)?)),
            None => Err(io::Error::other(
                "a listener can only be used on an executor thread",
            )),
        }
    }

    /// Waits for the next connection.
    pub async fn accept(&self) -> io::Result<TcpStream> {
        match self {
            Self::Uring(l) => l.accept().await.map(TcpStream::Uring),
            Self::Glommio(l) => l
                .listener
                .accept()
                .await
                .map(|s| TcpStream::Glommio(Box::new(s)))
                .map_err(io::Error::from),
        }
    }

    /// The address the listener is bound to (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Self::Uring(l) => l.local_addr(),
            Self::Glommio(l) => l.listener.local_addr().map_err(io::Error::from),
        }
    }

    /// Stops accepting and returns the connections the engine accepted that were not taken:
    /// on io_uring those its multishot accept got until the kernel confirmed its cancellation
    /// (see [`uring::net::TcpListener::stop`]), which dropping the listener would close. Call it
    /// before dropping or closing a listener whose connections must all be served, such as one
    /// a successor process also accepts on. Afterwards `accept` fails on io_uring. On glommio,
    /// whose accepts run one at a time inside `accept`, this returns nothing.
    pub async fn stop_accepting(&self) -> Vec<TcpStream> {
        match self {
            Self::Uring(l) => l.stop().await.into_iter().map(TcpStream::Uring).collect(),
            Self::Glommio(_) => Vec::new(),
        }
    }

    /// Stops listening at once, then closes the listener: connections the kernel completed
    /// that nobody accepted are reset, nothing more connects, and the address may be bound
    /// again as soon as this returns.
    ///
    /// Dropping a listener closes its descriptor, but an accept in flight holds the socket
    /// in the kernel until the ring cancels it: on glommio a moment after the executor ends,
    /// while the socket goes on completing connections nobody will accept.
    ///
    /// Not for a socket another process or executor also holds (a listener handed over to a
    /// new binary): it stops listening for every holder.
    pub fn close(self) -> io::Result<()> {
        let fd = match &self {
            Self::Uring(l) => l.raw_fd(),
            Self::Glommio(l) => l.fd,
        };
        // SHUT_RD on a listening TCP socket takes it out of the listening state (what the
        // last close would do), whoever else holds it.
        nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Read).map_err(io::Error::from)
    }
}

/// A TCP connection served by the calling thread's executor.
#[derive(Debug)]
pub enum TcpStream {
    /// On fastedge's io_uring engine.
    Uring(uring::net::TcpStream),
    /// On glommio. Boxed: glommio's stream is about 120 bytes and the engine's 8, and every
    /// proxied connection holds two streams for as long as it lives.
    Glommio(Box<glommio::net::TcpStream>),
}

impl TcpStream {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        match engine::current() {
            Some(Engine::Glommio) => glommio::net::TcpStream::connect(addr)
                .await
                .map(|s| Self::Glommio(Box::new(s)))
                .map_err(io::Error::from),
            _ => uring::net::TcpStream::connect(addr).await.map(Self::Uring),
        }
    }

    /// The remote end's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Self::Uring(s) => s.peer_addr(),
            Self::Glommio(s) => s.peer_addr().map_err(io::Error::from),
        }
    }

    /// Our end's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Self::Uring(s) => s.local_addr(),
            Self::Glommio(s) => s.local_addr().map_err(io::Error::from),
        }
    }

    /// Turns Nagle's algorithm off (`on = true`: TCP_NODELAY) or on.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match self {
            Self::Uring(s) => s.set_nodelay(on),
            Self::Glommio(s) => s.set_nodelay(on).map_err(io::Error::from),
        }
    }

    /// Whether the peer has said nothing yet that was not read: no bytes waiting, no end of
    /// stream, no reset, neither in the kernel (a `recv` that peeks and does not wait) nor
    /// taken by the engine. For a connection kept unused, before it is put to use: one that
    /// is not quiet may carry words of the peer meant for someone else, or be gone.
    pub fn is_quiet(&self) -> bool {
        use nix::{errno::Errno, sys::socket::MsgFlags};
        let fd = match self {
            Self::Uring(s) if !s.nothing_received() => return false,
            Self::Uring(s) => s.raw_fd(),
            // On glommio a read that was started and not finished may have taken bytes this
            // does not see: for a connection never read from, or read only by finished reads.
            Self::Glommio(s) => std::os::fd::AsRawFd::as_raw_fd(&**s),
        };
        let mut byte = [0u8; 1];
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        matches!(
            nix::sys::socket::recv(fd, &mut byte, flags),
            Err(Errno::EAGAIN)
        )
    }
}

/// A UNIX stream connection served by the calling thread's executor.
#[derive(Debug)]
pub enum UnixStream {
    /// On fastedge's io_uring engine.
    Uring(uring::net::UnixStream),
    /// On glommio (boxed, as [`TcpStream`]'s).
    Glommio(Box<glommio::net::UnixStream>),
}

impl UnixStream {
    /// Connects to the socket at `path`.
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<Self> {
        match engine::current() {
            Some(Engine::Glommio) => glommio::net::UnixStream::connect(path)
                .await
                .map(|s| Self::Glommio(Box::new(s)))
                .map_err(io::Error::from),
            _ => uring::net::UnixStream::connect_unix(path.as_ref())
                .await
                .map(Self::Uring),
        }
    }
}

macro_rules! dispatch_async_io {
    ($ty:ident) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut [u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $ty::Uring(s) => Pin::new(s).poll_read(cx, buf),
                    $ty::Glommio(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }

        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $ty::Uring(s) => Pin::new(s).poll_write(cx, buf),
                    $ty::Glommio(s) => Pin::new(s).poll_write(cx, buf),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::Uring(s) => Pin::new(s).poll_flush(cx),
                    $ty::Glommio(s) => Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::Uring(s) => Pin::new(s).poll_close(cx),
                    $ty::Glommio(s) => Pin::new(s).poll_close(cx),
                }
            }
        }
    };
}

dispatch_async_io!(TcpStream);
dispatch_async_io!(UnixStream);
