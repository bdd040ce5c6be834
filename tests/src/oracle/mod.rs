//! The fault oracle: real processes (Postgres, durable Redis, the ingestor
//! binary, gateway binaries), writers committing `properties` rows across
//! several organizations, EventSource-like clients that resume with
//! `Last-Event-ID` on a random replica, and a seeded schedule of faults
//! (kill -9 and SIGTERM drains, Redis and Postgres restarts, membership
//! churn). When the schedule is over and everything is healthy again, the
//! database is the truth every client's stream is judged against
//! ([`verdict`]).
//!
//! `tests/tests/fault_oracle.rs` runs one small seed in `make test`;
//! `make soak` runs many (`src/bin/fault_soak.rs`). Both read the same
//! knobs: `ORACLE_SEED` (replay one seed; random otherwise, always
//! printed), `ORACLE_SEEDS`, `ORACLE_EVENTS` (rows per seed),
//! `ORACLE_FAULTS`, `ORACLE_CLIENTS`, `ORACLE_GATEWAYS`, `ORACLE_RATE`
//! (rows per second), `ORACLE_WRITERS`.
//!
//! A re-added member: membership is checked when a stream opens. A stream
//! open at the user's `member.leave` ends and gets nothing after it; while
//! the user is out every stream it asks for is refused (403). Once it is a
//! member again, a stream resuming with its `Last-Event-ID` gets the history
//! after that id, the events committed while it was out included (it is a
//! member when they are delivered, and a page load would show them too),
//! which is what the oracle expects: every event of the organization
//! exactly once.

pub mod client;
pub mod cluster;
pub mod membership;
pub mod schedule;
pub mod verdict;
pub mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use realtime_shared::event::EventId;
use tokio::sync::watch;
use tokio::time::Instant;

use client::{Behaviour, ClientLog, ClientSpec, EventKey, SharedLog};
use cluster::Cluster;
pub use membership::Churn;
use schedule::{Fault, Step};
use verdict::{ClientFindings, Truth};
use writer::WriteLog;

/// How long every client may take to catch up once the faults are over.
const CATCH_UP: Duration = Duration::from_secs(120);
/// How long the clients may take to connect, and to see the first events.
const SETTLE: Duration = Duration::from_secs(60);

/// The shape of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    /// `properties` rows the writers attempt.
    pub events: usize,
    pub faults: usize,
    pub clients: usize,
    pub gateways: usize,
    pub orgs: usize,
    pub writers: usize,
    /// Rows per second, all writers together.
    pub rate: f64,
}

impl Plan {
    /// The run of `make test`: a few thousand rows, every kind of fault.
    pub fn small() -> Self {
        Self {
            seed: random_seed(),
            events: 3000,
            faults: 8,
            clients: 24,
            gateways: 3,
            orgs: 3,
            writers: 4,
            rate: 250.0,
        }
    }

    /// `self` with every `ORACLE_*` knob that is set applied.
    pub fn with_env(mut self) -> Self {
        fn knob<T: std::str::FromStr>(name: &str) -> Option<T> {
            let value = std::env::var(name).ok()?;
            Some(
                value
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={value:?} is not a valid number")),
            )
        }
        self.seed = knob("ORACLE_SEED").unwrap_or(self.seed);
        self.events = knob("ORACLE_EVENTS").unwrap_or(self.events);
        self.faults = knob("ORACLE_FAULTS").unwrap_or(self.faults);
        self.clients = knob("ORACLE_CLIENTS").unwrap_or(self.clients);
        self.gateways = knob("ORACLE_GATEWAYS").unwrap_or(self.gateways).max(1);
        self.writers = knob("ORACLE_WRITERS").unwrap_or(self.writers).max(1);
        self.rate = knob("ORACLE_RATE").unwrap_or(self.rate);
        self.orgs = self.orgs.max(1);
        self.clients = self.clients.max(self.orgs * 2);
        self
    }
}

/// A seed from the clock (printed, so any run can be replayed).
pub fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)
}

