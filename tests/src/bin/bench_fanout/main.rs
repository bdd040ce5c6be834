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
//! Cases (`BENCH_CASE`, each setting below still overrides its defaults):
//! `default` (one replica, 1,000 then 9,000 clients over 100
//! organizations at 1,000 events/s); `hot-org` (one organization, 5,000
//! clients, 30 events/s: 150,000 deliveries/s asked of one organization);
//! `two-replicas` (9,000 clients over 100 organizations at 1,000 events/s,
//! through two gateway replicas, clients alternating between them);
//! `storm` (as `two-replicas`, and a third of the way through the timed
//! events every stream is cut at once and resumes on the other replica
//! with its `Last-Event-ID`: reports the time until all resumed, events
//! lost and repeated); `cluster` (as `two-replicas`, on a Redis Cluster of 3
//! primaries with a replica each instead of one Redis: the ingestor
//! `SPUBLISH`es, the gateways `SSUBSCRIBE` per organization; compare its
//! Redis CPU per event, summed over every node, with `two-replicas`').
//!
//! Settings (environment): `BENCH_CLIENTS` (default `1000,9000`, ascending:
//! clients are added, never removed), `BENCH_ORGS` (100), `BENCH_USERS` (3
//! users per organization, shared by its clients), `BENCH_RATE` (1000
//! events/s), `BENCH_SECONDS` (10 per phase), `BENCH_PER_PROCESS` (3000
//! streams per `sse_load`), `BENCH_CONNECT_CONCURRENCY` (100 handshakes in
//! flight per `sse_load`), `BENCH_CLIENT_ROUND_US` (1000; 0 reads as data
//! arrives), `BENCH_WARMUP_SECONDS` (2: untimed events written at the rate
//! right before each phase's timed ones; the CPU figures include them).

mod load;
mod measure;
mod report;

use load::*;
use measure::*;
use report::*;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use realtime_tests::bench::env_or;
use realtime_tests::{
    ChildProcess, PostgresServer, RedisCluster, RedisServer, binary_path, connect,
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

const JWT_SECRET: &str = "bench-fanout-jwt-secret-with-enough-bytes";

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

/// What `BENCH_CASE` selects.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    Default,
    HotOrg,
    TwoReplicas,
    Storm,
    Cluster,
}

impl Case {
    fn from_env() -> anyhow::Result<Self> {
        match std::env::var("BENCH_CASE").as_deref().map(str::trim) {
            Err(_) | Ok("") | Ok("default") => Ok(Case::Default),
            Ok("hot-org") => Ok(Case::HotOrg),
            Ok("two-replicas") => Ok(Case::TwoReplicas),
            Ok("storm") => Ok(Case::Storm),
            Ok("cluster") => Ok(Case::Cluster),
            Ok(other) => {
                anyhow::bail!(
                    "BENCH_CASE {other:?}: one of default, hot-org, two-replicas, storm, cluster"
                )
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Case::Default => "default",
            Case::HotOrg => "hot-org",
            Case::TwoReplicas => "two-replicas",
            Case::Storm => "storm",
            Case::Cluster => "cluster",
        }
    }

    /// Issue 16's commit→client p99 target for the case, in ms: none for
    /// `storm`, whose run-wide p99 is the resume burst (its target is the
    /// resume itself).
    fn p99_target_ms(self) -> Option<f64> {
        match self {
            Case::HotOrg => Some(100.0),
            Case::Storm => None,
            Case::Default | Case::TwoReplicas | Case::Cluster => Some(25.0),
        }
    }

    /// (clients per phase, organizations, events/s, gateway replicas).
    fn defaults(self) -> (Vec<u64>, u64, u64, u64) {
        match self {
            Case::Default => (vec![1000, 9000], 100, 1000, 1),
            Case::HotOrg => (vec![5000], 1, 30, 1),
            Case::TwoReplicas | Case::Storm | Case::Cluster => (vec![9000], 100, 1000, 2),
        }
    }
}

struct Settings {
    case: Case,
    replicas: u64,
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
        let case = Case::from_env()?;
        let (default_phases, default_orgs, default_rate, replicas) = case.defaults();
        let phases = match std::env::var("BENCH_CLIENTS") {
            Ok(v) => v
                .split(',')
                .map(|s| s.trim().parse::<u64>())
                .collect::<Result<Vec<_>, _>>()
                .context("BENCH_CLIENTS: comma-separated client counts")?,
            Err(_) => default_phases,
        };
        anyhow::ensure!(
            !phases.is_empty() && phases.windows(2).all(|w| w[0] < w[1]) && phases[0] > 0,
            "BENCH_CLIENTS must be ascending and positive"
        );
        Ok(Self {
            case,
            replicas,
            phases,
            orgs: env_or("BENCH_ORGS", default_orgs).clamp(1, 9999),
            users: env_or("BENCH_USERS", 3).max(1),
            rate: env_or("BENCH_RATE", default_rate).max(1),
            seconds: env_or("BENCH_SECONDS", 10).max(1),
            per_process: env_or("BENCH_PER_PROCESS", 3000).max(1),
            concurrency: env_or("BENCH_CONNECT_CONCURRENCY", 100).max(1),
            round_us: env_or("BENCH_CLIENT_ROUND_US", 1000),
            warmup: env_or("BENCH_WARMUP_SECONDS", 2),
        })
    }
}

