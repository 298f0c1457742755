//! The BIO between BoringSSL and an async transport: the adapter's only unsafe code.
//!
//! `boring`'s `SslStream` gives each connection a `BIO_METHOD` of its own (88 bytes) and a boxed
//! stream state (72 bytes) that outlive every call. Here one `BIO_METHOD` serves every
//! connection, and a connection's BIO carries no state between calls: around each BoringSSL
//! call that may touch the transport, [`Call`] points the BIO at the transport and at the
//! polling task's [`Context`] for the duration of that call only, and takes the pointer back
//! before it returns. An idle connection holds the `SSL` and its BIO, nothing more.
//!
//! The transport's `Poll::Pending` becomes BoringSSL's retry (`WANT_READ`/`WANT_WRITE`), which
//! [`SslFailure`] reports back; the caller's waker was registered by the transport, so the task
//! is woken when the operation can go on.

use std::{
    any::Any,
    ffi::{c_char, c_int, c_long, c_void},
    io,
    panic::{self, AssertUnwindSafe},
    ptr,
    sync::OnceLock,
    task::{Context, Poll},
};

use boring::{
    error::ErrorStack,
    ssl::{ErrorCode, ShutdownResult, SslRef},
};
use boring_sys as sys;
use foreign_types::ForeignTypeRef;

/// What a BIO moves bytes through: an async byte stream, polled with the caller's context.
pub(crate) trait Transport {
    /// As `AsyncRead::poll_read`.
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;
    /// As `AsyncWrite::poll_write`.
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>>;
    /// As `AsyncWrite::poll_flush`.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// A BoringSSL call that did not succeed, as `SSL_get_error` and the error queue tell it.
#[derive(Debug)]
pub(crate) struct SslFailure {
    /// `SSL_get_error`'s code.
    pub(crate) code: ErrorCode,
    /// The transport's error, when it failed (never `WouldBlock`: that is a retry).
    pub(crate) io: Option<io::Error>,
    /// BoringSSL's own errors (for `SSL` and `SYSCALL` codes), drained from the queue.
    pub(crate) stack: Option<ErrorStack>,
}

impl SslFailure {
    /// The call waits for the transport (or for an asynchronous callback, during a handshake).
    pub(crate) fn would_block(&self) -> bool {
        matches!(
            self.code,
            ErrorCode::WANT_READ
                | ErrorCode::WANT_WRITE
                | ErrorCode::WANT_X509_LOOKUP
                | ErrorCode::PENDING_SESSION
                | ErrorCode::PENDING_CERTIFICATE
                | ErrorCode::WANT_PRIVATE_KEY_OPERATION
                | ErrorCode::WANT_CERTIFICATE_VERIFY
                | ErrorCode::PENDING_TICKET
        ) && self.io.is_none()
    }
}

impl std::fmt::Display for SslFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.io, &self.stack) {
            (Some(io), _) => write!(f, "transport: {io}"),
            (None, Some(stack)) if !stack.errors().is_empty() => write!(f, "{stack}"),
            (None, _) if self.code == ErrorCode::SYSCALL => f.write_str("unexpected EOF"),
            (None, _) if self.code == ErrorCode::ZERO_RETURN => {
                f.write_str("the peer closed the TLS session")
            }
            (None, _) => write!(f, "SSL error {}", self.code.as_raw()),
        }
    }
}

/// What the BIO works with during one BoringSSL call; the BIO's data pointer points here while
/// the call runs, and is null at every other time.
struct Call<'a, 'b> {
    io: &'a mut dyn Transport,
    cx: &'a mut Context<'b>,
    /// The transport's last error other than `WouldBlock` in this call.
    error: Option<io::Error>,
    /// A panic from the transport, carried over BoringSSL's C frames and resumed after it.
    panic: Option<Box<dyn Any + Send>>,
}

/// The one `BIO_METHOD` of every connection, and its type (a number of its own, so a BIO can be
/// told to be ours).
struct Method {
    method: *mut sys::BIO_METHOD,
    kind: c_int,
}

// SAFETY: the method is a table of function pointers, written once before it is shared and
// only read by BoringSSL afterwards; it is never freed.
unsafe impl Send for Method {}
// SAFETY: as above: shared read-only after its creation.
unsafe impl Sync for Method {}

/// Made on the first connection.
static METHOD: OnceLock<Method> = OnceLock::new();

