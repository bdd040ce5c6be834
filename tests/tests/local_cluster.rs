//! `make up` for real: the actual `deploy/local/up.sh` starts a whole local
//! cluster (Postgres, Redis, the ingestor, two gateways, the demo backend and
//! nginx in front) in its own directory on free ports, and Debian's headless
//! Chromium uses the demo page through nginx as a person would: it picks an
//! organization and a user, connects, creates, updates and deletes a
//! property, and sees each change's event arrive live in the page
//! (`deploy/local/e2e/demo-page.mjs`, playwright-core driving
//! `/usr/bin/chromium`). The screenshot goes to `target/demo-page.png`.
//!
//! `deploy/local/down.sh` runs at the end, on failure too (the cluster's
//! `Drop`). Nothing is skipped: without nginx, Chromium, node or npm the test
//! fails and says what to install (`.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use realtime_tests::{binary_path, free_port};
use serde_json::Value;

/// `up.sh` from nothing: initdb, schema, five processes and nginx.
const UP_DEADLINE: Duration = Duration::from_secs(240);
/// `down.sh`: each process gets at most 30 s before SIGKILL.
const DOWN_DEADLINE: Duration = Duration::from_secs(180);
/// `npm ci` of playwright-core (one package, no browser download).
const NPM_DEADLINE: Duration = Duration::from_secs(300);
/// Chromium's start and the page's whole scenario.
const BROWSER_DEADLINE: Duration = Duration::from_secs(180);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("tests/ has a parent directory"))
}

/// Variables of this process's environment that must not reach the scripts:
/// the harness's list (a developer's shell may hold settings of their own
/// `make up` stack), and `CHROMIUM`, which only this test reads.
fn is_scrubbed(key: &str) -> bool {
    realtime_tests::process::is_scrubbed(key) || key == "CHROMIUM"
}

/// Output of a finished command.
struct Ran {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `program args` in `dir` with the scrubbed environment plus `env`;
/// kills it and panics once `deadline` has passed.
async fn run(
    what: &str,
    program: &str,
    args: &[&str],
    dir: &Path,
    env: &[(String, String)],
    deadline: Duration,
) -> Ran {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(is_scrubbed) {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start {program}: {e}"));
    let output = tokio::time::timeout(deadline, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what}: still running after {deadline:?} (killed)"))
        .unwrap_or_else(|e| panic!("{what}: waiting for {program}: {e}"));
    Ran {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The first existing file among `candidates`.
fn find_file(candidates: &[PathBuf]) -> Option<PathBuf> {
    candidates.iter().find(|p| p.is_file()).cloned()
}

/// `name` in a directory of `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    find_file(
        &std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .collect::<Vec<_>>(),
    )
}

/// What the test needs from the machine, or a panic that says how to get it.
struct Tools {
    chromium: PathBuf,
    node: PathBuf,
    npm: PathBuf,
}

fn required_tools() -> Tools {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.is_file(),
        "Chromium not found at {}: install Debian's chromium (`apt-get install chromium`; .ci/run does) or set CHROMIUM",
        chromium.display()
    );
    assert!(
        find_file(
            &[on_path("nginx"), Some(PathBuf::from("/usr/sbin/nginx"))]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
        )
        .is_some(),
        "nginx not found in PATH or /usr/sbin: install Debian's nginx-light (`apt-get install nginx-light`; .ci/run does)"
    );
    let node = on_path("node").unwrap_or_else(|| {
        panic!("node not found in PATH: install Node.js ≥ 20 and npm (.ci/run does)")
    });
    let npm = on_path("npm")
        .unwrap_or_else(|| panic!("npm not found in PATH: install npm (.ci/run does)"));
    Tools {
        chromium,
        node,
        npm,
    }
}

/// Installs playwright-core from `deploy/local/e2e/package-lock.json` when it
/// is not there yet (`npm ci`; never a browser download).
async fn ensure_playwright(tools: &Tools, e2e: &Path) {
    if e2e
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        return;
    }
    let npm = tools.npm.to_string_lossy();
    let ran = run(
        "npm ci in deploy/local/e2e",
        &npm,
        &["ci", "--no-audit", "--no-fund"],
        e2e,
        &[],
        NPM_DEADLINE,
    )
    .await;
    assert!(
        ran.success,
        "`npm ci` in {} failed:\n{}\n{}",
        e2e.display(),
        ran.stdout,
        ran.stderr
    );
}

/// A local cluster in its own directory and ports. Dropping it runs
/// `down.sh` (also when the test panics), then removes the directory.
struct Cluster {
    root: PathBuf,
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    http_port: u16,
    down: bool,
}

