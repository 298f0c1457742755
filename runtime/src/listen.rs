//! SO_REUSEPORT listeners: one socket per executor on the same address, bound up front.
//!
//! All sockets are bound and listening before any executor starts (so a bad address fails at
//! start-up, and so privileges can be dropped after binding). The kernel spreads incoming
//! connections over the group by a hash of the 4-tuple.

use std::{
    net::SocketAddr,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
};

use socket2::{Domain, Protocol, Socket, Type};

use crate::RuntimeError;

/// Default accept backlog per listener.
pub const DEFAULT_BACKLOG: i32 = 1024;

/// A bound, listening socket waiting for its executor.
#[derive(Debug)]
pub struct BoundListener {
    fd: OwnedFd,
    local: SocketAddr,
}

impl BoundListener {
    /// The address the socket is bound to (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Takes a listening TCP socket received from another process (a binary upgrade): checks
    /// that it is a listening stream socket bound to an IP address, and makes it non-blocking
    /// and close-on-exec like the ones [`bind_reuseport`] makes.
    pub fn from_fd(fd: OwnedFd) -> std::io::Result<Self> {
        let socket = Socket::from(fd);
        if socket.r#type()? != Type::STREAM {
            return Err(std::io::Error::other("not a stream socket"));
        }
        if !nix::sys::socket::getsockopt(&socket, nix::sys::socket::sockopt::AcceptConn)? {
            return Err(std::io::Error::other("not a listening socket"));
        }
        socket.set_cloexec(true)?;
        socket.set_nonblocking(true)?;
        let local = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("listening socket has no IP address"))?;
        Ok(Self {
            fd: socket.into(),
            local,
        })
    }

    /// Turns Nagle's algorithm off (`on = true`: TCP_NODELAY) or on for the connections this
    /// socket accepts from now on: on Linux they inherit it from the listener, which saves a
    /// system call per connection. Connections already waiting in the accept queue keep the
    /// setting of their arrival. [`bind_reuseport`] turns it off before listening.
    pub fn set_nodelay(&self, on: bool) -> std::io::Result<()> {
        socket2::SockRef::from(&self.fd).set_nodelay(on)
    }

    /// Whether Nagle's algorithm is off (TCP_NODELAY) for the connections accepted from now on.
    pub fn nodelay(&self) -> std::io::Result<bool> {
        socket2::SockRef::from(&self.fd).nodelay()
    }

    /// A second descriptor for the same socket (closing one leaves the socket open), e.g. to
    /// hand it to a new binary after the executor took the first.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            fd: self.fd.try_clone()?,
            local: self.local,
        })
    }

    /// Hands the socket to the executor of the calling thread (either engine).
    pub fn into_listener(self) -> std::io::Result<crate::net::TcpListener> {
        crate::net::TcpListener::from_fd(self.fd)
    }
}

/// Binds `count` listening sockets on `addr` with SO_REUSEPORT. With port 0, the first socket
/// picks the port and the others join it. IPv6 sockets are IPv6-only, so `[::]:443` and
/// `0.0.0.0:443` can be listed side by side. Nagle's algorithm is off (TCP_NODELAY) from
/// before they listen, so every connection they accept has it off
/// ([`BoundListener::set_nodelay`] changes that).
pub fn bind_reuseport(
    addr: SocketAddr,
    count: usize,
    backlog: i32,
) -> Result<Vec<BoundListener>, RuntimeError> {
    let mut listeners: Vec<BoundListener> = Vec::with_capacity(count);
    let mut target = addr;
    for _ in 0..count {
        let listener =
            bind_one(target, backlog).map_err(|source| RuntimeError::Listen { addr, source })?;
        target = listener.local;
        listeners.push(listener);
    }
    Ok(listeners)
}

impl AsFd for BoundListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn bind_one(addr: SocketAddr, backlog: i32) -> std::io::Result<BoundListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_cloexec(true)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    // Before listen(): every connection it accepts inherits it (see `set_nodelay`).
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    let local = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("bound socket has no IP address"))?;
    Ok(BoundListener {
        fd: socket.into(),
        local,
    })
}

#[cfg(test)]
mod tests {
    /// Nagle's algorithm is off on the listening sockets, so what they accept has it off
    /// without a system call of its own; a taken socket reports how it was found.
    #[test]
    fn bound_sockets_hand_no_delay_to_what_they_accept() {
        let listeners = super::bind_reuseport("127.0.0.1:0".parse().unwrap(), 2, 16).unwrap();
        let addr = listeners[0].local_addr();
        for listener in &listeners {
            assert!(listener.nodelay().unwrap());
        }
        let _client = std::net::TcpStream::connect(addr).unwrap();
        // Whichever socket of the group got the connection (they are non-blocking).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let accepted = loop {
            let found = listeners
                .iter()
                .find_map(|l| socket2::SockRef::from(&l.fd).accept().ok());
            if let Some((accepted, _)) = found {
                break accepted;
            }
            assert!(std::time::Instant::now() < deadline, "nothing accepted");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert!(accepted.nodelay().unwrap());
        let taken = super::BoundListener::from_fd(listeners[1].try_clone().unwrap().fd).unwrap();
        taken.set_nodelay(false).unwrap();
        assert!(!taken.nodelay().unwrap());
    }
}
