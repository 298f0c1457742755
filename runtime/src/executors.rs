//! One glommio executor per CPU, each pinned to its CPU.

use std::future::Future;

use glommio::{LocalExecutorBuilder, Placement};

use crate::{CpuList, RuntimeError};

/// Memory each executor registers with io_uring for storage I/O. We do network I/O only, so
/// keep it at glommio's floor: RLIMIT_MEMLOCK is small on some hosts.
const IO_MEMORY: usize = 64 * 1024;

/// What an executor knows about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Core {
    /// Position in the CPU list (0 for the first listed CPU).
    pub index: usize,
    /// The CPU the executor is pinned to.
    pub cpu: usize,
}

/// Running executors, one per CPU of a [`CpuList`].
#[derive(Debug)]
pub struct Executors<T: Send + 'static> {
    handles: Vec<(Core, glommio::ExecutorJoinHandle<T>)>,
}

impl<T: Send + 'static> Executors<T> {
    /// Starts one executor per CPU in `cpus`, named `{name}-{cpu}`. For each CPU, `make` runs
    /// here on the calling thread (so it can hand each core its own resources) and returns the
    /// closure that then runs on the executor's thread to make the executor's main future.
    pub fn spawn<M, G, F>(name: &str, cpus: &CpuList, mut make: M) -> Result<Self, RuntimeError>
    where
        M: FnMut(Core) -> G,
        G: FnOnce() -> F + Send + 'static,
        F: Future<Output = T> + 'static,
    {
        let mut handles = Vec::with_capacity(cpus.len());
        for (index, &cpu) in cpus.cpus().iter().enumerate() {
            let core = Core { index, cpu };
            let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .name(&format!("{name}-{cpu}"))
                .io_memory(IO_MEMORY)
                .spawn(make(core))
                .map_err(|e| RuntimeError::Executor {
                    cpu,
                    reason: e.to_string(),
                })?;
            handles.push((core, handle));
        }
        Ok(Self { handles })
    }

    /// Waits for every executor to finish, returning each one's result in CPU-list order.
    pub fn join(self) -> Result<Vec<(Core, T)>, RuntimeError> {
        let mut results = Vec::with_capacity(self.handles.len());
        let mut first_error = None;
        for (core, handle) in self.handles {
            match handle.join() {
                Ok(value) => results.push((core, value)),
                Err(e) => {
                    first_error.get_or_insert(RuntimeError::Executor {
                        cpu: core.cpu,
                        reason: e.to_string(),
                    });
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(results),
        }
    }
}

/// The CPU the calling thread is allowed to run on, if it is pinned to exactly one.
pub fn pinned_cpu() -> Option<usize> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
    let mut cpus = (0..nix::sched::CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false));
    let first = cpus.next()?;
    cpus.next().is_none().then_some(first)
}