/// A latency histogram summed over the replicas' `/metrics`.
async fn summed_buckets(admins: &[String], histogram: &str) -> Vec<(f64, u64)> {
    let mut sum: Vec<(f64, u64)> = Vec::new();
    for admin in admins {
        for (le, count) in latency_buckets(admin, histogram).await {
            match sum.iter_mut().find(|(b, _)| *b == le) {
                Some((_, c)) => *c += count,
                None => sum.push((le, count)),
            }
        }
    }
    sum
}

/// The Redis the bench runs against: one server, or (case `cluster`) a
/// cluster of 3 primaries with a replica each.
enum Redis {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Redis {
    fn start(case: Case) -> anyhow::Result<Self> {
        Ok(match case {
            Case::Cluster => Redis::Cluster(RedisCluster::start()?),
            _ => Redis::Single(RedisServer::start()?),
        })
    }

    /// `REDIS_URL`: the server, or every cluster node as a seed.
    fn url(&self) -> String {
        match self {
            Redis::Single(server) => server.url(),
            Redis::Cluster(cluster) => cluster.url(),
        }
    }

    /// A connection to every node, for their CPU (`INFO cpu`): one, or all
    /// six cluster nodes (replicas replay every write, so they count too).
    async fn nodes(&self) -> anyhow::Result<Vec<redis::aio::MultiplexedConnection>> {
        let urls = match self {
            Redis::Single(server) => vec![server.url()],
            Redis::Cluster(cluster) => cluster
                .ports()
                .iter()
                .map(|p| format!("redis://127.0.0.1:{p}"))
                .collect(),
        };
        let mut nodes = Vec::new();
        for url in urls {
            nodes.push(
                redis::Client::open(url)?
                    .get_multiplexed_async_connection()
                    .await?,
            );
        }
        Ok(nodes)
    }

    /// `XLEN key`, on the node that serves it.
    async fn xlen(&self, key: &str) -> anyhow::Result<u64> {
        let url = match self {
            Redis::Single(server) => server.url(),
            Redis::Cluster(cluster) => format!(
                "redis://127.0.0.1:{}",
                cluster.primary_of_slot(cluster.key_slot(key)?)?
            ),
        };
        let mut conn = redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await?;
        Ok(redis::cmd("XLEN").arg(key).query_async(&mut conn).await?)
    }
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
    let redis_server = Redis::start(s.case)?;
    let admin = connect(&pg.url("postgres"))
        .await
        .context("connecting to the bench's Postgres")?;
    admin.batch_execute("CREATE DATABASE bench").await?;
    let url = pg.url("bench");
    let db = connect(&url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
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
    let mut redis = redis_server.nodes().await?;
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
        let len = redis_server.xlen(&warm_key).await?;
        if len > 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the ingestor published nothing within 60 s; its output:\n{}",
            ingestor.output_text()
        );
    }

