//! Gateway protection and control (ARCHITECTURE.md §3) against real Postgres, Redis,
//! the ingestor and two gateway replicas: connection caps counted across
//! replicas with expiring leases, the per-IP connect rate limit behind
//! trusted proxies, PUT/DELETE on a stream held by the other replica, the
//! publish API and members' activity posts written through Postgres, a
//! client that stops reading, and the paced drain on SIGTERM.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::gateway::{JWT_SECRET, RunningGateway, gateway_config, token};
use crate::support::sse::SseClient;
use crate::support::{Redis, RunningIngestor, config_for, http_get, metric_value};
use realtime_tests::{ChildProcess, TestContext, binary_path, free_port, wait_until};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(30);
const PUBLISH_KEY: &str = "test-publish-key-at-least-32-bytes-long";

const SEED: &str = "INSERT INTO organizations (id, name) VALUES ('orgA', 'Acme'), ('orgB', 'Bolt');
     INSERT INTO users (id) VALUES ('ua'), ('ua2'), ('ub'), ('outsider');
     INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES
       ('m1', 'ua', 'orgA'), ('m2', 'ua2', 'orgA'), ('m3', 'ub', 'orgB');";

/// The ingestor in-process and two gateway replicas in-process.
struct Cluster {
    ing: RunningIngestor,
    gw: [RunningGateway; 2],
}

async fn cluster(tune: impl Fn(&mut realtime_gateway::Config)) -> Cluster {
    cluster_of(&tune, &tune).await
}

/// As [`cluster`], each replica tuned on its own.
async fn cluster_of(
    tune_a: &dyn Fn(&mut realtime_gateway::Config),
    tune_b: &dyn Fn(&mut realtime_gateway::Config),
) -> Cluster {
    cluster_on(Redis::Single, tune_a, tune_b).await
}

/// [`cluster_of`] on `redis` (one node or the shared Redis Cluster).
async fn cluster_on(
    redis: Redis,
    tune_a: &dyn Fn(&mut realtime_gateway::Config),
    tune_b: &dyn Fn(&mut realtime_gateway::Config),
) -> Cluster {
    let ctx = redis.context().await;
    ctx.batch(SEED).await;
    let mut config = config_for(&ctx);
    config.history_len = 50_000;
    let ing = RunningIngestor::start(ctx.clone(), config).await;
    let mut a = gateway_config(&ctx);
    let mut b = gateway_config(&ctx);
    tune_a(&mut a);
    tune_b(&mut b);
    let gw = [
        RunningGateway::start(a).await,
        RunningGateway::start(b).await,
    ];
    Cluster { ing, gw }
}

fn base(gw: &RunningGateway) -> String {
    format!("http://{}", gw.addr)
}

/// A gateway binary as a child process (for kill -9, RSS and SIGTERM).
struct GatewayProcess {
    child: ChildProcess,
    addr: SocketAddr,
    admin: SocketAddr,
}

async fn gateway_process(ctx: &TestContext, extra: &[(&str, &str)]) -> GatewayProcess {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut env = ctx.gateway_env(addr, JWT_SECRET);
    env.push(("REALTIME_CONNECT_RATE", "0".to_owned()));
    // Later values win.
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let child = ChildProcess::spawn(&binary_path("realtime-gateway"), &env);
    let admin = child.admin_addr(WAIT).await;
    wait_until("the gateway is ready", WAIT, || async move {
        http_get(&format!("http://{admin}/readyz"))
            .await
            .filter(|(s, _)| *s == 200)
    })
    .await;
    GatewayProcess { child, addr, admin }
}

impl GatewayProcess {
    fn stream_url(&self, query: &str) -> String {
        format!("http://{}/api/realtime/stream?{query}", self.addr)
    }

