//! Spawning helper processes that die with this one, and the life cycle the local servers share.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::LocalError;

/// One local server's process: launched, polled until it answers, stopped with the server's own
/// signal, and stopped on drop. Declare it before the server's temporary directory, so the process
/// is gone before its directory is removed.
pub struct ServerProcess {
    child: Option<Child>,
    /// What `stop` sends: SIGINT is PostgreSQL's fast shutdown; Redis never saves, so SIGKILL.
    stop_signal: i32,
}

const READY_POLL: Duration = Duration::from_millis(50);

impl ServerProcess {
    pub fn new(stop_signal: i32) -> Self {
        Self {
            child: None,
            stop_signal,
        }
    }

    /// Spawns `cmd` (see [`spawn_tied`]) and waits until `ready` says yes; when the process exits
    /// first or `timeout` passes, fails naming `what` with the last lines of `log`.
    pub fn launch(
        &mut self,
        cmd: Command,
        run_as: Option<(u32, u32)>,
        death_signal: i32,
        ready: Readiness<'_>,
    ) -> Result<(), LocalError> {
        self.stop();
        let mut child = spawn_tied(cmd, run_as, death_signal)?;
        let deadline = Instant::now() + ready.timeout;
        loop {
            if (ready.probe)() {
                self.child = Some(child);
                return Ok(());
            }
            if child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                stop(&mut child, libc::SIGKILL);
                return Err(LocalError::NotReady {
                    what: ready.what,
                    secs: ready.timeout.as_secs(),
                    log: tail(ready.log, 20),
                });
            }
            std::thread::sleep(READY_POLL);
        }
    }

    /// Stops the server with its stop signal and waits for it; a no-op when it is not running.
    pub fn stop(&mut self) {
        self.signal(self.stop_signal);
    }

    /// Sends `sig` and returns at once (SIGSTOP / SIGCONT: a server that hangs, then resumes).
    pub fn send(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) with the pid of a child this value owns and has not reaped.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    }

    /// Sends `sig` (SIGKILL: no clean shutdown) and waits for the process.
    pub fn signal(&mut self, sig: i32) {
        if let Some(mut c) = self.child.take() {
            stop(&mut c, sig);
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How [`ServerProcess::launch`] knows the server is up, and what to say when it is not.
pub struct Readiness<'a> {
    pub what: String,
    pub log: &'a Path,
    pub timeout: Duration,
    pub probe: &'a mut dyn FnMut() -> bool,
}

/// Runs as `uid:gid` (when given) and receives `death_signal` when the spawning thread exits.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process, and test
/// threads come and go; so every child is forked by one long-lived spawner thread.
pub fn spawn_tied(
    mut cmd: Command,
    run_as: Option<(u32, u32)>,
    death_signal: i32,
) -> std::io::Result<Child> {
    // SAFETY: the closure only makes async-signal-safe calls (setgroups, setgid, setuid, prctl) between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid)) = run_as {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // After setuid: a credential change clears the parent-death signal.
            if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    spawner().call(cmd)
}

type Job = (Command, mpsc::Sender<std::io::Result<Child>>);

struct Spawner(Mutex<mpsc::Sender<Job>>);

impl Spawner {
    fn call(&self, cmd: Command) -> std::io::Result<Child> {
        let (tx, rx) = mpsc::channel();
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send((cmd, tx))
            .map_err(|_| std::io::Error::other("spawner thread gone"))?;
        rx.recv()
            .map_err(|_| std::io::Error::other("spawner thread gone"))?
    }
}

fn spawner() -> &'static Spawner {
    static SPAWNER: OnceLock<Spawner> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("kyb-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the spawner thread");
        Spawner(Mutex::new(tx))
    })
}

/// Ports for local servers come from here: below the kernel's ephemeral range (32768+ by default), so
/// no outgoing connection can take one as its source port between our choosing it and the server
/// binding it (binding port 0 hands out exactly such ports), and below the 20000+ that the test
/// control plane (`tests/cluster/up`) uses.
const LOCAL_PORTS: std::ops::Range<u16> = 10_000..20_000;

/// A port free on 127.0.0.1 at the time of asking.
pub fn free_port() -> std::io::Result<u16> {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..200 {
        let port = rng.random_range(LOCAL_PORTS);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free port on 127.0.0.1 in {LOCAL_PORTS:?}"),
    ))
}

/// Sends `sig` to `child` and waits for it.
pub fn stop(child: &mut Child, sig: i32) {
    if let Ok(None) = child.try_wait() {
        // SAFETY: plain kill(2) on a pid we own and have not reaped.
        unsafe {
            libc::kill(child.id() as i32, sig);
        }
        let _ = child.wait();
    }
}

/// The uid and gid of `user`, when this process runs as root and so must drop privileges.
pub fn unprivileged(user: &str) -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new(user).ok()?;
    // SAFETY: getpwnam returns null or a pointer to static storage, read immediately.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: non-null checked above.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

pub fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

const OWNER_FILE: &str = "owner.pid";

/// A temporary directory for a server, marked with this process's pid. Directories left by processes
/// that are gone (the test harness keeps its shared servers in statics, which are never dropped) are
/// removed first, so repeated runs do not fill the disk.
pub fn owned_temp_dir(prefix: &str) -> std::io::Result<tempfile::TempDir> {
    sweep_stale(prefix);
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
    std::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())?;
    Ok(dir)
}

fn sweep_stale(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let owner = std::fs::read_to_string(entry.path().join(OWNER_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if let Some(pid) = owner {
            // SAFETY: kill with signal 0 only checks whether the process exists.
            let alive = unsafe { libc::kill(pid, 0) } == 0
                || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
            if !alive {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_of_dead_owners_are_swept() {
        let prefix = format!("kyb-sweep-test-{}-", std::process::id());
        let mut child = Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = tempfile::Builder::new()
            .prefix(&prefix)
            .tempdir()
            .unwrap()
            .keep();
        std::fs::write(stale.join(OWNER_FILE), dead.to_string()).unwrap();
        let live = owned_temp_dir(&prefix).unwrap();
        assert!(!stale.exists(), "a dead owner's directory stays");
        // Our own (live) directory survives the next sweep.
        let other = owned_temp_dir(&prefix).unwrap();
        assert!(live.path().exists() && other.path().exists());
    }
}
