//! Headless Chromium on a page the test serves itself, driven through
//! `clients/js/e2e/browse.mjs` (playwright-core from `clients/js`'s
//! `node_modules`, Debian's `chromium`).

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

/// The browser as a child process: one JSON command per line in, one JSON
/// reply per line out. Killed on drop (Chromium exits when the driver's
/// pipe to it closes).
pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    log: PathBuf,
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
        let dir = client_dir();
        assert!(
            dir.join("node_modules/playwright-core").exists(),
            "clients/js/node_modules/playwright-core is missing: run `make test-js` (npm ci) first"
        );
        let log = log_dir.join("browser.log");
        let stderr = std::fs::File::create(&log).expect("creating the browser's log");
        let mut child = tokio::process::Command::new("node")
            .arg("e2e/browse.mjs")
            .current_dir(&dir)
            .env("E2E_URL", url)
            .env("E2E_COOKIE", cookie)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("starting `node` (is Node.js installed?)");
        let stdin = child.stdin.take().expect("piped stdin");
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut browser = Browser {
            child,
            stdin,
            lines,
            log,
        };
        let ready = browser.read().await;
        assert_eq!(
            ready["ready"],
            true,
            "browser: {ready}\n{}",
            browser.log_text()
        );
        browser
    }

    /// The driver's log so far (page console, requests, errors).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn read(&mut self) -> Value {
        match tokio::time::timeout(ANSWER, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("browser said {line:?}: {e}\n{}", self.log_text())),
            Ok(Ok(None)) => panic!("the browser driver exited; its log:\n{}", self.log_text()),
            Ok(Err(e)) => panic!("reading the browser driver: {e}\n{}", self.log_text()),
            Err(_) => panic!(
                "the browser driver did not answer within {ANSWER:?}; its log:\n{}",
                self.log_text()
            ),
        }
    }

    async fn call(&mut self, command: Value) -> Value {
        let line = format!("{command}\n");
        self.stdin
            .write_all(line.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("writing to the browser driver: {e}\n{}", self.log_text()));
        let reply = self.read().await;
        assert_eq!(
            reply["ok"],
            true,
            "{command} failed: {reply}\n{}",
            self.log_text()
        );
        reply["result"].clone()
    }

    /// Loads the page.
    pub async fn open(&mut self) {
        self.call(json!({"cmd": "open"})).await;
    }

    /// Evaluates a JavaScript expression in the page (its value must be
    /// JSON-serialisable).
    pub async fn eval(&mut self, expr: &str) -> Evaluated {
        let result = self.call(json!({"cmd": "eval", "expr": expr})).await;
        Evaluated {
            value: result["value"].clone(),
            navigations: result["meta"]["navigations"].as_u64().unwrap_or_default(),
        }
    }

    /// Closes the browser and waits (bounded) for the driver to exit.
    pub async fn quit(mut self) {
        let _ = self.call(json!({"cmd": "quit"})).await;
        let _ = tokio::time::timeout(ANSWER, self.child.wait()).await;
    }
}
