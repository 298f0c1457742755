//! A C ABI for the reading end of fastedge's shared-memory ways (`libfastedge_ways.so`, with
//! the header `include/fastedge_ways.h` that cbindgen generates from this file).
//!
//! This is how an application written in C — an IDS plugin (Zeek, Suricata, Snort), a capture
//! tool — attaches to one way of a running `fastedge split` and reads its frames: the same
//! consumer as [`fastedge_rings::shm::Consumer`], behind an opaque handle.
//!
//! Owns: the C functions, their error reporting (a thread-local message) and the guarantee that
//! no panic crosses into C. Does not own: the way layout, attaching, reading or sleeping (all of
//! it is `fastedge_rings::shm`).
//!
//! ## The API
//!
//! ```c
//! fastedge_way *way = fastedge_way_open("eth0", 0);          /* NULL: fastedge_way_last_error() */
//! while (running) {
//!     if (fastedge_way_read_batch(way, 256, on_frame, ctx) == 0)
//!         fastedge_way_wait(way, 100);                         /* sleeps until frames come */
//! }
//! fastedge_way_close(way);
//! ```
//!
//! ## Ownership and threads
//!
//! - A handle from [`fastedge_way_open`] belongs to the caller until it passes it to
//!   [`fastedge_way_close`], exactly once; no other function takes ownership.
//! - A handle may move between threads but is used by one thread at a time (calls on one
//!   handle are not synchronised). Different handles may be used on different threads at once.
//! - A way has one consumer: a second process that opens it fails while the first one lives,
//!   and so does a second open of it in the same process until the first handle is closed.
//! - The `data` pointer a record callback receives is valid only during that call (it points
//!   into the handle's own copy of the packet, overwritten by the next record): copy what must
//!   outlive it. A callback must not call `fastedge_way_read_batch` or `fastedge_way_close` on
//!   the handle being read, and must return normally (no `longjmp` out of it).
//! - [`fastedge_way_last_error`] is per thread: the message of the last call that failed on
//!   the calling thread.
//!
//! No function panics into C: a panic inside the library is caught at the boundary and
//! reported as an error. Null pointers and names that are not UTF-8 are refused with an error.

#![deny(missing_docs)]

use std::{
    cell::RefCell,
    ffi::{c_char, c_int, c_void, CStr, CString},
    panic::{catch_unwind, AssertUnwindSafe},
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
    time::Duration,
};

use fastedge_rings::shm::{self, Consumer};

/// The way layout version this library reads (`fastedge_rings::shm::VERSION`): a library and a
/// `fastedge split` of different layout versions do not attach to each other.
pub const FASTEDGE_WAY_LAYOUT_VERSION: u32 = 4;

/// An open way: the reading end of one way of a running split (opaque to C).
pub struct FastedgeWay {
    consumer: Consumer,
    /// Its entry in [`OPEN_WAYS`].
    key: PathBuf,
}

/// The ways open in this process (their data files, canonical where possible). A way's
/// consumer slot holds a pid, so a second handle of the same process would be let in and the
/// two would fight over the read positions: it is refused instead.
static OPEN_WAYS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Attaches to the way whose data file is `path`, unless this process has it open already.
fn open_way(op: &str, path: &Path) -> Result<*mut FastedgeWay, String> {
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut open = OPEN_WAYS.lock().unwrap_or_else(PoisonError::into_inner);
    if open.contains(&key) {
        return Err(format!(
            "{op}: {} is already open in this process (one handle per way)",
            path.display()
        ));
    }
    let consumer = Consumer::open_path(path).map_err(|e| e.to_string())?;
    open.push(key.clone());
    Ok(Box::into_raw(Box::new(FastedgeWay { consumer, key })))
}

impl std::fmt::Debug for FastedgeWay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastedgeWay")
            .field("consumer", &self.consumer)
            .finish()
    }
}

/// A way's counters, as [`fastedge_way_read_counters`] fills them in.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FastedgeWayCounters {
    /// Packets the producers put into this way (all lanes).
    pub delivered: u64,
    /// Packets the producers dropped because a lane of this way was full (the consumer was
    /// too slow).
    pub dropped: u64,
    /// When a producer last showed it was alive (ns since the epoch, the latest over lanes); a
    /// value that stops moving means the split went away.
    pub producer_heartbeat_ns: u64,
    /// Lanes of the way (engine threads that write to it).
    pub lanes: u32,
}

