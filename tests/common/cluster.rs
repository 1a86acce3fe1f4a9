//! A real Kubernetes control plane for integration tests (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler and kwok's fake nodes, built from upstream Go modules by `tests/cluster/build`).
//!
//! Include it with `#[path = "common/cluster.rs"] mod cluster;` and call [`cluster()`]: the first call in
//! a test binary starts ONE control plane (`tests/cluster/up`) that every test of the binary shares;
//! each test makes its own namespace with [`Cluster::namespace`]. The control plane goes away with the
//! test process: `up` is spawned from a thread that lives as long as the process with
//! `PR_SET_PDEATHSIG(SIGTERM)`, and `up --parent-pid` also watches this process. A control plane that
//! cannot start fails the test (panic with the log tail); it is never skipped.
//!
//! Environment: `KYB_CLUSTER_TIMEOUT_SECS` (default 2400: a cold build of the binaries takes minutes),
//! `KYB_CLUSTER_KEEP=1` keeps the control plane's directory (logs, etcd data) after the run.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

/// The shared control plane of this test binary.
#[derive(Debug)]
pub struct Cluster {
    /// Directory holding all of the control plane's state (certs, etcd data, logs/*.log).
    pub dir: PathBuf,
    /// Admin kubeconfig (user in `system:masters`).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:PORT` of kube-apiserver.
    pub server: String,
    /// CA certificate that signed kube-apiserver's serving certificate.
    pub ca_cert: PathBuf,
    /// Process id of `tests/cluster/up` (SIGUSR1 restarts kube-apiserver).
    up_pid: u32,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
/// How and when `up` ended, if it ended while the tests still ran (it should not).
static UP_ENDED: OnceLock<String> = OnceLock::new();
/// Set by [`cluster_with_real_node`] before the first start.
static WITH_REAL_NODE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Starts (once per test binary) or returns the shared control plane. Panics when it cannot start.
pub async fn cluster() -> &'static Cluster {
    let extra: &'static [&'static str] = if WITH_REAL_NODE.load(std::sync::atomic::Ordering::SeqCst)
    {
        &["--real-node"]
    } else {
        &[]
    };
    shared(&CLUSTER, extra).await
}

/// The shared control plane with a real node besides the fake ones (`up --real-node`); every test of
/// a binary that uses it calls this first, so [`cluster`] then returns the same control plane. One
/// test binary at a time may use it (cargo runs test binaries one after another): the node's bridge
/// and iptables chains are the machine's.
pub async fn cluster_with_real_node() -> &'static Cluster {
    WITH_REAL_NODE.store(true, std::sync::atomic::Ordering::SeqCst);
    let c = cluster().await;
    assert!(
        c.dir.join("node").is_dir(),
        "the control plane was started without --real-node (call cluster_with_real_node first)"
    );
    c
}

async fn shared(
    cell: &'static OnceLock<Result<Cluster, String>>,
    extra: &'static [&'static str],
) -> &'static Cluster {
    let result = tokio::task::spawn_blocking(move || cell.get_or_init(|| start_shared(extra)))
        .await
        .expect("control-plane start-up task panicked");
    match result {
        Ok(cluster) => cluster,
        Err(e) => panic!("the test Kubernetes control plane did not start:\n{e}"),
    }
}

/// Path of `tests/cluster/up`.
pub fn up_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/up")
}