    eprintln!("starting {} release gateway replica(s)…", s.replicas);
    let mut gateways = Vec::new();
    for _ in 0..s.replicas {
        gateways.push(ChildProcess::spawn(
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
        ));
    }
    let mut addrs = Vec::new();
    let mut admin_addrs = Vec::new();
    for gateway in &gateways {
        addrs.push(gateway.log_value("listen", Duration::from_secs(30)).await);
        admin_addrs.push(
            gateway
                .admin_addr(Duration::from_secs(30))
                .await
                .to_string(),
        );
    }
    let gateway_pids: Vec<u32> = gateways.iter().map(ChildProcess::pid).collect();
    let gateways_rss = || -> anyhow::Result<u64> { gateway_pids.iter().map(|p| rss_kib(*p)).sum() };
    let gateways_cpu = || gateway_pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let gateways_sys = || gateway_pids.iter().map(|p| cpu_split(*p).1).sum::<f64>();
    let ingestor_admin = ingestor
        .admin_addr(Duration::from_secs(30))
        .await
        .to_string();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_baseline = gateways_rss()?;
    eprintln!("gateway(s) on {addrs:?}, RSS {rss_baseline} KiB with no client");

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
            // Processes alternate between the replicas; a cut stream
            // resumes on the next one.
            let r = procs.len() + new_procs.len();
            let addr = &addrs[r % addrs.len()];
            let resume = &addrs[(r + 1) % addrs.len()];
            new_procs.push(LoadProcess::spawn(&s, addr, resume, first, count)?);
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
        let rss_idle = gateways_rss()?;
        let mut streams_reported = None;
        for admin in &admin_addrs {
            if let Some(n) = gateway_metric(admin, "realtime_gateway_connections").await {
                streams_reported = Some(streams_reported.unwrap_or(0.0) + n);
            }
        }
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
        let gw_sys0 = gateways_sys();
        let (gw0, load0, ing0) = (gateways_cpu(), load_cpu(), cpu_seconds(ingestor.pid()));
        let redis0 = redis_cpu_seconds(&mut redis).await;
        let host0 = host_busy_seconds();
        let buckets0 = summed_buckets(&admin_addrs, GATEWAY_LATENCY).await;
        let ingestor0 = latency_buckets(&ingestor_admin, INGESTOR_LATENCY).await;
        eprintln!(
            "writing {warmup} untimed then {total} timed events at {}/s…",
            s.rate
        );
        let mut insert_rtt = Vec::with_capacity(total as usize);
        let mut expected = 0u64;
        // The storm: every stream cut at once, a third of the way through
        // the timed events.
        let cut_at = (s.case == Case::Storm).then_some(warmup + total / 3);
        let mut cut: Option<(u64, u64)> = None;
        let phase_started = Instant::now();
        for i in 0..warmup + total {
            if Some(i) == cut_at {
                let mut streams = 0;
                let mut at_us = u64::MAX;
                for p in &mut procs {
                    let answer = p.request("cut", "cut").await?;
                    streams += answer["cut"].as_u64().unwrap_or(0);
                    at_us = at_us.min(answer["at_us"].as_u64().unwrap_or(u64::MAX));
                }
                eprintln!("cut {streams} streams at once");
                cut = Some((streams, at_us));
            }
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
        let gateway_cpu = (gateways_cpu() - gw0) / write_seconds;
        let gateway_sys = (gateways_sys() - gw_sys0) / write_seconds;
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
        for gateway in &gateways {
            anyhow::ensure!(
                gateway.output_text().find("panicked").is_none(),
                "the gateway panicked:\n{}",
                gateway.output_text()
            );
        }
        let rss_after = gateways_rss()?;
        let buckets1 = summed_buckets(&admin_addrs, GATEWAY_LATENCY).await;
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
            insert_p50: quantile_ms_of(&insert_rtt, 0.50),
            insert_p99: quantile_ms_of(&insert_rtt, 0.99),
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
            storm: cut.map(|(streams, at_us)| Storm {
                cut: streams,
                resumed: totals.resumed,
                seconds: totals.resumed_last_us.saturating_sub(at_us) as f64 / 1e6,
                repeated: totals.not_newer,
            }),
            not_newer: totals.not_newer,
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
    drop(gateways);
    drop(ingestor);

    print_report(&s, host_before, rss_baseline, max_clients, &phases);
    Ok(())
}