impl Cluster {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("realtime-local-cluster-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating the cluster's directory: {e}"));
        // As root, Postgres runs as `postgres`, which must reach its data dir.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap_or_else(|e| panic!("chmod 755 {}: {e}", dir.path().display()));
        let bin_dir = binary_path("realtime-demo")
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| panic!("the binaries' directory"));
        // The binaries must be the ones this test was built with: no cargo
        // build from inside the test.
        binary_path("realtime-ingestor");
        binary_path("realtime-gateway");
        let http_port = free_port();
        let mut env = vec![
            (
                "REALTIME_LOCAL_DIR".to_owned(),
                dir.path().display().to_string(),
            ),
            (
                "REALTIME_LOCAL_BIN_DIR".to_owned(),
                bin_dir.display().to_string(),
            ),
            // The test checks for nginx itself and fails if it is missing.
            ("REALTIME_LOCAL_NO_INSTALL".to_owned(), "1".to_owned()),
            ("REALTIME_LOCAL_HTTP_PORT".to_owned(), http_port.to_string()),
        ];
        for var in [
            "REALTIME_LOCAL_PG_PORT",
            "REALTIME_LOCAL_REDIS_PORT",
            "REALTIME_LOCAL_INGESTOR_ADMIN_PORT",
            "REALTIME_LOCAL_GATEWAY_PORT_1",
            "REALTIME_LOCAL_GATEWAY_PORT_2",
            "REALTIME_LOCAL_GATEWAY_ADMIN_PORT_1",
            "REALTIME_LOCAL_GATEWAY_ADMIN_PORT_2",
            "REALTIME_LOCAL_DEMO_PORT",
        ] {
            env.push((var.to_owned(), free_port().to_string()));
        }
        Self {
            root: repo_root(),
            dir,
            env,
            http_port,
            down: false,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.http_port)
    }

    async fn up(&self) -> Ran {
        run(
            "deploy/local/up.sh",
            "bash",
            &["deploy/local/up.sh"],
            &self.root,
            &self.env,
            UP_DEADLINE,
        )
        .await
    }

    /// The tail of every log of the cluster, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return out;
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            out.push_str(&format!("--- {} ---\n{tail}\n", path.display()));
        }
        out
    }

    /// The pids in the cluster's pid files (nginx, demo, gateways,
    /// ingestor, Redis).
    fn pids(&self) -> Vec<(String, u32)> {
        let d = self.dir.path();
        [
            d.join("nginx/nginx.pid"),
            d.join("demo.pid"),
            d.join("gateway1.pid"),
            d.join("gateway2.pid"),
            d.join("ingestor.pid"),
            d.join("redis.pid"),
        ]
        .iter()
        .filter_map(|p| {
            let pid = std::fs::read_to_string(p).ok()?.trim().parse().ok()?;
            Some((p.display().to_string(), pid))
        })
        .collect()
    }

    /// Runs `down.sh` synchronously (usable from `Drop`).
    fn down_blocking(&mut self) -> std::io::Result<std::process::Output> {
        self.down = true;
        let mut command = std::process::Command::new("bash");
        command
            .arg("deploy/local/down.sh")
            .current_dir(&self.root)
            .stdin(Stdio::null());
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(is_scrubbed) {
                command.env_remove(key);
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command.output()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.down {
            return;
        }
        match self.down_blocking() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "down.sh failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("down.sh could not run: {e}"),
        }
    }
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by its parent) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

/// The first bytes of a stream through nginx: SSE headers from a gateway and
/// the connection message at once (nothing buffered on the way).
async fn stream_through_nginx(http_port: u16) {
    let url = format!("http://127.0.0.1:{http_port}/api/realtime/stream?organizationId=org_helios");
    let client = reqwest::Client::new();
    let mut response = tokio::time::timeout(
        Duration::from_secs(20),
        client
            .get(&url)
            .header("Cookie", "authjs.session-token=demo-session-carol")
            .send(),
    )
    .await
    .unwrap_or_else(|_| panic!("GET {url}: no answer within 20 s"))
    .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), 200, "GET {url}");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    assert!(
        header("content-type").starts_with("text/event-stream"),
        "content-type through nginx: {:?}",
        header("content-type")
    );
    assert!(
        header("x-realtime-upstream").starts_with("127.0.0.1:"),
        "nginx names the gateway that served the stream"
    );
    assert!(
        header("content-encoding").is_empty(),
        "the stream is never compressed"
    );
    let mut body = String::new();
    while !body.contains("\"type\":\"connection\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .unwrap_or_else(|_| {
                panic!("the connection message did not come through nginx within 10 s: {body:?}")
            })
            .unwrap_or_else(|e| panic!("reading the stream: {e}"))
            .unwrap_or_else(|| panic!("the stream ended early: {body:?}"));
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        body.contains("\"userId\":\"user_carol\""),
        "the cookie's session user: {body}"
    );
}

