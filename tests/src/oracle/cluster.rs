//! The real processes of a run: one Postgres and one durable Redis of its
//! own, the ingestor binary and N gateway binaries, and how each fault of
//! the schedule is applied to them and undone.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rand::Rng;

use super::schedule::Fault;
use crate::{ChildProcess, PostgresServer, RedisServer, TestContext, binary_path, free_port};

/// How long a binary may take to answer `/readyz` 200.
const READY: Duration = Duration::from_secs(60);
/// A draining replica (REALTIME_DRAIN=1s) must have exited within this.
const DRAIN_EXIT: Duration = Duration::from_secs(30);

/// The HS256 secret the gateways accept bearer tokens for.
pub const JWT_SECRET: &str = "fault-oracle-jwt-secret-with-enough-bytes";

/// The gateway addresses clients pick from, as a load balancer's list: a
/// replica that is down stays in it until its successor replaces it.
#[derive(Debug, Default)]
pub struct Replicas(Mutex<Vec<SocketAddr>>);

impl Replicas {
    pub fn pick(&self, rng: &mut impl Rng) -> SocketAddr {
        let list = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        list[rng.random_range(0..list.len())]
    }

    fn set(&self, n: usize, addr: SocketAddr) {
        let mut list = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if n < list.len() {
            list[n] = addr;
        } else {
            list.push(addr);
        }
    }
}

/// Postgres, Redis, the ingestor and the gateways of one run.
pub struct Cluster {
    pub ctx: TestContext,
    pub replicas: std::sync::Arc<Replicas>,
    ingestor: Option<ChildProcess>,
    gateways: Vec<Option<ChildProcess>>,
    /// Processes killed or drained, kept for their logs.
    retired: Vec<(String, ChildProcess)>,
    /// Declared after the processes that use them: dropped last.
    pub redis: RedisServer,
    pub postgres: PostgresServer,
}

impl Cluster {
    /// Starts Postgres and Redis, creates the database (Oikion schema) and
    /// runs `seed_sql` on it, then starts the ingestor and `gateways`
    /// replicas and waits until each is ready.
    pub async fn start(gateways: usize, seed_sql: &str) -> anyhow::Result<Self> {
        let postgres = tokio::task::spawn_blocking(PostgresServer::start).await??;
        let redis = tokio::task::spawn_blocking(RedisServer::start_with_aof).await??;
        let ctx = TestContext::on(&postgres).await.with_redis(&redis);
        ctx.batch(seed_sql).await;
        let mut cluster = Self {
            ctx,
            replicas: Default::default(),
            ingestor: None,
            gateways: (0..gateways).map(|_| None).collect(),
            retired: Vec::new(),
            redis,
            postgres,
        };
        cluster.start_ingestor().await;
        for n in 0..gateways {
            cluster.start_gateway(n).await;
        }
        Ok(cluster)
    }

    /// Applies `fault`, waits `down` (pacing: the time the process stays
    /// down), and undoes it: the process is running and ready again when
    /// this returns. `churn` does a membership fault's two halves.
    pub async fn apply(&mut self, fault: Fault, down: Duration, churn: &super::membership::Churn) {
        match fault {
            Fault::IngestorKill => {
                if let Some(mut ingestor) = self.ingestor.take() {
                    ingestor.kill9();
                    self.retire("ingestor", ingestor);
                }
                tokio::time::sleep(down).await;
                self.start_ingestor().await;
            }
            Fault::GatewayKill(n) => {
                if let Some(mut gateway) = self.gateways[n].take() {
                    gateway.kill9();
                    self.retire(&format!("gateway{n}"), gateway);
                }
                tokio::time::sleep(down).await;
                self.start_gateway(n).await;
            }
            Fault::GatewayDrain(n) => {
                if let Some(mut gateway) = self.gateways[n].take() {
                    gateway.terminate();
                    let status = gateway.wait_exit(DRAIN_EXIT).await;
                    assert!(
                        status.success(),
                        "gateway #{n} did not exit cleanly after SIGTERM ({status}); output:\n{}",
                        gateway.output_text()
                    );
                    self.retire(&format!("gateway{n}"), gateway);
                }
                tokio::time::sleep(down).await;
                self.start_gateway(n).await;
            }
            Fault::RedisRestart => {
                tokio::task::block_in_place(|| self.redis.stop()).expect("stopping Redis");
                tokio::time::sleep(down).await;
                tokio::task::block_in_place(|| self.redis.start_again())
                    .expect("Redis starts again with its append-only file");
            }
            Fault::PostgresCrash => {
                tokio::task::block_in_place(|| self.postgres.kill()).expect("stopping Postgres");
                tokio::time::sleep(down).await;
                tokio::task::block_in_place(|| self.postgres.start_again())
                    .expect("Postgres starts again (crash recovery)");
            }
            Fault::MemberChurn(n) => {
                churn.remove(&self.ctx, n).await;
                tokio::time::sleep(down).await;
                churn.add(&self.ctx, n).await;
            }
        }
    }

