//! Running the workspace's real binaries as child processes.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::logfile::{read_lossy, tail};
use crate::wait::wait_until;
use crate::watchdog::Watchdog;

/// Variables of the test's own environment that never reach a child: a
/// developer's shell may have them set for a local cluster, and a child
/// must see only what its test gives it. Public for tests that run other
/// commands (scripts) with the same hygiene.
pub fn is_scrubbed(key: &str) -> bool {
    key.starts_with("REALTIME_")
        || key.starts_with("OTEL_")
        || key.starts_with("AUTH_SECRET")
        || matches!(
            key,
            "DATABASE_URL" | "REDIS_URL" | "NEXTAUTH_SECRET" | "LOG_FORMAT"
        )
}

/// The path of a workspace binary (`realtime-ingestor`, `realtime-gateway`)
/// built in the same profile as the running test, e.g. `target/debug/<name>`
/// for a test executable at `target/debug/deps/<test>-<hash>`.
///
/// Panics with a hint when it was not built: `cargo test` builds only the
/// binaries of the package under test, so run `cargo build --bins` (or
/// `make test`, which does) first.
pub fn binary_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running test executable");
    let mut dir = exe
        .parent()
        .expect("the test executable's directory")
        .to_path_buf();
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir.pop();
    }
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "binary `{name}` not found at {}: run `cargo build --workspace --bins` first (or use `make test`, which does)",
        path.display()
    );
    path
}

/// A real binary running as a child of the test, its stdout and stderr
/// captured together in a file. Dropping it kills the process (SIGKILL); a
/// watchdog kills it too if the test process dies first.
pub struct ChildProcess {
    /// The program's file name, for messages.
    name: String,
    child: Child,
    /// The exit status, once the child has been reaped.
    status: Option<ExitStatus>,
    /// Kills the child and removes `dir` if this process dies first.
    /// Declared before `dir`.
    watchdog: Watchdog,
    /// Holds `output.log`.
    dir: TempDir,
}

impl ChildProcess {
    /// Starts `program` with the test environment minus the project's own
    /// settings (`DATABASE_URL`, `REALTIME_*`…), plus `NO_COLOR=1`, plus `env`.
    /// Panics when it cannot be started.
    pub fn spawn<V: AsRef<OsStr>>(program: &Path, env: &[(&str, V)]) -> Self {
        Self::spawn_with_args(program, &[] as &[&str], env)
    }

