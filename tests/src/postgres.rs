//! A throwaway PostgreSQL server: `initdb` into a temp dir, `postgres` on a
//! free loopback port with logical replication enabled.
//!
//! Running as root (CI, containers): `initdb`, `postgres` and `pg_ctl` refuse
//! to run as root, so the data dir is chowned to the `postgres` user and every
//! server command goes through `runuser -u postgres --`. The postmaster is then
//! a child of `runuser`, and killing `runuser` would orphan it: the server is
//! always stopped with `pg_ctl stop`, which signals the postmaster itself.
//!
//! [`PostgresServer::start_tls`] starts one with `ssl=on` and a server
//! certificate signed by a [`TestCa`] generated at test time (optionally
//! refusing plaintext TCP with a `hostssl`-only `pg_hba.conf`); the shared
//! servers stay plaintext-capable as before.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tempfile::TempDir;

use crate::logfile::tail;
use crate::ports::free_port;
use crate::watchdog::Watchdog;

/// The superuser's name and password in every test cluster.
pub const USER: &str = "postgres";
/// See [`USER`].
pub const PASSWORD: &str = "postgres";

/// How long a start or restart may take before it counts as failed.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How often readiness is probed while waiting.
const POLL: Duration = Duration::from_millis(50);
/// Lines of the server log quoted in error messages.
const LOG_TAIL_LINES: usize = 40;

/// A PostgreSQL 15+ server owned by the test process.
///
/// Every method that changes the server's state takes `&self`, so a server
/// can be shared by reference between a test and the tasks it spawns.
/// Dropping it stops the server (immediate mode) and removes its files; a
/// watchdog does the same if the test process dies first (see `watchdog.rs`).
pub struct PostgresServer {
    /// The port, kept across restarts so URLs handed out stay valid.
    port: u16,
    /// Where `initdb`, `postgres`, `pg_ctl` and `pg_isready` are.
    bin: PathBuf,
    /// The running postmaster, or `runuser` wrapping it; `None` when stopped.
    postmaster: Mutex<Option<Child>>,
    /// `ca.pem` of the test CA that signed the server certificate, for
    /// servers started with [`Self::start_tls`].
    ca_pem: Option<PathBuf>,
    /// Stops the server and removes `root` if this process dies. Declared
    /// before `root` so it runs before the temp dir is dropped.
    _watchdog: Watchdog,
    /// `data/` (the cluster), `postgres.log`, `pwfile` and the Unix socket.
    root: TempDir,
}

