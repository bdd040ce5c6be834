//! Helpers shared by the integration tests' modules: an in-process ingestor
//! on a fresh test context, and readers of the Redis history.
#![allow(dead_code)]

pub mod gateway;
pub mod sse;

/// A turn for a test that holds thousands of sockets in this process (and
/// lets its gateway child inherit the limit): waits while another such test
/// runs, since two at once (9,000 idle streams, 10,000 half-open sockets,
/// 10,500 cookie-head streams) would pass the open-files limit together
/// (seen: EMFILE in CI), and makes sure this
/// process may hold `needed` open files. Hold the guard for the test.
pub async fn many_sockets(needed: u64) -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let turn = TURN.lock().await;
    ensure_open_files(needed);
    turn
}

/// This process's open-files limit: (soft, hard).
fn nofile_limit() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| match w {
            "unlimited" => Some(u64::MAX),
            w => w.parse().ok(),
        })
        .collect();
    (numbers[0], numbers[1])
}

/// Raises this process's soft open-files limit to the hard one with
/// `prlimit(1)` when it is below `needed` (the crate forbids unsafe code,
/// so no setrlimit call); panics with the figures when it cannot.
fn ensure_open_files(needed: u64) {
    let (soft, hard) = nofile_limit();
    if soft >= needed {
        return;
    }
    assert!(
        hard >= needed,
        "this test needs {needed} open files, the hard limit is {hard}: raise it (ulimit -Hn)"
    );
    let raised = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={hard}:{hard}"))
        .status();
    let (soft, _) = nofile_limit();
    assert!(
        soft >= needed,
        "the open-files soft limit is {soft}, {needed} are needed, and prlimit could not raise it ({raised:?}): run `ulimit -n {hard}` first"
    );
}

/// The in-process services' logs on stderr when `RUST_LOG` is set (e.g.
/// `RUST_LOG=realtime_gateway=debug`), for reading a failing test; silent
/// otherwise. Called by every in-process gateway and ingestor start.
pub fn logs_when_asked() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

use std::time::Duration;

use realtime_ingestor::{Config, Ingestor};
use realtime_tests::{ChildProcess, TestContext, binary_path, wait_until};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server future running in this process until told to stop: the
/// start/stop/drop logic shared by the in-process ingestor and gateways.
pub struct InProcess {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl InProcess {
    /// Spawns `run(shutdown)`; `shutdown` resolves on [`InProcess::stop`] or drop.
    pub fn spawn<F>(run: impl FnOnce(oneshot::Receiver<()>) -> F) -> Self
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<()>();
        Self {
            stop: Some(tx),
            task: Some(tokio::spawn(run(rx))),
        }
    }

    /// Asks it to stop and waits (15 s at most) for a clean end.
    pub async fn stop(mut self, what: &str) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .unwrap_or_else(|_| panic!("{what} stops within 15 s"))
                .unwrap_or_else(|_| panic!("{what} does not panic"));
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Which Redis a test runs on: the shared single node (the default
/// everywhere), or the shared Redis Cluster (3 primaries with a replica
/// each). Tests whose promise must hold on both take one of these, and
/// `redis_cluster.rs` runs them on the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redis {
    Single,
    Cluster,
}

impl Redis {
    /// A fresh test context on the shared Postgres and this Redis.
    pub async fn context(self) -> TestContext {
        match self {
            Redis::Single => TestContext::new().await,
            Redis::Cluster => TestContext::new_on_cluster().await,
        }
    }

    /// How many connections are subscribed to `channel`: `PUBSUB NUMSUB`
    /// on the one node; `PUBSUB SHARDNUMSUB` summed over every node of the
    /// cluster (only the shard owning the channel's slot has any).
    pub async fn subscribers(self, ctx: &TestContext, channel: &str) -> u64 {
        match self {
            Redis::Single => {
                let mut redis = ctx.redis().await;
                let (_, n): (String, u64) = redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(channel)
                    .query_async(&mut redis)
                    .await
                    .unwrap_or_else(|e| panic!("PUBSUB NUMSUB: {e}"));
                n
            }
            Redis::Cluster => {
                let channel = channel.to_owned();
                tokio::task::spawn_blocking(move || {
                    realtime_tests::shared()
                        .redis_cluster()
                        .shard_subscribers(&channel)
                        .unwrap_or_else(|e| panic!("PUBSUB SHARDNUMSUB: {e:#}"))
                })
                .await
                .unwrap_or_else(|e| panic!("{e}"))
            }
        }
    }
}

/// One history entry: its stream id, the event JSON and the target user.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: (u64, u64),
    pub event: Value,
    pub user_id: Option<String>,
}

/// An ingestor running in this process against a fresh database.
pub struct RunningIngestor {
    pub ctx: TestContext,
    process: InProcess,
    pub admin: std::net::SocketAddr,
}

/// A config for `ctx` with test-friendly timings.
pub fn config_for(ctx: &TestContext) -> Config {
    let mut config = Config::new(ctx.database_url(), ctx.redis_url());
    config.slot = ctx.slot().to_owned();
    config.publication = ctx.publication().to_owned();
    config.key_prefix = ctx.key_prefix().to_owned();
    config.manage_replica_identity = true;
    config.admin_listen = "127.0.0.1:0".parse().expect("address");
    config.status_interval = Duration::from_millis(200);
    config.wal_heartbeat = Duration::from_secs(1);
    config.reconnect_max = Duration::from_secs(1);
    config
}

