//! Spawning helper processes that die with this one.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

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

/// A port free on 127.0.0.1 at the time of asking.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
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
