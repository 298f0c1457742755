//! The Debian package (`make deb`): built by packaging/build-deb.sh from this build's binary,
//! installed with dpkg into a throwaway copy of this machine (an overlay over / in a private
//! mount namespace), its serve unit run the way systemd runs it (state directory,
//! ExecStartPre, ExecStart as its user with its environment, a notify socket that must hear
//! READY=1), a request through it answered 200, a binary upgrade as the unit documents it
//! (SIGUSR2: the successor says MAINPID and READY, the old process exits, requests still
//! answered), and purged without a trace
//! (packaging/test-install.sh does the steps and says what it checked).

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::{path::PathBuf, process::Command};

use fastedge_tests::{process::fastedge_bin, require_tool, TempDir};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

#[test]
fn the_debian_package_installs_serves_and_purges() {
    for (tool, package) in [
        ("dpkg-deb", "dpkg"),
        ("dpkg-shlibdeps", "dpkg-dev"),
        ("unshare", "util-linux"),
        ("python3", "python3"),
        ("curl", "curl"),
    ] {
        require_tool(tool, package);
    }
    let out = TempDir::new("deb");
    let built = Command::new(repo().join("packaging/build-deb.sh"))
        .env("FASTEDGE_BIN", fastedge_bin())
        .env("DEB_OUT", out.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&built.stderr);
    assert!(built.status.success(), "build-deb.sh failed: {stderr}");
    let deb = String::from_utf8_lossy(&built.stdout).trim().to_owned();
    assert!(
        deb.ends_with(".deb"),
        "the package's path: {deb:?} ({stderr})"
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let installed = Command::new(repo().join("packaging/test-install.sh"))
        .arg(&deb)
        .arg(port.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&installed.stdout);
    let stderr = String::from_utf8_lossy(&installed.stderr);
    eprintln!("{stdout}");
    assert!(
        installed.status.success(),
        "install test failed:\n{stdout}\n{stderr}"
    );
    for line in [
        "installed: fastedge",
        "files: binary, configuration, units, man pages, completions",
        "ExecStartPre ran",
        "READY=1",
        ": 200",
        "upgraded: main process",
        "/upgraded: 200",
        "purged",
        "install test passed",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
}
