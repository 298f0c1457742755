//! The few BoringSSL calls the `boring` crate does not wrap, and its one unsafe setter we use.
//! All unsafe code of the TLS contexts is here.

use std::ffi::CStr;

use boring::{
    error::ErrorStack,
    ssl::{SslContextBuilder, SslRef},
    x509::store::X509StoreBuilderRef,
};
use foreign_types::ForeignTypeRef;

use crate::tickets::TicketKeys;

/// Replaces the cipher list of one connection (TLS 1.2 suites), refusing a list with unknown
/// names. Used when an SNI context's ciphers differ from the default context's: BoringSSL copies
/// the list into each connection when it is created and does not take it from a context that
/// is switched to later.
#[doc(alias = "SSL_set_strict_cipher_list")]
pub fn set_cipher_list(ssl: &mut SslRef, list: &CStr) -> bool {
    // SAFETY: `ssl` is a live SSL owned by the caller's borrow; `list` is NUL-terminated and
    // only read during the call.
    unsafe { boring_sys::SSL_set_strict_cipher_list(ssl.as_ptr(), list.as_ptr()) == 1 }
}

/// Lets BoringSSL free the connection's copy of its configuration (certificate, cipher and group
/// lists, ALPN, verify settings) once the handshake is complete: an idle connection then holds
/// only what the handshake established. Settings such as `verify_mode` cannot be read after.
#[doc(alias = "SSL_set_shed_handshake_config")]
pub fn shed_handshake_config(ssl: &mut SslRef) {
    // SAFETY: `ssl` is a live SSL owned by the caller's borrow; the call only sets a flag.
    unsafe { boring_sys::SSL_set_shed_handshake_config(ssl.as_ptr(), 1) }
}

/// Adds every CRL of a PEM document to `store`; returns how many there were.
#[doc(alias = "PEM_read_bio_X509_CRL")]
#[doc(alias = "X509_STORE_add_crl")]
pub fn add_crls(store: &mut X509StoreBuilderRef, pem: &[u8]) -> Result<usize, ErrorStack> {
    let len = isize::try_from(pem.len()).map_err(|_| ErrorStack::get())?;
    // SAFETY: the BIO reads `pem` in place, which outlives it (freed below, before return).
    let bio = unsafe { boring_sys::BIO_new_mem_buf(pem.as_ptr().cast(), len) };
    if bio.is_null() {
        return Err(ErrorStack::get());
    }
    let mut count = 0;
    let result = loop {
        // SAFETY: `bio` is the live memory BIO made above; no callback, no password.
        let crl = unsafe {
            boring_sys::PEM_read_bio_X509_CRL(bio, std::ptr::null_mut(), None, std::ptr::null_mut())
        };
        if crl.is_null() {
            // End of input also leaves an error in the queue: clear it.
            // SAFETY: only touches this thread's error queue.
            unsafe { boring_sys::ERR_clear_error() };
            break Ok(count);
        }
        // SAFETY: `store` and `crl` are live; X509_STORE_add_crl takes its own reference, so
        // ours is released right after.
        let added = unsafe { boring_sys::X509_STORE_add_crl(store.as_ptr(), crl) };
        // SAFETY: `crl` came from PEM_read_bio_X509_CRL and is not used after this.
        unsafe { boring_sys::X509_CRL_free(crl) };
        if added != 1 {
            break Err(ErrorStack::get());
        }
        count += 1;
    };
    // SAFETY: `bio` was made above and is not used after this.
    unsafe { boring_sys::BIO_free(bio) };
    result
}

/// How long sessions (cached or in tickets) stay valid, for TLS 1.2 and TLS 1.3.
#[doc(alias = "SSL_CTX_set_timeout")]
#[doc(alias = "SSL_CTX_set_session_psk_dhe_timeout")]
pub fn set_session_timeout(builder: &mut SslContextBuilder, seconds: u32) {
    // SAFETY: `builder` owns a live SSL_CTX; both calls only store the number.
    unsafe {
        boring_sys::SSL_CTX_set_timeout(builder.as_ptr(), seconds);
        boring_sys::SSL_CTX_set_session_psk_dhe_timeout(builder.as_ptr(), seconds);
    }
}

/// Installs `keys` as the ticket key callback of a context.
pub fn set_ticket_keys(builder: &mut SslContextBuilder, keys: std::sync::Arc<TicketKeys>) {
    // SAFETY: the callback sets the key name, a random IV, and initializes both the cipher
    // context (AES-128-CBC with a 16-byte key) and the HMAC context (SHA-256) before it
    // returns Success or DecryptSuccessRenew, as SSL_CTX_set_tlsext_ticket_key_cb requires;
    // on any failure it returns Error or Noop without BoringSSL using the contexts.
    unsafe {
        builder.set_ticket_key_callback(move |_ssl, name, iv, cipher, hmac, encrypt| {
            keys.callback(name, iv, cipher, hmac, encrypt)
        });
    }
}

/// Lets TLS 1.3 clients resuming a session send early data (0-RTT).
#[doc(alias = "SSL_CTX_set_early_data_enabled")]
pub fn set_early_data_enabled(builder: &mut SslContextBuilder, enabled: bool) {
    // SAFETY: `builder` owns a live SSL_CTX; the call only stores the flag.
    unsafe { boring_sys::SSL_CTX_set_early_data_enabled(builder.as_ptr(), i32::from(enabled)) }
}

/// Whether the connection is still reading the client's early data (its handshake has not
/// completed yet).
#[doc(alias = "SSL_in_early_data")]
pub fn in_early_data(ssl: &SslRef) -> bool {
    // SAFETY: `ssl` is a live SSL; the call only reads its state.
    unsafe { boring_sys::SSL_in_early_data(ssl.as_ptr()) == 1 }
}

/// Whether reading from the peer has ended in TLS: its close_notify arrived (or a fatal alert,
/// or a read failed, which end the connection anyway). `SSL_RECEIVED_SHUTDOWN`.
#[doc(alias = "SSL_get_shutdown")]
pub fn received_close_notify(ssl: &SslRef) -> bool {
    // SAFETY: `ssl` is a live SSL; the call only reads its state.
    let bits = unsafe { boring_sys::SSL_get_shutdown(ssl.as_ptr()) };
    bits & boring_sys::SSL_RECEIVED_SHUTDOWN != 0
}

/// Whether the server accepted the client's early data on this connection.
#[doc(alias = "SSL_early_data_accepted")]
pub fn early_data_accepted(ssl: &SslRef) -> bool {
    // SAFETY: `ssl` is a live SSL; the call only reads its state.
    unsafe { boring_sys::SSL_early_data_accepted(ssl.as_ptr()) == 1 }
}
