//! `make bench-fanout`: one release gateway replica serving 1,000 then 9,000
//! SSE clients spread over 100 organizations: its RSS per idle connection,
//! then deliveries/s and commit→client latency while 1,000 single-row
//! transactions per second are written round-robin over the organizations.
//! Starts its own Postgres and Redis (as the tests do), the release ingestor
//! and gateway, and `sse_load` processes (at most `BENCH_PER_PROCESS`
//! streams each: one process may hold 20,000 open files here); prints a
//! markdown report and stops everything it started.
//!
//! Latency is timed on this host's wall clock, in µs: the bench writes its
//! clock reading into the row's `description` just before it sends the
//! INSERT, and the load client subtracts it from the time it read the frame
//! off its socket. That covers the INSERT and its commit, the ingestor,
//! Redis, the gateway and the client's read: an upper bound on
//! commit→client, by the INSERT's own round trip (reported next to it).
//! The event's `timestamp` (Postgres's commit time, whole ms) gives a
//! second, ms-resolution figure.
//!
//! The load clients read in rounds (`BENCH_CLIENT_ROUND_US`, 1 ms): between
//! rounds they sleep instead of blocking in `epoll_wait`. Blocked there, each
//! frame the gateway writes wakes one of them, and on loopback that wake-up
//! and the preemption after it are paid inside the gateway's `writev` (a
//! quarter of its CPU at 9,000 clients), a cost a gateway whose readers are
//! browsers on other hosts never pays. The round is charged to us: a frame
//! may wait up to one round before it is read and timed. `0` reads as data
//! arrives, for comparison.
//!
//! Settings (environment): `BENCH_CLIENTS` (default `1000,9000`, ascending:
//! clients are added, never removed), `BENCH_ORGS` (100), `BENCH_USERS` (3
//! users per organization, shared by its clients), `BENCH_RATE` (1000
//! events/s), `BENCH_SECONDS` (10 per phase), `BENCH_PER_PROCESS` (3000
//! streams per `sse_load`), `BENCH_CONNECT_CONCURRENCY` (100 handshakes in
//! flight per `sse_load`), `BENCH_CLIENT_ROUND_US` (1000; 0 reads as data
//! arrives), `BENCH_WARMUP_SECONDS` (2: untimed events written at the rate
//! right before each phase's timed ones; the CPU figures include them).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use realtime_tests::{ChildProcess, PostgresServer, RedisServer, binary_path};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

const JWT_SECRET: &str = "bench-fanout-jwt-secret-with-enough-bytes";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn org_id(i: u64) -> String {
    format!("org{i:04}")
}

fn user_id(org: u64, j: u64) -> String {
    format!("org{org:04}-u{j}")
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

struct Settings {
    phases: Vec<u64>,
    orgs: u64,
    users: u64,
    rate: u64,
    seconds: u64,
    per_process: u64,
    concurrency: u64,
    round_us: u64,
    warmup: u64,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let phases = match std::env::var("BENCH_CLIENTS") {
            Ok(v) => v
                .split(',')
                .map(|s| s.trim().parse::<u64>())
                .collect::<Result<Vec<_>, _>>()
                .context("BENCH_CLIENTS: comma-separated client counts")?,
            Err(_) => vec![1000, 9000],
        };
        anyhow::ensure!(
            !phases.is_empty() && phases.windows(2).all(|w| w[0] < w[1]) && phases[0] > 0,
            "BENCH_CLIENTS must be ascending and positive"
        );
        Ok(Self {
            phases,
            orgs: env_or("BENCH_ORGS", 100).clamp(1, 9999),
            users: env_or("BENCH_USERS", 3).max(1),
            rate: env_or("BENCH_RATE", 1000).max(1),
            seconds: env_or("BENCH_SECONDS", 10).max(1),
            per_process: env_or("BENCH_PER_PROCESS", 3000).max(1),
            concurrency: env_or("BENCH_CONNECT_CONCURRENCY", 100).max(1),
            round_us: env_or("BENCH_CLIENT_ROUND_US", 1000),
            warmup: env_or("BENCH_WARMUP_SECONDS", 2),
        })
    }
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(conn);
    Ok(client)
}

/// Resident memory of a process in KiB (`VmRSS`).
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let (user, system) = cpu_split(pid);
    user + system
}

