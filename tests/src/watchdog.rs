//! Cleanup that runs even when the test process dies without unwinding.
//!
//! Rust never runs `Drop` for statics, so the servers behind [`crate::shared`]
//! would outlive the test binary; a test binary can also be killed (`kill -9`,
//! a CI timeout) before any destructor runs. Every server the harness starts
//! therefore gets a watchdog:
//!
//! - a tiny `sh` whose stdin is a pipe; the only write end of that pipe is held
//!   by this process (std creates pipes close-on-exec, so no other child, the
//!   servers included, inherits it);
//! - the shell blocks reading its stdin. However this process ends (normal
//!   exit, panic, SIGKILL), the kernel closes the write end, the shell reads
//!   EOF and runs its cleanup script: stop the server, remove its temp dir;
//! - the shell ignores SIGINT, SIGTERM and SIGHUP (and so do the commands it
//!   runs), so a Ctrl-C in the terminal, which signals the whole foreground
//!   process group, kills the test binary but still lets the cleanup run.
//!
//! The watchdog reads lines: the last line written with [`Watchdog::set`] is
//! in `$last` when the script runs (the Redis server uses it for its pid).
//! Dropping a `Watchdog` runs the cleanup at once and waits for it, so a
//! server dropped normally leaves nothing behind either.

use std::ffi::OsStr;
use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};

use anyhow::Context as _;

/// A shell that runs a cleanup script when this process goes away.
pub(crate) struct Watchdog {
    /// The shell; reaped when the watchdog is dropped.
    child: Child,
    /// The write end of the shell's stdin. Closing it (drop, or the death of
    /// this process) triggers the cleanup.
    stdin: Option<ChildStdin>,
}

impl Watchdog {
    /// Starts a watchdog that runs `script` (POSIX sh; positional parameters
    /// `$1`… are `args`, `$last` is the last value given to [`set`]) once
    /// this process exits or the watchdog is dropped.
    ///
    /// [`set`]: Watchdog::set
    pub(crate) fn spawn<I, S>(script: &str, args: I) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let program = format!(
            "trap '' INT TERM HUP\nlast=\nwhile IFS= read -r line; do last=$line; done\n{script}\n"
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(program)
            .arg("watchdog")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning the cleanup watchdog (sh)")?;
        let stdin = child.stdin.take();
        Ok(Self { child, stdin })
    }

    /// Makes `value` (one line) the `$last` of the cleanup script.
    pub(crate) fn set(&mut self, value: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            // A failed write means the watchdog is gone; nothing to do then.
            let _ = writeln!(stdin, "{value}").and_then(|()| stdin.flush());
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // EOF on the shell's stdin runs the cleanup; wait so it is finished
        // (server stopped, files removed) when the drop returns.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}