impl RunningIngestor {
    pub async fn start_default() -> Self {
        let ctx = TestContext::new().await;
        let config = config_for(&ctx);
        Self::start(ctx, config).await
    }

    /// Runs `ddl`, writes `routes` to a file and starts with it.
    pub async fn start_with_routes(ddl: &str, routes: &str) -> Self {
        Self::start_with_routes_and(ddl, routes, |_| {}).await
    }

    /// The same, with `adjust` applied to the config.
    pub async fn start_with_routes_and(
        ddl: &str,
        routes: &str,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        let ctx = TestContext::new().await;
        ctx.batch(ddl).await;
        let path = ctx.temp_dir().join("routes.toml");
        std::fs::write(&path, routes).expect("write routes");
        let mut config = config_for(&ctx);
        config.routes = Some(path);
        adjust(&mut config);
        Self::start(ctx, config).await
    }

    pub async fn start(ctx: TestContext, config: Config) -> Self {
        logs_when_asked();
        let ingestor = Ingestor::build(config).await.expect("ingestor starts");
        let admin = ingestor.admin_addr();
        let process = InProcess::spawn(|rx| {
            ingestor.run_until_stopped(async {
                let _ = rx.await;
            })
        });
        let me = Self {
            ctx,
            process,
            admin,
        };
        me.wait_ready().await;
        me
    }

    pub async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.admin);
        wait_until("the ingestor is ready", Duration::from_secs(30), || {
            let url = url.clone();
            async move { http_get(&url).await.filter(|(status, _)| *status == 200) }
        })
        .await;
    }

    pub async fn metrics(&self) -> String {
        http_get(&format!("http://{}/metrics", self.admin))
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    pub async fn stop(self) {
        self.process.stop("the ingestor").await;
    }
}

/// A minimal HTTP/1.1 GET over loopback: `(status, body)`.
pub async fn http_get(url: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut stream =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(host))
            .await
            .ok()?
            .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// The value of a Prometheus counter or gauge (summed over label sets)
/// in a `/metrics` text.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn history_key(ctx: &TestContext, org: Option<&str>) -> String {
    match org {
        Some(org) => format!("{}:{{org:{org}}}:history", ctx.key_prefix()),
        None => format!("{}:{{broadcast}}:history", ctx.key_prefix()),
    }
}

/// A raw XRANGE entry: the id and its field/value pairs.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// Every entry of an organization's history (`None`: the broadcast history).
pub async fn history(ctx: &TestContext, org: Option<&str>) -> Vec<Entry> {
    let mut redis = ctx.redis_commands().await;
    history_on(&mut redis, &history_key(ctx, org)).await
}

pub async fn history_on(redis: &mut impl redis::aio::ConnectionLike, key: &str) -> Vec<Entry> {
    let raw: Vec<StreamEntry> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(redis)
        .await
        .unwrap_or_default();
    raw.into_iter()
        .map(|(id, fields)| {
            let (lsn, index) = id.split_once('-').expect("stream id");
            let bytes = &fields.iter().find(|(f, _)| f == "e").expect("field e").1;
            let envelope: Value = serde_json::from_slice(bytes).expect("envelope JSON");
            Entry {
                id: (lsn.parse().expect("lsn"), index.parse().expect("index")),
                event: envelope["event"].clone(),
                user_id: envelope["userId"].as_str().map(str::to_owned),
            }
        })
        .collect()
}

/// Waits until the history holds at least `n` entries, then returns all.
pub async fn wait_for_history(
    ctx: &TestContext,
    org: Option<&str>,
    n: usize,
    deadline: Duration,
) -> Vec<Entry> {
    let what = format!("{n} events in the history of {org:?}");
    wait_until(&what, deadline, || async move {
        let entries = history(ctx, org).await;
        (entries.len() >= n).then_some(entries)
    })
    .await
}

/// Waits until `n` events were ever appended to an organization's history
/// (`entries-added`, which counts trimmed entries too).
pub async fn wait_until_published(ctx: &TestContext, org: &str, n: u64) {
    let conn = ctx.redis_commands().await;
    let key = history_key(ctx, Some(org));
    wait_until(
        &format!("{n} events published to {org}"),
        Duration::from_secs(60),
        || {
            let mut conn = conn.clone();
            let key = key.clone();
            async move {
                let info: Vec<redis::Value> = redis::cmd("XINFO")
                    .arg("STREAM")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                let added = info.chunks(2).find_map(|kv| match kv {
                    [redis::Value::BulkString(k), v] if k.as_slice() == b"entries-added" => {
                        redis::from_redis_value::<u64>(v.clone()).ok()
                    }
                    _ => None,
                })?;
                (added >= n).then_some(())
            }
        },
    )
    .await;
}

/// Runs the binary `name` (a real process) with `env` and waits, 30 s at
/// most, until its `/readyz` answers 200.
pub async fn start_ready(name: &str, env: &[(&str, String)]) -> ChildProcess {
    let child = ChildProcess::spawn(&binary_path(name), env);
    let deadline = Duration::from_secs(30);
    let admin = child.admin_addr(deadline).await;
    wait_until(&format!("{name} is ready"), deadline, || async move {
        http_get(&format!("http://{admin}/readyz"))
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;
    child
}
