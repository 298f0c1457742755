//! bud's ticket-key IPC (`tls.ticket_key_stdin`): key messages arrive on a byte stream
//! (standard input for `fastedge serve`) and each becomes the current ticket key.

use std::{io::Read, sync::Arc};

use arc_swap::ArcSwap;
use fastedge_wire::{bud_ipc, http1::Status};

use crate::{proxy::Frontend, tickets::TicketKey};

/// Reads key messages from `input` on a thread of its own, installing each as the current
/// ticket key of the running configuration. A malformed message ends the reading (the stream
/// cannot be resynchronized), with the reason logged; so does the end of input.
pub(super) fn spawn_reader(input: impl Read + Send + 'static, current: Arc<ArcSwap<Frontend>>) {
    let spawned = std::thread::Builder::new()
        .name("fastedge-ticket-ipc".into())
        .spawn(move || read_keys(input, &current));
    if let Err(error) = spawned {
        tracing::error!(%error, "could not start the ticket key IPC thread");
    }
}

/// Installs every key message of `input` until it ends or a message is malformed; returns how
/// many were installed.
fn read_keys(mut input: impl Read, current: &ArcSwap<Frontend>) -> usize {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    let mut installed = 0;
    loop {
        match bud_ipc::parse(&buf) {
            Ok(Status::Complete((message, used))) => {
                buf.drain(..used);
                let key = TicketKey::from_bytes(&message.key);
                match current.load().context.ticket_keys() {
                    Some(keys) => {
                        keys.install(key);
                        installed += 1;
                    }
                    None => tracing::warn!("ticket key message ignored: tickets are off"),
                }
                continue;
            }
            Ok(Status::Partial) => {}
            Err(error) => {
                tracing::error!(%error, "ticket key IPC on standard input: stopped reading");
                return installed;
            }
        }
        match input.read(&mut chunk) {
            Ok(0) => {
                tracing::info!("ticket key IPC: standard input closed");
                return installed;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(error) => {
                tracing::error!(%error, "ticket key IPC: reading standard input failed");
                return installed;
            }
        }
    }
}