/// The demo API refuses writes without a session (401) and for a user who
/// is not a member of the organization (403), through nginx.
async fn demo_api_refusals(http_port: u16) {
    let base = format!("http://127.0.0.1:{http_port}/api/demo");
    let client = reqwest::Client::new();
    let create = format!("{base}/organizations/org_acme/properties");
    let status = |r: reqwest::Result<reqwest::Response>| {
        r.unwrap_or_else(|e| panic!("demo API request: {e}"))
            .status()
    };
    assert_eq!(status(client.post(&create).send().await), 401, "no session");
    let session = client
        .post(format!("{base}/session"))
        .header("Content-Type", "application/json")
        .body(r#"{"userId":"user_carol"}"#)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {base}/session: {e}"));
    assert_eq!(session.status(), 200, "minting carol's session");
    let cookie = session
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_else(|| panic!("the session answer sets the cookie"))
        .to_owned();
    assert!(cookie.starts_with("authjs.session-token="), "{cookie}");
    let refused = client.post(&create).header("Cookie", &cookie).send().await;
    assert_eq!(status(refused), 403, "carol is not a member of org_acme");
    let unknown = client
        .post(format!("{base}/session"))
        .header("Content-Type", "application/json")
        .body(r#"{"userId":"user_nobody"}"#)
        .send()
        .await;
    assert_eq!(status(unknown), 404, "no such user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_up_serves_the_demo_page_with_live_events_through_nginx() {
    let tools = required_tools();
    let root = repo_root();
    let e2e = root.join("deploy/local/e2e");
    ensure_playwright(&tools, &e2e).await;

    let mut cluster = Cluster::new();
    let up = cluster.up().await;
    assert!(
        up.success,
        "up.sh failed:\n{}\n{}\n{}",
        up.stdout,
        up.stderr,
        cluster.logs()
    );
    assert!(
        up.stdout.contains(&format!("Demo page: {}", cluster.url())),
        "up.sh prints the page's URL:\n{}",
        up.stdout
    );

    // Again: everything is running, nothing is started twice.
    let again = cluster.up().await;
    assert!(
        again.success,
        "second up.sh failed:\n{}\n{}",
        again.stdout, again.stderr
    );
    for what in [
        "Postgres already running",
        "Redis already running",
        "ingestor already running",
        "gateway 1 already running",
        "gateway 2 already running",
        "demo backend already running",
        "nginx already running",
    ] {
        assert!(
            again.stdout.contains(what),
            "second up.sh: no {what:?}:\n{}",
            again.stdout
        );
    }
    assert!(
        !again.stdout.contains("==> starting"),
        "second up.sh started something:\n{}",
        again.stdout
    );

    stream_through_nginx(cluster.http_port).await;
    demo_api_refusals(cluster.http_port).await;

    // The page in Chromium, through nginx.
    let target = binary_path("realtime-demo")
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("the target directory"));
    let screenshot = target.join("demo-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let node = tools.node.to_string_lossy().into_owned();
    let screenshot_arg = screenshot.display().to_string();
    let url = cluster.url();
    let browser = run(
        "the demo page in Chromium",
        &node,
        &[
            "demo-page.mjs",
            "--url",
            &url,
            "--screenshot",
            &screenshot_arg,
            "--org",
            "org_acme",
            "--user",
            "user_alice",
        ],
        &e2e,
        &[("CHROMIUM".to_owned(), tools.chromium.display().to_string())],
        BROWSER_DEADLINE,
    )
    .await;
    assert!(
        browser.success,
        "the demo page scenario failed (screenshot: {}):\n{}\n{}\n{}",
        screenshot.display(),
        browser.stdout,
        browser.stderr,
        cluster.logs()
    );
    let report: Value = browser
        .stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no JSON report from the page script:\n{}", browser.stdout));
    assert_eq!(report["ok"], true, "{report}");
    let property = report["propertyId"].as_str().unwrap_or_default().to_owned();
    assert!(property.starts_with("prop_demo_"), "{report}");
    let kept = report["keptPropertyId"].as_str().unwrap_or_default();
    assert!(
        kept.starts_with("prop_demo_") && kept != property,
        "a second property was created: {report}"
    );
    let operations: Vec<&str> = report["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["propertyId"] == property.as_str())
                .filter_map(|e| e["operation"].as_str())
                .collect()
        })
        .unwrap_or_default();
    // Newest first in the page.
    assert_eq!(operations, ["delete", "update", "create"], "{report}");
    let png = std::fs::read(&screenshot)
        .unwrap_or_else(|e| panic!("reading the screenshot {}: {e}", screenshot.display()));
    assert!(
        png.len() > 10_000 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a real screenshot ({} bytes)",
        screenshot.display(),
        png.len()
    );

    // make down stops every process it started.
    let pids = cluster.pids();
    assert_eq!(pids.len(), 6, "a pid file per process: {pids:?}");
    let out = tokio::time::timeout(
        DOWN_DEADLINE,
        tokio::task::spawn_blocking(move || {
            let out = cluster.down_blocking();
            (cluster, out)
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("down.sh still running after {DOWN_DEADLINE:?}"))
    .unwrap_or_else(|e| panic!("down.sh's thread: {e}"));
    let (cluster, down) = out;
    let down = down.unwrap_or_else(|e| panic!("down.sh could not run: {e}"));
    assert!(
        down.status.success(),
        "down.sh failed:\n{}{}",
        String::from_utf8_lossy(&down.stdout),
        String::from_utf8_lossy(&down.stderr)
    );
    for (file, pid) in pids {
        assert!(!alive(pid), "pid {pid} of {file} still runs after down.sh");
    }
    let postmaster = cluster.dir.path().join("pg/postmaster.pid");
    assert!(
        !postmaster.exists(),
        "Postgres still runs after down.sh ({} exists)",
        postmaster.display()
    );
}