fn method() -> Result<&'static Method, ErrorStack> {
    if let Some(method) = METHOD.get() {
        return Ok(method);
    }
    // SAFETY: BIO_get_new_index only counts; BIO_meth_new copies the static name's pointer
    // only; each setter stores a function pointer of the signature BoringSSL calls it with. A
    // failure frees the half-built method.
    let made = unsafe {
        let index = sys::BIO_get_new_index();
        if index <= 0 {
            return Err(ErrorStack::get());
        }
        let kind = index | sys::BIO_TYPE_SOURCE_SINK;
        let method = sys::BIO_meth_new(kind, c"fastedge".as_ptr());
        if method.is_null() {
            return Err(ErrorStack::get());
        }
        if sys::BIO_meth_set_write(method, Some(bio_write)) != 1
            || sys::BIO_meth_set_read(method, Some(bio_read)) != 1
            || sys::BIO_meth_set_ctrl(method, Some(bio_ctrl)) != 1
        {
            sys::BIO_meth_free(method);
            return Err(ErrorStack::get());
        }
        Method { method, kind }
    };
    // Another thread may have won the race: its method is used, ours is leaked (once, 88 bytes).
    Ok(METHOD.get_or_init(|| made))
}

/// The BIO of `ssl` when it is ours, for both directions.
fn our_bio(ssl: &SslRef) -> Option<*mut sys::BIO> {
    let kind = METHOD.get()?.kind;
    // SAFETY: these only read the SSL and, when there is one, its BIO.
    unsafe {
        let bio = sys::SSL_get_rbio(ssl.as_ptr());
        (!bio.is_null()
            && bio == sys::SSL_get_wbio(ssl.as_ptr())
            && sys::BIO_method_type(bio) == kind)
            .then_some(bio)
    }
}

/// Gives `ssl` a BIO of our method for both directions, and makes it the server side.
pub(crate) fn attach_server(ssl: &mut SslRef) -> Result<(), ErrorStack> {
    let method = method()?.method;
    // SAFETY: `method` lives forever. The new BIO starts with a null data pointer (a callback
    // outside `run` fails cleanly); SSL_set_bio takes our one reference for both
    // directions, so the BIO is freed with the SSL.
    unsafe {
        let bio = sys::BIO_new(method);
        if bio.is_null() {
            return Err(ErrorStack::get());
        }
        sys::BIO_set_init(bio, 1);
        sys::SSL_set_bio(ssl.as_ptr(), bio, bio);
        sys::SSL_set_accept_state(ssl.as_ptr());
    }
    Ok(())
}

/// Runs `op` on `ssl` with its BIO pointed at `io` and `cx`; `op` returns the C call's return
/// value, which is a failure when it is `<= 0` (`ok` maps a success).
fn run<T>(
    ssl: &mut SslRef,
    io: &mut dyn Transport,
    cx: &mut Context<'_>,
    op: impl FnOnce(*mut sys::SSL) -> c_int,
    ok: impl FnOnce(c_int) -> T,
) -> Result<T, SslFailure> {
    let mut call = Call {
        io,
        cx,
        error: None,
        panic: None,
    };
    // Only a BIO of our method may be pointed at `call`: another kind reads its data pointer
    // as its own state.
    let Some(bio) = our_bio(ssl) else {
        return Err(SslFailure {
            code: ErrorCode::SYSCALL,
            io: Some(io::Error::other(
                "TLS connection without fastedge's transport BIO",
            )),
            stack: None,
        });
    };
    // SAFETY: `call` outlives the C call below and the pointer is cleared before `call` is
    // used again or dropped; BoringSSL does not keep the BIO's data pointer. `bio` is the
    // SSL's, of our method, for both directions (it holds a reference).
    unsafe { sys::BIO_set_data(bio, ptr::from_mut(&mut call).cast()) };
    let ret = op(ssl.as_ptr());
    // SAFETY: as above; from here on nothing can reach `call` through the BIO.
    unsafe { sys::BIO_set_data(bio, ptr::null_mut()) };
    if let Some(payload) = call.panic.take() {
        panic::resume_unwind(payload);
    }
    if ret > 0 {
        return Ok(ok(ret));
    }
    // SAFETY: right after the call, as SSL_get_error requires; reads the SSL and this thread's
    // error queue.
    let code = ErrorCode::from_raw(unsafe { sys::SSL_get_error(ssl.as_ptr(), ret) });
    let (io, stack) = match code {
        ErrorCode::SSL => (call.error, Some(ErrorStack::get())),
        ErrorCode::SYSCALL => {
            let stack = ErrorStack::get();
            if stack.errors().is_empty() {
                (call.error, None)
            } else {
                (call.error, Some(stack))
            }
        }
        _ => (call.error, None),
    };
    Err(SslFailure { code, io, stack })
}

