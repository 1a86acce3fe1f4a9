//! A throwaway PostgreSQL cluster (and streaming replicas of it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::process::{self, unprivileged, Readiness, ServerProcess};
use super::LocalError;

pub struct TempPostgres {
    // Before `dir`: the server stops before its data directory is removed.
    process: ServerProcess,
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    extra: Vec<String>,
}

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory with `initdb` and `postgres`: `$KYB_PG_BIN`, else the newest `/usr/lib/postgresql/N/bin`.
pub fn bin_dir() -> Result<PathBuf, LocalError> {
    if let Ok(dir) = std::env::var("KYB_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, p)| p)
        .ok_or_else(|| LocalError::Missing {
            what: "PostgreSQL server binaries".into(),
            hint: "install postgresql (Debian: apt-get install postgresql) or set KYB_PG_BIN"
                .into(),
        })
}

fn run(cmd: &mut Command, what: &str) -> Result<(), LocalError> {
    let out = cmd.output().map_err(|e| LocalError::Failed {
        what: what.into(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(LocalError::Failed {
            what: what.into(),
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(())
}

fn as_user(cmd: &mut Command, run_as: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = run_as {
        std::os::unix::process::CommandExt::uid(cmd, uid);
        std::os::unix::process::CommandExt::gid(cmd, gid);
    }
    cmd
}

fn chown_tree(path: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    if path.is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_tree(&e?.path(), owner)?;
        }
    }
    Ok(())
}

impl TempPostgres {
    /// initdb + start. Settings trade durability for speed (fsync off): for tests and demos only.
    pub fn start() -> Result<Self, LocalError> {
        Self::start_with(&[])
    }

    /// As [`start`](Self::start) with extra `-c name=value` settings.
    pub fn start_with(settings: &[&str]) -> Result<Self, LocalError> {
        Self::start_with_hba(settings, None)
    }

    /// As [`start_with`](Self::start_with), and with `hba` (if given) as the cluster's `pg_hba.conf`.
    /// Written into the data directory rather than named with `hba_file`, so it lives and goes with
    /// the cluster: a restart reads it again, and nothing is left behind.
    pub fn start_with_hba(settings: &[&str], hba: Option<&str>) -> Result<Self, LocalError> {
        let bin = bin_dir()?;
        let run_as = unprivileged("postgres");
        let dir = process::owned_temp_dir("kyb-pg-")?;
        chown_tree(dir.path(), run_as)?;
        let data = dir.path().join("data");
        run(
            as_user(
                Command::new(bin.join("initdb")).arg("-D").arg(&data).args([
                    "--auth=trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-instructions",
                ]),
                run_as,
            ),
            "initdb",
        )?;
        if let Some(hba) = hba {
            let path = data.join("pg_hba.conf");
            std::fs::write(&path, hba)?;
            chown_tree(&path, run_as)?;
        }
        let mut pg = Self {
            process: ServerProcess::new(libc::SIGINT),
            dir,
            bin,
            port: process::free_port()?,
            run_as,
            extra: settings.iter().map(|s| s.to_string()).collect(),
        };
        pg.launch()?;
        Ok(pg)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn launch(&mut self) -> Result<(), LocalError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        chown_tree(&self.log_path(), self.run_as)?;
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-k")
            .arg(self.dir.path())
            .arg("-p")
            .arg(self.port.to_string());
        for setting in [
            "listen_addresses=127.0.0.1",
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            "max_connections=400",
            "shared_buffers=128MB",
            "wal_level=replica",
            "max_wal_senders=10",
            "hot_standby=on",
            "log_min_messages=warning",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(self.extra.iter().cloned())
        {
            cmd.arg("-c").arg(setting);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let (bin, port) = (self.bin.join("pg_isready"), self.port.to_string());
        let log = self.log_path();
        self.process.launch(
            cmd,
            self.run_as,
            libc::SIGQUIT,
            Readiness {
                what: format!("PostgreSQL on port {port}"),
                log: &log,
                timeout: READY_TIMEOUT,
                probe: &mut || {
                    Command::new(&bin)
                        .args(["-q", "-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
                        .status()
                        .is_ok_and(|s| s.success())
                },
            },
        )
    }

    /// A streaming replica of this server (`pg_basebackup -R`), started on its own port.
    pub fn replica(&self) -> Result<Self, LocalError> {
        let dir = process::owned_temp_dir("kyb-pg-replica-")?;
        chown_tree(dir.path(), self.run_as)?;
        run(
            as_user(
                Command::new(self.bin.join("pg_basebackup"))
                    .args([
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &self.port.to_string(),
                        "-U",
                        "postgres",
                        "-R",
                        "-X",
                        "stream",
                        // The default spread checkpoint makes a base backup of an idle server wait minutes.
                        "--checkpoint=fast",
                        "-D",
                    ])
                    .arg(dir.path().join("data")),
                self.run_as,
            ),
            "pg_basebackup",
        )?;
        let mut replica = Self {
            process: ServerProcess::new(libc::SIGINT),
            dir,
            bin: self.bin.clone(),
            port: process::free_port()?,
            run_as: self.run_as,
            extra: self.extra.clone(),
        };
        replica.launch()?;
        Ok(replica)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A DSN for `database` over TCP as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a database (name: letters, digits and `_` only).
    pub fn create_database(&self, name: &str) -> Result<(), LocalError> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(LocalError::Failed {
                what: "create database".into(),
                detail: format!("invalid database name {name:?}"),
            });
        }
        run(
            Command::new(self.bin.join("psql")).args([
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                &format!("CREATE DATABASE {name}"),
            ]),
            "create database",
        )
    }

    /// Stops the server (fast shutdown), keeping its data for [`restart`](Self::restart).
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Kills the server without a clean shutdown.
    pub fn kill(&mut self) {
        self.process.signal(libc::SIGKILL);
    }

    pub fn restart(&mut self) -> Result<(), LocalError> {
        self.launch()
    }
}
