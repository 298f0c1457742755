//! Shared helpers of fastedge's end-to-end suites: network namespaces with veth pairs that
//! clean up after themselves, the `fastedge` binary as a child process, required tools.
//!
//! The suites themselves live in `tests/tests/`; each drives real peers (openssl s_client,
//! curl, the kernel's AF_XDP path) and checks what came out.

pub mod frames;
pub mod netns;
pub mod peers;
pub mod process;
pub mod ways;

/// Panics with an install hint when `tool` is not on PATH: the suites need real peers, and a
/// missing one is a broken setup, not a reason to pass.
pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed; these tests need it: apt-get install {package} (or run `make test`, which installs it)"
    );
}

/// A fresh temporary directory under the target dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("fastedge-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a temporary directory");
        Self(path)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// Writes a fresh self-signed ECDSA certificate for `name` as `{name}.pem` and its key as
    /// `{name}.key` in this directory; returns both paths.
    pub fn self_signed(&self, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let cert = fastedge_tls::SelfSigned::generate(&[name], 1).expect("certificate");
        let paths = (
            self.0.join(format!("{name}.pem")),
            self.0.join(format!("{name}.key")),
        );
        cert.write_pem(&paths.0, &paths.1)
            .expect("writing certificate");
        paths
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The engine in-process executors of a suite run on: `$FASTEDGE_ENGINE` (which the `fastedge`
/// binary also reads), else the default. `make test` runs the serve suites once per engine.
pub fn engine() -> fastedge_runtime::Engine {
    match std::env::var("FASTEDGE_ENGINE") {
        Ok(name) => name
            .parse()
            .unwrap_or_else(|e| panic!("FASTEDGE_ENGINE: {e}")),
        Err(_) => fastedge_runtime::Engine::default(),
    }
}

/// Sleeps until `margin` after the next multiple of `period` since the Unix epoch (ticket-key
/// periods roll over there).
pub fn sleep_past_boundary(period: std::time::Duration, margin: std::time::Duration) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let into = std::time::Duration::from_millis((now.as_millis() % period.as_millis()) as u64);
    std::thread::sleep(period - into + margin);
}
