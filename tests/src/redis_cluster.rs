//! A throwaway Redis Cluster: three primaries with one replica each, on
//! free loopback ports, started from `redis-server --cluster-enabled yes`
//! and joined by `redis-cli --cluster create … --cluster-replicas 1`, without
//! persistence. Every wait has a deadline; dropping it (or the death of the
//! test process, through a watchdog) kills every node and removes the dir.
//!
//! Faults for tests: a manual failover (`CLUSTER FAILOVER` on a replica), a
//! SIGKILL of a primary followed by its replica's election, and a slot
//! migration (`CLUSTER SETSLOT … IMPORTING/MIGRATING`, `MIGRATE`, `SETSLOT …
//! NODE`), all waited on until every live node agrees.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tempfile::TempDir;

use crate::logfile::tail;
use crate::ports::free_port;
use crate::watchdog::Watchdog;

/// How long a start, an election or a migration may take.
const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);
/// Primaries, and nodes in all (one replica per primary).
const PRIMARIES: usize = 3;
const NODES: usize = 6;

/// One `redis-server` of the cluster.
struct Node {
    port: u16,
    /// The cluster bus port (`--cluster-port`), chosen free too: the
    /// default `port + 10000` may be taken or above 65535.
    bus: u16,
    child: Option<Child>,
}

