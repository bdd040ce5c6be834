//! Redis Cluster mode (ARCHITECTURE.md §4, *Redis Cluster*): a `REDIS_URL`
//! of comma-separated seeds, on a cluster of 3 primaries with a replica each
//! started by the harness (`realtime_tests::RedisCluster`).
//!
//! First the end-to-end promises of the single-node tests, run with the same
//! bodies on the shared cluster: isolation and order, resume across
//! replicas, revocation, caps across replicas, control (`PUT`/`DELETE` on
//! another replica's stream), the publish API. Then the cluster's own
//! faults, each on a cluster of its own, with a writer committing changes of
//! two organizations all along: a manual failover (`CLUSTER FAILOVER` on a
//! replica), a kill -9 of a primary, and a slot migration. Clients on both
//! gateway replicas must get every event exactly once, in commit order, and
//! no `data.sync`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::gateway::{RunningGateway, gateway_config, token};
use crate::support::sse::SseClient;
use crate::support::{Redis, RunningIngestor, config_for};
use crate::{gateway_protection, gateway_stream};
use realtime_tests::{RedisCluster, TestContext};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_their_organization_in_order_and_nowhere_else() {
    gateway_stream::events_reach_their_organization_in_order(Redis::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_the_other_replica_gets_exactly_the_missed_events() {
    gateway_stream::resume_on_the_other_replica(Redis::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_membership_closes_the_members_streams_on_every_replica() {
    gateway_stream::removing_a_membership_closes_streams(Redis::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_hold_across_replicas_and_free_after_a_replica_is_killed() {
    gateway_protection::caps_hold_across_replicas(Redis::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_delete_act_on_a_stream_held_by_the_other_replica() {
    gateway_protection::put_and_delete_act_across_replicas(Redis::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_arrive_with_ids_resume_and_bad_bodies_publish_nothing() {
    gateway_protection::published_events_arrive(Redis::Cluster).await;
}

/// A fault of the cluster, applied while changes are being committed.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `CLUSTER FAILOVER` on the replica of the primary serving orgA.
    ManualFailover,
    /// SIGKILL of the primary serving orgA; its replica is elected.
    KillPrimary,
    /// orgA's slot moved to another primary (with its history stream).
    MigrateSlot,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_under_load_loses_and_repeats_nothing() {
    exactly_once_through(Fault::ManualFailover).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_under_load_loses_and_repeats_nothing() {
    exactly_once_through(Fault::KillPrimary).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migrated_under_load_loses_and_repeats_nothing() {
    exactly_once_through(Fault::MigrateSlot).await;
}

const SEED: &str = "INSERT INTO organizations (id, name) VALUES ('orgA', 'Acme'), ('orgB', 'Bolt');
     INSERT INTO users (id) VALUES ('ua'), ('ua2'), ('ub');
     INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES
       ('m1', 'ua', 'orgA'), ('m2', 'ua2', 'orgA'), ('m3', 'ub', 'orgB');";

/// Changes committed before the fault starts, and at least after it ended.
const BEFORE: usize = 60;
const AFTER: usize = 40;
/// The writer's hard bound on commits, whatever happens.
const MAX_WRITES: usize = 4000;
const WAIT: Duration = Duration::from_secs(90);

async fn exactly_once_through(fault: Fault) {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(RedisCluster::start)
            .await
            .expect("the cluster start does not panic")
            .unwrap_or_else(|e| panic!("starting a Redis Cluster: {e:#}")),
    );
    let ctx = TestContext::new().await.with_redis_cluster(&cluster);
    ctx.batch(SEED).await;
    let ing = RunningIngestor::start(ctx.clone(), config_for(&ctx)).await;
    let gw = [
        RunningGateway::start(gateway_config(&ctx)).await,
        RunningGateway::start(gateway_config(&ctx)).await,
    ];
    let mut clients = vec![
        (
            "orgA",
            "ua",
            SseClient::connect(
                &gw[0].stream_url("organizationId=orgA"),
                Some(&token("ua", 600)),
                &[],
            )
            .await,
        ),
        (
            "orgA",
            "ua2",
            SseClient::connect(
                &gw[1].stream_url("organizationId=orgA"),
                Some(&token("ua2", 600)),
                &[],
            )
            .await,
        ),
        (
            "orgB",
            "ub",
            SseClient::connect(
                &gw[1].stream_url("organizationId=orgB"),
                Some(&token("ub", 600)),
                &[],
            )
            .await,
        ),
    ];
    for (_, user, c) in &clients {
        assert_eq!(c.status, 200, "{user}: {}", c.body_text);
    }

    // The writer: one property per commit, orgA and orgB in turn.
    let written = Arc::new(AtomicUsize::new(0));
    let fault_done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (ctx, written, fault_done) = (ctx.clone(), written.clone(), fault_done.clone());
        tokio::spawn(async move {
            let pg = ctx.pg().await;
            let mut after = 0;
            for i in 0..MAX_WRITES {
                let org = if i % 2 == 0 { "orgA" } else { "orgB" };
                pg.execute(
                    "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ($1, $2, 'ua', 1)",
                    &[&format!("p{i}"), &org],
                )
                .await
                .unwrap_or_else(|e| panic!("insert {i}: {e}"));
                written.store(i + 1, Ordering::SeqCst);
                if fault_done.load(Ordering::SeqCst) {
                    after += 1;
                    if after >= AFTER {
                        return i + 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            panic!("the fault did not end within {MAX_WRITES} commits");
        })
    };
    realtime_tests::wait_until("the first commits before the fault", WAIT, || {
        let n = written.load(Ordering::SeqCst);
        async move { (n >= BEFORE).then_some(()) }
    })
    .await;

    let slot_key = format!("{}:{{org:orgA}}", ctx.key_prefix());
    let applied = {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            let slot = cluster.key_slot(&slot_key)?;
            let primary = cluster.primary_of_slot(slot)?;
            match fault {
                Fault::ManualFailover => {
                    let new = cluster.failover(primary)?;
                    Ok(format!("slot {slot}: failover {primary} -> {new}"))
                }
                Fault::KillPrimary => {
                    let replica = cluster.replica_of(primary)?;
                    cluster.kill(primary)?;
                    cluster.wait_primary(replica)?;
                    Ok(format!("slot {slot}: killed {primary}, {replica} elected"))
                }
                Fault::MigrateSlot => {
                    let to = cluster
                        .ports()
                        .into_iter()
                        .find(|&p| p != primary && cluster.replica_of(p).is_ok())
                        .ok_or_else(|| anyhow::anyhow!("no other primary"))?;
                    cluster.migrate_slot(slot, to)?;
                    Ok(format!("slot {slot}: migrated {primary} -> {to}"))
                }
            }
        })
        .await
        .expect("the fault does not panic")
        .unwrap_or_else(|e| panic!("{fault:?}: {e:#}"))
    };
    fault_done.store(true, Ordering::SeqCst);
    let total = writer.await.expect("the writer does not panic");
    eprintln!("{fault:?}: {applied}; {total} commits");

    for (org, user, client) in &mut clients {
        // Commit order of this organization's properties.
        let want: Vec<String> = (0..total)
            .filter(|i| (*org == "orgA") == (i % 2 == 0))
            .map(|i| format!("p{i}"))
            .collect();
        let mut got: Vec<String> = Vec::new();
        let mut ids = BTreeSet::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while got.len() < want.len() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = match client.next(left).await {
                Ok(Some(m)) => m,
                Ok(None) => panic!("{user}'s stream ended after {} events", got.len()),
                Err(()) => break,
            };
            let Some(data) = &m.data else { continue };
            let event: serde_json::Value = serde_json::from_str(data).expect("event JSON");
            assert_ne!(
                event["type"],
                "data.sync",
                "{fault:?}: {user} got a data.sync after {} events: {data}",
                got.len()
            );
            if event["type"] != "property.update" {
                continue;
            }
            let id = m.id.clone().expect("an event has an id");
            assert!(ids.insert(id.clone()), "{fault:?}: {user} got {id} twice");
            assert_eq!(event["organizationId"], *org, "{fault:?}: {user}: {data}");
            got.push(
                event["payload"]["propertyId"]
                    .as_str()
                    .expect("propertyId")
                    .to_owned(),
            );
        }
        assert_eq!(
            got, want,
            "{fault:?}: {user} gets every event of {org} once, in commit order"
        );
    }
    drop(clients);
    for g in gw {
        g.stop().await;
    }
    ing.stop().await;
    drop(cluster);
}
