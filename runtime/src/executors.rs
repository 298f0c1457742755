//! One executor per CPU, each pinned to its CPU, on the engine asked for.

use std::{future::Future, sync::mpsc};

use glommio::{LocalExecutorBuilder, Placement};

use crate::{uring, CpuList, Engine, RuntimeError};

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
    handles: Vec<(Core, Handle<T>)>,
}

#[derive(Debug)]
enum Handle<T: Send + 'static> {
    Glommio(glommio::ExecutorJoinHandle<T>),
    /// `None` only when set-up failed, which `spawn_on` already reported.
    Uring(std::thread::JoinHandle<Option<T>>),
}

impl<T: Send + 'static> Executors<T> {
    /// Starts one executor per CPU in `cpus` on the default engine ([`Engine::Uring`]); see
    /// [`Executors::spawn_on`].
    pub fn spawn<M, G, F>(name: &str, cpus: &CpuList, make: M) -> Result<Self, RuntimeError>
    where
        M: FnMut(Core) -> G,
        G: FnOnce() -> F + Send + 'static,
        F: Future<Output = T> + 'static,
    {
        Self::spawn_on(Engine::default(), name, cpus, make)
    }

    /// Starts one `engine` executor per CPU in `cpus`, named `{name}-{cpu}`. For each CPU,
    /// `make` runs here on the calling thread (so it can hand each core its own resources) and
    /// returns the closure that then runs on the executor's thread to make the executor's main
    /// future. Fails, naming the CPU and the reason, if an executor cannot start (for the
    /// io_uring engine: a kernel without the ring features it needs).
    pub fn spawn_on<M, G, F>(
        engine: Engine,
        name: &str,
        cpus: &CpuList,
        mut make: M,
    ) -> Result<Self, RuntimeError>
    where
        M: FnMut(Core) -> G,
        G: FnOnce() -> F + Send + 'static,
        F: Future<Output = T> + 'static,
    {
        let mut handles = Vec::with_capacity(cpus.len());
        for (index, &cpu) in cpus.cpus().iter().enumerate() {
            let core = Core { index, cpu };
            let thread_name = format!("{name}-{cpu}");
            let handle = match engine {
                Engine::Glommio => {
                    let make = make(core);
                    let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                        .name(&thread_name)
                        .io_memory(IO_MEMORY)
                        .spawn(move || {
                            crate::engine::enter(Engine::Glommio);
                            make()
                        })
                        .map_err(|e| RuntimeError::Executor {
                            cpu,
                            reason: e.to_string(),
                        })?;
                    Handle::Glommio(handle)
                }
                Engine::Uring => Handle::Uring(spawn_uring(thread_name, cpu, make(core))?),
            };
            handles.push((core, handle));
        }
        Ok(Self { handles })
    }

    /// Waits for every executor to finish, returning each one's result in CPU-list order.
    pub fn join(self) -> Result<Vec<(Core, T)>, RuntimeError> {
        let mut results = Vec::with_capacity(self.handles.len());
        let mut first_error = None;
        for (core, handle) in self.handles {
            let joined = match handle {
                Handle::Glommio(handle) => handle.join().map_err(|e| e.to_string()),
                Handle::Uring(handle) => match handle.join() {
                    Ok(Some(value)) => Ok(value),
                    Ok(None) => Err("the executor failed to start".to_owned()),
                    Err(_) => Err("the executor thread panicked".to_owned()),
                },
            };
            match joined {
                Ok(value) => results.push((core, value)),
                Err(reason) => {
                    first_error.get_or_insert(RuntimeError::Executor {
                        cpu: core.cpu,
                        reason,
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

/// Starts an io_uring engine thread pinned to `cpu`; returns once its ring is up (or why it
/// could not be).
fn spawn_uring<G, F, T>(
    thread_name: String,
    cpu: usize,
    make: G,
) -> Result<std::thread::JoinHandle<Option<T>>, RuntimeError>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let (ready, started) = mpsc::channel::<Result<uring::TaskRun, String>>();
    let error = |reason: String| RuntimeError::Executor { cpu, reason };
    let thread = std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            let setup = pin_to(cpu).and_then(|()| {
                uring::Runtime::new(uring::RingSettings::default()).map_err(|e| e.to_string())
            });
            let runtime = match setup {
                Ok(runtime) => {
                    let _ = ready.send(Ok(runtime.task_run()));
                    runtime
                }
                Err(reason) => {
                    let _ = ready.send(Err(reason));
                    return None;
                }
            };
            crate::engine::enter(Engine::Uring);
            Some(runtime.block_on(async move { make().await }))
        })
        .map_err(|e| error(format!("starting its thread: {e}")))?;
    match started.recv() {
        Ok(Ok(task_run)) => {
            tracing::debug!(cpu, ?task_run, "io_uring engine started");
        }
        Ok(Err(reason)) => {
            let _ = thread.join();
            return Err(error(reason));
        }
        Err(_) => {
            let _ = thread.join();
            return Err(error("the executor thread ended during set-up".into()));
        }
    }
    Ok(thread)
}

fn pin_to(cpu: usize) -> Result<(), String> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(|e| format!("CPU {cpu}: {e}"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| format!("pinning to CPU {cpu}: {e}"))
}

/// The CPU the calling thread is allowed to run on, if it is pinned to exactly one.
pub fn pinned_cpu() -> Option<usize> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
    let mut cpus = (0..nix::sched::CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false));
    let first = cpus.next()?;
    cpus.next().is_none().then_some(first)
}