/// A running 3 + 3 Redis Cluster; see the module docs.
pub struct RedisCluster {
    nodes: Mutex<Vec<Node>>,
    /// Kills every node still running (their pids, space-separated, are
    /// the watchdog's `$last`) and removes `dir` if this process dies.
    watchdog: Mutex<Watchdog>,
    dir: TempDir,
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster and waits until every node
    /// reports `cluster_state:ok` with all slots assigned and every primary
    /// has its replica in sync.
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("realtime-redis-cluster-")
            .tempdir()
            .context("creating the Redis Cluster temp dir")?;
        let watchdog = Watchdog::spawn(
            r#"if [ -n "$last" ]; then kill -KILL $last 2>/dev/null; fi; rm -rf "$1""#,
            [dir.path()],
        )?;
        let cluster = Self {
            nodes: Mutex::new(Vec::new()),
            watchdog: Mutex::new(watchdog),
            dir,
        };
        for _ in 0..NODES {
            cluster.launch_new()?;
        }
        let addrs: Vec<String> = cluster
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create").args(&addrs).args([
            "--cluster-replicas",
            "1",
            "--cluster-yes",
        ]);
        run_with_deadline(&mut create, "redis-cli --cluster create")?;
        cluster.wait_healthy(PRIMARIES, PRIMARIES)?;
        Ok(cluster)
    }

    /// `redis://127.0.0.1:P1,redis://127.0.0.1:P2,…`: every node as a
    /// seed, so the URL stays usable whichever node is down.
    pub fn url(&self) -> String {
        self.ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node's port, running or not.
    pub fn ports(&self) -> Vec<u16> {
        self.lock().iter().map(|n| n.port).collect()
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn key_slot(&self, key: &str) -> anyhow::Result<u16> {
        let mut conn = self.any_node()?;
        Ok(redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut conn)?)
    }

    /// How many connections are subscribed to the sharded channel
    /// `channel`, summed over every live node (`PUBSUB SHARDNUMSUB`).
    pub fn shard_subscribers(&self, channel: &str) -> anyhow::Result<u64> {
        let mut total = 0;
        for port in self.live_ports() {
            let (_, n): (String, u64) = redis::cmd("PUBSUB")
                .arg("SHARDNUMSUB")
                .arg(channel)
                .query(&mut self.node(port)?)?;
            total += n;
        }
        Ok(total)
    }

    /// The port of the primary serving `slot`, as a live node sees it.
    pub fn primary_of_slot(&self, slot: u16) -> anyhow::Result<u16> {
        let view = self.view(&mut self.any_node()?)?;
        view.iter()
            .find(|n| n.primary && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|n| n.port)
            .with_context(|| format!("no primary serves slot {slot}"))
    }

    /// The port of the replica of the primary on `primary`.
    pub fn replica_of(&self, primary: u16) -> anyhow::Result<u16> {
        let view = self.view(&mut self.any_node()?)?;
        let id = view
            .iter()
            .find(|n| n.port == primary)
            .map(|n| n.id.clone())
            .with_context(|| format!("no node on port {primary}"))?;
        view.iter()
            .find(|n| n.primary_id.as_deref() == Some(id.as_str()) && !n.failed)
            .map(|n| n.port)
            .with_context(|| format!("the primary on {primary} has no live replica"))
    }

    /// A manual failover of the primary on `primary`: `CLUSTER FAILOVER` on
    /// its replica, then waits until the replica is primary for every live
    /// node and the cluster is healthy. Returns the new primary's port.
    pub fn failover(&self, primary: u16) -> anyhow::Result<u16> {
        let replica = self.replica_of(primary)?;
        let mut conn = self.node(replica)?;
        let _: String = redis::cmd("CLUSTER").arg("FAILOVER").query(&mut conn)?;
        self.wait_primary(replica)?;
        self.wait_healthy(PRIMARIES, PRIMARIES)?;
        Ok(replica)
    }

    /// SIGKILLs the node on `port` (its clients see their connections
    /// reset); nothing is waited for.
    pub fn kill(&self, port: u16) -> anyhow::Result<()> {
        let mut nodes = self.lock();
        if let Some(node) = nodes.iter_mut().find(|n| n.port == port)
            && let Some(mut child) = node.child.take()
        {
            let _ = child.kill();
            child.wait().context("reaping redis-server")?;
        }
        self.update_watchdog(&nodes);
        Ok(())
    }

    /// Waits until the node on `port` is a primary for every live node and
    /// every slot is served again (after a kill of its primary: the
    /// election takes about two node timeouts).
    pub fn wait_primary(&self, port: u16) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let agreed = self.live_ports().iter().all(|&p| {
                self.node(p)
                    .and_then(|mut c| self.view(&mut c))
                    .is_ok_and(|view| view.iter().any(|n| n.port == port && n.primary))
            });
            if agreed && self.slots_ok_everywhere() {
                return Ok(());
            }
            if started.elapsed() > DEADLINE {
                bail!("the node on {port} did not become primary within {DEADLINE:?}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// Moves `slot` (and its keys) from the primary serving it to the
    /// primary on `to`, as `redis-cli --cluster reshard` does, while clients
    /// keep writing: `IMPORTING`/`MIGRATING`, `MIGRATE` of its keys in
    /// batches, then `SETSLOT … NODE` on the target, the source and every
    /// other primary.
    pub fn migrate_slot(&self, slot: u16, to: u16) -> anyhow::Result<()> {
        let from = self.primary_of_slot(slot)?;
        if from == to {
            bail!("slot {slot} is already on {to}");
        }
        let view = self.view(&mut self.node(from)?)?;
        let id_of = |port: u16| {
            view.iter()
                .find(|n| n.port == port)
                .map(|n| n.id.clone())
                .with_context(|| format!("no node on port {port}"))
        };
        let (from_id, to_id) = (id_of(from)?, id_of(to)?);
        let mut src = self.node(from)?;
        let mut dst = self.node(to)?;
        let _: String = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("IMPORTING")
            .arg(&from_id)
            .query(&mut dst)?;
        let _: String = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("MIGRATING")
            .arg(&to_id)
            .query(&mut src)?;
        let started = Instant::now();
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query(&mut src)?;
            if keys.is_empty() {
                break;
            }
            let _: redis::Value = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query(&mut src)?;
            if started.elapsed() > DEADLINE {
                bail!("slot {slot} still has keys on {from} after {DEADLINE:?}");
            }
        }
        for port in [to, from] {
            let _: String = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(&to_id)
                .query(&mut self.node(port)?)?;
        }
        for port in self.live_ports() {
            let is_primary = view.iter().any(|n| n.port == port && n.primary);
            if is_primary && port != to && port != from {
                let _: String = redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg("NODE")
                    .arg(&to_id)
                    .query(&mut self.node(port)?)?;
            }
        }
        // Every live node routes the slot to `to` before this returns.
        let started = Instant::now();
        while !self.live_ports().iter().all(|&p| {
            self.node(p)
                .and_then(|mut c| self.view(&mut c))
                .is_ok_and(|view| {
                    view.iter().any(|n| {
                        n.port == to && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
                    })
                })
        }) {
            if started.elapsed() > DEADLINE {
                bail!("not every node sees slot {slot} on {to} after {DEADLINE:?}");
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Node>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live_ports(&self) -> Vec<u16> {
        self.lock()
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    fn update_watchdog(&self, nodes: &[Node]) {
        let pids: Vec<String> = nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(|c| c.id().to_string()))
            .collect();
        self.watchdog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(&pids.join(" "));
    }

    fn log_path(&self, port: u16) -> PathBuf {
        self.dir.path().join(format!("redis-{port}.log"))
    }

    /// Starts one more node on free ports and waits for its `PING`.
    fn launch_new(&self) -> anyhow::Result<()> {
        let mut attempts = 0;
        loop {
            let (port, bus) = (free_port(), free_port());
            match self.launch(port, bus) {
                Ok(child) => {
                    let mut nodes = self.lock();
                    nodes.push(Node {
                        port,
                        bus,
                        child: Some(child),
                    });
                    self.update_watchdog(&nodes);
                    return Ok(());
                }
                Err(e) if attempts < 3 && format!("{e:#}").contains("Address already in use") => {
                    attempts += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn launch(&self, port: u16, bus: u16) -> anyhow::Result<Child> {
        let dir = self.dir.path().join(port.to_string());
        std::fs::create_dir_all(&dir).context("creating a node's dir")?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(port))
            .context("opening a node's log")?;
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--cluster-port", &bus.to_string()])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "2000"])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log handle")?)
            .stderr(log)
            .spawn()
            .context("spawning redis-server (is redis-server installed?)")?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().context("waiting for redis-server")? {
                bail!(
                    "redis-server on port {port} exited during start-up ({status}); log tail:\n{}",
                    tail(&self.log_path(port), 20)
                );
            }
            if self.node(port).is_ok() {
                return Ok(child);
            }
            if started.elapsed() > DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                bail!("redis-server on port {port} not answering after {DEADLINE:?}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// A blocking connection to the node on `port` that answered `PING`.
    fn node(&self, port: u16) -> anyhow::Result<redis::Connection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let _: String = redis::cmd("PING").query(&mut conn)?;
        Ok(conn)
    }

    fn any_node(&self) -> anyhow::Result<redis::Connection> {
        self.live_ports()
            .into_iter()
            .find_map(|p| self.node(p).ok())
            .context("no Redis Cluster node answers")
    }

    /// The cluster as one node sees it (`CLUSTER NODES`).
    fn view(&self, conn: &mut redis::Connection) -> anyhow::Result<Vec<NodeView>> {
        let text: String = redis::cmd("CLUSTER").arg("NODES").query(conn)?;
        Ok(text.lines().filter_map(NodeView::parse).collect())
    }

    fn slots_ok_everywhere(&self) -> bool {
        self.live_ports().iter().all(|&p| {
            self.node(p)
                .and_then(|mut c| Ok(redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c)?))
                .is_ok_and(|info| {
                    info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
                })
        })
    }

    /// Waits until every live node reports the cluster healthy, sees
    /// `primaries` primaries, and `synced` of them have a replica in sync.
    fn wait_healthy(&self, primaries: usize, synced: usize) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let ok = self.slots_ok_everywhere()
                && self.live_ports().iter().all(|&p| {
                    self.node(p)
                        .and_then(|mut c| self.view(&mut c))
                        .is_ok_and(|view| {
                            view.iter().filter(|n| n.primary && !n.failed).count() == primaries
                        })
                })
                && self.replicas_in_sync() >= synced;
            if ok {
                return Ok(());
            }
            if started.elapsed() > DEADLINE {
                let logs: Vec<String> = self
                    .ports()
                    .iter()
                    .map(|&p| format!("{p}:\n{}", tail(&self.log_path(p), 8)))
                    .collect();
                bail!(
                    "the Redis Cluster is not healthy after {DEADLINE:?}; logs:\n{}",
                    logs.join("\n")
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// How many live primaries have a replica whose link is up and synced.
    fn replicas_in_sync(&self) -> usize {
        self.live_ports()
            .iter()
            .filter(|&&p| {
                self.node(p)
                    .and_then(|mut c| {
                        Ok(redis::cmd("INFO")
                            .arg("replication")
                            .query::<String>(&mut c)?)
                    })
                    .is_ok_and(|info| {
                        info.contains("role:master")
                            && info
                                .lines()
                                .any(|l| l.starts_with("slave0:") && l.contains("state=online"))
                    })
            })
            .count()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let mut nodes = self.lock();
        for node in nodes.iter_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.update_watchdog(&nodes);
    }
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<(u16, u16)> = self.lock().iter().map(|n| (n.port, n.bus)).collect();
        f.debug_struct("RedisCluster")
            .field("nodes (port, bus)", &nodes)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
struct NodeView {
    id: String,
    port: u16,
    primary: bool,
    failed: bool,
    primary_id: Option<String>,
    slots: Vec<(u16, u16)>,
}

impl NodeView {
    /// `<id> <ip:port@bus> <flags> <primary|-> <ping> <pong> <epoch> <link> <slot>…`
    fn parse(line: &str) -> Option<NodeView> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = fields
            .get(1)?
            .split('@')
            .next()?
            .rsplit(':')
            .next()?
            .parse()
            .ok()?;
        let flags = fields.get(2)?;
        let slots = fields
            .iter()
            .skip(8)
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => s.parse().ok().map(|v| (v, v)),
            })
            .collect();
        Some(NodeView {
            id: fields.first()?.to_string(),
            port,
            primary: flags.contains("master"),
            failed: flags.contains("fail") && !flags.contains("fail?"),
            primary_id: fields.get(3).filter(|s| **s != "-").map(|s| s.to_string()),
            slots,
        })
    }
}

/// Runs `command` to completion within [`DEADLINE`], failing with its
/// output when it fails or overruns.
fn run_with_deadline(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {what}"))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let output = child.wait_with_output()?;
            if status.success() {
                return Ok(());
            }
            bail!(
                "{what} failed ({status}):\n{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(POLL);
    }
}