/// What a record callback receives: `user` as given to [`fastedge_way_read_batch`], the
/// packet (`len` bytes at `data`, valid only during the call), its capture time (ns since
/// the epoch) and the flow hash the splitter computed (both directions of a flow share it).
pub type FastedgeWayRecordFn = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        data: *const u8,
        len: u32,
        timestamp_ns: u64,
        flow_hash: u64,
    ),
>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `message` as this thread's last error.
fn set_error(message: &str) {
    // A message with a NUL byte (from a path, say) is cut there rather than lost.
    let bytes = message.as_bytes();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let text = CString::new(&bytes[..end]).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = text);
}

fn clear_error() {
    LAST_ERROR.with(|e| *e.borrow_mut() = CString::default());
}

/// Runs `body` at the FFI boundary: its error becomes this thread's last error and `failed`
/// is returned; so is a panic, which never unwinds into C.
fn boundary<T>(failed: T, body: impl FnOnce() -> Result<T, String>) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => {
            clear_error();
            value
        }
        Ok(Err(message)) => {
            set_error(&message);
            failed
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("unknown");
            set_error(&format!("internal error (panic: {what})"));
            failed
        }
    }
}

/// Attaches to way `way` of the split named `name` (its interface, or its `--name`): the files
/// `/dev/shm/fastedge/NAME-WAY` and `NAME-WAY.pos`. Reading starts at the newest data.
///
/// Returns a handle to pass to [`fastedge_way_close`] when done, or NULL with the reason in
/// [`fastedge_way_last_error`]: a null or non-UTF-8 `name`, a name with `/`, no such way
/// (yet), a way another live process reads (or another handle of this process), files that
/// are not trusted (writable by others, owned by another user), a split of another layout
/// version.
///
/// # Safety
///
/// `name` is NULL or points to a NUL-terminated string that stays valid and unchanged during
/// the call.
#[no_mangle]
pub unsafe extern "C" fn fastedge_way_open(name: *const c_char, way: u32) -> *mut FastedgeWay {
    boundary(std::ptr::null_mut(), || {
        if name.is_null() {
            return Err("fastedge_way_open: name is NULL".into());
        }
        // SAFETY: not null (checked), and the caller promises a NUL-terminated string valid
        // for the call.
        let name = unsafe { CStr::from_ptr(name) };
        let name = name
            .to_str()
            .map_err(|e| format!("fastedge_way_open: name is not UTF-8 ({e})"))?;
        if name.is_empty() || name.contains('/') {
            return Err(format!(
                "fastedge_way_open: bad name {name:?} (a split's name: not empty, no '/')"
            ));
        }
        open_way("fastedge_way_open", &shm::way_path(name, way))
    })
}

/// Like [`fastedge_way_open`], for the way whose data file is `path` (its position file is
/// `PATH.pos` beside it): a way outside `/dev/shm/fastedge`, or one named by a full path.
///
/// # Safety
///
/// `path` is NULL or points to a NUL-terminated string that stays valid and unchanged during
/// the call.
#[no_mangle]
pub unsafe extern "C" fn fastedge_way_open_path(path: *const c_char) -> *mut FastedgeWay {
    boundary(std::ptr::null_mut(), || {
        if path.is_null() {
            return Err("fastedge_way_open_path: path is NULL".into());
        }
        // SAFETY: not null (checked), and the caller promises a NUL-terminated string valid
        // for the call.
        let path = unsafe { CStr::from_ptr(path) };
        let path = path
            .to_str()
            .map_err(|e| format!("fastedge_way_open_path: path is not UTF-8 ({e})"))?;
        open_way("fastedge_way_open_path", Path::new(path))
    })
}