/// Runs the handshake on as far as it can go now, `SSL_do_handshake`.
#[doc(alias = "SSL_do_handshake")]
pub(crate) fn handshake(
    ssl: &mut SslRef,
    io: &mut dyn Transport,
    cx: &mut Context<'_>,
) -> Result<(), SslFailure> {
    // SAFETY: `run` passes the live SSL, its BIO pointed at `io` for the call.
    let op = |s| unsafe { sys::SSL_do_handshake(s) };
    run(ssl, io, cx, op, |_| ())
}

/// Reads plaintext into `buf` (not empty), `SSL_read`.
#[doc(alias = "SSL_read")]
pub(crate) fn read(
    ssl: &mut SslRef,
    io: &mut dyn Transport,
    cx: &mut Context<'_>,
    buf: &mut [u8],
) -> Result<usize, SslFailure> {
    read_with(ssl, io, cx, buf, sys::SSL_read)
}

/// Looks at the next plaintext without taking it, `SSL_peek`: what it copies into `buf` (not
/// empty) is returned again by the next [`read`].
#[doc(alias = "SSL_peek")]
pub(crate) fn peek(
    ssl: &mut SslRef,
    io: &mut dyn Transport,
    cx: &mut Context<'_>,
    buf: &mut [u8],
) -> Result<usize, SslFailure> {
    read_with(ssl, io, cx, buf, sys::SSL_peek)
}

/// `SSL_read` or `SSL_peek` (the same signature and contract) into `buf`.
fn read_with(
    ssl: &mut SslRef,
    io: &mut dyn Transport,
    cx: &mut Context<'_>,
    buf: &mut [u8],
    call: unsafe extern "C" fn(*mut sys::SSL, *mut c_void, c_int) -> c_int,
) -> Result<usize, SslFailure> {
    let len = c_int::try_from(buf.len()).unwrap_or(c_int::MAX);
    // SAFETY: `call` is SSL_read or SSL_peek: BoringSSL writes at most `len` bytes into `buf`,
    // which is borrowed for the call.
    let op = |s| unsafe { call(s, buf.as_mut_ptr().cast(), len) };
    run(ssl, io, cx, op, |n| n.unsigned_abs() as usize)
}