/// One applied fault.
#[derive(Debug, Clone)]
pub struct Applied {
    /// Since the writers started.
    pub at: Duration,
    pub fault: Fault,
    pub down: Duration,
    /// Until the process was back and ready.
    pub took: Duration,
    /// Rows attempted when it fired.
    pub at_event: usize,
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    pub plan: Plan,
    /// `properties` rows in the table (warm-up and end markers included).
    pub rows: usize,
    /// Membership events committed.
    pub member_events: usize,
    pub uncertain_txns: usize,
    pub timeline: Vec<Applied>,
    /// Events received by all clients together.
    pub deliveries: usize,
    pub sessions: usize,
    pub transient: usize,
    pub connect_errors: usize,
    /// `(client, user, org, behaviour, findings)` of the clients that failed.
    pub failed: Vec<(usize, String, String, Behaviour, ClientFindings)>,
    /// Acknowledged rows the table does not hold.
    pub lost_commits: Vec<String>,
    /// Set when every client did not catch up in time.
    pub catch_up_timeout: Option<String>,
    /// Where the processes' logs were copied (failed runs only).
    pub logs: Option<std::path::PathBuf>,
    pub wall: Duration,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.failed.is_empty() && self.lost_commits.is_empty() && self.catch_up_timeout.is_none()
    }

    /// Events committed in the run (rows and membership changes).
    pub fn events(&self) -> usize {
        self.rows + self.member_events
    }

    /// Faults by kind.
    pub fn faults_by_kind(&self) -> BTreeMap<&'static str, usize> {
        let mut by_kind: BTreeMap<&'static str, usize> = BTreeMap::new();
        for applied in &self.timeline {
            *by_kind.entry(applied.fault.kind()).or_default() += 1;
        }
        by_kind
    }

    /// One line: seed, result, figures.
    pub fn summary(&self) -> String {
        format!(
            "seed {}: {} — {} events ({} rows, {} membership), {} uncertain txns, {} faults, {} deliveries over {} streams ({} transient refusals, {} connect errors), {:.1} s",
            self.plan.seed,
            if self.passed() { "PASS" } else { "FAIL" },
            self.events(),
            self.rows,
            self.member_events,
            self.uncertain_txns,
            self.timeline.len(),
            self.deliveries,
            self.sessions,
            self.transient,
            self.connect_errors,
            self.wall.as_secs_f64()
        )
    }

    /// The compact diff of a failed run: seed, per client the ids missing,
    /// duplicated, misrouted…, and the fault timeline.
    pub fn diff(&self) -> String {
        let mut out = format!(
            "fault oracle FAILED, seed {} (rerun: ORACLE_SEED={} ORACLE_EVENTS={} ORACLE_FAULTS={} ORACLE_RATE={} ORACLE_CLIENTS={} ORACLE_GATEWAYS={} ORACLE_WRITERS={})\n{}",
            self.plan.seed,
            self.plan.seed,
            self.plan.events,
            self.plan.faults,
            self.plan.rate,
            self.plan.clients,
            self.plan.gateways,
            self.plan.writers,
            self.summary()
        );
        if let Some(why) = &self.catch_up_timeout {
            let _ = write!(out, "\n  catch-up: {why}");
        }
        if !self.lost_commits.is_empty() {
            let _ = write!(
                out,
                "\n  acknowledged rows not in the table: {:?}",
                self.lost_commits
            );
        }
        for (n, user, org, behaviour, findings) in &self.failed {
            let _ = write!(
                out,
                "\n  client {n} ({user} in {org}, {behaviour:?}):{}",
                findings.describe(8)
            );
        }
        out.push_str("\n  fault timeline:");
        out.push_str(&self.timeline_text());
        if let Some(logs) = &self.logs {
            let _ = write!(out, "\n  process logs: {}", logs.display());
        }
        out
    }

    pub fn timeline_text(&self) -> String {
        let mut out = String::new();
        for a in &self.timeline {
            let _ = write!(
                out,
                "\n    +{:>7.3} s (row {:>6}) {} — down {} ms, back after {:.3} s",
                a.at.as_secs_f64(),
                a.at_event,
                a.fault,
                a.down.as_millis(),
                a.took.as_secs_f64()
            );
        }
        out
    }
}

