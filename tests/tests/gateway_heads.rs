//! The public listener against slow and half-open connections (security
//! issue 11), on the real gateway binary with real Postgres and Redis:
//! request heads dribbled a byte at a time and idle keep-alive connections
//! are closed within `REALTIME_HEAD_TIMEOUT`, on the SSE fast path and on
//! hyper's; 10,000 half-open sockets do not keep a legitimate client from
//! its stream under a modest open-files limit; and a browser's stream
//! request carrying 3 KiB of cookies, in one write or a byte at a time, is
//! served by the fast path at the memory cost of a small one.
//!
//! Every wait has a deadline; every socket is on loopback.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::gateway::{JWT_SECRET, token};
use crate::support::http_get;
use futures_util::StreamExt;
use realtime_tests::{ChildProcess, TestContext, binary_path, free_port, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(30);
const SEED: &str = "INSERT INTO organizations (id, name) VALUES ('orgA', 'Acme');
     INSERT INTO users (id) VALUES ('ua');
     INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES ('m1', 'ua', 'orgA');";

/// A gateway binary as a child process.
struct Gateway {
    child: ChildProcess,
    addr: SocketAddr,
    admin: SocketAddr,
}

/// Starts the gateway binary with `extra` settings; with `nofile`, under
/// that open-files limit (soft and hard, through `prlimit(1)`, which execs
/// the gateway in its own process).
async fn gateway(ctx: &TestContext, extra: &[(&str, &str)], nofile: Option<u64>) -> Gateway {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut env = ctx.gateway_env(addr, JWT_SECRET);
    env.extend([
        ("REALTIME_CONNECT_RATE", "0".to_owned()),
        ("REALTIME_MAX_CONNECTIONS_PER_USER", "100000".to_owned()),
        ("REALTIME_MAX_CONNECTIONS_PER_ORG", "100000".to_owned()),
        ("REALTIME_HEARTBEAT", "30s".to_owned()),
    ]);
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let gateway = binary_path("realtime-gateway");
    let child = match nofile {
        None => ChildProcess::spawn(&gateway, &env),
        Some(n) => ChildProcess::spawn_with_args(
            std::path::Path::new("prlimit"),
            &[format!("--nofile={n}:{n}"), gateway.display().to_string()],
            &env,
        ),
    };
    let admin = child.admin_addr(WAIT).await;
    wait_until("the gateway is ready", WAIT, || async move {
        http_get(&format!("http://{admin}/readyz"))
            .await
            .filter(|(s, _)| *s == 200)
    })
    .await;
    Gateway { child, addr, admin }
}

impl Gateway {
    async fn metrics(&self) -> String {
        http_get(&format!("http://{}/metrics", self.admin))
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// The value of the series `name{labels}` (`labels` as exported, e.g.
    /// `by="direct"`; empty: the series without labels); 0 when absent.
    async fn metric(&self, name: &str, labels: &str) -> f64 {
        let series = if labels.is_empty() {
            format!("{name} ")
        } else {
            format!("{name}{{{labels}}} ")
        };
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    fn pid(&self) -> u32 {
        self.child.pid()
    }
}

/// Reads until the peer closes (FIN or reset) or `deadline`; returns when
/// it closed, `None` if it did not.
async fn closed_at(read: &mut (impl AsyncReadExt + Unpin), deadline: Instant) -> Option<Instant> {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(Instant::now()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Connects, writes `first` at once and then `rest` one byte per
/// `interval` (while the connection lasts); returns how long after the
/// connect the gateway closed it, if it did before `within`.
async fn dribble(
    addr: SocketAddr,
    first: &[u8],
    rest: &[u8],
    interval: Duration,
    within: Duration,
) -> Option<Duration> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let started = Instant::now();
    let (mut read, mut write) = stream.into_split();
    let first = first.to_vec();
    let rest = rest.to_vec();
    let writer = tokio::spawn(async move {
        if write.write_all(&first).await.is_err() {
            return write;
        }
        for byte in rest {
            tokio::time::sleep(interval).await;
            if write.write_all(&[byte]).await.is_err() {
                break;
            }
        }
        // Keep the write side open (no FIN) until aborted.
        std::future::pending::<()>().await;
        write
    });
    let closed = closed_at(&mut read, started + within).await;
    writer.abort();
    closed.map(|at| at - started)
}

const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Generous: a loaded 2-core machine, and the dribbler's own timing.
const CLOSE_WITHIN: Duration = Duration::from_secs(8);

/// A head sent a byte at a time must still arrive whole within the head
/// timeout: on the fast path (a stream request), on hyper's path (another
/// method), and for an idle keep-alive connection after its response. Each
/// dribbler would go on for longer than `CLOSE_WITHIN`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dribbled_heads_and_idle_keep_alives_are_closed_within_the_head_timeout() {
    let ctx = TestContext::new().await;
    ctx.batch(SEED).await;
    let gw = gateway(&ctx, &[("REALTIME_HEAD_TIMEOUT", "2s")], None).await;
    let tok = token("ua", 3600);
    let stream_head = format!(
        "/api/realtime/stream?organizationId=orgA HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {tok}\r\n\r\n"
    );
    let interval = Duration::from_millis(500);
    let addr = gw.addr;
    // Fast path: `GET ` then the rest, a byte every 500 ms (~100 s in all).
    let fast = tokio::spawn({
        let rest = stream_head.clone().into_bytes();
        async move { dribble(addr, b"GET ", &rest, interval, CLOSE_WITHIN).await }
    });
    // hyper's path: another method, so hyper has it after the first write.
    let hyper = tokio::spawn(async move {
        dribble(
            addr,
            b"OPTIONS /api/realtime/stream HTTP/1.1\r\n",
            b"Host: gateway.test\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: GET\r\n\r\n",
            interval,
            CLOSE_WITHIN,
        )
        .await
    });
    // Nothing at all.
    let silent = tokio::spawn(async move { dribble(addr, b"", b"", interval, CLOSE_WITHIN).await });
    // Keep-alive: one whole request, its answer, then silence.
    let keep_alive = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /nowhere HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 404"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        let answered = Instant::now();
        closed_at(&mut s, answered + CLOSE_WITHIN)
            .await
            .map(|at| at - answered)
    });
    let results = [
        ("fast path, dribbled", fast.await.unwrap()),
        ("hyper path, dribbled", hyper.await.unwrap()),
        ("nothing sent", silent.await.unwrap()),
        (
            "keep-alive, idle after a response",
            keep_alive.await.unwrap(),
        ),
    ];
    eprintln!("closed after: {results:?} (head timeout {HEAD_TIMEOUT:?})");
    for (what, closed) in results {
        let closed = closed.unwrap_or_else(|| {
            panic!("{what}: still open {CLOSE_WITHIN:?} later (head timeout {HEAD_TIMEOUT:?})")
        });
        // Not closed for another reason (e.g. a parse error) before the
        // deadline.
        assert!(
            closed >= HEAD_TIMEOUT - Duration::from_millis(300),
            "{what}: closed after {closed:?}, before the head timeout"
        );
    }
    let metrics = gw.metrics().await;
    assert!(
        gw.metric(
            "realtime_gateway_sockets_closed_total",
            "reason=\"head_timeout\""
        )
        .await
            >= 3.0
            && gw
                .metric("realtime_gateway_sockets_closed_total", "reason=\"idle\"")
                .await
                >= 1.0,
        "closes are counted:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("sockets"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The gateway still serves a stream.
    let (status, _) = open_stream(addr, &stream_request(&tok, 0), 0).await;
    assert_eq!(status, 200);
}

/// A stream request for `orgA` with `cookie_bytes` of unrelated cookies,
/// headers as a browser's `EventSource` sends them.
fn stream_request(tok: &str, cookie_bytes: usize) -> Vec<u8> {
    let mut head = format!(
        "GET /api/realtime/stream?organizationId=orgA HTTP/1.1\r\nHost: gateway.test\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\nAccept: text/event-stream\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br, zstd\r\nReferer: https://app.example/dashboard\r\nCache-Control: no-cache\r\nSec-Fetch-Dest: empty\r\nSec-Fetch-Mode: cors\r\nSec-Fetch-Site: same-origin\r\nAuthorization: Bearer {tok}\r\n"
    );
    if cookie_bytes > 0 {
        let mut cookie = String::from("Cookie: theme=dark");
        let mut i = 0;
        while cookie.len() < cookie_bytes {
            cookie.push_str(&format!("; _pref{i}=v{i:0>48}"));
            i += 1;
        }
        head.push_str(&cookie);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Sends `request` (in pieces of `piece` bytes, 0: one write) and reads
/// until the stream's connection message; returns the status and the open
/// socket.
async fn open_stream(addr: SocketAddr, request: &[u8], piece: usize) -> (u16, TcpStream) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    if piece == 0 {
        s.write_all(request).await.unwrap();
    } else {
        for part in request.chunks(piece) {
            s.write_all(part).await.unwrap();
            // Each piece its own segment, read on its own.
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
    }
    let deadline = Instant::now() + WAIT;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            if status != 200 || body.contains("\"status\":\"connected\"") {
                return (status, s);
            }
        }
    }
}

/// `VmRSS` of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// `VmRSS` of `pid` once what the allocator frees gradually is given back:
/// what opening streams allocated for a moment (head buffers, requests,
/// responses) is freed at once but returned to the OS by jemalloc over
/// about 10 s, and would otherwise count as the streams' memory. Polls
/// until the RSS has not fallen for 3 s, at most 20 s.
async fn settled_rss_kib(pid: u32) -> u64 {
    let started = Instant::now();
    let mut low = rss_kib(pid);
    let mut low_since = Instant::now();
    while low_since.elapsed() < Duration::from_secs(3)
        && started.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let rss = rss_kib(pid);
        if rss < low {
            low = rss;
            low_since = Instant::now();
        }
    }
    low
}

/// Opens `n` streams with `request`, 100 at a time; all must get 200.
async fn open_streams(addr: SocketAddr, request: &[u8], n: usize) -> Vec<TcpStream> {
    futures_util::stream::iter(0..n)
        .map(|_| async move {
            let (status, s) = open_stream(addr, request, 0).await;
            assert_eq!(status, 200);
            s
        })
        .buffer_unordered(100)
        .collect()
        .await
}

/// The streams the cookie test holds at its end: a warm-up of 500 and
/// four waves of 2,500.
const COOKIE_TEST_SOCKETS: u64 = 10_500;

/// A stream request with 3 KiB of other cookies (common in real apps) is
/// served by the fast path, in one write or split at every byte, and an
/// idle stream opened with it costs what one with a small head costs
/// (within 10 %): the head buffer is freed once the head is parsed. It
/// used to miss the fast path and cost hyper's buffers for its whole life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_with_3_kib_of_cookies_take_the_fast_path_and_cost_what_small_ones_do() {
    // 10,500 streams held at the end: beside another many-socket test this
    // process ran out of open files (EMFILE in CI).
    let _turn = crate::support::many_sockets(COOKIE_TEST_SOCKETS + 1_000).await;
    let ctx = TestContext::new().await;
    ctx.batch(SEED).await;
    let gw = gateway(&ctx, &[("REALTIME_HEAD_TIMEOUT", "60s")], None).await;
    let tok = token("ua", 3600);
    let small = stream_request(&tok, 0);
    let cookies = stream_request(&tok, 3 * 1024);
    assert!(cookies.len() > small.len() + 3 * 1024);
    let direct = "by=\"direct\"";
    let hyper = "by=\"hyper\"";

    // Served by the fast path: one write, then one byte per write.
    for piece in [0, 1] {
        let before = (
            gw.metric("realtime_gateway_sockets_served_total", direct)
                .await,
            gw.metric("realtime_gateway_sockets_served_total", hyper)
                .await,
        );
        let (status, s) = open_stream(gw.addr, &cookies, piece).await;
        assert_eq!(status, 200, "piece {piece}");
        let after = (
            gw.metric("realtime_gateway_sockets_served_total", direct)
                .await,
            gw.metric("realtime_gateway_sockets_served_total", hyper)
                .await,
        );
        assert_eq!(
            (after.0 - before.0, after.1 - before.1),
            (1.0, 0.0),
            "a {}-byte head sent {} took the fast path",
            cookies.len(),
            if piece == 0 {
                "in one write"
            } else {
                "a byte per write"
            }
        );
        drop(s);
    }

    // Memory: waves of idle streams, small heads, cookie heads, cookie
    // heads, small heads (the order cancels a drift from wave to wave);
    // each wave's growth over the RSS before it. Every stream stays open
    // to the end, the warm-up's too (state built on first use), so no wave
    // fills memory another freed and the allocator kept.
    const N: usize = 2500;
    const _: () = assert!(500 + 4 * N == COOKIE_TEST_SOCKETS as usize);
    let mut held = open_streams(gw.addr, &small, 500).await;
    let (mut small_kib, mut cookie_kib) = (0.0, 0.0);
    for (what, request) in [
        ("small", &small),
        ("cookie", &cookies),
        ("cookie", &cookies),
        ("small", &small),
    ] {
        let before = settled_rss_kib(gw.pid()).await;
        held.extend(open_streams(gw.addr, request, N).await);
        let expected = held.len() as f64;
        wait_until("every stream counted", WAIT, || async {
            (gw.metric("realtime_gateway_connections", "").await == expected).then_some(())
        })
        .await;
        let kib = settled_rss_kib(gw.pid()).await.saturating_sub(before) as f64 / N as f64;
        eprintln!(
            "{N} idle streams with {what} heads ({} bytes): {kib:.2} KiB each",
            request.len()
        );
        if what == "small" {
            small_kib += kib / 2.0;
        } else {
            cookie_kib += kib / 2.0;
        }
    }
    eprintln!(
        "RSS per idle stream: small heads {small_kib:.2} KiB, 3 KiB of cookies {cookie_kib:.2} KiB ({:+.1} %)",
        (cookie_kib / small_kib - 1.0) * 100.0
    );
    assert!(
        cookie_kib <= small_kib * 1.10,
        "an idle stream opened with 3 KiB of cookies costs {cookie_kib:.2} KiB, one with a small head {small_kib:.2} KiB"
    );
}