/// Writes plaintext from `buf`, `SSL_write`. An empty `buf` writes what BoringSSL queued on its
/// own (TLS 1.3 session tickets, held until the connection's first write; KeyUpdate
/// acknowledgements) and returns 0.
#[doc(alias = "SSL_write")]
pub(crate) fn write(
    ssl: &mut SslRef,
    io: &mut dyn Transport,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Result<usize, SslFailure> {
    let len = c_int::try_from(buf.len()).unwrap_or(c_int::MAX);
    // SAFETY: BoringSSL reads at most `len` bytes of `buf`, borrowed for the call; an empty
    // slice's pointer is valid for zero bytes.
    let op = |s| unsafe { sys::SSL_write(s, buf.as_ptr().cast(), len) };
    if buf.is_empty() {
        // SSL_write returns 0 for a zero-byte write that succeeded.
        let op = |s| match op(s) {
            0 => 1,
            ret => ret,
        };
        return run(ssl, io, cx, op, |_| 0);
    }
    run(ssl, io, cx, op, |n| n.unsigned_abs() as usize)
}

/// Sends close_notify (and reads the peer's, if it came), `SSL_shutdown`.
#[doc(alias = "SSL_shutdown")]
pub(crate) fn shutdown(
    ssl: &mut SslRef,
    io: &mut dyn Transport,
    cx: &mut Context<'_>,
) -> Result<ShutdownResult, SslFailure> {
    // SSL_shutdown returns 0 once close_notify is sent, 1 when the peer's came too.
    // SAFETY: `run` passes the live SSL, its BIO pointed at `io` for the call.
    let op = |s| match unsafe { sys::SSL_shutdown(s) } {
        0 => 2,
        ret => ret,
    };
    run(ssl, io, cx, op, |ret| {
        if ret == 1 {
            ShutdownResult::Received
        } else {
            ShutdownResult::Sent
        }
    })
}

/// The [`Call`] of the BoringSSL call running on `bio`, if any.
///
/// # Safety
/// `bio` is a BIO of our method, passed by BoringSSL to one of its callbacks.
unsafe fn call<'a>(bio: *mut sys::BIO) -> Option<&'a mut Call<'a, 'a>> {
    // SAFETY: the data pointer is null or points at the live `Call` of `run`, which does not
    // touch it while BoringSSL runs; BoringSSL's callbacks run one at a time on this thread.
    unsafe { sys::BIO_get_data(bio).cast::<Call<'a, 'a>>().as_mut() }
}

/// Moves one direction's result into the BIO's retry flags and the call's error.
fn settle(
    bio: *mut sys::BIO,
    call: &mut Call<'_, '_>,
    result: std::thread::Result<Poll<io::Result<usize>>>,
    retry: unsafe extern "C" fn(*mut sys::BIO),
) -> c_int {
    match result {
        Ok(Poll::Ready(Ok(n))) => c_int::try_from(n).unwrap_or(c_int::MAX),
        Ok(Poll::Pending) => {
            // SAFETY: `bio` is the live BIO of the callback that called us.
            unsafe { retry(bio) };
            -1
        }
        Ok(Poll::Ready(Err(error))) if error.kind() == io::ErrorKind::WouldBlock => {
            // SAFETY: as above.
            unsafe { retry(bio) };
            -1
        }
        Ok(Poll::Ready(Err(error))) => {
            call.error = Some(error);
            -1
        }
        Err(payload) => {
            call.panic = Some(payload);
            -1
        }
    }
}

/// What our read and write callbacks share: `op` moves up to `len` bytes through the call's
/// transport; a panic is kept for the caller, `retry` flags a pending transport.
///
/// # Safety
/// `bio` is a BIO of our method, passed by BoringSSL to one of its callbacks.
unsafe fn transfer(
    bio: *mut sys::BIO,
    len: c_int,
    retry: unsafe extern "C" fn(*mut sys::BIO),
    op: impl FnOnce(&mut Call<'_, '_>, usize) -> Poll<io::Result<usize>>,
) -> c_int {
    // SAFETY: BoringSSL passes its live BIO.
    unsafe { sys::BIO_clear_retry_flags(bio) };
    // SAFETY: `bio` is ours, as the caller promises.
    let Some(call) = (unsafe { call(bio) }) else {
        return -1;
    };
    let Ok(len) = usize::try_from(len) else {
        return -1;
    };
    if call.panic.is_some() {
        return -1;
    }
    let result = panic::catch_unwind(AssertUnwindSafe(|| op(call, len)));
    settle(bio, call, result, retry)
}

unsafe extern "C" fn bio_read(bio: *mut sys::BIO, buf: *mut c_char, len: c_int) -> c_int {
    // SAFETY: this is our method's callback; BoringSSL hands out `len` writable bytes at `buf`
    // for this call.
    unsafe {
        transfer(bio, len, sys::BIO_set_retry_read, |call, len| {
            let buf = std::slice::from_raw_parts_mut(buf.cast::<u8>(), len);
            call.io.poll_read(call.cx, buf)
        })
    }
}

unsafe extern "C" fn bio_write(bio: *mut sys::BIO, buf: *const c_char, len: c_int) -> c_int {
    // SAFETY: this is our method's callback; BoringSSL hands out `len` readable bytes at `buf`
    // for this call.
    unsafe {
        transfer(bio, len, sys::BIO_set_retry_write, |call, len| {
            let buf = std::slice::from_raw_parts(buf.cast::<u8>(), len);
            call.io.poll_write(call.cx, buf)
        })
    }
}

unsafe extern "C" fn bio_ctrl(
    bio: *mut sys::BIO,
    cmd: c_int,
    _num: c_long,
    _ptr: *mut c_void,
) -> c_long {
    if cmd != sys::BIO_CTRL_FLUSH {
        return 0;
    }
    // SAFETY: BoringSSL passes its live BIO.
    unsafe { sys::BIO_clear_retry_flags(bio) };
    // SAFETY: `bio` is ours (this is our method's callback).
    let Some(call) = (unsafe { call(bio) }) else {
        return 0;
    };
    if call.panic.is_some() {
        return 0;
    }
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        call.io.poll_flush(call.cx).map_ok(|()| 1)
    }));
    match settle(bio, call, result, sys::BIO_set_retry_write) {
        1 => 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use boring::ssl::{Ssl, SslContext, SslMethod};

    use super::*;

    /// A transport that answers every read with what `read` says, and takes every write.
    struct Scripted {
        read: fn() -> Poll<io::Result<usize>>,
        reads: usize,
    }

    impl Transport for Scripted {
        fn poll_read(&mut self, _: &mut Context<'_>, _: &mut [u8]) -> Poll<io::Result<usize>> {
            self.reads += 1;
            (self.read)()
        }
        fn poll_write(&mut self, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn server() -> Ssl {
        let context = SslContext::builder(SslMethod::tls()).unwrap().build();
        let mut ssl = Ssl::new(&context).unwrap();
        attach_server(&mut ssl).unwrap();
        ssl
    }

    fn handshake_with(
        ssl: &mut Ssl,
        read: fn() -> Poll<io::Result<usize>>,
    ) -> (Result<(), SslFailure>, usize) {
        let mut io = Scripted { read, reads: 0 };
        let mut cx = Context::from_waker(Waker::noop());
        let result = handshake(ssl, &mut io, &mut cx);
        (result, io.reads)
    }

    /// The BIO's pointer to the call is gone once the call returned.
    fn call_pointer(ssl: &Ssl) -> *mut c_void {
        // SAFETY: `ssl` is live and has our BIO (from `attach_server`).
        unsafe { sys::BIO_get_data(sys::SSL_get_rbio(ssl.as_ptr())) }
    }

    #[test]
    fn a_pending_transport_is_a_retry_and_leaves_no_pointer_behind() {
        let mut ssl = server();
        let (result, reads) = handshake_with(&mut ssl, || Poll::Pending);
        let failure = result.unwrap_err();
        assert_eq!(failure.code, ErrorCode::WANT_READ);
        assert!(failure.would_block() && failure.io.is_none());
        assert_eq!(reads, 1);
        assert!(call_pointer(&ssl).is_null());
        // The same connection goes on with the next call.
        let (result, reads) = handshake_with(&mut ssl, || Poll::Pending);
        assert_eq!(result.unwrap_err().code, ErrorCode::WANT_READ);
        assert_eq!(reads, 1);
    }

    #[test]
    fn the_transports_error_comes_back_with_the_failure() {
        let mut ssl = server();
        let (result, _) = handshake_with(&mut ssl, || {
            Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        });
        let failure = result.unwrap_err();
        assert_eq!(failure.code, ErrorCode::SYSCALL);
        assert_eq!(
            failure.io.as_ref().map(io::Error::kind),
            Some(io::ErrorKind::ConnectionReset)
        );
        assert!(!failure.would_block());
        assert!(call_pointer(&ssl).is_null());
    }

    #[test]
    fn an_end_of_stream_is_a_syscall_failure_without_an_error() {
        let mut ssl = server();
        let (result, _) = handshake_with(&mut ssl, || Poll::Ready(Ok(0)));
        let failure = result.unwrap_err();
        assert_eq!(failure.code, ErrorCode::SYSCALL);
        assert!(failure.io.is_none());
        assert_eq!(
            crate::TlsError::handshake(&failure).to_string(),
            "TLS handshake failed: peer closed the connection during the handshake"
        );
    }

    #[test]
    fn a_panic_in_the_transport_reaches_the_caller_past_boringssl() {
        let mut ssl = server();
        let caught = panic::catch_unwind(AssertUnwindSafe(|| {
            handshake_with(&mut ssl, || panic!("transport broke"))
        }))
        .unwrap_err();
        assert_eq!(caught.downcast_ref::<&str>(), Some(&"transport broke"));
        assert!(call_pointer(&ssl).is_null());
    }

    #[test]
    fn a_call_on_a_connection_without_our_bio_fails_cleanly() {
        let context = SslContext::builder(SslMethod::tls()).unwrap().build();
        let mut io = Scripted {
            read: || Poll::Pending,
            reads: 0,
        };
        let mut cx = Context::from_waker(Waker::noop());
        // No BIO at all.
        let mut ssl = Ssl::new(&context).unwrap();
        let failure = handshake(&mut ssl, &mut io, &mut cx).unwrap_err();
        assert!(failure.io.is_some() && io.reads == 0);
        // Another kind of BIO (a memory one): its data pointer is its own, never ours.
        let _ = server();
        let mut ssl = Ssl::new(&context).unwrap();
        // SAFETY: a fresh memory BIO handed to the SSL, which takes our one reference for
        // both directions.
        let data = unsafe {
            let bio = sys::BIO_new(sys::BIO_s_mem());
            sys::SSL_set_bio(ssl.as_ptr(), bio, bio);
            sys::BIO_get_data(bio)
        };
        let failure = handshake(&mut ssl, &mut io, &mut cx).unwrap_err();
        assert!(failure.io.is_some() && io.reads == 0);
        // SAFETY: reads the pointer only.
        let after = unsafe { sys::BIO_get_data(sys::SSL_get_rbio(ssl.as_ptr())) };
        assert_eq!(after, data);
    }
}
