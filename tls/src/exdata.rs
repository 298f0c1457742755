//! What our BoringSSL callbacks leave on a connection (ex-data) for the code that reports the
//! handshake's end: a leaf module, so that callbacks (SNI selection, keyless signing) and the
//! error reporting need not know one another.

use std::sync::OnceLock;

use boring::{
    ex_data::Index,
    ssl::{Ssl, SslRef},
};

/// Why our own callbacks refused a handshake, for the close log.
fn refusal_index() -> Index<Ssl, String> {
    static INDEX: OnceLock<Index<Ssl, String>> = OnceLock::new();
    *INDEX.get_or_init(|| {
        Ssl::new_ex_index().unwrap_or_else(|e| panic!("BoringSSL ex_data index: {e}"))
    })
}

/// The reason a callback of ours gave for refusing the handshake on `ssl`, if one did.
pub(crate) fn refusal(ssl: &SslRef) -> Option<&str> {
    ssl.ex_data(refusal_index()).map(String::as_str)
}

/// Notes why a callback of ours refuses the handshake on `ssl`.
pub(crate) fn set_refusal(ssl: &mut SslRef, why: String) {
    ssl.set_ex_data(refusal_index(), why);
}