fn start_timeout() -> Duration {
    let secs = std::env::var("KYB_CLUSTER_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2400);
    Duration::from_secs(secs)
}

fn start_shared(extra: &[&str]) -> Result<Cluster, String> {
    // `up` chooses free ports before its components bind them; if another process takes one in
    // between, that component fails with "address already in use". A new attempt picks new ports.
    const ATTEMPTS: usize = 3;
    let mut attempt = 1;
    loop {
        match start_once(extra) {
            Err(e) if attempt < ATTEMPTS && e.contains("address already in use") => {
                eprintln!(
                    "control plane: a port was taken during start-up (attempt {attempt}); retrying"
                );
                attempt += 1;
            }
            result => return result,
        }
    }
}

fn start_once(extra: &[&str]) -> Result<Cluster, String> {
    let dir = tempfile::Builder::new()
        .prefix("kybctl-k8s-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?
        .keep();
    let keep = std::env::var_os("KYB_CLUSTER_KEEP").is_some_and(|v| v != "0" && !v.is_empty());
    let (tx, rx) = mpsc::channel();
    let thread_dir = dir.clone();
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    // The thread that spawns `up` must outlive every test: PR_SET_PDEATHSIG fires when the spawning
    // THREAD exits, and each test runs on a thread of its own. This one lives until the process exits.
    std::thread::Builder::new()
        .name("kyb-control-plane".into())
        .spawn(move || {
            let mut args = vec!["--parent-pid".to_string(), std::process::id().to_string()];
            if !keep {
                args.push("--rm".into());
            }
            args.extend(extra);
            match UpProcess::spawn(&thread_dir, &args) {
                Ok(mut up) => {
                    let pid = up.child.id();
                    let ready = up.wait_ready(start_timeout()).map(|kc| (kc, pid));
                    let failed = ready.is_err();
                    let _ = tx.send(ready);
                    if failed {
                        let _ = up.child.kill();
                        let _ = up.child.wait();
                        return;
                    }
                    install_panic_report();
                    // Keep reading its stdout and reap it if it ever ends (it should not before exit).
                    let status = up.drain_and_wait();
                    let _ = UP_ENDED.set(format!(
                        "tests/cluster/up ended ({status}) while the tests ran\n{}",
                        up.log_tail(120)
                    ));
                    // Stay alive so that the parent-death signal only fires when the process exits.
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
        .map_err(|e| format!("cannot spawn the control-plane thread: {e}"))?;
    let (kubeconfig, up_pid) = rx
        .recv()
        .map_err(|_| "control-plane thread died".to_string())??;
    let (server, ca_cert) = (read_server(&kubeconfig)?, dir.join("pki/ca.crt"));
    Ok(Cluster {
        dir,
        kubeconfig,
        server,
        ca_cert,
        up_pid,
    })
}

/// Adds, to every panic of this test binary after the control plane ended under it, `up`'s own log:
/// why it stopped (a component that exited, with that component's log tail). Without it a test only
/// sees "connection refused" from whichever call came next.
fn install_panic_report() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        // The drain thread records the end once `up` is reaped; it may be a moment behind the
        // failed call that panicked.
        let deadline = Instant::now() + Duration::from_secs(5);
        while UP_ENDED.get().is_none() && Instant::now() < deadline && !up_is_alive() {
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(ended) = UP_ENDED.get() {
            eprintln!("the test control plane is gone: {ended}");
        }
    }));
}

/// Whether `up` still runs (it is this process's child until reaped: a zombie counts as ended).
fn up_is_alive() -> bool {
    let Some(Ok(c)) = CLUSTER.get() else {
        return false;
    };
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", c.up_pid)).unwrap_or_default();
    // Field 3, after the parenthesised command name, is the state; Z is a zombie.
    stat.rsplit_once(") ")
        .is_some_and(|(_, rest)| !rest.starts_with('Z'))
}

/// Reads the apiserver URL out of a kubeconfig that `up` wrote.
fn read_server(kubeconfig: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(kubeconfig)
        .map_err(|e| format!("{}: {e}", kubeconfig.display()))?;
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("server:")
                .map(|s| s.trim().to_string())
        })
        .ok_or_else(|| format!("no server in {}", kubeconfig.display()))
}

/// A running `tests/cluster/up DIR` process (used for the shared control plane and by tests that need
/// a control plane of their own, e.g. to check that stopping it leaves nothing behind).
pub struct UpProcess {
    pub dir: PathBuf,
    pub child: Child,
    lines: Option<mpsc::Receiver<String>>,
}

impl UpProcess {
    /// Spawns `up DIR ARGS...` with stdout piped (for the KUBECONFIG= line) and stderr in DIR/up.log.
    /// The child gets SIGTERM when the spawning thread exits (PR_SET_PDEATHSIG).
    pub fn spawn(dir: &Path, args: &[String]) -> Result<UpProcess, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let log = std::fs::File::create(dir.join("up.log")).map_err(|e| format!("up.log: {e}"))?;
        let mut cmd = Command::new(up_script());
        cmd.arg(dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        // SAFETY: only async-signal-safe calls (prctl, getppid, kill) between fork and exec.
        unsafe {
            let parent = libc::getpid();
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGTERM as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    libc::kill(libc::getpid(), libc::SIGTERM);
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", up_script().display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(UpProcess {
            dir: dir.to_path_buf(),
            child,
            lines: Some(rx),
        })
    }

    /// Waits for the `KUBECONFIG=...` line; on failure returns the tail of `up`'s log.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<PathBuf, String> {
        let start = Instant::now();
        let rx = self.lines.as_ref().expect("wait_ready called twice");
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            match rx.recv_timeout(left.min(Duration::from_secs(1))) {
                Ok(line) => {
                    if let Some(path) = line.strip_prefix("KUBECONFIG=") {
                        return Ok(PathBuf::from(path.trim()));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if start.elapsed() >= timeout {
                        return Err(format!(
                            "tests/cluster/up did not get ready within {timeout:?}\n{}",
                            self.log_tail(80)
                        ));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                    return Err(format!(
                        "tests/cluster/up exited ({status}) before it was ready\n{}",
                        self.log_tail(80)
                    ));
                }
            }
        }
    }

    /// Reads stdout until `up` closes it, then reaps `up`; says how it ended.
    fn drain_and_wait(&mut self) -> String {
        if let Some(rx) = self.lines.take() {
            for _ in rx {}
        }
        match self.child.wait() {
            Ok(status) => status.to_string(),
            Err(e) => format!("cannot wait for it: {e}"),
        }
    }

    /// The last `n` lines of `up`'s own log (which includes the failing component's log tail).
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("up.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(n);
        format!(
            "---- {} (last {n} lines) ----\n{}",
            self.dir.join("up.log").display(),
            lines[from..].join("\n")
        )
    }

    /// Sends SIGTERM to `up` (which then stops every component it started) and waits for it.
    pub fn stop(&mut self, timeout: Duration) -> Result<std::process::ExitStatus, String> {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status);
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                return Err(format!(
                    "up did not stop within {timeout:?}\n{}",
                    self.log_tail(40)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `name pid` lines of DIR/pids: every process `up` started.
    pub fn pids(&self) -> Vec<(String, i32)> {
        read_pairs(&self.dir.join("pids"))
    }

    /// `name port` lines of DIR/ports: every loopback port `up` handed to a component.
    pub fn ports(&self) -> Vec<(String, u16)> {
        read_pairs(&self.dir.join("ports"))
    }
}

fn read_pairs<T: std::str::FromStr>(path: &Path) -> Vec<(String, T)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Polls `f` every 250 ms until it is true; panics naming `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

static NAMESPACE_SEQ: AtomicU64 = AtomicU64::new(0);

impl Cluster {
    /// Restarts kube-apiserver (same port, certificates and etcd) and returns once it is ready again.
    /// Every client of the control plane sees its connections and watches drop. Only for a test binary
    /// whose tests can all stand that (the control plane is shared by the binary).
    pub fn restart_apiserver(&self) {
        let log = self.dir.join("up.log");
        let restarts = || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches("kube-apiserver restarted")
                .count()
        };
        let before = restarts();
        // SAFETY: plain kill(2) to our own child process.
        assert_eq!(
            unsafe { libc::kill(self.up_pid as i32, libc::SIGUSR1) },
            0,
            "cannot signal tests/cluster/up"
        );
        let deadline = Instant::now() + Duration::from_secs(150);
        while restarts() == before {
            assert!(
                Instant::now() < deadline,
                "kube-apiserver did not come back within 150 s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A kube client authenticated as the cluster admin.
    pub async fn client(&self) -> kube::Client {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// A kube client authenticated only with `token` (e.g. from `kubectl create token`).
    pub async fn client_with_token(&self, token: &str) -> kube::Client {
        client_from_kubeconfig(&self.kubeconfig_for_token(token)).await
    }

    /// Writes a kubeconfig that authenticates with `token` alone (no client certificate: a request
    /// carrying both would be authenticated by the certificate) and returns its path.
    pub fn kubeconfig_for_token(&self, token: &str) -> PathBuf {
        let seq = NAMESPACE_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("token-{}-{seq}.kubeconfig", std::process::id()));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kybctl-test\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
             users:\n- name: token\n  user:\n    token: {}\ncontexts:\n- name: token\n  context:\n    cluster: kybctl-test\n    user: token\n\
             current-context: token\n",
            self.server,
            self.ca_cert.display(),
            token.trim()
        );
        std::fs::write(&path, text).expect("write token kubeconfig");
        path
    }

    /// `kubectl --kubeconfig=<admin kubeconfig>`; add arguments and run it.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()));
        cmd
    }

    /// `kubectl` authenticated only with `token`.
    pub fn kubectl_with_token(&self, token: &str) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg(format!(
            "--kubeconfig={}",
            self.kubeconfig_for_token(token).display()
        ));
        cmd
    }

    /// Creates a namespace with a unique name starting with `prefix` and waits until its `default`
    /// ServiceAccount exists (pods cannot be admitted before). Returns its name.
    pub async fn namespace(&self, prefix: &str) -> String {
        use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
        use kube::api::{Api, PostParams};

        let seq = NAMESPACE_SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let prefix: String = prefix
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        let name = format!(
            "{}-{seq}-{:x}",
            prefix.trim_matches('-'),
            nanos ^ std::process::id()
        );
        let client = self.client().await;
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "kybctl.test/namespace": "true" } }
        }))
        .expect("namespace object");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        let sas: Api<ServiceAccount> = Api::namespaced(client, &name);
        let deadline = Instant::now() + Duration::from_secs(60);
        while sas.get_opt("default").await.ok().flatten().is_none() {
            assert!(
                Instant::now() < deadline,
                "no default ServiceAccount in namespace {name} after 60s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        name
    }
}

/// A TCP relay to the apiserver that can be cut like a network partition: open connections are
/// dropped and new ones are accepted and held without a byte relayed, so calls hang rather than fail.
pub struct Relay {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    pub async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            std::sync::Arc::default();
        let (c, o) = (cut.clone(), open.clone());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(std::sync::atomic::Ordering::SeqCst) {
                    held.push(inbound);
                    continue;
                }
                o.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                }));
            }
        });
        Self { port, cut, open }
    }

    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for task in self.open.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Cluster {
    /// A cluster-admin client whose every request goes through `relay`.
    pub async fn client_through(&self, relay: &Relay) -> kube::Client {
        kybctl::tls::ensure_crypto_provider();
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let mut config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        config.cluster_url = format!("https://127.0.0.1:{}", relay.port).parse().unwrap();
        kube::Client::try_from(config).expect("kube client")
    }

    /// The apiserver's address.
    pub fn apiserver_addr(&self) -> std::net::SocketAddr {
        let url: url::Url = self.server.parse().unwrap();
        let host = url.host_str().unwrap();
        format!("{host}:{}", url.port().unwrap()).parse().unwrap()
    }
}

async fn client_from_kubeconfig(path: &Path) -> kube::Client {
    // Two rustls providers are compiled in (goose brings aws-lc-rs): pick ring, as kybctl's main does.
    kybctl::tls::ensure_crypto_provider();
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("read kubeconfig {}: {e}", path.display()));
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", path.display()));
    kube::Client::try_from(config).expect("kube client")
}

/// Runs a command, returning (success, stdout, stderr); panics if it cannot be run at all.
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a command with `stdin` as its standard input, returning (success, stdout, stderr).
pub fn run_with_stdin(cmd: &mut Command, stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until the CustomResourceDefinitions `crds` (`crd/NAME`) are Established. `kubectl wait` fails
/// at once, rather than waiting, on a CRD created so recently that it has no `status.conditions` yet
/// (".status.conditions accessor error: <nil>"); that answer is asked again until 60 s have passed.
pub fn wait_established(c: &Cluster, crds: &[String]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let mut cmd = c.kubectl();
        cmd.args(["wait", "--for=condition=Established", "--timeout=60s"])
            .args(crds);
        let (ok, stdout, stderr) = run(&mut cmd);
        if ok {
            return;
        }
        assert!(
            stderr.contains("accessor error") && std::time::Instant::now() < deadline,
            "{cmd:?} failed\nstdout: {stdout}\nstderr: {stderr}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Runs a command and panics with its output unless it succeeds; returns stdout.
pub fn check(cmd: &mut Command) -> String {
    let (ok, stdout, stderr) = run(cmd);
    assert!(ok, "{cmd:?} failed\nstdout: {stdout}\nstderr: {stderr}");
    stdout
}

/// [`check`] with standard input.
pub fn check_with_stdin(cmd: &mut Command, stdin: &str) -> String {
    let (ok, stdout, stderr) = run_with_stdin(cmd, stdin);
    assert!(ok, "{cmd:?} failed\nstdout: {stdout}\nstderr: {stderr}");
    stdout
}