/// Calls `on_record(user, data, len, timestamp_ns, flow_hash)` for each packet available now,
/// at most `max` of them, then frees their space for the split. Returns how many were read
/// (0: nothing to read now; then [`fastedge_way_wait`]), or -1 with the reason in
/// [`fastedge_way_last_error`] (a null handle or callback).
///
/// # Safety
///
/// `way` is NULL or a handle from [`fastedge_way_open`] not yet closed, used by no other
/// thread during the call. `on_record` is NULL or a function safe to call with `user` and a
/// record; it must return normally and must not read or close `way`. `user` is passed through
/// untouched.
#[no_mangle]
pub unsafe extern "C" fn fastedge_way_read_batch(
    way: *mut FastedgeWay,
    max: u32,
    on_record: FastedgeWayRecordFn,
    user: *mut c_void,
) -> i64 {
    boundary(-1, || {
        // SAFETY: NULL or a live handle (the caller's contract), used by this thread alone.
        let way = unsafe { way.as_mut() }.ok_or("fastedge_way_read_batch: way is NULL")?;
        let on_record = on_record.ok_or("fastedge_way_read_batch: on_record is NULL")?;
        let read = way.consumer.read_batch(max as usize, |record| {
            // A record is at most u32::MAX bytes (its length field is a u32).
            let len = u32::try_from(record.data.len()).unwrap_or(u32::MAX);
            // SAFETY: the caller promises `on_record` may be called with `user`; `data` points
            // to `len` readable bytes that stay valid until the call returns.
            unsafe {
                on_record(
                    user,
                    record.data.as_ptr(),
                    len,
                    record.timestamp_ns,
                    record.flow_hash,
                )
            };
        });
        Ok(i64::try_from(read).unwrap_or(i64::MAX))
    })
}

/// Sleeps until the way has something to read, at most `timeout_ms` milliseconds (in the
/// kernel, on a futex the split wakes after the batch that brings the next packet: an idle
/// reader costs no CPU). Returns 1 when there is something to read, 0 after the timeout (or
/// when woken with nothing to read: see `producer_heartbeat_ns` in [`fastedge_way_read_counters`]
/// to tell a split that went away), -1 with the reason in [`fastedge_way_last_error`] (a null
/// handle).
///
/// # Safety
///
/// `way` is NULL or a handle from [`fastedge_way_open`] not yet closed, used by no other
/// thread during the call.
#[no_mangle]
pub unsafe extern "C" fn fastedge_way_wait(way: *const FastedgeWay, timeout_ms: u32) -> c_int {
    boundary(-1, || {
        // SAFETY: NULL or a live handle (the caller's contract).
        let way = unsafe { way.as_ref() }.ok_or("fastedge_way_wait: way is NULL")?;
        let readable = way
            .consumer
            .wait_readable(Duration::from_millis(u64::from(timeout_ms)));
        Ok(c_int::from(readable))
    })
}