/// CPU seconds a process has used so far: (user, system).
fn cpu_split(pid: u32) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0.0, 0.0);
    };
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) / 100.0, ticks(12) / 100.0)
}

async fn redis_cpu_seconds(redis: &mut redis::aio::MultiplexedConnection) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(redis)
        .await
        .unwrap_or_default();
    info.lines()
        .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
        .filter_map(|l| l.split_once(':')?.1.trim().parse::<f64>().ok())
        .sum()
}

/// A gateway metric's value from its `/metrics` (first sample of `name`).
async fn gateway_metric(admin: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The gateway's `realtime_gateway_commit_to_send_seconds` histogram:
/// (upper bound in s, cumulative count) per bucket.
const GATEWAY_LATENCY: &str = "realtime_gateway_commit_to_send_seconds";
const INGESTOR_LATENCY: &str = "realtime_ingestor_commit_to_publish_seconds";

/// A Prometheus histogram's cumulative buckets, as (upper bound, count).
async fn latency_buckets(admin: &str, histogram: &str) -> Vec<(f64, u64)> {
    let Ok(response) = reqwest::get(format!("http://{admin}/metrics")).await else {
        return Vec::new();
    };
    let text = response.text().await.unwrap_or_default();
    let prefix = format!("{histogram}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(prefix.as_str())?;
            let (le, count) = rest.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The bucket bound under which fraction `p` of the samples added between
/// `before` and `after` fall, in ms.
fn bucket_quantile_ms(before: &[(f64, u64)], after: &[(f64, u64)], p: f64) -> f64 {
    let count = |v: &[(f64, u64)], le: f64| v.iter().find(|(b, _)| *b == le).map_or(0, |(_, c)| *c);
    let total = after
        .last()
        .map_or(0, |(le, c)| c.saturating_sub(count(before, *le)));
    if total == 0 {
        return f64::NAN;
    }
    let rank = ((total as f64 * p).ceil() as u64).max(1);
    after
        .iter()
        .find(|(le, c)| c.saturating_sub(count(before, *le)) >= rank)
        .map_or(f64::NAN, |(le, _)| le * 1e3)
}

/// CPU time used so far by every process on the host, in seconds: the sum
/// over `/proc/<pid>/stat` of user + system time, plus the time of reaped
/// children (so a process that ends between two readings still counts).
/// Per-process times are exact (`/proc/stat`'s are sampled per tick and
/// miss short bursts).
fn host_busy_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut ticks = 0.0;
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        // utime, stime, cutime, cstime: fields 14 to 17.
        ticks += rest
            .split_whitespace()
            .skip(11)
            .take(4)
            .filter_map(|v| v.parse::<f64>().ok())
            .sum::<f64>();
    }
    ticks / 100.0
}

/// One `sse_load` process: its stdin for commands, its stdout for JSON
/// answers. Killed when dropped; it also exits when its stdin closes, so it
/// never outlives the bench.
struct LoadProcess {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    clients: u64,
}

impl LoadProcess {
    fn spawn(s: &Settings, addr: &str, first: u64, count: u64) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(binary_path("sse_load"))
            .args(["--addr", addr, "--secret", JWT_SECRET])
            .args(["--first", &first.to_string(), "--count", &count.to_string()])
            .args([
                "--orgs",
                &s.orgs.to_string(),
                "--users",
                &s.users.to_string(),
            ])
            .args(["--concurrency", &s.concurrency.to_string()])
            .args(["--round-us", &s.round_us.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting sse_load")?;
        let stdin = child.stdin.take().context("sse_load stdin")?;
        let stdout = child.stdout.take().context("sse_load stdout")?;
        Ok(Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            clients: count,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    async fn send(&mut self, command: &str) -> anyhow::Result<()> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .context("writing to sse_load")?;
        self.stdin.flush().await.context("writing to sse_load")
    }

    /// The next JSON line of type `kind`, within `within`.
    async fn expect(&mut self, kind: &str, within: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .with_context(|| format!("sse_load did not answer {kind:?} within {within:?}"))?
                .context("reading sse_load")?
                .with_context(|| format!("sse_load exited before answering {kind:?}"))?;
            let Ok(value) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if value["type"] == kind {
                return Ok(value);
            }
        }
    }

    async fn request(&mut self, command: &str, kind: &str) -> anyhow::Result<Value> {
        self.send(command).await?;
        self.expect(kind, Duration::from_secs(30)).await
    }
}

/// The load processes' reports, summed.
#[derive(Default)]
struct Totals {
    connected: u64,
    gave_up: u64,
    ended: u64,
    events: u64,
    timed: u64,
    first_us: u64,
    last_us: u64,
    send: BTreeMap<u64, u64>,
    commit: BTreeMap<u64, u64>,
    /// Unix second → [timed, over 10 ms, max µs].
    seconds: BTreeMap<u64, [u64; 3]>,
}

impl Totals {
    fn add(&mut self, r: &Value) {
        let n = |k: &str| r[k].as_u64().unwrap_or(0);
        self.connected += n("connected");
        self.gave_up += n("gave_up");
        self.ended += n("ended");
        self.events += n("events");
        self.timed += n("timed");
        if n("timed") > 0 {
            let first = n("first_us");
            self.first_us = if self.first_us == 0 {
                first
            } else {
                self.first_us.min(first)
            };
            self.last_us = self.last_us.max(n("last_us"));
        }
        for row in r["seconds"].as_array().into_iter().flatten() {
            let v = |i: usize| row[i].as_u64().unwrap_or(0);
            let second = self.seconds.entry(v(0)).or_default();
            second[0] += v(1);
            second[1] += v(2);
            second[2] = second[2].max(v(3));
        }
        for (key, map) in [
            ("send_hist", &mut self.send),
            ("commit_hist", &mut self.commit),
        ] {
            for pair in r[key].as_array().into_iter().flatten() {
                if let (Some(v), Some(c)) = (pair[0].as_u64(), pair[1].as_u64()) {
                    *map.entry(v).or_default() += c;
                }
            }
        }
    }
}

async fn collect(procs: &mut [LoadProcess]) -> anyhow::Result<Totals> {
    let mut totals = Totals::default();
    for p in procs.iter_mut() {
        totals.add(&p.request("report", "report").await?);
    }
    Ok(totals)
}

/// The `p` quantile (0..=1) of a histogram of µs values, in ms.
fn quantile_ms(hist: &BTreeMap<u64, u64>, p: f64) -> f64 {
    let total: u64 = hist.values().sum();
    if total == 0 {
        return f64::NAN;
    }
    let rank = ((total as f64 * p).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (v, c) in hist {
        seen += c;
        if seen >= rank {
            return *v as f64 / 1000.0;
        }
    }
    f64::NAN
}

fn quantile_sorted_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

struct Phase {
    clients: u64,
    processes: usize,
    connect_seconds: f64,
    streams_reported: Option<f64>,
    rss_before_kib: u64,
    rss_idle_kib: u64,
    added: u64,
    written: u64,
    write_rate: f64,
    expected: u64,
    delivered: u64,
    window_s: f64,
    send_p50: f64,
    send_p99: f64,
    send_max: f64,
    commit_p50: f64,
    commit_p99: f64,
    insert_p50: f64,
    insert_p99: f64,
    gateway_p50: f64,
    gateway_p99: f64,
    ingestor_p50: f64,
    ingestor_p99: f64,
    host_cpu: f64,
    gateway_cpu: f64,
    gateway_sys: f64,
    load_cpu: f64,
    ingestor_cpu: f64,
    redis_cpu: f64,
    rss_after_kib: u64,
    ended: u64,
    gave_up: u64,
    /// Per second of the phase: % of deliveries over 10 ms, slowest (ms).
    seconds: Vec<(f64, f64)>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let s = Settings::from_env()?;
    let max_clients = *s.phases.last().unwrap_or(&0);

    // How busy the host is before the bench adds anything: the figures
    // are only meaningful on an otherwise idle machine.
    let host0 = host_busy_seconds();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let host_before = host_busy_seconds() - host0;

    eprintln!("starting Postgres and Redis…");
    let pg = PostgresServer::start()?;
    let redis_server = RedisServer::start()?;
    let admin = connect(&pg.url("postgres")).await?;
    admin.batch_execute("CREATE DATABASE bench").await?;
    let url = pg.url("bench");
    let db = connect(&url).await?;
    db.batch_execute(realtime_tests::OIKION_SCHEMA).await?;
    db.batch_execute(&format!(
        "INSERT INTO organizations (id, name)
           SELECT 'org' || lpad(o::text, 4, '0'), 'Org ' || o FROM generate_series(0, {last_org}) o;
         INSERT INTO users (id)
           SELECT 'org' || lpad(o::text, 4, '0') || '-u' || u
           FROM generate_series(0, {last_org}) o, generate_series(0, {last_user}) u;
         INSERT INTO organization_members (id, \"userId\", \"organizationId\")
           SELECT 'm-' || u.id, u.id, split_part(u.id, '-', 1) FROM users u;",
        last_org = s.orgs - 1,
        last_user = s.users - 1,
    ))
    .await?;

    eprintln!("starting the release ingestor…");
    let mut redis = redis::Client::open(redis_server.url())?
        .get_multiplexed_async_connection()
        .await?;
    let ingestor = ChildProcess::spawn(
        &binary_path("realtime-ingestor"),
        &[
            ("DATABASE_URL", url.as_str()),
            ("REDIS_URL", redis_server.url().as_str()),
            ("REALTIME_ADMIN_LISTEN", "127.0.0.1:0"),
            ("REALTIME_MANAGE_REPLICA_IDENTITY", "true"),
            // info: the admin address is logged at start.
            ("RUST_LOG", "info"),
        ],
    );
    // Ready once a row written now comes out in Redis (a row written before
    // the slot exists is never streamed: write again until one arrives).
    let warm_key = format!("rt:{{org:{}}}:history", org_id(0));
    let started = Instant::now();
    for i in 0.. {
        db.execute(
            "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ($1, $2, $3, 1)",
            &[&format!("warm-{i}"), &org_id(0), &user_id(0, 0)],
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let len: u64 = redis::cmd("XLEN")
            .arg(&warm_key)
            .query_async(&mut redis)
            .await?;
        if len > 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the ingestor published nothing within 60 s; its output:\n{}",
            ingestor.output_text()
        );
    }

    eprintln!("starting the release gateway…");
    let gateway = ChildProcess::spawn(
        &binary_path("realtime-gateway"),
        &[
            ("DATABASE_URL", url.as_str()),
            ("REDIS_URL", redis_server.url().as_str()),
            ("REALTIME_LISTEN", "127.0.0.1:0"),
            ("REALTIME_ADMIN_LISTEN", "127.0.0.1:0"),
            ("REALTIME_JWT_SECRET", JWT_SECRET),
            ("REALTIME_HEARTBEAT", "30s"),
            // Thousands of streams from one address and a few users.
            ("REALTIME_CONNECT_RATE", "0"),
            ("REALTIME_MAX_CONNECTIONS_PER_USER", "1000000"),
            ("REALTIME_MAX_CONNECTIONS_PER_ORG", "1000000"),
            ("RUST_LOG", "info"),
        ],
    );
    let addr = gateway.log_value("listen", Duration::from_secs(30)).await;
    let admin_addr = gateway
        .admin_addr(Duration::from_secs(30))
        .await
        .to_string();
    let ingestor_admin = ingestor
        .admin_addr(Duration::from_secs(30))
        .await
        .to_string();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_baseline = rss_kib(gateway.pid())?;
    eprintln!("gateway on {addr}, RSS {rss_baseline} KiB with no client");

    let insert = db
        .prepare(
            "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price, description) VALUES ($1, $2, $3, 1, $4)",
        )
        .await?;
    let mut procs: Vec<LoadProcess> = Vec::new();
    let mut phases: Vec<Phase> = Vec::new();
    let mut connected_so_far = 0u64;
    let mut rss_prev = rss_baseline;
    for (n, &target) in s.phases.iter().enumerate() {
        // 1. Connect the clients this phase adds, in processes of at most
        // `per_process` streams, then let the gateway settle.
        eprintln!(
            "connecting {} more clients ({target} in all)…",
            target - connected_so_far
        );
        let connect_started = Instant::now();
        let mut new_procs = Vec::new();
        let mut first = connected_so_far;
        while first < target {
            let count = s.per_process.min(target - first);
            new_procs.push(LoadProcess::spawn(&s, &addr, first, count)?);
            first += count;
        }
        for p in &mut new_procs {
            let ready = p.expect("ready", Duration::from_secs(180)).await?;
            anyhow::ensure!(
                ready["gave_up"].as_u64() == Some(0),
                "{} of {} streams could not be opened: {ready}",
                ready["gave_up"],
                p.clients
            );
        }
        let connect_seconds = connect_started.elapsed().as_secs_f64();
        procs.extend(new_procs);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss_idle = rss_kib(gateway.pid())?;
        let streams_reported = gateway_metric(&admin_addr, "realtime_gateway_connections").await;
        eprintln!(
            "{target} clients connected in {connect_seconds:.1} s; gateway RSS {rss_idle} KiB, reports {streams_reported:?} streams"
        );

        // 2. Steady phase: `rate` single-row transactions per second,
        // round-robin over the organizations.
        for p in &mut procs {
            p.request("reset", "reset").await?;
        }
        let total = s.rate * s.seconds;
        // Untimed events first, at the same rate and without a pause: the
        // first second after thousands of streams sat idle is slower (every
        // connection's first segments after idle are acknowledged at once),
        // and it is a start-up effect, not the steady state measured here.
        let warmup = s.rate * s.warmup;
        let period = Duration::from_secs_f64(1.0 / s.rate as f64);
        let pids: Vec<u32> = procs.iter().map(LoadProcess::pid).collect();
        let load_cpu = || pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
        let gw_sys0 = cpu_split(gateway.pid()).1;
        let (gw0, load0, ing0) = (
            cpu_seconds(gateway.pid()),
            load_cpu(),
            cpu_seconds(ingestor.pid()),
        );
        let redis0 = redis_cpu_seconds(&mut redis).await;
        let host0 = host_busy_seconds();
        let buckets0 = latency_buckets(&admin_addr, GATEWAY_LATENCY).await;
        let ingestor0 = latency_buckets(&ingestor_admin, INGESTOR_LATENCY).await;
        eprintln!(
            "writing {warmup} untimed then {total} timed events at {}/s…",
            s.rate
        );
        let mut insert_rtt = Vec::with_capacity(total as usize);
        let mut expected = 0u64;
        let phase_started = Instant::now();
        for i in 0..warmup + total {
            let due = phase_started + period.mul_f64(i as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
            let org = i % s.orgs;
            let timed = i >= warmup;
            if timed {
                // Clients 0..target: client k reads org k % orgs.
                expected += target / s.orgs + u64::from(org < target % s.orgs);
            }
            let id = format!("p{n}-{i}");
            let sent = Instant::now();
            // The load clients time events whose description is a number.
            let sent_us = if timed {
                now_us().to_string()
            } else {
                "warm-up".to_owned()
            };
            db.execute(&insert, &[&id, &org_id(org), &user_id(org, 0), &sent_us])
                .await?;
            insert_rtt.push(sent.elapsed());
        }
        let write_seconds = phase_started.elapsed().as_secs_f64();
        let gateway_cpu = (cpu_seconds(gateway.pid()) - gw0) / write_seconds;
        let gateway_sys = (cpu_split(gateway.pid()).1 - gw_sys0) / write_seconds;
        let load_cpu_s = (load_cpu() - load0) / write_seconds;
        let ingestor_cpu = (cpu_seconds(ingestor.pid()) - ing0) / write_seconds;
        let redis_cpu = (redis_cpu_seconds(&mut redis).await - redis0) / write_seconds;
        let host_cpu = (host_busy_seconds() - host0) / write_seconds;

        // 3. Wait for the last deliveries: all expected, or no progress
        // for 3 s.
        let mut last = (0u64, Instant::now());
        let totals = loop {
            let totals = collect(&mut procs).await?;
            if totals.timed >= expected || last.1.elapsed() > Duration::from_secs(3) {
                break totals;
            }
            if totals.timed > last.0 {
                last = (totals.timed, Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        anyhow::ensure!(
            gateway.output_text().find("panicked").is_none(),
            "the gateway panicked:\n{}",
            gateway.output_text()
        );
        let rss_after = rss_kib(gateway.pid())?;
        let buckets1 = latency_buckets(&admin_addr, GATEWAY_LATENCY).await;
        let ingestor1 = latency_buckets(&ingestor_admin, INGESTOR_LATENCY).await;
        insert_rtt.sort();
        let window_s = (totals.last_us.saturating_sub(totals.first_us)) as f64 / 1e6;
        phases.push(Phase {
            clients: target,
            processes: procs.len(),
            connect_seconds,
            streams_reported,
            rss_before_kib: rss_prev,
            rss_idle_kib: rss_idle,
            added: target - connected_so_far,
            written: total,
            write_rate: (warmup + total) as f64 / write_seconds,
            expected,
            delivered: totals.timed,
            window_s,
            send_p50: quantile_ms(&totals.send, 0.50),
            send_p99: quantile_ms(&totals.send, 0.99),
            send_max: quantile_ms(&totals.send, 1.0),
            commit_p50: quantile_ms(&totals.commit, 0.50),
            commit_p99: quantile_ms(&totals.commit, 0.99),
            insert_p50: quantile_sorted_ms(&insert_rtt, 0.50),
            insert_p99: quantile_sorted_ms(&insert_rtt, 0.99),
            gateway_p50: bucket_quantile_ms(&buckets0, &buckets1, 0.50),
            gateway_p99: bucket_quantile_ms(&buckets0, &buckets1, 0.99),
            ingestor_p50: bucket_quantile_ms(&ingestor0, &ingestor1, 0.50),
            ingestor_p99: bucket_quantile_ms(&ingestor0, &ingestor1, 0.99),
            host_cpu,
            gateway_cpu,
            gateway_sys,
            load_cpu: load_cpu_s,
            ingestor_cpu,
            redis_cpu,
            rss_after_kib: rss_after,
            ended: totals.ended,
            gave_up: totals.gave_up,
            seconds: totals
                .seconds
                .values()
                .map(|[n, slow, max]| {
                    (
                        100.0 * *slow as f64 / (*n).max(1) as f64,
                        *max as f64 / 1000.0,
                    )
                })
                .collect(),
        });
        eprintln!(
            "{target} clients: {} of {expected} deliveries, p50 {:.2} ms, p99 {:.2} ms",
            totals.timed,
            quantile_ms(&totals.send, 0.5),
            quantile_ms(&totals.send, 0.99)
        );
        connected_so_far = target;
        rss_prev = rss_after;
    }

    // Stop the load first (their streams close), then the rest.
    for mut p in procs {
        let _ = p.send("quit").await;
        let _ = tokio::time::timeout(Duration::from_secs(5), p.child.wait()).await;
        let _ = p.child.kill().await;
    }
    drop(gateway);
    drop(ingestor);

    print_report(&s, host_before, rss_baseline, max_clients, &phases);
    Ok(())
}

fn kib_per(delta_kib: i64, n: u64) -> f64 {
    delta_kib as f64 * 1024.0 / 1000.0 / n as f64
}

fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

fn print_report(
    s: &Settings,
    host_before: f64,
    rss_baseline: u64,
    max_clients: u64,
    phases: &[Phase],
) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("## bench-fanout ({cores} cores, one gateway replica, everything on one host)");
    println!();
    println!(
        "`make bench-fanout` (release ingestor and gateway, then `cargo run --release -p realtime-tests --bin bench_fanout`) with \
         BENCH_CLIENTS={} BENCH_ORGS={} BENCH_USERS={} BENCH_RATE={} BENCH_SECONDS={} BENCH_PER_PROCESS={} BENCH_CLIENT_ROUND_US={} BENCH_WARMUP_SECONDS={}",
        s.phases
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(","),
        s.orgs,
        s.users,
        s.rate,
        s.seconds,
        s.per_process,
        s.round_us,
        s.warmup
    );
    println!(
        "clients spread evenly over {} organizations ({} users each), up to {max_clients} streams in `sse_load` processes of at most {}; \
         host CPU busy before the bench: {host_before:.2} cores",
        s.orgs, s.users, s.per_process
    );
    println!();
    println!(
        "| clients | sse_load processes | gateway RSS, idle | RSS per idle connection (clients added) | RSS per idle connection (0→N) |"
    );
    println!("|---|---|---|---|---|");
    println!("| 0 | 0 | {:.1} MB | | |", mb(rss_baseline));
    for p in phases {
        println!(
            "| {} | {} | {:.1} MB | {:.1} KB (+{}) | {:.1} KB |",
            p.clients,
            p.processes,
            mb(p.rss_idle_kib),
            kib_per(p.rss_idle_kib as i64 - p.rss_before_kib as i64, p.added),
            p.added,
            kib_per(p.rss_idle_kib as i64 - rss_baseline as i64, p.clients),
        );
    }
    println!();
    println!(
        "| clients | events/s written | deliveries/s | delivered / expected | latency p50 | p99 | max | by commit `timestamp` p50 / p99 | ingestor commit→publish p50 / p99 | gateway commit→send p50 / p99 | INSERT round trip p50 / p99 | CPU cores: gateway / sse_load / ingestor / Redis / rest of host | gateway RSS after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for p in phases {
        let rate = if p.window_s > 0.0 {
            p.delivered as f64 / p.window_s
        } else {
            f64::NAN
        };
        println!(
            "| {} | {:.0} | {rate:.0} | {} / {} | {:.2} ms | {:.2} ms | {:.1} ms | {:.0} / {:.0} ms | ≤ {} / ≤ {} ms | ≤ {} / ≤ {} ms | {:.2} / {:.2} ms | {:.2} / {:.2} / {:.2} / {:.2} / {:.2} | {:.1} MB |",
            p.clients,
            p.write_rate,
            p.delivered,
            p.expected,
            p.send_p50,
            p.send_p99,
            p.send_max,
            p.commit_p50,
            p.commit_p99,
            p.ingestor_p50,
            p.ingestor_p99,
            p.gateway_p50,
            p.gateway_p99,
            p.insert_p50,
            p.insert_p99,
            p.gateway_cpu,
            p.load_cpu,
            p.ingestor_cpu,
            p.redis_cpu,
            p.host_cpu - p.gateway_cpu - p.load_cpu - p.ingestor_cpu - p.redis_cpu,
            mb(p.rss_after_kib),
        );
    }
    println!();
    for p in phases {
        println!(
            "- {} clients: opened in {:.1} s, the gateway's `realtime_gateway_connections` says {}; {} events written; {} streams ended early, {} never opened",
            p.clients,
            p.connect_seconds,
            p.streams_reported
                .map_or_else(|| "?".to_owned(), |v| format!("{v:.0}")),
            p.written,
            p.ended,
            p.gave_up
        );
    }
    for p in phases {
        let per_delivery_us =
            p.gateway_cpu * p.written as f64 / p.write_rate.max(1.0) / p.delivered.max(1) as f64
                * 1e6;
        println!(
            "- {} clients: gateway CPU {:.1} µs per delivery, {:.0}% of it in the kernel",
            p.clients,
            per_delivery_us,
            100.0 * p.gateway_sys / p.gateway_cpu.max(1e-9)
        );
    }
    println!(
        "- latency: the bench's clock just before it sends the INSERT → the load client reading the frame off its socket \
         (µs, wall clock, same host): INSERT + commit + ingestor + Redis + gateway + client read, so an upper bound on \
         commit→client by about the INSERT round trip, and including up to one client read round ({round}). By commit `timestamp`: receive − the event's commit time (whole ms, \
         up to 1 ms high). Ingestor commit→publish and gateway commit→send: their own histograms \
         (commit time → PUBLISHed to Redis; commit time → frame written or queued for the socket), as Prometheus bucket bounds",
        round = if s.round_us == 0 {
            "0: clients read as data arrives".to_owned()
        } else {
            format!(
                "{} µs, during which a client sleeps rather than being woken by each frame",
                s.round_us
            )
        }
    );
    println!(
        "- deliveries/s: timed events received by all clients / (last − first receive); CPU: CPU seconds per second of the \
         writing phase; rest of host: every other process on the machine (Postgres, this bench's writer, \
         and anything else running: above ~0.3 cores the host was shared and the latencies are not this code's alone)"
    );
    println!(
        "- RSS per idle connection: growth of the gateway's VmRSS from before a phase's clients connected to 3 s after, / the \
         clients added (later phases start after the previous phase's traffic); 0→N: from the gateway with no client; KB = 1000 bytes"
    );
    for p in phases {
        let series: Vec<String> = p
            .seconds
            .iter()
            .map(|(slow, max)| format!("{slow:.0}% ({max:.0})"))
            .collect();
        println!(
            "- {} clients, each second of the phase: share of deliveries over 10 ms (slowest, ms): {}",
            p.clients,
            series.join(", ")
        );
    }
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    for p in phases {
        let per_conn = kib_per(p.rss_idle_kib as i64 - p.rss_before_kib as i64, p.added);
        println!(
            "- targets at {} clients: commit→client p99 < 50 ms {} ({:.2} ms); < 20 KB RSS per idle connection {} ({per_conn:.1} KB); every delivery {}",
            p.clients,
            verdict(p.send_p99 < 50.0),
            p.send_p99,
            verdict(per_conn < 20.0),
            verdict(p.delivered == p.expected)
        );
    }
}
