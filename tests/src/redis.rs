//! A throwaway `redis-server` on a free loopback port, without persistence;
//! optionally TLS-only with an ACL user ([`RedisServer::start_tls`]), as
//! managed Redis services run, or durable with an append-only file
//! ([`RedisServer::start_with_aof`]), as production Redis runs.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tempfile::TempDir;

use crate::certs::TestCerts;
use crate::logfile::tail;
use crate::ports::free_port;
use crate::watchdog::Watchdog;

/// How long a start may take before it counts as failed.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How often `PING` is tried while waiting.
const POLL: Duration = Duration::from_millis(20);

/// A Redis 7 server owned by the test process: `--save "" --appendonly no`,
/// so a restart loses every key (that is the point of restart tests);
/// or, started with [`start_with_aof`](Self::start_with_aof), with an
/// append-only file fsynced on every write, so a restart (even a SIGKILL)
/// keeps every acknowledged write.
///
/// Dropping it kills the server and removes its dir; a watchdog does the
/// same if the test process dies first (see `watchdog.rs`).
pub struct RedisServer {
    /// The port, kept across restarts.
    port: u16,
    /// The running server; `None` when stopped.
    server: Mutex<Option<Child>>,
    /// Kills the last started server (its pid is written to the watchdog)
    /// and removes `dir` if this process dies. Declared before `dir`.
    watchdog: Mutex<Watchdog>,
    /// TLS-only with an ACL user, when started by [`RedisServer::start_tls`].
    tls: Option<TlsAcl>,
    /// `--appendonly yes --appendfsync always` (see [`RedisServer::start_with_aof`]).
    aof: bool,
    /// The server's working dir and `redis.log`.
    dir: TempDir,
}

/// What a [`RedisServer::start_tls`] server requires of its clients.
#[derive(Debug, Clone)]
struct TlsAcl {
    certs: TestCerts,
    user: String,
    password: String,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(None, false)
    }

    /// Starts a server with an append-only file in its dir (kept across
    /// [`restart`](Self::restart)s) and `appendfsync always`: every write
    /// Redis acknowledged is on disk before the reply, so it survives a
    /// SIGKILL and the restarted server loads it before it answers `PING`.
    pub fn start_with_aof() -> anyhow::Result<Self> {
        Self::start_with(None, true)
    }

    /// Starts a TLS-only server (`--port 0 --tls-port P`, no client
    /// certificates) presenting a certificate for `localhost`/`127.0.0.1`
    /// signed by a CA generated for it ([`ca_path`](Self::ca_path)), whose
    /// only user is the ACL user `user` with `password` (`default` is off).
    /// [`url`](Self::url) is then `rediss://user:password@127.0.0.1:P`.
    pub fn start_tls(user: &str, password: &str) -> anyhow::Result<Self> {
        Self::start_with(Some((user, password)), false)
    }

    fn start_with(tls: Option<(&str, &str)>, aof: bool) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("realtime-redis-")
            .tempdir()
            .context("creating the Redis temp dir")?;
        let watchdog = Watchdog::spawn(
            r#"if [ -n "$last" ]; then kill -KILL "$last" 2>/dev/null; fi; rm -rf "$1""#,
            [dir.path()],
        )?;
        let tls = match tls {
            Some((user, password)) => Some(TlsAcl {
                certs: TestCerts::generate(dir.path(), "redis")?,
                user: user.to_owned(),
                password: password.to_owned(),
            }),
            None => None,
        };
        let mut server = Self {
            port: 0,
            server: Mutex::new(None),
            watchdog: Mutex::new(watchdog),
            tls,
            aof,
            dir,
        };
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

    /// `redis://127.0.0.1:PORT`, or for a TLS server
    /// `rediss://USER:PASSWORD@127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        match &self.tls {
            Some(tls) => self.tls_url(&tls.user, &tls.password),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// `rediss://USER:PASSWORD@127.0.0.1:PORT` with any credentials (to
    /// try wrong ones).
    pub fn tls_url(&self, user: &str, password: &str) -> String {
        format!("rediss://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// The PEM CA certificate a TLS server's certificate chains to.
    pub fn ca_path(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|tls| tls.certs.ca.clone())
    }

    /// The server log (every run, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Kills the server (SIGKILL: clients see their connections reset) and
    /// reaps it. Idempotent.
    pub fn stop(&self) -> anyhow::Result<()> {
        let mut guard = self.lock();
        if let Some(mut child) = guard.take() {
            let _ = child.kill();
            child.wait().context("reaping redis-server")?;
        }
        self.watchdog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set("");
        Ok(())
    }

    /// Starts the stopped server again on the same port (empty, unless
    /// durable). A no-op when it is running.
    pub fn start_again(&self) -> anyhow::Result<()> {
        if self.lock().is_some() {
            return Ok(());
        }
        self.launch()
    }

    /// [`stop`](Self::stop), then [`start_again`](Self::start_again): same
    /// port, no data (unless durable: then every acknowledged write), ready
    /// when this returns.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.stop()?;
        self.launch()
    }

    fn lock(&self) -> MutexGuard<'_, Option<Child>> {
        self.server
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn launch(&self) -> anyhow::Result<()> {
        let mut guard = self.lock();
        if guard.is_some() {
            bail!("Redis on port {} is already running", self.port);
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening the Redis log")?;
        let ready_before = ready_lines(&self.log_path());
        let mut command = Command::new("redis-server");
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some(tls) => command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(&tls.certs.server_cert)
                .arg("--tls-key-file")
                .arg(&tls.certs.server_key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.certs.ca)
                .args(["--tls-auth-clients", "no"])
                .args(["--user", "default", "off"])
                .args(["--user", &tls.user, "on"])
                .arg(format!(">{}", tls.password))
                .args(["~*", "&*", "+@all"]),
        };
        let persistence: &[&str] = if self.aof {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let mut child = command
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(persistence)
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log handle")?)
            .stderr(log)
            .spawn()
            .context("spawning redis-server (is redis-server installed?)")?;
        self.watchdog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(&child.id().to_string());
        let started = Instant::now();
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Some(status) = child.try_wait().context("waiting for redis-server")? {
                self.watchdog
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .set("");
                bail!(
                    "redis-server on port {} exited during start-up ({status}); log tail:\n{}",
                    self.port,
                    tail(&self.log_path(), 20)
                );
            }
            let ready = match self.tls {
                None => ping(addr),
                // No plain port to PING: the log says when it listens.
                Some(_) => ready_lines(&self.log_path()) > ready_before,
            };
            if ready {
                *guard = Some(child);
                return Ok(());
            }
            if started.elapsed() > READY_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "redis-server on port {} not answering PING after {:?}; log tail:\n{}",
                    self.port,
                    started.elapsed(),
                    tail(&self.log_path(), 20)
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Then the watchdog field removes the dir.
        let _ = self.stop();
    }
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// How many times the log says the server is ready (it is appended to
/// across restarts).
fn ready_lines(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .map(|text| text.matches("Ready to accept connections").count())
        .unwrap_or(0)
}

/// Whether a Redis server at `addr` answers `PING` with `+PONG` (plain RESP
/// over a blocking socket, so it works outside any async runtime).
fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && reply == *b"+PONG\r\n"
}
