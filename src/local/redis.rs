//! A throwaway Redis server.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{free_port, Readiness, ServerProcess};
use super::LocalError;

pub struct TempRedis {
    // Before `dir`: the server stops before its directory is removed.
    process: ServerProcess,
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    cluster: bool,
    /// Addresses it listens on besides loopback.
    also_on: Option<String>,
}

const READY_TIMEOUT: Duration = Duration::from_secs(20);

fn find_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("KYB_REDIS_SERVER") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/bin", "/usr/sbin", "/usr/local/bin"])
        .map(|d| PathBuf::from(d).join("redis-server"))
        .find(|p| p.exists())
}

impl TempRedis {
    pub fn installed() -> bool {
        find_bin().is_some()
    }

    pub fn start() -> Result<Self, LocalError> {
        Self::start_mode(false, None)
    }

    /// Also listening on `address` (a local interface's), for clients elsewhere: the test node's pods.
    pub fn start_also_on(address: &str) -> Result<Self, LocalError> {
        Self::start_mode(false, Some(address.to_owned()))
    }

    /// A one-node Redis Cluster owning every slot: enough to exercise the cluster client.
    pub fn start_cluster() -> Result<Self, LocalError> {
        let r = Self::start_mode(true, None)?;
        let failed = |detail: String| LocalError::Failed {
            what: "redis cluster set-up".into(),
            detail,
        };
        let mut conn = redis::Client::open(r.url())
            .and_then(|c| c.get_connection())
            .map_err(|e| failed(e.to_string()))?;
        redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(0)
            .arg(16383)
            .query::<()>(&mut conn)
            .map_err(|e| failed(e.to_string()))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut conn)
                .map_err(|e| failed(e.to_string()))?;
            if info.contains("cluster_state:ok") {
                return Ok(r);
            }
            if Instant::now() > deadline {
                return Err(failed(info));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_mode(cluster: bool, also_on: Option<String>) -> Result<Self, LocalError> {
        let bin = find_bin().ok_or_else(|| LocalError::Missing {
            what: "redis-server".into(),
            hint: "install it (Debian: apt-get install redis-server) or set KYB_REDIS_SERVER"
                .into(),
        })?;
        let mut r = Self {
            process: ServerProcess::new(libc::SIGKILL),
            dir: super::process::owned_temp_dir("kyb-redis-")?,
            bin,
            port: free_port()?,
            cluster,
            also_on,
        };
        r.launch()?;
        Ok(r)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn launch(&mut self) -> Result<(), LocalError> {
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--bind")
        .arg("127.0.0.1")
        .args(self.also_on.iter())
        // Protected mode refuses every client but loopback when there is no password (test servers
        // have none); `--bind` already limits where it listens.
        .args(["--protected-mode", "no"])
        .arg("--dir")
        .arg(self.dir.path())
        .arg("--logfile")
        .arg(self.log_path());
        if self.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let (port, log) = (self.port, self.log_path());
        self.process.launch(
            cmd,
            None,
            libc::SIGTERM,
            Readiness {
                what: format!("redis-server on port {port}"),
                log: &log,
                timeout: READY_TIMEOUT,
                probe: &mut || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            },
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers, and what it holds
    /// is still there when it is thawed.
    pub fn freeze(&self) {
        self.process.send(libc::SIGSTOP);
    }

    pub fn thaw(&self) {
        self.process.send(libc::SIGCONT);
    }

    /// Starts again on the same port (empty: it never saves).
    pub fn restart(&mut self) -> Result<(), LocalError> {
        self.launch()
    }
}