/// Runs `plan` and judges it. Panics only when the harness itself cannot
/// go on (a server that does not start); what the oracle finds is in the
/// report.
pub async fn run(plan: &Plan) -> Report {
    let started = Instant::now();
    println!(
        "fault oracle: seed {} ({} rows, {} faults, {} clients, {} gateways, {} orgs; rerun with ORACLE_SEED={})",
        plan.seed, plan.events, plan.faults, plan.clients, plan.gateways, plan.orgs, plan.seed
    );
    let orgs: Vec<String> = (0..plan.orgs).map(|n| format!("org{n}")).collect();
    let churn_users: Vec<(String, String)> = orgs
        .iter()
        .enumerate()
        .map(|(n, org)| (format!("churn{n}"), org.clone()))
        .collect();
    let specs: Vec<ClientSpec> = (0..plan.clients)
        .map(|index| {
            let org = orgs[index % orgs.len()].clone();
            let (user, behaviour) = if index < orgs.len() {
                (churn_users[index].0.clone(), Behaviour::Churn)
            } else if index % 4 == 3 {
                (format!("u{index}"), Behaviour::Restless)
            } else {
                (format!("u{index}"), Behaviour::Steady)
            };
            ClientSpec {
                index,
                token: token(&user),
                user,
                org,
                behaviour,
                seed: plan
                    .seed
                    .wrapping_add((index as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D)),
            }
        })
        .collect();
    let mut seed_sql = String::from(membership::LOG_TABLE_SQL);
    let _ = write!(
        seed_sql,
        "INSERT INTO users (id) VALUES ('{}');",
        writer::WRITER_USER
    );
    for org in &orgs {
        let _ = write!(
            seed_sql,
            "INSERT INTO organizations (id, name) VALUES ('{org}', 'Org {org}');"
        );
    }
    for spec in &specs {
        let _ = write!(
            seed_sql,
            "INSERT INTO users (id) VALUES ('{u}'); INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES ('m-{u}-{o}', '{u}', '{o}');",
            u = spec.user,
            o = spec.org
        );
    }
    let mut cluster = Cluster::start(plan.gateways, &seed_sql)
        .await
        .expect("the cluster starts");
    let churn = Arc::new(Churn::new(churn_users));

    let (stop_tx, stop_rx) = watch::channel(false);
    let logs: Vec<SharedLog> = specs.iter().map(|_| SharedLog::default()).collect();
    let clients: Vec<_> = specs
        .iter()
        .zip(&logs)
        .map(|(spec, log)| {
            tokio::spawn(client::run(
                spec.clone(),
                cluster.replicas.clone(),
                log.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    crate::wait_until("every client is connected", SETTLE, || {
        let all = logs.iter().all(|log| {
            client::lock(log)
                .sessions
                .iter()
                .any(|s| s.connected_at.is_some())
        });
        async move { all.then_some(()) }
    })
    .await;
    // A first event per organization, so every client has an id to resume
    // from before anything fails (a stream without one is live-only).
    for org in &orgs {
        cluster
            .ctx
            .execute(
                "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ($1, $2, $3, 1)",
                &[&format!("warm-{org}"), org, &writer::WRITER_USER],
            )
            .await;
    }
    let warmed = wait_quietly(SETTLE, || {
        logs.iter().all(|log| !client::lock(log).events.is_empty())
    })
    .await;
    assert!(
        warmed,
        "seed {}: not every client got its organization's first event within {SETTLE:?}:\n{}",
        plan.seed,
        client_states(&specs, &logs)
    );

    let write_log = Arc::new(WriteLog::default());
    let orgs_arc = Arc::new(orgs.clone());
    let writers: Vec<_> = (0..plan.writers)
        .map(|index| {
            tokio::spawn(writer::run(
                index,
                cluster.ctx.clone(),
                orgs_arc.clone(),
                plan.events,
                plan.rate / plan.writers as f64,
                plan.seed,
                write_log.clone(),
            ))
        })
        .collect();
    let writing = Instant::now();
    let steps: Vec<Step> = schedule::generate(
        plan.seed,
        plan.events,
        plan.faults,
        plan.gateways,
        plan.orgs,
    );
    let mut timeline = Vec::with_capacity(steps.len());
    for step in steps {
        let what = format!("the writers reach row {} for {}", step.at_event, step.fault);
        let attempted = &write_log.attempted;
        crate::wait_until(&what, Duration::from_secs(600), || {
            let reached = attempted.load(Ordering::SeqCst) >= step.at_event;
            async move { reached.then_some(()) }
        })
        .await;
        let at = writing.elapsed();
        let fault_started = Instant::now();
        cluster.apply(step.fault, step.down, &churn).await;
        timeline.push(Applied {
            at,
            fault: step.fault,
            down: step.down,
            took: fault_started.elapsed(),
            at_event: step.at_event,
        });
    }
    for writer in writers {
        writer.await.expect("a writer panicked");
    }
    // The end markers: once a client has its organization's marker it has
    // caught up with everything committed before it.
    let pg = writer::connect(&cluster.ctx).await;
    for org in &orgs {
        pg.execute(
            "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ($1, $2, $3, 1)",
            &[&format!("zend-{org}"), org, &writer::WRITER_USER],
        )
        .await
        .expect("inserting the end markers");
    }
    let caught_up = wait_quietly(CATCH_UP, || {
        logs.iter().zip(&specs).all(|(log, spec)| {
            let marker = format!("zend-{}", spec.org);
            client::lock(log)
                .events
                .iter()
                .any(|e| e.key == EventKey::Property(marker.clone()))
        })
    })
    .await;
    let catch_up_timeout = (!caught_up).then(|| {
        let behind: Vec<String> = logs
            .iter()
            .zip(&specs)
            .filter(|(log, spec)| {
                let marker = EventKey::Property(format!("zend-{}", spec.org));
                !client::lock(log).events.iter().any(|e| e.key == marker)
            })
            .map(|(log, spec)| {
                let log = client::lock(log);
                format!(
                    "client {} ({}) at {:?}, {} sessions, last ended {:?}",
                    spec.index,
                    spec.user,
                    log.last_id().map(|i| i.to_string()),
                    log.sessions.len(),
                    log.sessions.last().and_then(|s| s.end)
                )
            })
            .collect();
        format!(
            "{} clients did not get their end marker within {CATCH_UP:?}: {}",
            behind.len(),
            behind.join("; ")
        )
    });
    let _ = stop_tx.send(true);
    for client in clients {
        let _ = client.await;
    }

    let truth = read_truth(&pg).await;
    let acked: Vec<String> = write_log
        .acked
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let lost_commits: Vec<String> = acked
        .into_iter()
        .filter(|id| !truth.rows.contains_key(id))
        .take(20)
        .collect();
    let taken: Vec<ClientLog> = logs
        .iter()
        .map(|log| std::mem::take(&mut *client::lock(log)))
        .collect();
    let mut leave_ids: BTreeMap<(String, String), BTreeSet<EventId>> = BTreeMap::new();
    for log in &taken {
        for event in &log.events {
            if let (EventKey::Member { leave: true, user }, Some(org)) = (&event.key, &event.org) {
                leave_ids
                    .entry((org.clone(), user.clone()))
                    .or_default()
                    .insert(event.id);
            }
        }
    }
    let windows = churn.windows();
    let mut failed = Vec::new();
    for (spec, log) in specs.iter().zip(&taken) {
        let findings = verdict::judge(spec, log, &truth, &leave_ids, &windows, writing);
        if !findings.passed() {
            failed.push((
                spec.index,
                spec.user.clone(),
                spec.org.clone(),
                spec.behaviour,
                findings,
            ));
        }
    }
    let mut report = Report {
        plan: plan.clone(),
        rows: truth.rows.len(),
        member_events: truth.members.values().flat_map(|m| m.values()).sum(),
        uncertain_txns: write_log.uncertain_txns.load(Ordering::Relaxed),
        timeline,
        deliveries: taken.iter().map(|l| l.events.len()).sum(),
        sessions: taken.iter().map(|l| l.sessions.len()).sum(),
        transient: taken.iter().map(|l| l.transient).sum(),
        connect_errors: taken.iter().map(|l| l.connect_errors).sum(),
        failed,
        lost_commits,
        catch_up_timeout,
        logs: None,
        wall: started.elapsed(),
    };
    if !report.passed() {
        report.logs = cluster.save_logs(plan.seed);
    }
    report
}

/// One line per client: sessions, events, refusals, syncs, malformed.
fn client_states(specs: &[ClientSpec], logs: &[SharedLog]) -> String {
    let mut out = String::new();
    for (spec, log) in specs.iter().zip(logs) {
        let log = client::lock(log);
        let _ = writeln!(
            out,
            "  client {} ({} in {}): {} sessions (last ended {:?}), {} events, refusals {:?}, syncs {:?}, malformed {:?}, {} connect errors",
            spec.index,
            spec.user,
            spec.org,
            log.sessions.len(),
            log.sessions.last().and_then(|s| s.end),
            log.events.len(),
            log.refusals.iter().take(3).collect::<Vec<_>>(),
            log.syncs.iter().take(3).collect::<Vec<_>>(),
            log.malformed.iter().take(3).collect::<Vec<_>>(),
            log.connect_errors
        );
    }
    out
}

/// Polls `done` every 20 ms until it holds or `deadline` passes; whether
/// it held. (The oracle reports a timeout with its diff instead of
/// panicking.)
async fn wait_quietly(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    loop {
        if done() {
            return true;
        }
        if started.elapsed() >= deadline {
            return false;
        }
        tokio::time::sleep(crate::wait::POLL_INTERVAL).await;
    }
}

async fn read_truth(pg: &tokio_postgres::Client) -> Truth {
    let mut truth = Truth::default();
    for row in pg
        .query("SELECT id, \"organizationId\" FROM properties", &[])
        .await
        .expect("reading the committed rows")
    {
        truth.rows.insert(row.get(0), row.get(1));
    }
    for row in pg
        .query(
            "SELECT \"organizationId\", \"userId\", leave FROM oracle_membership_log",
            &[],
        )
        .await
        .expect("reading the membership log")
    {
        *truth
            .members
            .entry(row.get(0))
            .or_default()
            .entry((row.get(2), row.get(1)))
            .or_default() += 1;
    }
    truth
}

/// An HS256 bearer token for `user`, valid for a day.
fn token(user: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({"sub": user, "exp": now + 86_400, "iat": now});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(cluster::JWT_SECRET.as_bytes()),
    )
    .expect("signing a token")
}
