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
use realtime_ingestor::publish::SHARDED_FUNCTION_NAME;
use realtime_shared::envelope::Envelope;
use realtime_shared::event::{Event, EventId, EventType, EventVersion, Scope, Source};
use realtime_shared::keys::Keys;
use realtime_shared::redis_target::RedisConn;
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
async fn every_lease_is_renewed_when_renewal_takes_several_calls() {
    gateway_protection::every_lease_is_renewed(Redis::Cluster).await;
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

/// How the test puts one event into Redis, playing the ingestor.
#[derive(Debug, Clone, Copy)]
enum Put {
    /// History and live channel, as the ingestor does (the publish function).
    Published,
    /// History only: the live message is "not read yet" by the gateway.
    HistoryOnly,
}

/// One event, `put` into Redis: a broadcast `system.alert` when `org` is
/// `None`, else a `property.update` of `org` naming `last_broadcast`.
/// Returns the envelope bytes (for a late live copy).
async fn put(
    redis: &mut RedisConn,
    keys: &Keys,
    id: EventId,
    org: Option<&str>,
    last_broadcast: Option<EventId>,
    put: Put,
) -> Vec<u8> {
    let scope = org.map_or(Scope::Broadcast, |o| Scope::Organization(o.to_owned()));
    let mut envelope = Envelope::new(Event {
        id,
        event_type: if org.is_some() {
            EventType::PropertyUpdate
        } else {
            EventType::SystemAlert
        },
        timestamp: 1_795_836_114_457,
        source: Source::Api,
        version: EventVersion,
        organization_id: org.map(str::to_owned),
        payload: serde_json::json!({"propertyId": id.to_string(), "message": id.to_string()}),
    });
    envelope.last_broadcast = last_broadcast;
    let bytes = envelope.to_bytes();
    let cmd = match put {
        Put::Published => redis::cmd("FCALL")
            .arg(SHARDED_FUNCTION_NAME)
            .arg(2)
            .arg(keys.history(&scope))
            .arg(keys.channel(&scope))
            .arg(id.to_string())
            .arg(&bytes)
            .arg(1000)
            .clone(),
        Put::HistoryOnly => redis::cmd("XADD")
            .arg(keys.history(&scope))
            .arg(id.to_string())
            .arg("e")
            .arg(&bytes)
            .clone(),
    };
    cmd.query_async::<redis::Value>(redis)
        .await
        .unwrap_or_else(|e| panic!("{put:?} {id}: {e}"));
    bytes
}

/// The indices of the next `n` events with commit LSN `lsn` the client
/// reads (fewer if 30 s pass first).
async fn indices_of(client: &mut SseClient, lsn: u64, n: usize) -> Vec<u64> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let m = match client.next(left).await {
            Ok(Some(m)) => m,
            Ok(None) => panic!("the stream ended after {got:?}"),
            Err(()) => break,
        };
        if let Some(id) = m.id.as_deref().and_then(|i| i.parse::<EventId>().ok())
            && id.lsn == lsn
        {
            got.push(id.index);
        }
    }
    got
}

/// The live copy of `bytes`, late.
async fn publish_late(redis: &mut RedisConn, channel: &str, bytes: &[u8]) {
    redis::cmd("SPUBLISH")
        .arg(channel)
        .arg(bytes)
        .query_async::<i64>(redis)
        .await
        .unwrap_or_else(|e| panic!("SPUBLISH {channel}: {e}"));
}