/// [`fastedge_way_wait`] over several ways at once (one thread reading many ways): sleeps until
/// one of the `count` handles at `ways` has something to read, at most `timeout_ms`
/// milliseconds. Returns 1 when one has, 0 after the timeout (`count` 0: after sleeping
/// `timeout_ms`), -1 with the reason in [`fastedge_way_last_error`] (a null array with a
/// non-zero count, or a null handle in it). One futex wait on every way at once (Linux 5.16);
/// with more than 128 ways, or on an older kernel, it wakes every millisecond instead.
///
/// # Safety
///
/// `ways` is NULL or points to `count` readable handle pointers; each is NULL or a handle from
/// [`fastedge_way_open`] not yet closed, used by no other thread during the call.
#[no_mangle]
pub unsafe extern "C" fn fastedge_way_wait_any(
    ways: *const *const FastedgeWay,
    count: usize,
    timeout_ms: u32,
) -> c_int {
    boundary(-1, || {
        let handles: &[*const FastedgeWay] = if count == 0 {
            &[]
        } else if ways.is_null() {
            return Err("fastedge_way_wait_any: ways is NULL".into());
        } else {
            // SAFETY: not null (checked) and `count` readable pointers (the caller's contract),
            // which the caller does not change during the call.
            unsafe { std::slice::from_raw_parts(ways, count) }
        };
        let consumers = handles
            .iter()
            .enumerate()
            .map(|(i, &way)| {
                // SAFETY: NULL or a live handle (the caller's contract).
                unsafe { way.as_ref() }
                    .map(|way| &way.consumer)
                    .ok_or_else(|| format!("fastedge_way_wait_any: ways[{i}] is NULL"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let readable = shm::wait_any_of(&consumers, Duration::from_millis(u64::from(timeout_ms)));
        Ok(c_int::from(readable))
    })
}

/// Fills `*out` with the way's counters (packets delivered and dropped, the producers'
/// heartbeat, lanes). Returns 0, or -1 with the reason in [`fastedge_way_last_error`] (a null
/// pointer).
///
/// # Safety
///
/// `way` is NULL or a handle from [`fastedge_way_open`] not yet closed, used by no other
/// thread during the call; `out` is NULL or points to a writable `fastedge_way_counters`.
#[no_mangle]
pub unsafe extern "C" fn fastedge_way_read_counters(
    way: *const FastedgeWay,
    out: *mut FastedgeWayCounters,
) -> c_int {
    boundary(-1, || {
        // SAFETY: NULL or a live handle (the caller's contract).
        let way = unsafe { way.as_ref() }.ok_or("fastedge_way_read_counters: way is NULL")?;
        if out.is_null() {
            return Err("fastedge_way_read_counters: out is NULL".into());
        }
        let (delivered, dropped) = way.consumer.counters();
        let counters = FastedgeWayCounters {
            delivered,
            dropped,
            producer_heartbeat_ns: way.consumer.producer_heartbeat_ns(),
            lanes: u32::try_from(way.consumer.lanes()).unwrap_or(u32::MAX),
        };
        // SAFETY: not null (checked) and writable (the caller's contract); `write` because the
        // caller's memory may be uninitialised.
        unsafe { out.write(counters) };
        Ok(0)
    })
}

/// Detaches from the way and frees the handle (the split then sees no consumer on it; another
/// may attach). NULL is accepted and does nothing.
///
/// # Safety
///
/// `way` is NULL or a handle from [`fastedge_way_open`], not closed before, in use by no
/// other thread; it is invalid after the call.
#[no_mangle]
pub unsafe extern "C" fn fastedge_way_close(way: *mut FastedgeWay) {
    boundary((), || {
        if !way.is_null() {
            // SAFETY: a handle from `fastedge_way_open` (Box::into_raw), closed once (the
            // caller's contract): the box is taken back and dropped exactly once.
            let way = unsafe { Box::from_raw(way) };
            // Detach before the way may be opened again: under the lock, so that a new handle
            // cannot claim the consumer slot this one is about to clear.
            let mut open = OPEN_WAYS.lock().unwrap_or_else(PoisonError::into_inner);
            open.retain(|key| *key != way.key);
            drop(way);
        }
        Ok(())
    })
}

/// The message of the last call that failed on this thread, or an empty string after a call
/// that succeeded (never NULL). The string belongs to the library: it stays valid until the
/// next `fastedge_way_*` call on this thread; copy it to keep it.
#[no_mangle]
pub extern "C" fn fastedge_way_last_error() -> *const c_char {
    // The thread-local outlives any use the caller may make before its next call into this
    // library (which is the only thing that replaces the string).
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The way layout version this library reads ([`FASTEDGE_WAY_LAYOUT_VERSION`] of the header
/// it was built with): compare the two to detect a header and a library out of step.
#[no_mangle]
pub extern "C" fn fastedge_way_layout_version() -> u32 {
    shm::VERSION
}

#[cfg(test)]
mod tests {
    // Test code: an unwrap that fails is a failed test.
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn last_error() -> String {
        // SAFETY: the library returns a valid NUL-terminated string, read before any other call.
        unsafe { CStr::from_ptr(fastedge_way_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    unsafe extern "C" fn ignore(_: *mut c_void, _: *const u8, _: u32, _: u64, _: u64) {}

    #[test]
    fn the_header_constant_is_the_layout_version() {
        assert_eq!(FASTEDGE_WAY_LAYOUT_VERSION, shm::VERSION);
        assert_eq!(fastedge_way_layout_version(), FASTEDGE_WAY_LAYOUT_VERSION);
    }

    /// The committed header is what cbindgen makes of this file now (build.rs writes it to
    /// OUT_DIR); with FASTEDGE_UPDATE_HEADER set, this test rewrites the committed one.
    #[test]
    fn the_committed_header_is_up_to_date() {
        let generated = include_str!(concat!(env!("OUT_DIR"), "/fastedge_ways.h"));
        let committed_path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("include/fastedge_ways.h");
        if std::env::var_os("FASTEDGE_UPDATE_HEADER").is_some() {
            std::fs::write(&committed_path, generated).unwrap();
        }
        let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} is stale: run `FASTEDGE_UPDATE_HEADER=1 cargo test --workspace --lib \
             the_committed_header_is_up_to_date` and commit it",
            committed_path.display()
        );
    }

    #[test]
    fn null_pointers_are_refused_with_an_error() {
        // SAFETY: NULL is allowed for every pointer argument.
        unsafe {
            assert!(fastedge_way_open(std::ptr::null(), 0).is_null());
            assert_eq!(last_error(), "fastedge_way_open: name is NULL");
            assert_eq!(
                fastedge_way_read_batch(
                    std::ptr::null_mut(),
                    1,
                    Some(ignore),
                    std::ptr::null_mut()
                ),
                -1
            );
            assert_eq!(last_error(), "fastedge_way_read_batch: way is NULL");
            assert_eq!(fastedge_way_wait(std::ptr::null(), 0), -1);
            assert_eq!(last_error(), "fastedge_way_wait: way is NULL");
            let mut counters = FastedgeWayCounters::default();
            assert_eq!(
                fastedge_way_read_counters(std::ptr::null(), &mut counters),
                -1
            );
            assert_eq!(last_error(), "fastedge_way_read_counters: way is NULL");
            fastedge_way_close(std::ptr::null_mut());
            assert_eq!(last_error(), "", "closing NULL is not an error");
        }
    }

    #[test]
    fn bad_names_are_refused_with_an_error() {
        // SAFETY: NUL-terminated literals.
        unsafe {
            assert!(fastedge_way_open(c"\xff\xfe".as_ptr(), 0).is_null());
            assert!(last_error().contains("not UTF-8"), "{}", last_error());
            assert!(fastedge_way_open(c"../etc".as_ptr(), 0).is_null());
            assert!(last_error().contains("bad name"), "{}", last_error());
            assert!(fastedge_way_open(c"".as_ptr(), 0).is_null());
            assert!(last_error().contains("bad name"), "{}", last_error());
            let missing = c"fastedge-capi-test-no-such-split";
            assert!(fastedge_way_open(missing.as_ptr(), 7).is_null());
            assert!(
                last_error().contains("fastedge-capi-test-no-such-split-7"),
                "the error names the file: {}",
                last_error()
            );
        }
    }

    #[test]
    fn errors_are_per_thread_and_a_success_clears_them() {
        // SAFETY: NULL is allowed.
        assert!(unsafe { fastedge_way_open(std::ptr::null(), 0) }.is_null());
        let other = std::thread::spawn(last_error).join().unwrap();
        assert_eq!(other, "", "another thread's error is its own");
        assert!(!last_error().is_empty());
        // SAFETY: NULL is allowed (a success).
        unsafe { fastedge_way_close(std::ptr::null_mut()) };
        assert_eq!(last_error(), "");
    }

    #[test]
    fn a_panic_becomes_an_error_not_an_unwind_into_c() {
        let got = boundary(-1, || -> Result<i32, String> { panic!("boom") });
        assert_eq!(got, -1);
        assert_eq!(last_error(), "internal error (panic: boom)");
    }

    /// Frames a producer pushes come out of the C functions whole, in order, with their
    /// timestamps and flow hashes; counters and wait say what the way holds.
    #[test]
    fn frames_read_through_the_c_functions_are_the_ones_pushed() {
        let dir = std::env::temp_dir().join(format!("fastedge-capi-{}", std::process::id()));
        let path = dir.join("way-roundtrip");
        let mut producer = shm::Producer::create(&path, 64 * 1024).unwrap();
        let c_path = CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        let way = unsafe { fastedge_way_open_path(c_path.as_ptr()) };
        assert!(!way.is_null(), "{}", last_error());

        // SAFETY: a live handle, this thread only.
        let readable = unsafe { fastedge_way_wait(way, 10) };
        assert_eq!(readable, 0, "nothing to read yet");
        for n in 0..100u32 {
            let frame: Vec<u8> = (0..60 + n).map(|i| (n + i) as u8).collect();
            assert!(producer.push(&frame, u64::from(n) * 10, u64::from(n) * 7));
        }
        producer.publish();
        // SAFETY: a live handle, this thread only.
        assert_eq!(unsafe { fastedge_way_wait(way, 1000) }, 1);

        unsafe extern "C" fn collect(
            user: *mut c_void,
            data: *const u8,
            len: u32,
            timestamp_ns: u64,
            flow_hash: u64,
        ) {
            // SAFETY: `user` is the Vec below; `data` has `len` bytes during this call.
            let (seen, frame) = unsafe {
                (
                    &mut *user.cast::<Vec<(Vec<u8>, u64, u64)>>(),
                    std::slice::from_raw_parts(data, len as usize),
                )
            };
            seen.push((frame.to_vec(), timestamp_ns, flow_hash));
        }
        let mut seen: Vec<(Vec<u8>, u64, u64)> = Vec::new();
        let user = (&mut seen as *mut Vec<(Vec<u8>, u64, u64)>).cast::<c_void>();
        // SAFETY: a live handle, a callback that accepts `user` (the Vec above).
        unsafe {
            assert_eq!(fastedge_way_read_batch(way, 30, Some(collect), user), 30);
            assert_eq!(fastedge_way_read_batch(way, 1000, Some(collect), user), 70);
            assert_eq!(fastedge_way_read_batch(way, 1000, Some(collect), user), 0);
            assert_eq!(
                fastedge_way_read_batch(way, 1000, None, user),
                -1,
                "a NULL callback is refused"
            );
        }
        assert_eq!(last_error(), "fastedge_way_read_batch: on_record is NULL");
        assert_eq!(seen.len(), 100);
        for (n, (frame, timestamp_ns, flow_hash)) in seen.iter().enumerate() {
            let n = n as u32;
            let expected: Vec<u8> = (0..60 + n).map(|i| (n + i) as u8).collect();
            assert_eq!(frame, &expected);
            assert_eq!(*timestamp_ns, u64::from(n) * 10);
            assert_eq!(*flow_hash, u64::from(n) * 7);
        }

        // SAFETY: NULL arrays and handles are allowed (refused with an error).
        unsafe {
            assert_eq!(fastedge_way_wait_any(std::ptr::null(), 2, 0), -1);
            assert_eq!(last_error(), "fastedge_way_wait_any: ways is NULL");
            assert_eq!(
                fastedge_way_wait_any([way.cast_const(), std::ptr::null()].as_ptr(), 2, 0),
                -1
            );
            assert_eq!(last_error(), "fastedge_way_wait_any: ways[1] is NULL");
            assert_eq!(fastedge_way_wait_any(std::ptr::null(), 0, 1), 0);
        }
        // SAFETY: an array of one live handle.
        let readable = unsafe { fastedge_way_wait_any([way.cast_const()].as_ptr(), 1, 10) };
        assert_eq!(readable, 0, "everything was read");
        producer.push(b"one more", 1, 1);
        producer.publish();
        // A second way, idle, beside the first.
        let idle_path = dir.join("way-idle");
        let _idle_producer = shm::Producer::create(&idle_path, 64 * 1024).unwrap();
        let c_idle = CString::new(idle_path.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        let idle = unsafe { fastedge_way_open_path(c_idle.as_ptr()) };
        assert!(!idle.is_null(), "{}", last_error());
        // SAFETY: an array of two live handles.
        let readable = unsafe {
            fastedge_way_wait_any([idle.cast_const(), way.cast_const()].as_ptr(), 2, 1000)
        };
        assert_eq!(readable, 1, "the first way has a frame: {}", last_error());
        // SAFETY: the handle from open, closed once.
        unsafe { fastedge_way_close(idle) };

        let mut counters = FastedgeWayCounters::default();
        // SAFETY: a live handle and a writable struct.
        assert_eq!(unsafe { fastedge_way_read_counters(way, &mut counters) }, 0);
        assert_eq!(
            (counters.delivered, counters.dropped, counters.lanes),
            (101, 0, 1)
        );
        assert!(counters.producer_heartbeat_ns > 0);

        // A second handle on the same way is refused (another process's would be too); this
        // one detaches on close, and the way can be opened again.
        // SAFETY: a NUL-terminated path.
        let twice = unsafe { fastedge_way_open_path(c_path.as_ptr()) };
        assert!(twice.is_null());
        assert!(
            last_error().contains("already open in this process"),
            "{}",
            last_error()
        );
        // SAFETY: the handle from open, closed once.
        unsafe { fastedge_way_close(way) };
        // SAFETY: a NUL-terminated path.
        let again = unsafe { fastedge_way_open_path(c_path.as_ptr()) };
        assert!(!again.is_null(), "{}", last_error());
        // SAFETY: the handle from open, closed once.
        unsafe { fastedge_way_close(again) };
        drop(producer);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