    async fn start_ingestor(&mut self) {
        let mut env = self.ctx.ingestor_env();
        env.extend([
            // Never trimmed in a run: any `data.sync` gap is then false.
            ("REALTIME_HISTORY_LEN", "100000000".to_owned()),
            ("REALTIME_RECONNECT_MAX", "1s".to_owned()),
        ]);
        self.ingestor = Some(start_ready("realtime-ingestor", &env).await);
    }

    /// Starts replica `n` on a new free port and puts it in the list.
    async fn start_gateway(&mut self, n: usize) {
        let addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut env = self.ctx.gateway_env(addr, JWT_SECRET);
        env.extend([
            ("REALTIME_CONNECT_RATE", "0".to_owned()),
            ("REALTIME_MAX_CONNECTIONS_PER_USER", "1000".to_owned()),
            ("REALTIME_HEARTBEAT", "1s".to_owned()),
            ("REALTIME_RETRY", "300ms".to_owned()),
            ("REALTIME_DRAIN", "1s".to_owned()),
        ]);
        let child = start_ready("realtime-gateway", &env).await;
        self.gateways[n] = Some(child);
        self.replicas.set(n, addr);
    }

    fn retire(&mut self, name: &str, child: ChildProcess) {
        self.retired
            .push((format!("{:02}-{name}", self.retired.len()), child));
    }

    /// Copies every process's log (the retired ones first, in order), and
    /// Redis's and Postgres's, into `$TMPDIR/fault-oracle-<seed>/`; returns
    /// the directory (`None` if it cannot be written).
    pub fn save_logs(&self, seed: u64) -> Option<std::path::PathBuf> {
        let dir = std::env::temp_dir().join(format!("fault-oracle-{seed}"));
        std::fs::create_dir_all(&dir).ok()?;
        let running = self
            .ingestor
            .iter()
            .map(|c| ("zz-ingestor".to_owned(), c))
            .chain(
                self.gateways
                    .iter()
                    .enumerate()
                    .filter_map(|(n, g)| g.as_ref().map(|g| (format!("zz-gateway{n}"), g))),
            );
        let children = self
            .retired
            .iter()
            .map(|(n, c)| (n.clone(), c))
            .chain(running);
        for (name, child) in children {
            let _ = std::fs::copy(child.log_path(), dir.join(format!("{name}.log")));
        }
        let _ = std::fs::copy(self.redis.log_path(), dir.join("redis.log"));
        let _ = std::fs::copy(self.postgres.log_path(), dir.join("postgres.log"));
        Some(dir)
    }
}

/// Runs binary `name` with `env` and waits until its `/readyz` answers 200.
async fn start_ready(name: &str, env: &[(&str, String)]) -> ChildProcess {
    let child = ChildProcess::spawn(&binary_path(name), env);
    let admin = child.admin_addr(READY).await;
    let http = reqwest::Client::new();
    let url = format!("http://{admin}/readyz");
    crate::wait_until(&format!("{name} is ready"), READY, || {
        let request = http.get(&url).timeout(Duration::from_secs(2)).send();
        async move { request.await.ok().filter(|r| r.status() == 200).map(drop) }
    })
    .await;
    child
}