impl PostgresServer {
    /// Creates a fresh cluster and starts it on a free port, waiting until it
    /// accepts connections. The error of a failed start quotes the log tail.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(None)
    }

    /// Like [`Self::start`], with `ssl=on` and a certificate for
    /// `options.names` signed by a fresh [`TestCa`] (see [`Self::ca_pem`]).
    pub fn start_tls(options: TlsOptions) -> anyhow::Result<Self> {
        Self::start_with(Some(options))
    }

    fn start_with(tls: Option<TlsOptions>) -> anyhow::Result<Self> {
        let bin = bindir()?.to_path_buf();
        let root = tempfile::Builder::new()
            .prefix("realtime-pg-")
            .tempdir()
            .context("creating the Postgres temp dir")?;
        init_cluster(&bin, root.path())?;
        let ca_pem = match tls {
            Some(options) => Some(configure_tls(root.path(), &options)?),
            None => None,
        };
        let watchdog = Watchdog::spawn(
            &format!(
                r#"{} "$1/pg_ctl" stop -D "$2" -m immediate -w -t 30; rm -rf "$3""#,
                as_postgres_prefix()
            ),
            [
                bin.as_os_str(),
                root.path().join("data").as_os_str(),
                root.path().as_os_str(),
            ],
        )?;
        let mut server = Self {
            port: 0,
            bin,
            postmaster: Mutex::new(None),
            ca_pem,
            _watchdog: watchdog,
            root,
        };
        // Another process may grab the free port before the server binds it:
        // try a few ports before giving up.
        let mut attempts = 0;
        loop {
            server.port = free_port();
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(e) if attempts < 3 && format!("{e:#}").contains("Address already in use") => {
                    attempts += 1
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres:postgres@127.0.0.1:PORT/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{db}", self.port)
    }

    /// The PEM file of the CA that signed the server certificate (servers
    /// started with [`Self::start_tls`]; `None` otherwise).
    pub fn ca_pem(&self) -> Option<&Path> {
        self.ca_pem.as_deref()
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// The server log (stderr of every run of the postmaster, appended).
    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("postgres.log")
    }

    /// The last lines of the server log.
    pub fn log_tail(&self) -> String {
        tail(&self.log_path(), LOG_TAIL_LINES)
    }

    /// Whether the postmaster is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        let mut guard = self.lock();
        match guard.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                // It exited by itself: reap it.
                *guard = None;
                false
            }
            None => false,
        }
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`): connections are
    /// cut, no shutdown checkpoint. Idempotent.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.shutdown("immediate")
    }

    /// A crash, as Postgres and its clients see one: every process of the
    /// server ends at once without a checkpoint, and the next start runs
    /// crash recovery. Unlike a SIGKILL of the postmaster it leaves no
    /// orphaned backend holding the shared memory, so a later
    /// [`start_again`](Self::start_again) is deterministic.
    pub fn kill(&self) -> anyhow::Result<()> {
        self.shutdown("immediate")
    }

    /// Starts the stopped server again on the same port and data dir and
    /// waits until it accepts connections. A no-op when it is running.
    pub fn start_again(&self) -> anyhow::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        self.launch()
    }

    /// A clean restart: fast shutdown (sessions end, a shutdown checkpoint is
    /// written, walsenders flush), then [`start_again`](Self::start_again).
    pub fn restart(&self) -> anyhow::Result<()> {
        self.shutdown("fast")?;
        self.launch()
    }

    /// [`kill`](Self::kill), then [`start_again`](Self::start_again): the
    /// server comes back through crash recovery.
    pub fn crash_restart(&self) -> anyhow::Result<()> {
        self.kill()?;
        self.launch()
    }

    fn lock(&self) -> MutexGuard<'_, Option<Child>> {
        self.postmaster
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Spawns the postmaster on `self.port` and waits until it is ready.
    fn launch(&self) -> anyhow::Result<()> {
        let mut guard = self.lock();
        if guard.is_some() {
            bail!("Postgres on port {} is already running", self.port);
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening the Postgres log")?;
        let mut child = as_postgres(&self.bin.join("postgres"))
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.root.path())
            .args(SERVER_SETTINGS.iter().flat_map(|setting| ["-c", setting]))
            .current_dir(self.root.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log handle")?)
            .stderr(log)
            .spawn()
            .context("spawning postgres")?;
        match self.wait_ready(&mut child) {
            Ok(()) => {
                *guard = Some(child);
                Ok(())
            }
            Err(e) => {
                // Do not leave a half-started server behind.
                if matches!(child.try_wait(), Ok(None)) {
                    let _ = self.pg_ctl_stop("immediate");
                    let _ = wait_with_deadline(&mut child, Duration::from_secs(10));
                    let _ = child.kill();
                }
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// Polls `pg_isready` until the server accepts connections (recovery
    /// done), the postmaster exits, or the deadline passes.
    fn wait_ready(&self, child: &mut Child) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().context("waiting for postgres")? {
                bail!(
                    "postgres on port {} exited during start-up ({status}); log tail:\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    USER,
                    "-d",
                    "postgres",
                    "-t",
                    "2",
                    "-p",
                ])
                .arg(self.port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .context("running pg_isready")?;
            if ready.success() {
                return Ok(());
            }
            if started.elapsed() > READY_DEADLINE {
                bail!(
                    "postgres on port {} not ready after {:?}; log tail:\n{}",
                    self.port,
                    started.elapsed(),
                    self.log_tail()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Stops the postmaster with `mode` (falling back to immediate, then to
    /// SIGKILL of the child) and reaps it.
    fn shutdown(&self, mode: &str) -> anyhow::Result<()> {
        let mut guard = self.lock();
        let Some(mut child) = guard.take() else {
            return Ok(());
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return Ok(());
        }
        let mut stopped = self.pg_ctl_stop(mode);
        if stopped.is_err() && mode != "immediate" {
            stopped = self.pg_ctl_stop("immediate");
        }
        if wait_with_deadline(&mut child, Duration::from_secs(30)).is_none() {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "postgres on port {} did not stop; log tail:\n{}",
                self.port,
                self.log_tail()
            );
        }
        stopped
    }

    fn pg_ctl_stop(&self, mode: &str) -> anyhow::Result<()> {
        let output = as_postgres(&self.bin.join("pg_ctl"))
            .args(["stop", "-w", "-t", "30", "-m", mode, "-D"])
            .arg(self.data_dir())
            .current_dir(self.root.path())
            .stdin(Stdio::null())
            .output()
            .context("running pg_ctl stop")?;
        check(&output, "pg_ctl stop")
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // Then the watchdog field runs its (now redundant) stop and removes
        // the files.
        let _ = self.stop();
    }
}

impl std::fmt::Debug for PostgresServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresServer")
            .field("port", &self.port)
            .field("root", &self.root.path())
            .finish_non_exhaustive()
    }
}

/// `-c` settings of every test server: logical replication with room for
/// many parallel tests, walsenders of vanished clients reaped quickly, and
/// no fsync (a test cluster never has to survive a machine crash).
///
/// `synchronous_commit` stays `on` on purpose. With `fsync=off` it costs one
/// write(2) per commit, and turning it off would break two things the tests
/// rely on: a commit's WAL would sit in shared memory for up to 3 ×
/// `wal_writer_delay`, so [`PostgresServer::kill`] (immediate shutdown)
/// could lose acknowledged commits and crash tests would report losses that
/// a real server never has; and logical decoding only sends flushed WAL, so
/// every event would be delayed by up to that much.
const SERVER_SETTINGS: &[&str] = &[
    "listen_addresses=127.0.0.1",
    "wal_level=logical",
    "max_wal_senders=20",
    "max_replication_slots=20",
    "fsync=off",
    "synchronous_commit=on",
    "full_page_writes=off",
    "wal_sender_timeout=10s",
    "max_connections=200",
];

/// How [`PostgresServer::start_tls`] sets TLS up.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// The server certificate's subject alternative names: DNS names, or IP
    /// addresses written as such (`"127.0.0.1"`).
    pub names: Vec<String>,
    /// Replace `pg_hba.conf` so TCP clients must use TLS (`hostssl` lines
    /// only; Unix-socket `local` stays, for `pg_ctl`).
    pub hostssl_only: bool,
}

/// A certificate authority generated at test time (ECDSA P-256, rcgen).
pub struct TestCa {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    pem: String,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn generate(name: &str) -> anyhow::Result<Self> {
        let key = rcgen::KeyPair::generate().context("generating the CA key")?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params
            .self_signed(&key)
            .context("self-signing the CA")?
            .pem();
        Ok(Self { params, key, pem })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A server certificate for `names` and its private key, both PEM.
    pub fn issue(&self, names: &[String]) -> anyhow::Result<(String, String)> {
        let key = rcgen::KeyPair::generate().context("generating the server key")?;
        let mut params = rcgen::CertificateParams::new(names.to_vec())?;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().map_or("server", |n| n),
        );
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .context("signing the server certificate")?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Writes a server certificate signed by a new [`TestCa`] into the data dir
/// (key mode 0600, owned by `postgres` when we are root, as Postgres
/// demands), turns `ssl` on, optionally makes `pg_hba.conf` `hostssl`-only,
/// and returns the path of the CA's PEM.
fn configure_tls(root: &Path, options: &TlsOptions) -> anyhow::Result<PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;

    let ca = TestCa::generate("realtime test CA")?;
    let (cert, key) = ca.issue(&options.names)?;
    let data = root.join("data");
    let ca_path = root.join("ca.pem");
    fs::write(&ca_path, ca.pem()).context("writing ca.pem")?;
    fs::write(data.join("server.crt"), cert).context("writing server.crt")?;
    let key_path = data.join("server.key");
    fs::write(&key_path, key).context("writing server.key")?;
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600))
        .context("chmod 0600 server.key")?;
    if is_root() {
        let output = Command::new("chown")
            .arg("postgres:")
            .arg(data.join("server.crt"))
            .arg(&key_path)
            .output()
            .context("running chown")?;
        check(&output, "chown postgres: server.crt server.key")?;
    }
    let mut conf = OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .context("opening postgresql.conf")?;
    writeln!(
        conf,
        "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'"
    )
    .context("writing postgresql.conf")?;
    if options.hostssl_only {
        // fs::write truncates in place: the file keeps its owner.
        fs::write(
            data.join("pg_hba.conf"),
            "local all all scram-sha-256\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\n\
             hostssl replication all 127.0.0.1/32 scram-sha-256\n",
        )
        .context("writing pg_hba.conf")?;
    }
    Ok(ca_path)
}

/// `initdb` into `<root>/data` with SCRAM auth for `postgres`/`postgres`.
fn init_cluster(bin: &Path, root: &Path) -> anyhow::Result<()> {
    let pwfile = root.join("pwfile");
    fs::write(&pwfile, format!("{PASSWORD}\n")).context("writing the password file")?;
    if is_root() {
        let output = Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(root)
            .output()
            .context("running chown (is there a `postgres` user?)")?;
        check(&output, "chown -R postgres:")?;
    }
    let output = as_postgres(&bin.join("initdb"))
        .arg("-D")
        .arg(root.join("data"))
        .args([
            "-U",
            USER,
            "--auth=scram-sha-256",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .context("running initdb")?;
    check(&output, "initdb")
}

/// The directory of the PostgreSQL server binaries: `$REALTIME_TEST_PG_BINDIR`,
/// else `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
pub fn bindir() -> anyhow::Result<&'static Path> {
    static BINDIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    let found = BINDIR.get_or_init(|| {
        let has_initdb = |dir: &PathBuf| dir.join("initdb").is_file();
        let from_env = std::env::var_os("REALTIME_TEST_PG_BINDIR").map(PathBuf::from);
        let from_pg_config = || {
            let output = Command::new("pg_config").arg("--bindir").output().ok()?;
            output
                .status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
        };
        let from_debian = || {
            let mut dirs: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
                .ok()?
                .filter_map(|entry| {
                    let entry = entry.ok()?;
                    let version = entry.file_name().to_str()?.parse().ok()?;
                    Some((version, entry.path().join("bin")))
                })
                .collect();
            dirs.sort();
            dirs.into_iter().map(|(_, dir)| dir).rev().find(has_initdb)
        };
        from_env
            .filter(has_initdb)
            .or_else(|| from_pg_config().filter(has_initdb))
            .or_else(from_debian)
    });
    found.as_deref().context(
        "PostgreSQL server binaries not found: install postgresql (initdb, postgres, pg_ctl) \
         or set REALTIME_TEST_PG_BINDIR",
    )
}

/// Whether this process runs as root (effective uid 0), read from
/// `/proc/self/status` (no unsafe `geteuid`), else from `id -u`.
pub(crate) fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        let from_proc = fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let uids = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
                uids.split_whitespace().nth(1).map(|euid| euid == "0")
            });
        from_proc.unwrap_or_else(|| {
            Command::new("id")
                .arg("-u")
                .output()
                .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        })
    })
}

/// `runuser -u postgres --` when running as root, else nothing: the shell
/// form of [`as_postgres`].
fn as_postgres_prefix() -> &'static str {
    if is_root() {
        "runuser -u postgres --"
    } else {
        ""
    }
}

/// A command running `program` as the `postgres` user when we are root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// `Ok` when `output` succeeded, else an error quoting its output.
fn check(output: &Output, what: &str) -> anyhow::Result<()> {
    if output.status.success() {
        return Ok(());
    }
    bail!(
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Waits for `child` to exit, up to `deadline`.
fn wait_with_deadline(child: &mut Child, deadline: Duration) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if started.elapsed() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => return None,
        }
    }
}