/// ARCHITECTURE.md §4 *Broadcast order*. A broadcast and the organization
/// events around it sit on different shards, read over different
/// connections: a gateway may read them in the opposite order. The test
/// plays the ingestor for six events (ids far above any it wrote) and puts
/// one of each pair in its history with its live copy held back until the
/// other was published, as a gateway reading the other shard first sees it:
/// an organization event read after the next broadcast, then a broadcast
/// read after the next events of two organizations (which name it). The
/// streams of both must get theirs, in id order, once: neither late one
/// dropped as a duplicate of what passed it, nor delivered twice when its
/// copy arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_and_an_organization_event_read_out_of_order_keep_their_order() {
    let ctx = Redis::Cluster.context().await;
    ctx.batch(SEED).await;
    // Loads the publish function on every primary; idle otherwise.
    let ing = RunningIngestor::start(ctx.clone(), config_for(&ctx)).await;
    let gw = RunningGateway::start(gateway_config(&ctx)).await;
    let mut a = SseClient::connect(
        &gw.stream_url("organizationId=orgA"),
        Some(&token("ua", 600)),
        &[],
    )
    .await;
    let mut b = SseClient::connect(
        &gw.stream_url("organizationId=orgB"),
        Some(&token("ub", 600)),
        &[],
    )
    .await;
    for c in [&a, &b] {
        assert_eq!(c.status, 200, "{}", c.body_text);
    }
    let mut redis = ctx.redis_commands().await;
    let keys = Keys::new(ctx.key_prefix());
    let org_channel = keys.channel(&Scope::Organization("orgA".into()));
    let broadcast_channel = keys.channel(&Scope::Broadcast);
    const LSN: u64 = 1 << 50;
    let id = |n| EventId::new(LSN, n);

    // An organization event read after the next broadcast.
    let x1 = put(
        &mut redis,
        &keys,
        id(1),
        Some("orgA"),
        None,
        Put::HistoryOnly,
    )
    .await;
    put(&mut redis, &keys, id(2), None, None, Put::Published).await;
    let mut got_a = indices_of(&mut a, LSN, 2).await;
    let mut got_b = indices_of(&mut b, LSN, 1).await;
    publish_late(&mut redis, &org_channel, &x1).await;
    // A broadcast read after the next events of both organizations, which
    // name it: orgA's first, then orgB's, which must not pass it either.
    let b3 = put(&mut redis, &keys, id(3), None, None, Put::HistoryOnly).await;
    put(
        &mut redis,
        &keys,
        id(4),
        Some("orgA"),
        Some(id(3)),
        Put::Published,
    )
    .await;
    put(
        &mut redis,
        &keys,
        id(5),
        Some("orgB"),
        Some(id(3)),
        Put::Published,
    )
    .await;
    publish_late(&mut redis, &broadcast_channel, &b3).await;
    put(
        &mut redis,
        &keys,
        id(6),
        Some("orgA"),
        Some(id(3)),
        Put::Published,
    )
    .await;
    got_a.extend(indices_of(&mut a, LSN, 3).await);
    got_b.extend(indices_of(&mut b, LSN, 2).await);
    assert_eq!(
        (got_a, got_b),
        (vec![1, 2, 3, 4, 6], vec![2, 3, 5]),
        "every event once, in id order, however the shards' messages were read"
    );
    drop((a, b));
    gw.stop().await;
    ing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_ingestor_names_the_last_broadcast_in_later_organization_events() {
    names_the_last_broadcast(Redis::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_envelopes_name_no_broadcast() {
    names_the_last_broadcast(Redis::Single).await;
}

/// `lastBroadcast` in the envelopes of orgA's history: absent before any
/// broadcast; on a cluster, after a `TRUNCATE` (a broadcast `data.sync`),
/// that broadcast's id, in this ingestor's events and, after a restart, in
/// the next one's (read back from the broadcast history); never on one node.
async fn names_the_last_broadcast(redis: Redis) {
    let ctx = redis.context().await;
    ctx.batch(SEED).await;
    let mut ing = RunningIngestor::start(ctx.clone(), config_for(&ctx)).await;
    let conn = ctx.redis_commands().await;
    let keys = Keys::new(ctx.key_prefix());
    let org_history = keys.history(&Scope::Organization("orgA".into()));
    let broadcast_history = keys.history(&Scope::Broadcast);

    let insert = |n: u32| {
        let ctx = ctx.clone();
        async move {
            ctx.execute(
                "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ($1, 'orgA', 'ua', 1)",
                &[&format!("p{n}")],
            )
            .await;
        }
    };
    // The newest entry of `key`: (id, envelope JSON).
    type Fields = Vec<(String, Vec<u8>)>;
    async fn newest(conn: &mut RedisConn, key: &str) -> Option<(String, serde_json::Value)> {
        let entries: Vec<(String, Fields)> = redis::cmd("XREVRANGE")
            .arg(key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(conn)
            .await
            .unwrap_or_else(|e| panic!("XREVRANGE {key}: {e}"));
        let (id, fields) = entries.into_iter().next()?;
        let e = fields.into_iter().find(|(f, _)| f == "e")?.1;
        Some((id, serde_json::from_slice(&e).expect("envelope JSON")))
    }
    // The envelope of `property` once it is orgA's newest entry.
    let wait_for = |property: &'static str| {
        let (conn, key) = (conn.clone(), org_history.clone());
        realtime_tests::wait_until("the property in orgA's history", WAIT, move || {
            let (mut conn, key) = (conn.clone(), key.clone());
            async move {
                newest(&mut conn, &key)
                    .await
                    .filter(|(_, e)| e["event"]["payload"]["propertyId"] == property)
                    .map(|(_, e)| e)
            }
        })
    };

    insert(1).await;
    let first = wait_for("p1").await;
    assert_eq!(
        first.get("lastBroadcast"),
        None,
        "no broadcast yet: {first}"
    );

    ctx.batch("TRUNCATE activities;").await;
    let truncate = realtime_tests::wait_until("the truncate's broadcast", WAIT, || {
        let (mut conn, key) = (conn.clone(), broadcast_history.clone());
        async move { newest(&mut conn, &key).await.map(|(id, _)| id) }
    })
    .await;
    let expected = match redis {
        Redis::Cluster => serde_json::json!(truncate),
        Redis::Single => serde_json::Value::Null,
    };
    insert(2).await;
    let second = wait_for("p2").await;
    assert_eq!(second["lastBroadcast"], expected, "{second}");

    // A new ingestor: the last broadcast read back from Redis. Once the
    // slot is past p2, so that the restart does not stream the truncate
    // again (which would name it without the read).
    let p2_lsn = second["event"]["id"]
        .as_str()
        .and_then(|id| id.parse::<EventId>().ok())
        .expect("p2's id")
        .lsn as f64;
    let pg = ctx.pg().await;
    realtime_tests::wait_until("the slot confirmed p2", WAIT, || {
        let (pg, slot) = (&pg, ctx.slot());
        async move {
            crate::ingestor_recovery::confirmed_flush(pg, slot)
                .await
                .filter(|&lsn| lsn >= p2_lsn)
        }
    })
    .await;
    ing.stop().await;
    ing = RunningIngestor::start(ctx.clone(), config_for(&ctx)).await;
    insert(3).await;
    let third = wait_for("p3").await;
    assert_eq!(third["lastBroadcast"], expected, "after a restart: {third}");
    ing.stop().await;
}