const HALF_OPEN: usize = 10_000;
/// The gateway's open-files limit in that test: a modest production value,
/// well below the number of half-open sockets.
const GATEWAY_NOFILE: u64 = 4096;

/// 10,000 sockets that connect and then send nothing or part of a head, on
/// a gateway whose open-files limit is 4,096 and whose head timeout (60 s)
/// is longer than the test: a legitimate client still connects and gets
/// its stream at once, because at the connection cap (derived from the
/// limit) a newcomer takes the place of the connection that has waited
/// longest for its head. Before the cap, the gateway ran out of file
/// descriptors and accepted nobody until a socket closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_half_open_sockets_do_not_keep_a_client_from_its_stream() {
    let _turn = crate::support::many_sockets(HALF_OPEN as u64 + 1_000).await;
    let ctx = TestContext::new().await;
    ctx.batch(SEED).await;
    let gw = gateway(
        &ctx,
        &[("REALTIME_HEAD_TIMEOUT", "60s")],
        Some(GATEWAY_NOFILE),
    )
    .await;
    let addr = gw.addr;
    let tok = token("ua", 3600);
    // A tenth of the limit is the reserve (256 at least).
    let cap = GATEWAY_NOFILE - GATEWAY_NOFILE / 10;

    let partial_stream = b"GET /api/realtime/stream?organizationId=orgA HTTP/1.1\r\nHost: x\r\n";
    let partial_other = b"OPTIONS /api/realtime/stream HTTP/1.1\r\nHo";
    let started = Instant::now();
    let connected = Arc::new(AtomicUsize::new(0));
    let flood = tokio::spawn({
        let connected = connected.clone();
        async move {
            let results: Vec<Result<TcpStream, String>> = futures_util::stream::iter(0..HALF_OPEN)
                .map(|i| {
                    let connected = connected.clone();
                    async move {
                        let connect =
                            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr));
                        let mut s = match connect.await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => return Err(format!("connect: {e}")),
                            Err(_) => return Err("connect: timed out".to_owned()),
                        };
                        connected.fetch_add(1, Ordering::Relaxed);
                        let first: &[u8] = match i % 3 {
                            0 => b"",
                            1 => partial_stream,
                            _ => partial_other,
                        };
                        // A few bytes into a fresh socket's buffer: never
                        // blocks, but the gateway may have closed it already.
                        let _ = s.write_all(first).await;
                        Ok(s)
                    }
                })
                .buffer_unordered(256)
                .collect()
                .await;
            results
        }
    });

    // Legitimate clients, while the flood is past the gateway's open-files
    // limit and after it: each gets its stream within 3 s (far below the
    // head timeout, so no timeout is what makes room).
    let probe = |i: usize| {
        let request = stream_request(&tok, 0);
        async move {
            let t = Instant::now();
            let opened =
                tokio::time::timeout(Duration::from_secs(3), open_stream(addr, &request, 0)).await;
            let (status, s) = opened.unwrap_or_else(|_| {
                panic!("client {i}: no stream within 3 s among the half-open sockets")
            });
            assert_eq!(status, 200, "client {i}");
            eprintln!("client {i}: stream open in {:.1?}", t.elapsed());
            drop(s);
        }
    };
    let connected_ref = &connected;
    wait_until("the flood past the open-files limit", WAIT, || async move {
        (connected_ref.load(Ordering::Relaxed) >= GATEWAY_NOFILE as usize + 500).then_some(())
    })
    .await;
    for i in 0..5 {
        probe(i).await;
    }
    let results = flood.await.unwrap();
    let mut sockets = Vec::new();
    let mut failures = std::collections::BTreeMap::<String, usize>::new();
    for r in results {
        match r {
            Ok(s) => sockets.push(s),
            Err(e) => *failures.entry(e).or_default() += 1,
        }
    }
    eprintln!(
        "{} half-open sockets connected in {:.1?} ({failures:?} failed)",
        sockets.len(),
        started.elapsed()
    );
    for i in 5..10 {
        probe(i).await;
    }
    let open = gw.metric("realtime_gateway_sockets", "").await;
    let evicted = gw
        .metric(
            "realtime_gateway_sockets_closed_total",
            "reason=\"evicted\"",
        )
        .await;
    let fds = std::fs::read_dir(format!("/proc/{}/fd", gw.pid()))
        .map(|d| d.count())
        .unwrap();
    eprintln!("gateway: {open} sockets open (cap {cap}), {evicted} evicted, {fds} fds");
    assert!(
        open <= cap as f64,
        "{open} sockets open, over the cap {cap}"
    );
    assert!(evicted > 0.0, "the cap was reached and made room");
    let output = gw.child.output_text();
    assert!(
        !output.contains("panicked"),
        "the gateway panicked:\n{output}"
    );
    drop(sockets);
}

/// A whole head followed by a body dribbled a byte at a time: the body must
/// arrive within the head timeout too (a request in flight is otherwise
/// never idle, and the connection would be held without a deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dribbled_request_body_is_cut_off_within_the_head_timeout() {
    let ctx = TestContext::new().await;
    ctx.batch(SEED).await;
    let gw = gateway(&ctx, &[("REALTIME_HEAD_TIMEOUT", "2s")], None).await;
    let tok = token("ua", 3600);
    let head = format!(
        "POST /api/realtime/stream?organizationId=orgA HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {tok}\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n"
    );
    let body = vec![b' '; 400];
    // A byte every 500 ms: 200 s for the whole body.
    let closed = dribble(
        gw.addr,
        head.as_bytes(),
        &body,
        Duration::from_millis(500),
        // The body's deadline, then the idle keep-alive's: two timeouts.
        CLOSE_WITHIN * 2,
    )
    .await;
    eprintln!("closed after {closed:?} (head timeout {HEAD_TIMEOUT:?})");
    let closed = closed.expect("the connection is closed well before the body could arrive");
    assert!(
        closed >= HEAD_TIMEOUT - Duration::from_millis(300),
        "closed after {closed:?}, before the timeout"
    );
}