    async fn metrics(&self) -> String {
        http_get(&format!("http://{}/metrics", self.admin))
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    fn rss_bytes(&self) -> u64 {
        let rss = rss_of(self.child.pid());
        assert!(rss > 0, "the gateway's VmRSS is readable");
        rss
    }
}

/// The first message of a stream: the connection message.
async fn hello(client: &mut SseClient) -> Value {
    let m = client
        .next(WAIT)
        .await
        .unwrap()
        .expect("connection message");
    let j = m.json();
    assert_eq!(j["type"], "connection");
    j
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

async fn publish(base: &str, key: Option<&str>, body: &str) -> (u16, String) {
    let mut req = http()
        .post(format!("{base}/api/realtime/publish"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_hold_across_replicas_and_free_after_a_replica_is_killed() {
    caps_hold_across_replicas(Redis::Single).await;
}

/// The body of the test above, on `redis` (also run on a Redis Cluster by
/// `redis_cluster.rs`, where the two caps sets live in different slots).
pub(crate) async fn caps_hold_across_replicas(redis: Redis) {
    let ctx = redis.context().await;
    ctx.batch(SEED).await;
    let caps = [
        ("REALTIME_MAX_CONNECTIONS_PER_USER", "2"),
        ("REALTIME_MAX_CONNECTIONS_PER_ORG", "3"),
        ("REALTIME_CONNECTION_LEASE", "2s"),
    ];
    let mut a = gateway_process(&ctx, &caps).await;
    let b = gateway_process(&ctx, &caps).await;
    let q = "organizationId=orgA";
    let ua = token("ua", 600);
    let ua2 = token("ua2", 600);

    let mut s1 = SseClient::connect(&a.stream_url(q), Some(&ua), &[]).await;
    assert_eq!(s1.status, 200);
    hello(&mut s1).await;
    let mut s2 = SseClient::connect(&b.stream_url(q), Some(&ua), &[]).await;
    assert_eq!(s2.status, 200);
    hello(&mut s2).await;

    // ua's third stream, on either replica: the user cap.
    let over = SseClient::connect(&b.stream_url(q), Some(&ua), &[]).await;
    assert_eq!(over.status, 429, "{}", over.body_text);
    let retry_after: u64 = over.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert!(
        over.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(over.body_text.contains("user"), "{}", over.body_text);
    assert!(
        metric_value(
            &b.metrics().await,
            "realtime_gateway_rejected_total{reason=\"user_limit\"}"
        ) >= 1.0
    );

    // A second member fills the organization (3), then is over its cap.
    let mut s3 = SseClient::connect(&b.stream_url(q), Some(&ua2), &[]).await;
    assert_eq!(s3.status, 200);
    hello(&mut s3).await;
    let over = SseClient::connect(&a.stream_url(q), Some(&ua2), &[]).await;
    assert_eq!(over.status, 429);
    assert!(
        over.body_text.contains("organization"),
        "{}",
        over.body_text
    );
    assert!(
        metric_value(
            &a.metrics().await,
            "realtime_gateway_rejected_total{reason=\"org_limit\"}"
        ) >= 1.0
    );

    // A stream that ends gives its place back at once.
    drop(s3);
    wait_until("ua2's place is free again", WAIT, || {
        let url = a.stream_url(q);
        let t = ua2.clone();
        async move {
            let mut c = SseClient::connect(&url, Some(&t), &[]).await;
            if c.status == 200 {
                hello(&mut c).await;
                Some(c)
            } else {
                None
            }
        }
    })
    .await;

    // Replica A dies without a word: its leases (s1, and ua2's stream on
    // A) stop counting within a lease period.
    a.child.kill9();
    let killed = tokio::time::Instant::now();
    let still = SseClient::connect(&b.stream_url(q), Some(&ua), &[]).await;
    assert_eq!(
        still.status, 429,
        "the dead replica's lease still counts at first"
    );
    let mut again = wait_until("ua's place on B after A died", WAIT, || {
        let url = b.stream_url(q);
        let t = ua.clone();
        async move {
            let c = SseClient::connect(&url, Some(&t), &[]).await;
            (c.status == 200).then_some(c)
        }
    })
    .await;
    let freed_after = killed.elapsed();
    hello(&mut again).await;
    eprintln!("the killed replica's place was free {freed_after:?} after kill -9 (lease 2 s)");
    // Within one lease period, plus the polling and the request itself.
    assert!(
        freed_after < Duration::from_secs(3),
        "freed after {freed_after:?}, lease 2s"
    );
    drop(s2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_rate_is_limited_per_client_ip_behind_trusted_proxies() {
    let ctx = TestContext::new().await;
    ctx.batch(SEED).await;
    // One replica trusts the loopback proxy, the other trusts nobody.
    let mut trusting = gateway_config(&ctx);
    // One new stream per 10 s after a burst of 2: no refill within the test.
    trusting.connect_rate = 0.1;
    trusting.connect_burst = 2;
    trusting.trusted_proxies = vec!["127.0.0.0/8".into()];
    let mut plain = trusting.clone();
    plain.trusted_proxies = vec![];
    let trusting = RunningGateway::start(trusting).await;
    let plain = RunningGateway::start(plain).await;

    let url = trusting.stream_url("organizationId=orgA");
    let tok = token("ua", 600);
    let status = |url: String, xff: Option<&'static str>| {
        let tok = tok.clone();
        async move {
            let headers: Vec<(&str, &str)> = xff
                .map(|x| vec![("x-forwarded-for", x)])
                .unwrap_or_default();
            let c = SseClient::connect(&url, Some(&tok), &headers).await;
            (
                c.status,
                c.headers.get("retry-after").is_some(),
                c.body_text,
            )
        }
    };
    // The burst of 2, then 429 with Retry-After.
    assert_eq!(status(url.clone(), Some("198.51.100.1")).await.0, 200);
    assert_eq!(status(url.clone(), Some("198.51.100.1")).await.0, 200);
    let (code, has_retry, body) = status(url.clone(), Some("198.51.100.1")).await;
    assert_eq!(code, 429, "{body}");
    assert!(has_retry);
    assert!(body.contains("too many"), "{body}");
    // Another client behind the same proxy has its own bucket.
    assert_eq!(status(url.clone(), Some("198.51.100.2")).await.0, 200);
    // The rightmost untrusted address counts, not what the client wrote.
    let (code, ..) = status(url.clone(), Some("198.51.100.2, 198.51.100.1")).await;
    assert_eq!(code, 429, "the forged left part is ignored");
    let text = http_get(&format!("http://{}/metrics", trusting.admin))
        .await
        .unwrap()
        .1;
    assert!(
        metric_value(
            &text,
            "realtime_gateway_rejected_total{reason=\"rate_limited\"}"
        ) >= 2.0
    );

    // Without trusted proxies, forwarded headers change nothing.
    let url = plain.stream_url("organizationId=orgA");
    assert_eq!(status(url.clone(), Some("203.0.113.1")).await.0, 200);
    assert_eq!(status(url.clone(), Some("203.0.113.2")).await.0, 200);
    assert_eq!(status(url.clone(), Some("203.0.113.3")).await.0, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_delete_act_on_a_stream_held_by_the_other_replica() {
    put_and_delete_act_across_replicas(Redis::Single).await;
}

/// The body of the test above, on `redis` (control over `SPUBLISH` on a
/// Redis Cluster).
pub(crate) async fn put_and_delete_act_across_replicas(redis: Redis) {
    let tune = |cfg: &mut realtime_gateway::Config| cfg.publish_key = Some(PUBLISH_KEY.into());
    let c = cluster_on(redis, &tune, &tune).await;
    let (g0, g1) = (&c.gw[0], &c.gw[1]);
    let ua = token("ua", 600);
    let mut s = SseClient::connect(&g0.stream_url("organizationId=orgA"), Some(&ua), &[]).await;
    assert_eq!(s.status, 200);
    let id = hello(&mut s).await["connectionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let put = |base: String, user: &str, id: String, body: &'static str| {
        let tok = token(user, 600);
        async move {
            let r = http()
                .put(format!("{base}/api/realtime/stream?connectionId={id}"))
                .bearer_auth(tok)
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // Someone else's connection, an unknown one, bad bodies.
    assert_eq!(
        put(base(g1), "ua2", id.clone(), r#"{"channels":["property"]}"#)
            .await
            .0,
        404
    );
    let unknown = "00000000-0000-4000-8000-000000000000".to_owned();
    assert_eq!(
        put(
            base(g1),
            "ua",
            unknown.clone(),
            r#"{"channels":["property"]}"#
        )
        .await
        .0,
        404
    );
    assert_eq!(
        put(base(g1), "ua", id.clone(), r#"{"channels":["bogus"]}"#)
            .await
            .0,
        400
    );
    assert_eq!(
        put(base(g1), "ua", id.clone(), r#"{"chanels":[]}"#).await.0,
        400
    );
    assert_eq!(put(base(g1), "ua", id.clone(), "not json").await.0, 400);

    // The filter changes on replica 0 through replica 1.
    let (code, body) = put(base(g1), "ua", id.clone(), r#"{"channels":["property"]}"#).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["channel"],
        "property"
    );
    let alert =
        r#"{"type":"system.alert","organizationId":"orgA","payload":{"message":"filtered out"}}"#;
    assert_eq!(publish(&base(g1), Some(PUBLISH_KEY), alert).await.0, 202);
    c.ing
        .ctx
        .execute(
            "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ('p1', 'orgA', 'ua', 1)",
            &[],
        )
        .await;
    let next = s.next_event(WAIT).await.expect("an event").json();
    assert_eq!(
        next["type"], "property.update",
        "the alert was filtered out: {next}"
    );

    // DELETE through the other replica, then by organization.
    let ua2 = token("ua2", 600);
    let mut other_user =
        SseClient::connect(&g1.stream_url("organizationId=orgA"), Some(&ua2), &[]).await;
    hello(&mut other_user).await;
    let delete = |base: String, user: &str, query: String| {
        let tok = token(user, 600);
        async move {
            http()
                .delete(format!("{base}/api/realtime/stream?{query}"))
                .bearer_auth(tok)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        delete(base(g1), "ua2", format!("connectionId={id}")).await,
        404
    );
    assert_eq!(
        delete(base(g1), "ua", format!("connectionId={unknown}")).await,
        404
    );
    assert_eq!(delete(base(g1), "ua", String::new()).await, 400);
    assert_eq!(
        delete(base(g1), "ua", format!("connectionId={id}")).await,
        204
    );
    assert!(
        s.ends_within(Duration::from_secs(5)).await,
        "closed through the other replica"
    );

    let mut t0 = SseClient::connect(&g0.stream_url("organizationId=orgA"), Some(&ua), &[]).await;
    hello(&mut t0).await;
    let mut t1 = SseClient::connect(&g1.stream_url("organizationId=orgA"), Some(&ua), &[]).await;
    hello(&mut t1).await;
    assert_eq!(
        delete(base(g0), "ua", "organizationId=orgA".into()).await,
        204
    );
    assert!(t0.ends_within(Duration::from_secs(5)).await);
    assert!(
        t1.ends_within(Duration::from_secs(5)).await,
        "on the other replica too"
    );
    // ua2's stream is untouched.
    c.ing
        .ctx
        .execute(
            "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ('p2', 'orgA', 'ua', 1)",
            &[],
        )
        .await;
    let mut seen = BTreeSet::new();
    while !seen.contains("p2") {
        let e = other_user
            .next_event(WAIT)
            .await
            .expect("ua2 still streams")
            .json();
        if let Some(p) = e["payload"]["propertyId"].as_str() {
            seen.insert(p.to_owned());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_arrive_with_ids_resume_and_bad_bodies_publish_nothing() {
    published_events_arrive(Redis::Single).await;
}

/// The body of the test above, on `redis`.
pub(crate) async fn published_events_arrive(redis: Redis) {
    let tune = |cfg: &mut realtime_gateway::Config| {
        cfg.publish_key = Some(PUBLISH_KEY.into());
        cfg.max_publish_bytes = 1024;
    };
    let c = cluster_on(redis, &tune, &tune).await;
    let (g0, g1) = (&c.gw[0], &c.gw[1]);
    let mut a = SseClient::connect(
        &g0.stream_url("organizationId=orgA"),
        Some(&token("ua", 600)),
        &[],
    )
    .await;
    hello(&mut a).await;
    let mut a2 = SseClient::connect(
        &g0.stream_url("organizationId=orgA"),
        Some(&token("ua2", 600)),
        &[],
    )
    .await;
    hello(&mut a2).await;
    let mut b = SseClient::connect(
        &g1.stream_url("organizationId=orgB"),
        Some(&token("ub", 600)),
        &[],
    )
    .await;
    hello(&mut b).await;

    // Refused, and nothing published.
    let big = format!(
        r#"{{"type":"system.alert","organizationId":"orgA","payload":{{"pad":"{}"}}}}"#,
        "x".repeat(2048)
    );
    let refused: Vec<(Option<&str>, &str, u16)> = vec![
        (None, r#"{"type":"system.alert","payload":{}}"#, 401),
        (
            Some("wrong-key"),
            r#"{"type":"system.alert","payload":{}}"#,
            401,
        ),
        (Some(PUBLISH_KEY), "{not json", 400),
        (Some(PUBLISH_KEY), r#"{"type":"nope","payload":{}}"#, 400),
        (Some(PUBLISH_KEY), r#"{"type":"system.alert"}"#, 400),
        (
            Some(PUBLISH_KEY),
            r#"{"type":"system.alert","payload":[1]}"#,
            400,
        ),
        (
            Some(PUBLISH_KEY),
            r#"{"type":"notification.new","organizationId":"orgA","payload":{}}"#,
            400,
        ),
        (
            Some(PUBLISH_KEY),
            r#"{"type":"system.alert","organizationId":"","payload":{}}"#,
            400,
        ),
        (
            Some(PUBLISH_KEY),
            r#"{"type":"system.alert","payload":{},"extra":1}"#,
            400,
        ),
        (
            Some(PUBLISH_KEY),
            r#"{"type":"data.sync","payload":{}}"#,
            400,
        ),
        (Some(PUBLISH_KEY), big.as_str(), 413),
    ];
    for (key, body, want) in &refused {
        let (code, text) = publish(&base(g0), *key, body).await;
        assert_eq!(code, *want, "{body:.80}: {text}");
        assert!(!text.trim().is_empty(), "a reason is given for {body:.80}");
    }
    // The publish API is off where no key is configured.
    let ctx = c.ing.ctx.clone();
    let keyless = RunningGateway::start(gateway_config(&ctx)).await;
    assert_eq!(
        publish(
            &base(&keyless),
            Some(PUBLISH_KEY),
            r#"{"type":"system.alert","payload":{}}"#
        )
        .await
        .0,
        404
    );

    // Accepted: to one org, to one user, to everyone.
    let (code, body) = publish(
        &base(g1),
        Some(PUBLISH_KEY),
        r#"{"type":"system.alert","organizationId":"orgA","payload":{"message":"first"}}"#,
    )
    .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "accepted"
    );
    let first = a.next_event(WAIT).await.expect("the alert");
    let fj = first.json();
    assert_eq!(
        fj["type"], "system.alert",
        "no refused body was published: {fj}"
    );
    assert_eq!(fj["source"], "api");
    assert_eq!(fj["organizationId"], "orgA");
    assert_eq!(fj["payload"]["message"], "first");
    assert_eq!(first.id.as_deref(), fj["id"].as_str());
    assert_eq!(
        a2.next_event(WAIT).await.unwrap().json()["payload"]["message"],
        "first"
    );

    let note = r#"{"type":"notification.new","organizationId":"orgA","userId":"ua2","payload":{"title":"t","message":"for ua2"}}"#;
    assert_eq!(publish(&base(g1), Some(PUBLISH_KEY), note).await.0, 202);
    let everyone = r#"{"type":"system.alert","payload":{"message":"everyone"}}"#;
    assert_eq!(publish(&base(g1), Some(PUBLISH_KEY), everyone).await.0, 202);
    assert_eq!(
        a2.next_event(WAIT).await.unwrap().json()["payload"]["message"],
        "for ua2"
    );
    assert_eq!(
        a2.next_event(WAIT).await.unwrap().json()["payload"]["message"],
        "everyone"
    );
    let to_a = a.next_event(WAIT).await.unwrap().json();
    assert_eq!(
        to_a["payload"]["message"], "everyone",
        "ua never sees ua2's notification"
    );
    let to_b = b.next_event(WAIT).await.unwrap().json();
    assert_eq!(
        to_b["payload"]["message"], "everyone",
        "orgB gets the broadcast, not orgA's alert"
    );

    // Resumable like any event: from before the first alert, on the other replica.
    let before: u64 = first
        .id
        .as_deref()
        .unwrap()
        .split('-')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let resume_from = format!("{}-0", before - 1);
    let mut again = SseClient::connect(
        &g1.stream_url("organizationId=orgA"),
        Some(&token("ua", 600)),
        &[("last-event-id", resume_from.as_str())],
    )
    .await;
    hello(&mut again).await;
    let replayed = again.events(2, WAIT).await;
    let messages: Vec<Value> = replayed
        .iter()
        .map(|m| m.json()["payload"]["message"].clone())
        .collect();
    assert_eq!(messages, vec![json!("first"), json!("everyone")]);
    keyless.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_post_activity_as_themselves_within_a_rate() {
    let c = cluster(|cfg| {
        cfg.activity_rate = 1;
        cfg.activity_burst = 2;
    })
    .await;
    let (g0, g1) = (&c.gw[0], &c.gw[1]);
    let mut watcher = SseClient::connect(
        &g0.stream_url("organizationId=orgA&channel=user"),
        Some(&token("ua2", 600)),
        &[],
    )
    .await;
    hello(&mut watcher).await;
    let post = |user: &str, org: &str, body: &'static str| {
        let url = format!("{}/api/realtime/stream?organizationId={org}", base(g1));
        let tok = token(user, 600);
        async move {
            let r = http()
                .post(url)
                .bearer_auth(tok)
                .body(body)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.headers().get("retry-after").is_some(),
                r.text().await.unwrap(),
            )
        }
    };
    let ok = r#"{"type":"user.activity","payload":{"action":"viewed","resource":"property/p1","metadata":{"from":"list"}}}"#;
    assert_eq!(post("outsider", "orgA", ok).await.0, 403);
    assert_eq!(
        post(
            "ua",
            "orgA",
            r#"{"type":"user.activity","payload":{"action":"viewed"}}"#
        )
        .await
        .0,
        400
    );
    assert_eq!(
        post(
            "ua",
            "orgA",
            r#"{"payload":{"action":"a","resource":"r","userId":"ua2"}}"#
        )
        .await
        .0,
        400,
        "a body cannot choose the user"
    );
    let (code, _, body) = post("ua", "orgA", ok).await;
    assert_eq!(code, 202, "{body}");
    let e = watcher.next_event(WAIT).await.expect("the activity").json();
    assert_eq!(e["type"], "user.activity");
    assert_eq!(e["payload"]["userId"], "ua");
    assert_eq!(e["payload"]["action"], "viewed");
    assert_eq!(e["payload"]["metadata"]["from"], "list");
    // The per-user rate: burst 2 (one used above), then 429.
    assert_eq!(post("ua", "orgA", ok).await.0, 202);
    let (code, retry, body) = post("ua", "orgA", ok).await;
    assert_eq!(code, 429, "{body}");
    assert!(retry);
    // Another user has their own budget.
    assert_eq!(post("ua2", "orgA", ok).await.0, 202);
}

/// Streams parked with their feed (`gateway/src/delivery/`: the feed writes their
/// frames straight to their sockets) are handed back and parked again all
/// the time here: heartbeats every 20 ms take them back (one replica), slow readers with
/// small receive buffers that stop reading for a second leave chunks
/// half-written (the rest goes through the stream's own task) and fall
/// behind into catch-ups, and events come in bursts. Every stream must still get every event of its organization
/// once, in order, and nothing of the other organization.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_moving_between_hub_and_task_get_every_event_once_in_order() {
    const EVENTS: u64 = 3_000;
    const OTHER: u64 = 20;
    // Replica 0 takes its streams back every 20 ms; on replica 1 (30 s
    // heartbeats) the hub itself meets the full socket buffers.
    let c = cluster_of(&|cfg| cfg.heartbeat = Duration::from_millis(20), &|_| {}).await;
    let ctx = c.ing.ctx.clone();
    let q = "organizationId=orgA";
    let (published_tx, published_rx) = tokio::sync::watch::channel(false);
    let mut readers = Vec::new();
    for (i, gw) in c.gw.iter().enumerate() {
        for user in ["ua", "ua2"] {
            let mut client = SseClient::connect(
                &format!("{}/api/realtime/stream?{q}", base(gw)),
                Some(&token(user, 600)),
                &[],
            )
            .await;
            hello(&mut client).await;
            readers.push(tokio::spawn(async move {
                let mut ns = Vec::new();
                while ns.last() != Some(&EVENTS) {
                    let Some(m) = client.next_event(WAIT).await else {
                        break;
                    };
                    let j = m.json();
                    assert_eq!(j["organizationId"], "orgA", "nothing of orgB");
                    ns.push(j["payload"]["n"].as_u64().unwrap_or(0));
                }
                ns
            }));
        }
        // A slow reader: a 4 KB receive buffer, and a long stall.
        let mut published = published_rx.clone();
        let mut slow =
            stalled_client(gw.addr, q, &token(if i == 0 { "ua" } else { "ua2" }, 600)).await;
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut text: Vec<u8> = Vec::new();
            let mut parsed = 0;
            let mut ns = Vec::new();
            let mut next_pause = 400 + 100 * i;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
            while ns.last() != Some(&EVENTS) && tokio::time::Instant::now() < deadline {
                let read = tokio::time::timeout(WAIT, slow.read(&mut buf)).await;
                let Ok(Ok(n)) = read else { break };
                if n == 0 {
                    break;
                }
                text.extend_from_slice(&buf[..n]);
                while let Some(end) = memchr_position(&text[parsed..], b"\n") {
                    let line = &text[parsed..parsed + end];
                    parsed += end + 1;
                    if let Some(data) = line.strip_prefix(b"data: ")
                        && let Ok(j) = serde_json::from_slice::<Value>(data)
                        && j["type"] == "system.alert"
                    {
                        assert_eq!(j["organizationId"], "orgA", "nothing of orgB");
                        ns.push(j["payload"]["n"].as_u64().unwrap_or(0));
                    }
                }
                // Stop reading, once, until every event is published: more
                // than the socket's buffers hold, so the gateway's writes
                // stop half-way through a chunk.
                if ns.len() >= next_pause {
                    next_pause = usize::MAX;
                    let _ = published.wait_for(|done| *done).await;
                }
            }
            ns
        }));
    }
    let mut other = SseClient::connect(
        &format!("{}/api/realtime/stream?organizationId=orgB", base(&c.gw[0])),
        Some(&token("ub", 600)),
        &[],
    )
    .await;
    hello(&mut other).await;

    // Bursts of 100 events of ~3 KB, a few ms apart, with orgB's
    // events in between.
    for burst in 0..EVENTS / 100 {
        ctx.execute(
            "SELECT pg_logical_emit_message(true, 'realtime', json_build_object(
                 'type', 'system.alert', 'organizationId', 'orgA',
                 'payload', json_build_object('n', g, 'pad', repeat('x', 3000)))::text)
             FROM generate_series($1::bigint, $2::bigint) g",
            &[
                &(burst * 100 + 1).cast_signed(),
                &((burst + 1) * 100).cast_signed(),
            ],
        )
        .await;
        if burst < OTHER {
            ctx.execute(
                "SELECT pg_logical_emit_message(true, 'realtime', json_build_object(
                     'type', 'system.alert', 'organizationId', 'orgB',
                     'payload', json_build_object('n', $1::bigint))::text)",
                &[&(burst + 1).cast_signed()],
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(3 + burst % 5)).await;
    }
    published_tx.send_replace(true);
    for reader in readers {
        let ns = reader.await.unwrap();
        assert_eq!(
            ns,
            (1..=EVENTS).collect::<Vec<_>>(),
            "every event once, in order"
        );
    }
    let theirs: Vec<u64> = other
        .events(OTHER as usize, WAIT)
        .await
        .iter()
        .map(|m| {
            let j = m.json();
            assert_eq!(j["organizationId"], "orgB");
            j["payload"]["n"].as_u64().unwrap_or(0)
        })
        .collect();
    assert_eq!(theirs, (1..=OTHER).collect::<Vec<_>>());
}

/// Sends a stream request on a raw socket and never reads a byte.
async fn stalled_client(addr: SocketAddr, query: &str, tok: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // A small receive window, so the stall shows at once.
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let req = format!(
        "GET /api/realtime/stream?{query} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {tok}\r\nAccept: text/event-stream\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

/// The gateway's resident memory, sampled every 10 ms until told to stop:
/// the highest value seen.
fn rss_sampler(
    pid: u32,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<u64>,
) {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut peak = 0;
        while !*stop.borrow() {
            peak = peak.max(rss_of(pid));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        peak.max(rss_of(pid))
    });
    (stop_tx, task)
}

fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Emits `system.alert` events to orgA numbered `first..=last`, each with a
/// `pad` of `PAD` bytes, 1,000 per transaction.
async fn emit_padded(ctx: &TestContext, first: u64, last: u64) {
    let mut from = first;
    while from <= last {
        let to = (from + 999).min(last);
        ctx.execute(
            "SELECT pg_logical_emit_message(true, 'realtime', json_build_object(
                 'type', 'system.alert', 'organizationId', 'orgA',
                 'payload', json_build_object('n', g, 'pad', repeat('x', $3)))::text)
             FROM generate_series($1::bigint, $2::bigint) g",
            &[&from.cast_signed(), &to.cast_signed(), &(PAD as i32)],
        )
        .await;
        from = to + 1;
    }
}

/// Bytes of padding per event of the slow-client test.
const PAD: usize = 4_000;

/// What a stalled stream may hold in the gateway's memory, by design
/// (ARCHITECTURE.md §3 fan-out): its organization's live channel holds at most
/// `REALTIME_CLIENT_BUFFER` frames (256 by default; shared by the
/// organization's streams, there whether or not one stalls), a stream
/// catching up holds one history page (`PAGE` = 256 entries from each of
/// the organization's and the broadcast history), and the unsent rest of one
/// frame. The socket's buffers are the kernel's, not the process's.
const STALLED_FRAMES: usize = 256 + 2 * 256 + 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_costs_bounded_memory_and_delays_no_one() {
    // ~100 MB sent while one client stalls: buffering it (or any sizeable
    // part of it) for that client shows, whatever the allocator does.
    const WARM_UP: u64 = 1_000;
    const EVENTS: u64 = 25_000;
    let ctx = TestContext::new().await;
    ctx.batch(SEED).await;
    let mut config = config_for(&ctx);
    config.history_len = 50_000;
    let ing = RunningIngestor::start(ctx.clone(), config).await;
    let gw = gateway_process(&ctx, &[]).await;
    let q = "organizationId=orgA";
    let mut normal = SseClient::connect(&gw.stream_url(q), Some(&token("ua", 600)), &[]).await;
    hello(&mut normal).await;

    // A warm-up with every client reading: the live channel fills, buffers
    // and the allocator's arenas reach their working size. Memory is
    // measured from there.
    emit_padded(&ctx, 1, WARM_UP).await;
    let mut expected = 1u64;
    let mut frame_bytes = 0usize;
    while expected <= WARM_UP {
        let m = normal
            .next_event(WAIT)
            .await
            .unwrap_or_else(|| panic!("warm-up event {expected} arrives"));
        assert_eq!(m.json()["payload"]["n"], json!(expected), "in order");
        // The frame on the wire: `id: …`, `data: …` and the blank line.
        let frame =
            m.data.as_deref().map_or(0, str::len) + m.id.as_deref().map_or(0, str::len) + 12;
        frame_bytes = frame_bytes.max(frame);
        expected += 1;
    }
    let baseline = gw.rss_bytes();
    let mut stalled = stalled_client(gw.addr, q, &token("ua2", 600)).await;
    // Its stream is open (counted) before the events it must not buffer.
    wait_until("the stalled stream is open", WAIT, || async {
        (metric_value(&gw.metrics().await, "realtime_gateway_connections") >= 2.0).then_some(())
    })
    .await;
    let (stop_sampling, sampler) = rss_sampler(gw.child.pid());

    emit_padded(&ctx, WARM_UP + 1, EVENTS).await;
    let mut last_id = String::new();
    while expected <= EVENTS {
        let m = normal
            .next_event(WAIT)
            .await
            .unwrap_or_else(|| panic!("event {expected} arrives"));
        let j = m.json();
        assert_eq!(j["payload"]["n"], json!(expected), "in order, none missing");
        last_id = m.id.unwrap();
        expected += 1;
    }
    // Everything is delivered to the reader and the stalled one has taken
    // none of it: what it costs is held now.
    stop_sampling.send_replace(true);
    let peak = sampler.await.unwrap().max(gw.rss_bytes());
    let growth = peak.saturating_sub(baseline);
    let sent = (EVENTS - WARM_UP) as usize * frame_bytes;
    let allowed = STALLED_FRAMES * frame_bytes;
    // Slack for what no design bounds this finely: allocator rounding and
    // fragmentation, Redis reply buffers sized by the bursts.
    let bound = allowed + (16 << 20);
    eprintln!(
        "gateway RSS: baseline {:.1} MiB, peak {:.1} MiB (+{:.1} MiB) while one client stalled through \
         {} events of {frame_bytes} B ({:.0} MiB sent); by design a stalled stream holds at most \
         {STALLED_FRAMES} frames ({:.1} MiB); bound {:.1} MiB",
        baseline as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        growth as f64 / 1048576.0,
        EVENTS - WARM_UP,
        sent as f64 / 1048576.0,
        allowed as f64 / 1048576.0,
        bound as f64 / 1048576.0,
    );
    // The bound is well under what was sent: buffering it would break it.
    assert!(
        bound * 4 < sent,
        "the test sends too little to tell buffering apart"
    );
    assert!(
        (growth as usize) < bound,
        "RSS grew by {:.1} MiB while {:.0} MiB went past a stalled client (bound {:.1} MiB)",
        growth as f64 / 1048576.0,
        sent as f64 / 1048576.0,
        bound as f64 / 1048576.0
    );

    // The stalled client, reading again, is caught up from history: every
    // event since it connected, in order, ending with the last.
    let mut buf = vec![0u8; 1 << 16];
    let mut text = Vec::new();
    let needle = format!("id: {last_id}\n");
    tokio::time::timeout(Duration::from_secs(120), async {
        // Where the last event's frame starts, once seen: read on until it
        // is whole (a frame may arrive in pieces).
        let mut last_at: Option<usize> = None;
        loop {
            let n = stalled.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stalled stream stays open");
            // Search only what is new (plus an overlap): the text is MBs.
            let from = text.len().saturating_sub(needle.len());
            text.extend_from_slice(&buf[..n]);
            if last_at.is_none() {
                last_at = memchr_position(&text[from..], needle.as_bytes()).map(|p| from + p);
            }
            if let Some(at) = last_at
                && memchr_position(&text[at..], b"\n\n").is_some()
            {
                break;
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        let t = String::from_utf8_lossy(&text);
        panic!(
            "the stalled client did not catch up: {} bytes read, ending {:?}",
            t.len(),
            &t[t.len().saturating_sub(600)..]
        )
    });
    let text = String::from_utf8_lossy(&text);
    let ns: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|j| j["payload"]["n"].as_u64())
        .collect();
    assert_eq!(
        ns,
        (WARM_UP + 1..=EVENTS).collect::<Vec<_>>(),
        "caught up in order with nothing missing or doubled"
    );
    ing.stop().await;
}

fn memchr_position(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One stream on a raw socket: the time it ended after `t0`, and its last
/// `retry:` hint.
async fn watch_until_closed(
    mut s: TcpStream,
    t0: tokio::sync::watch::Receiver<Option<tokio::time::Instant>>,
) -> (Duration, Option<u64>) {
    let mut buf = vec![0u8; 4096];
    let mut tail = String::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                tail.push_str(&String::from_utf8_lossy(&buf[..n]));
                if tail.len() > 8192 {
                    tail.drain(..tail.len() - 4096);
                }
            }
            Err(_) => panic!("stream still open after 60 s"),
        }
    }
    let ended = tokio::time::Instant::now();
    let start = t0.borrow().expect("SIGTERM was sent before streams ended");
    let retry = tail
        .lines()
        .filter_map(|l| l.strip_prefix("retry: "))
        .filter_map(|v| v.trim().parse().ok())
        .next_back();
    (ended.saturating_duration_since(start), retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_a_thousand_streams_paced_over_the_drain_and_exits_in_time() {
    const STREAMS: usize = 1_000;
    const DRAIN: Duration = Duration::from_secs(4);
    let ctx = TestContext::new().await;
    ctx.batch(SEED).await;
    let mut gw = gateway_process(
        &ctx,
        &[
            ("REALTIME_DRAIN", "4s"),
            ("REALTIME_RETRY", "2s"),
            ("REALTIME_MAX_CONNECTIONS_PER_USER", "100000"),
            ("REALTIME_MAX_CONNECTIONS_PER_ORG", "100000"),
        ],
    )
    .await;
    let tok = token("ua", 600);
    let (t0_tx, t0_rx) = tokio::sync::watch::channel(None);
    let mut watchers = tokio::task::JoinSet::new();
    for _ in 0..STREAMS {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let req = format!(
            "GET /api/realtime/stream?organizationId=orgA HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        // Wait for the connection message before opening the next.
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while memchr_position(&got, b"\"type\":\"connection\"").is_none() {
            let n = tokio::time::timeout(WAIT, s.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "stream opened");
            got.extend_from_slice(&buf[..n]);
        }
        watchers.spawn(watch_until_closed(s, t0_rx.clone()));
    }
    wait_until("every stream counted", WAIT, || async {
        (metric_value(&gw.metrics().await, "realtime_gateway_connections") >= STREAMS as f64)
            .then_some(())
    })
    .await;

    t0_tx.send_replace(Some(tokio::time::Instant::now()));
    gw.child.terminate();
    let admin = gw.admin;
    wait_until(
        "/readyz is 503 at once",
        Duration::from_secs(2),
        || async move {
            http_get(&format!("http://{admin}/readyz"))
                .await
                .filter(|(s, _)| *s == 503)
        },
    )
    .await;
    // No new streams while draining: the listener is closed (a load
    // balancer retries another replica), or, in the instant before, 503.
    let attempt = http()
        .get(gw.stream_url("organizationId=orgA"))
        .bearer_auth(&tok)
        .send()
        .await;
    if let Ok(r) = attempt {
        assert_eq!(r.status().as_u16(), 503, "no new streams while draining");
    }

    let mut ends = Vec::with_capacity(STREAMS);
    let mut retries = BTreeSet::new();
    while let Some(r) = watchers.join_next().await {
        let (at, retry) = r.unwrap();
        ends.push(at);
        let retry = retry.expect("each drained stream gets a retry hint");
        assert!(
            (1000..3000).contains(&retry),
            "retry {retry} within [retry/2, 3·retry/2)"
        );
        retries.insert(retry);
    }
    let status = gw.child.wait_exit(DRAIN + Duration::from_secs(3)).await;
    assert!(
        status.success(),
        "exits cleanly:\n{}",
        gw.child.output_text()
    );
    ends.sort();
    let last = *ends.last().unwrap();
    let p10 = ends[STREAMS / 10];
    let p90 = ends[STREAMS * 9 / 10];
    // Closes per second over the busiest 500 ms: what the other replicas
    // see as reconnections.
    let mut busiest = 0;
    for (i, start) in ends.iter().enumerate() {
        let n = ends[i..]
            .iter()
            .take_while(|e| **e < *start + Duration::from_millis(500))
            .count();
        busiest = busiest.max(n);
    }
    eprintln!(
        "drain of {STREAMS} streams over {DRAIN:?}: p10 {p10:?}, p90 {p90:?}, last {last:?}, \
         peak {} closes/s (even pacing: {:.0}/s), {} distinct retry hints",
        busiest * 2,
        STREAMS as f64 / (DRAIN.as_secs_f64() * 0.8),
        retries.len()
    );
    assert!(
        last <= DRAIN + Duration::from_secs(1),
        "all closed within the drain: {last:?}"
    );
    assert!(
        p90 - p10 >= DRAIN / 2,
        "closes are spread, not at once: p10 {p10:?} p90 {p90:?}"
    );
    assert!(
        busiest * 2 < STREAMS,
        "no burst closes half the streams within 500 ms"
    );
    assert!(retries.len() > 50, "retry hints are jittered");
}

/// `SUBSCRIBE` calls Redis has served (its own `INFO commandstats`).
async fn subscribe_calls(ctx: &TestContext) -> u64 {
    let mut redis = ctx.redis().await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut redis)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_subscribe:calls="))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_are_refused_before_any_subscription() {
    // A Redis of its own: the count of SUBSCRIBE calls is this test's alone.
    let redis = realtime_tests::RedisServer::start().expect("redis");
    let ctx = TestContext::new().await.with_redis(&redis);
    ctx.batch(SEED).await;
    let gw = RunningGateway::start(gateway_config(&ctx)).await;
    // A member's stream: the replica subscribes to orgA (and already holds
    // its broadcast and control subscriptions).
    let mut member = SseClient::connect(
        &gw.stream_url("organizationId=orgA"),
        Some(&token("ua", 600)),
        &[],
    )
    .await;
    hello(&mut member).await;
    let before = subscribe_calls(&ctx).await;
    // Outsiders probing real and made-up organizations.
    for org in ["orgA", "orgB", "nope-1", "nope-2", "nope-3"] {
        let c = SseClient::connect(
            &gw.stream_url(&format!("organizationId={org}")),
            Some(&token("outsider", 600)),
            &[],
        )
        .await;
        assert_eq!(c.status, 403, "{org}: {}", c.body_text);
    }
    assert_eq!(
        subscribe_calls(&ctx).await,
        before,
        "no SUBSCRIBE on behalf of a non-member"
    );
    // A member of another organization still gets a stream (and its SUBSCRIBE).
    let mut other = SseClient::connect(
        &gw.stream_url("organizationId=orgB"),
        Some(&token("ub", 600)),
        &[],
    )
    .await;
    hello(&mut other).await;
    assert!(subscribe_calls(&ctx).await > before);
    gw.stop().await;
}

/// `realtime_gateway_events_delivered_total` counts every event written to
/// a stream, once: a parked stream's writes are summed per run of its lane
/// (`delivery/feed.rs` `Lane::deliver`), a stream served by its own task
/// counts per frame. Three streams of one organization (two of one user),
/// a transaction of 50 events: the counter reaches exactly what the
/// clients read, and stays there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivered_counter_counts_every_event_written_once() {
    const EVENTS: u64 = 50;
    let ctx = TestContext::new().await;
    ctx.batch(SEED).await;
    let ing = RunningIngestor::start(ctx.clone(), config_for(&ctx)).await;
    let gw = gateway_process(&ctx, &[]).await;
    let mut clients = Vec::new();
    for user in ["ua", "ua2", "ua"] {
        let mut c = SseClient::connect(
            &gw.stream_url("organizationId=orgA"),
            Some(&token(user, 600)),
            &[],
        )
        .await;
        hello(&mut c).await;
        clients.push(c);
    }
    emit_padded(&ctx, 1, EVENTS).await;
    let mut received = 0u64;
    for c in &mut clients {
        loop {
            let m = c.next_event(WAIT).await.expect("the events arrive");
            received += 1;
            if m.json()["payload"]["n"] == json!(EVENTS) {
                break;
            }
        }
    }
    assert!(received >= 3 * EVENTS, "{received}");
    let counted = || async {
        metric_value(
            &gw.metrics().await,
            "realtime_gateway_events_delivered_total",
        )
    };
    // Counted just after the write, so a read may come first.
    wait_until("the counter reaches what was read", WAIT, || async {
        (counted().await == received as f64).then_some(())
    })
    .await;
    // Nothing is left to count: a second look finds the same.
    assert_eq!(counted().await, received as f64);
    drop(clients);
    ing.stop().await;
}

/// Every lease of a replica is renewed, not only the first script call's:
/// renewal goes in calls of a bounded size (a long script is a pause for
/// every other Redis client), so 230 streams of one user and organization
/// take several calls (five of 50 leases on one node; two for the
/// organization's set on a cluster, at 200 per call). With a 2 s lease,
/// after three lease periods each stream must still hold a live place in
/// its user's and its organization's set; a renewal that stopped after one
/// call would let the rest expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lease_is_renewed_when_renewal_takes_several_calls() {
    every_lease_is_renewed(Redis::Single).await;
}

/// The body of the test above, on `redis` (also run on a Redis Cluster by
/// `redis_cluster.rs`).
pub(crate) async fn every_lease_is_renewed(redis: Redis) {
    const STREAMS: usize = 230;
    let ctx = redis.context().await;
    ctx.batch(SEED).await;
    let gw = gateway_process(
        &ctx,
        &[
            ("REALTIME_MAX_CONNECTIONS_PER_USER", "1000"),
            ("REALTIME_MAX_CONNECTIONS_PER_ORG", "1000"),
            ("REALTIME_CONNECTION_LEASE", "2s"),
        ],
    )
    .await;
    let ua = token("ua", 600);
    let mut streams = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        let mut s = SseClient::connect(&gw.stream_url("organizationId=orgA"), Some(&ua), &[]).await;
        assert_eq!(s.status, 200, "{}", s.body_text);
        hello(&mut s).await;
        streams.push(s);
    }
    let prefix = ctx.key_prefix().to_owned();
    let live = |key: String| {
        let ctx = &ctx;
        async move {
            let mut redis = ctx.redis_commands().await;
            let (now_s, now_us): (u64, u64) =
                redis::cmd("TIME").query_async(&mut redis).await.unwrap();
            let now_ms = now_s * 1000 + now_us / 1000;
            let n: usize = redis::cmd("ZCOUNT")
                .arg(&key)
                .arg(now_ms)
                .arg("+inf")
                .query_async(&mut redis)
                .await
                .unwrap();
            n
        }
    };
    let org_key = format!("{prefix}:{{caps:org:orgA}}");
    let user_key = format!("{prefix}:{{caps:user:ua}}");
    assert_eq!(live(org_key.clone()).await, STREAMS, "{org_key}");
    // Three lease periods: a lease never renewed has expired by then.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        live(org_key.clone()).await,
        STREAMS,
        "{org_key} after 3 periods"
    );
    assert_eq!(
        live(user_key.clone()).await,
        STREAMS,
        "{user_key} after 3 periods"
    );
    drop(streams);
}
