//! Headless Chromium driven from a test: [`NodeDriver`] runs one of the
//! drivers in `clients/js/e2e/` (playwright-core from `clients/js`'s
//! `node_modules`, Debian's `chromium`) and speaks their line protocol;
//! [`Browser`] is a page the test serves itself (`browse.mjs`); the client
//! library's own page (`driver.mjs`) is driven by `tests/tests/client_js.rs`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// How long one command (or the browser's start) may take.
const ANSWER: Duration = Duration::from_secs(60);

/// `clients/js` of this repository.
pub fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/js")
}

/// A browser driver (`clients/js/e2e/*.mjs`) as a child process, speaking
/// the line protocol of `clients/js/e2e/protocol.mjs`: one JSON command per
/// line in, one JSON reply per line out. Killed on drop (Chromium exits when
/// the driver's pipe to it closes).
pub struct NodeDriver {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    log: PathBuf,
    /// How long one command may take.
    answer: Duration,
}

impl NodeDriver {
    /// Starts `node <script>` in `clients/js` with `env`, its stderr in
    /// `log`, and waits up to `ready_within` for its `{"ready":true,…}`
    /// line, which it returns. Each later command may take up to `answer`.
    pub async fn start(
        script: &str,
        env: &[(&str, String)],
        log: PathBuf,
        ready_within: Duration,
        answer: Duration,
    ) -> (NodeDriver, Value) {
        let dir = client_dir();
        assert!(
            dir.join("node_modules/playwright-core").exists(),
            "clients/js/node_modules/playwright-core is missing: run `make test-js` (npm ci) first"
        );
        let stderr = std::fs::File::create(&log).expect("creating the browser driver's log");
        let mut child = tokio::process::Command::new("node")
            .arg(script)
            .current_dir(&dir)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("starting `node` (is Node.js installed?)");
        let stdin = child.stdin.take().expect("piped stdin");
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut driver = NodeDriver {
            child,
            stdin,
            lines,
            log,
            answer,
        };
        let ready = driver.read(ready_within).await;
        assert_eq!(
            ready["ready"],
            true,
            "{script}: {ready}\n{}",
            driver.log_text()
        );
        (driver, ready)
    }

    /// The driver's log so far (page console, requests, errors).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn read(&mut self, within: Duration) -> Value {
        match tokio::time::timeout(within, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => serde_json::from_str(&line).unwrap_or_else(|e| {
                panic!("the browser driver said {line:?}: {e}\n{}", self.log_text())
            }),
            Ok(Ok(None)) => panic!("the browser driver exited; its log:\n{}", self.log_text()),
            Ok(Err(e)) => panic!("reading the browser driver: {e}\n{}", self.log_text()),
            Err(_) => panic!(
                "the browser driver did not answer within {within:?}; its log:\n{}",
                self.log_text()
            ),
        }
    }

    /// Sends one command and returns its result; panics on a failure reply
    /// or when no reply comes within the driver's answer time.
    pub async fn call(&mut self, command: Value) -> Value {
        let line = format!("{command}\n");
        self.stdin
            .write_all(line.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("writing to the browser driver: {e}\n{}", self.log_text()));
        let reply = self.read(self.answer).await;
        assert_eq!(
            reply["ok"],
            true,
            "{command} failed: {reply}\n{}",
            self.log_text()
        );
        reply["result"].clone()
    }

    /// Closes the browser and waits (bounded) for the driver to exit.
    pub async fn quit(mut self) {
        let _ = self.call(json!({"cmd": "quit"})).await;
        let _ = tokio::time::timeout(self.answer, self.child.wait()).await;
    }
}

/// A page the test serves itself, in `clients/js/e2e/browse.mjs`.
pub struct Browser {
    driver: NodeDriver,
}

/// What [`Browser::eval`] returns.
#[derive(Debug, Clone)]
pub struct Evaluated {
    /// The expression's value.
    pub value: Value,
    /// Main-frame navigations so far (1 after the page was opened once).
    pub navigations: u64,
}

impl Browser {
    /// Starts Chromium with the cookie `cookie` (`name=value`) for `url`'s
    /// host; the page is loaded by [`open`](Self::open). The driver's log
    /// (page console, requests) goes to `log_dir/browser.log`.
    pub async fn start(url: &str, cookie: &str, log_dir: &Path) -> Browser {
        let env = [
            ("E2E_URL", url.to_owned()),
            ("E2E_COOKIE", cookie.to_owned()),
        ];
        let log = log_dir.join("browser.log");
        let (driver, _) = NodeDriver::start("e2e/browse.mjs", &env, log, ANSWER, ANSWER).await;
        Browser { driver }
    }

    /// The driver's log so far (page console, requests, errors).
    pub fn log_text(&self) -> String {
        self.driver.log_text()
    }

    /// Loads the page.
    pub async fn open(&mut self) {
        self.driver.call(json!({"cmd": "open"})).await;
    }

    /// Evaluates a JavaScript expression in the page (its value must be
    /// JSON-serialisable).
    pub async fn eval(&mut self, expr: &str) -> Evaluated {
        let result = self.driver.call(json!({"cmd": "eval", "expr": expr})).await;
        Evaluated {
            value: result["value"].clone(),
            navigations: result["meta"]["navigations"].as_u64().unwrap_or_default(),
        }
    }

    /// Closes the browser and waits (bounded) for the driver to exit.
    pub async fn quit(self) {
        self.driver.quit().await;
    }
}