    /// [`spawn`](Self::spawn) with command-line arguments.
    pub fn spawn_with_args<A, V>(program: &Path, args: &[A], env: &[(&str, V)]) -> Self
    where
        A: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let name = program.file_name().map_or_else(
            || program.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("realtime-{name}-"))
            .tempdir()
            .expect("creating a temp dir for the child's output");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("output.log"))
            .expect("creating the child's output file");
        // The watchdog first: a child must never run without one.
        let mut watchdog = Watchdog::spawn(
            r#"if [ -n "$last" ]; then kill -KILL "$last" 2>/dev/null; fi; rm -rf "$1""#,
            [dir.path()],
        )
        .expect("starting the child's watchdog");
        let mut command = Command::new(program);
        command.args(args);
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(is_scrubbed) {
                command.env_remove(key);
            }
        }
        command.env("NO_COLOR", "1");
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating the output handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        watchdog.set(&child.id().to_string());
        Self {
            name,
            child,
            status: None,
            watchdog,
            dir,
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file holding the child's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("output.log")
    }

    /// Everything the child wrote so far (stdout and stderr interleaved).
    pub fn output_text(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// The exit status if the child has exited, without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
            if self.status.is_some() {
                self.watchdog.set("");
            }
        }
        self.status
    }

    /// Kills the child with SIGKILL (a crash: no shutdown code runs) and
    /// reaps it.
    pub fn kill9(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
            self.watchdog.set("");
        }
    }

    /// Sends SIGTERM (graceful shutdown); see [`wait_exit`](Self::wait_exit).
    pub fn terminate(&mut self) {
        if self.try_status().is_none() {
            let sent = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                sent || self.try_status().is_some(),
                "sending SIGTERM to {}",
                self.name
            );
        }
    }

    /// Waits until the child exits and returns its status; kills it and
    /// panics with its output tail if it is still running after `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let started = tokio::time::Instant::now();
        loop {
            if let Some(status) = self.try_status() {
                return status;
            }
            if started.elapsed() >= deadline {
                self.kill9();
                panic!(
                    "{} did not exit within {deadline:?}; output tail:\n{}",
                    self.name,
                    tail(&self.log_path(), 40)
                );
            }
            tokio::time::sleep(crate::wait::POLL_INTERVAL).await;
        }
    }

    /// Waits until a line of the output contains `needle` and returns that
    /// line (ANSI colours removed); panics with the output after `deadline`.
    pub async fn wait_for_line(&self, needle: &str, deadline: Duration) -> String {
        let what = format!("{} prints a line containing {needle:?}", self.name);
        self.wait_for(&what, deadline, |line| {
            line.contains(needle).then(|| line.to_owned())
        })
        .await
    }

    /// Waits until the child logs a `tracing` field `key` (`key=value` in
    /// the text format, `"key":"value"` in JSON) and returns its value.
    pub async fn log_value(&self, key: &str, deadline: Duration) -> String {
        let what = format!("{} logs a `{key}` field", self.name);
        self.wait_for(&what, deadline, |line| {
            field_value(line, key).map(str::to_owned)
        })
        .await
    }

    /// The admin address the binary logged at start-up (`admin=ADDR`),
    /// useful with `REALTIME_ADMIN_LISTEN=127.0.0.1:0`.
    pub async fn admin_addr(&self, deadline: Duration) -> SocketAddr {
        let value = self.log_value("admin", deadline).await;
        value.parse().unwrap_or_else(|e| {
            panic!(
                "{}: `admin` field {value:?} is not an address: {e}",
                self.name
            )
        })
    }

    async fn wait_for<T>(
        &self,
        what: &str,
        deadline: Duration,
        find: impl Fn(&str) -> Option<T>,
    ) -> T {
        let path = self.log_path();
        let found = wait_until(what, deadline, || {
            let text = strip_ansi(&read_lossy(&path));
            let found = text.lines().find_map(&find);
            std::future::ready(found.map(Ok).or_else(|| {
                // Stop waiting early (and report) when the child is gone.
                has_exited(self.pid()).then(|| Err(text.clone()))
            }))
        })
        .await;
        found.unwrap_or_else(|output| {
            panic!("{} exited before {what}; output:\n{output}", self.name)
        })
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

impl std::fmt::Debug for ChildProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildProcess")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Whether process `pid` (our child) has exited: gone, or a zombie not yet
/// reaped (its `/proc/<pid>/stat` state is `Z`).
fn has_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// The value of field `key` in one log line: `key=value` (text format; the
/// value ends at whitespace, quotes removed) or `"key":"value"` (JSON).
fn field_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let json_key = format!("\"{key}\":\"");
    if let Some(start) = line.find(&json_key).map(|i| i + json_key.len()) {
        return line[start..].split('"').next();
    }
    let text_key = format!("{key}=");
    line.match_indices(&text_key)
        .filter(|(i, _)| {
            line[..*i]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '.'))
        })
        .find_map(|(i, _)| {
            let value = line[i + text_key.len()..].split_whitespace().next()?;
            Some(value.trim_matches('"')).filter(|v| !v.is_empty())
        })
}

/// `text` without ANSI escape sequences (`ESC [ … letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.clone().next() == Some('[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{field_value, strip_ansi};

    #[test]
    fn finds_text_and_json_fields() {
        let text = "2026-11-28T03:00:00Z  INFO realtime_ingestor: admin endpoints listening admin=127.0.0.1:4321";
        assert_eq!(field_value(text, "admin"), Some("127.0.0.1:4321"));
        let json = r#"{"level":"INFO","admin":"127.0.0.1:4321","message":"x"}"#;
        assert_eq!(field_value(json, "admin"), Some("127.0.0.1:4321"));
        assert_eq!(field_value("REALTIME_admin=1 x.admin=2", "admin"), None);
    }

    #[test]
    fn strips_colours() {
        let coloured = "\u{1b}[3madmin\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:1";
        assert_eq!(strip_ansi(coloured), "admin=127.0.0.1:1");
        assert_eq!(
            field_value(&strip_ansi(coloured), "admin"),
            Some("127.0.0.1:1")
        );
    }
}
