//! Process set-up: the open-files limit, dropping privileges after binding, the pid file, and
//! starting this process's successor for a binary upgrade ([`spawn_successor`]).

use nix::{
    sys::resource::{getrlimit, setrlimit, Resource},
    unistd::{setgid, setgroups, setuid, Gid, Group, Uid, User},
};

/// Errors of process set-up, each naming the step.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// No such user in the user database.
    #[error("user {0:?} does not exist")]
    NoUser(String),
    /// No such group in the group database.
    #[error("group {0:?} does not exist")]
    NoGroup(String),
    /// Reading the user or group database failed.
    #[error("looking up {what} {name:?}: {source}")]
    Lookup {
        /// `user` or `group`.
        what: &'static str,
        /// The name looked up.
        name: String,
        /// The error of the lookup.
        source: nix::Error,
    },
    /// A step of the privilege drop (`setgroups`, `setgid`, `setuid`) failed.
    #[error("{step}: {source} (dropping privileges needs root)")]
    Drop {
        /// The step.
        step: &'static str,
        /// The error of the call.
        source: nix::Error,
    },
    /// Raising the open-files limit failed.
    #[error("RLIMIT_NOFILE: {0}")]
    Limit(nix::Error),
    /// Detaching into the background (`daemon(3)`) failed.
    #[error("detaching (--daemon): {0}")]
    Detach(nix::Error),
    /// The pid file could not be written.
    #[error("writing the pid file {path}: {source}")]
    PidFile {
        /// The pid file.
        path: std::path::PathBuf,
        /// The system's answer.
        source: std::io::Error,
    },
}

impl ProcessError {
    /// Whether the configuration (a name, a path) is at fault, as opposed to the system.
    pub fn is_config(&self) -> bool {
        !matches!(self, ProcessError::Limit(_) | ProcessError::Detach(_))
    }
}

/// Detaches into the background when `daemon` (fork, new session, standard streams to
/// /dev/null; the process goes on in the child), then writes its pid to `pid_file`, removed
/// when the returned value is dropped. Call before any thread exists.
pub fn detach(
    daemon: bool,
    pid_file: Option<&std::path::Path>,
) -> Result<Option<PidFile>, ProcessError> {
    if daemon {
        nix::unistd::daemon(false, false).map_err(ProcessError::Detach)?;
    }
    pid_file
        .map(|path| {
            PidFile::create(path).map_err(|source| ProcessError::PidFile {
                path: path.to_owned(),
                source,
            })
        })
        .transpose()
}

/// Raises the soft open-files limit to the hard limit; returns the new soft limit. A proxy needs
/// two descriptors per connection.
pub fn raise_nofile_limit() -> Result<u64, ProcessError> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(ProcessError::Limit)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(ProcessError::Limit)?;
    }
    Ok(hard.max(soft))
}

/// Switches the whole process (every thread: call before starting executors) to `user` and
/// `group` (default: the user's primary group), clearing supplementary groups. Returns the new
/// uid and gid.
pub fn drop_privileges(user: &str, group: Option<&str>) -> Result<(Uid, Gid), ProcessError> {
    let found = User::from_name(user).map_err(|source| ProcessError::Lookup {
        what: "user",
        name: user.to_owned(),
        source,
    })?;
    let found = found.ok_or_else(|| ProcessError::NoUser(user.to_owned()))?;
    let gid = match group {
        Some(name) => {
            Group::from_name(name)
                .map_err(|source| ProcessError::Lookup {
                    what: "group",
                    name: name.to_owned(),
                    source,
                })?
                .ok_or_else(|| ProcessError::NoGroup(name.to_owned()))?
                .gid
        }
        None => found.gid,
    };
    let step = |step| move |source| ProcessError::Drop { step, source };
    // Order matters: groups first, while we still may change them; the uid last.
    setgroups(&[gid]).map_err(step("setgroups"))?;
    setgid(gid).map_err(step("setgid"))?;
    setuid(found.uid).map_err(step("setuid"))?;
    Ok((found.uid, gid))
}

/// The process id, written to a file that is removed again when this is dropped.
#[derive(Debug)]
pub struct PidFile(std::path::PathBuf);

impl PidFile {
    /// Writes this process's id (and a newline) to `path`. Call it after detaching: a fork
    /// changes the id.
    pub fn create(path: &std::path::Path) -> std::io::Result<Self> {
        std::fs::write(path, format!("{}\n", std::process::id()))?;
        Ok(Self(path.to_owned()))
    }

    /// Where the pid went.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Starts the program this process was started as, by the name it was started with (`argv[0]`,
/// looked up in `PATH` when it has no slash: after a package upgrade, the new binary), with
/// `args`, the same environment, working directory and standard streams; does not wait for it.
/// Its exit is logged if it ends while this process runs (a successor that could not take
/// over). Returns its process id.
pub fn spawn_successor(args: &[std::ffi::OsString]) -> std::io::Result<u32> {
    let program = std::env::args_os()
        .next()
        .ok_or_else(|| std::io::Error::other("this process has no argv[0]"))?;
    let mut child = std::process::Command::new(&program).args(args).spawn()?;
    let pid = child.id();
    std::thread::Builder::new()
        .name("fastedge-successor".into())
        .spawn(move || match child.wait() {
            Ok(status) => tracing::warn!(pid, %status, "the successor process ended"),
            Err(error) => tracing::warn!(pid, %error, "waiting for the successor process"),
        })?;
    Ok(pid)
}
