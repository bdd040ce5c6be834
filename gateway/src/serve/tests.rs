use std::convert::Infallible;

use axum::extract::ConnectInfo;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::direct::pump;
use super::head::{
    FIRST_HEAD_BUF, STREAM_PATH, find_head_end, may_be_stream_request, stream_request,
};
use super::*;

fn peer() -> SocketAddr {
    "127.0.0.1:1".parse().unwrap()
}

#[test]
fn plain_stream_requests_take_the_fast_path() {
    let raw = b"GET /api/realtime/stream?organizationId=o HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n";
    let req = stream_request(raw, peer()).unwrap();
    assert_eq!(req.uri().query(), Some("organizationId=o"));
    assert_eq!(req.headers()["authorization"], "Bearer t");
    assert!(req.extensions().get::<ConnectInfo<SocketAddr>>().is_some());
}

#[test]
fn anything_unusual_goes_to_hyper() {
    for raw in [
        &b"POST /api/realtime/stream HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET /api/realtime/stream HTTP/1.0\r\n\r\n",
        b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/realtime/streamx HTTP/1.1\r\n\r\n",
        b"GET /api/realtime/stream HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
        b"GET /api/realtime/stream HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /api/realtime/stream HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
        b"GET /api/realtime/stream HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
        b"GET /api/realtime/stream HTTP/1.1\r\nX: a\x01b\r\n\r\n",
        b"GET /api/realtime/stream\xff HTTP/1.1\r\n\r\n",
    ] {
        assert!(
            stream_request(raw, peer()).is_none(),
            "{}",
            String::from_utf8_lossy(raw)
        );
    }
}

/// A browser-like stream request carrying `cookie_bytes` of cookies.
fn browser_head(cookie_bytes: usize) -> Vec<u8> {
    let mut cookie = String::from("Cookie: theme=dark");
    let mut i = 0;
    while cookie.len() < cookie_bytes {
        cookie.push_str(&format!("; c{i}=v{i:0>40}"));
        i += 1;
    }
    format!(
        "GET /api/realtime/stream?organizationId=o HTTP/1.1\r\nHost: x\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0\r\nAccept: text/event-stream\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\nReferer: https://app.example/dashboard\r\nCache-Control: no-cache\r\nConnection: keep-alive\r\nSec-Fetch-Dest: empty\r\nSec-Fetch-Mode: cors\r\nSec-Fetch-Site: same-origin\r\n{cookie}\r\n\r\n"
    )
    .into_bytes()
}

/// Writes `raw` to a loopback connection in pieces of `piece` bytes
/// and returns what `read_head` made of it.
async fn read_written(raw: Vec<u8>, piece: usize) -> Head {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let writer = tokio::spawn(async move {
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.set_nodelay(true).unwrap();
        for part in raw.chunks(piece) {
            client.write_all(part).await.unwrap();
            // Let the reader see each piece on its own.
            tokio::task::yield_now().await;
        }
        client
    });
    let (mut socket, peer) = listener.accept().await.unwrap();
    let head = tokio::time::timeout(Duration::from_secs(30), read_head(&mut socket, peer))
        .await
        .expect("the head is read");
    drop(writer.await.unwrap());
    head
}

#[tokio::test]
async fn browser_heads_with_cookies_take_the_fast_path_in_any_pieces() {
    let raw = browser_head(3 * 1024);
    assert!(raw.len() > 3 * 1024 && raw.len() < FAST_HEAD_LIMIT);
    for piece in [raw.len(), 1024, 7, 1] {
        match read_written(raw.clone(), piece).await {
            Head::Stream { request: req, .. } => {
                assert!(req.headers()["cookie"].len() >= 3 * 1024, "piece {piece}");
            }
            Head::Other(_) => panic!(
                "a {}-byte head in {piece}-byte pieces went to hyper",
                raw.len()
            ),
            Head::Gone => panic!("gone"),
        }
    }
}

#[tokio::test]
async fn other_requests_go_to_hyper_with_every_byte_read() {
    let over = browser_head(FAST_HEAD_LIMIT);
    match read_written(over.clone(), 1024).await {
        Head::Other(prefix) => {
            assert!(over.starts_with(&prefix) && prefix.len() <= FAST_HEAD_LIMIT)
        }
        _ => panic!("a head over the limit goes to hyper"),
    }
    let other = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    match read_written(other, 1).await {
        // Handed over as soon as the path differs, bytes intact.
        Head::Other(prefix) => assert_eq!(&prefix[..], b"GET /h"),
        _ => panic!("another path goes to hyper"),
    }
}

/// Requests whose answer must not depend on how their bytes are split
/// into reads: (name, bytes). The last request of each asks hyper to
/// close, so every answer ends.
fn split_cases() -> Vec<(&'static str, Vec<u8>)> {
    let stream = "GET /api/realtime/stream?organizationId=o HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n";
    let refused = "GET /api/realtime/stream?organizationId=o HTTP/1.1\r\nHost: x\r\n";
    let health = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut oversized = browser_head(FAST_HEAD_LIMIT + 4 * 1024);
    oversized.truncate(oversized.len() - 2);
    oversized.extend_from_slice(b"Authorization: Bearer t\r\nConnection: close\r\n\r\n");
    vec![
        (
            "stream",
            format!("{stream}Connection: close\r\n\r\n").into_bytes(),
        ),
        (
            "refused stream",
            format!("{refused}Connection: close\r\n\r\n").into_bytes(),
        ),
        ("health", health.as_bytes().to_vec()),
        (
            "404",
            b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "bad request",
            b"GET /api/realtime/stream HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_vec(),
        ),
        ("oversized", oversized),
        (
            "pipelined stream, health",
            format!("{stream}\r\n{health}").into_bytes(),
        ),
        (
            "pipelined refused stream, health",
            format!("{refused}\r\n{health}").into_bytes(),
        ),
        (
            "pipelined health, health",
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n{health}").into_bytes(),
        ),
    ]
}

/// Where a split is tried: every byte of short heads; of long ones,
/// every 61st byte and around every buffer size and the fast path's
/// limit.
fn split_points(len: usize) -> Vec<usize> {
    if len <= 512 {
        return (1..len).collect();
    }
    let mut at: Vec<usize> = (1..len).step_by(61).collect();
    for edge in [
        FIRST_HEAD_BUF,
        2 * FIRST_HEAD_BUF,
        4 * FIRST_HEAD_BUF,
        FAST_HEAD_LIMIT,
    ] {
        at.extend((edge - 2..=edge + 2).filter(|&k| k > 0 && k < len));
    }
    at.sort_unstable();
    at.dedup();
    at
}

/// Same path, same head (hyper's prefix may be longer or shorter: it
/// reads the rest itself).
fn same_path(a: &HeadOutcome, b: &HeadOutcome) -> bool {
    match (a, b) {
        (HeadOutcome::Stream { head: x, .. }, HeadOutcome::Stream { head: y, .. }) => x == y,
        (HeadOutcome::Hyper(_), HeadOutcome::Hyper(_)) => true,
        (HeadOutcome::Gone, HeadOutcome::Gone) => true,
        _ => false,
    }
}

/// The reader alone, with an in-memory connection: deterministic reads
/// of exactly the pieces given (two at every split point, three around
/// it, and a byte at a time).
#[test]
fn a_head_split_at_every_byte_takes_the_path_of_the_whole() {
    for (name, raw) in split_cases() {
        let whole = read_head_in_pieces(&[&raw]).unwrap();
        let singles: Vec<&[u8]> = raw.chunks(1).collect();
        let mut splits = vec![(
            read_head_in_pieces(&singles).unwrap(),
            "byte at a time".to_owned(),
        )];
        for k in split_points(raw.len()) {
            let (a, b) = raw.split_at(k);
            splits.push((read_head_in_pieces(&[a, b]).unwrap(), format!("at {k}")));
            let (b, c) = b.split_at(b.len().min(1));
            splits.push((
                read_head_in_pieces(&[a, b, c]).unwrap(),
                format!("at {k}, {}", k + 1),
            ));
        }
        for (split, how) in splits {
            assert!(
                same_path(&whole, &split),
                "{name} split {how}: {split:?}, whole: {whole:?}"
            );
        }
    }
}

/// A router standing in for the gateway's: a stream with a bearer
/// token, 401 without, a health check, 404 for the rest.
fn stub_router() -> Router {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::get;
    Router::new()
        .route(
            STREAM_PATH,
            get(|headers: axum::http::HeaderMap| async move {
                if headers.contains_key(header::AUTHORIZATION) {
                    let frames = futures_util::stream::iter(
                        ["retry: 1000\n\n", "id: 1\ndata: {}\n\n"]
                            .map(|f| Ok::<_, Infallible>(Bytes::from_static(f.as_bytes()))),
                    );
                    (
                        [(header::CONTENT_TYPE, "text/event-stream")],
                        Body::from_stream(frames),
                    )
                        .into_response()
                } else {
                    (StatusCode::UNAUTHORIZED, "no credential").into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
}

/// Everything the listener answers to `pieces`, each written and
/// flushed on its own with a pause between (so the listener reads them
/// apart), read until it closes; `date` lines left out.
async fn answer(addr: SocketAddr, pieces: &[&[u8]]) -> Vec<u8> {
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.set_nodelay(true).unwrap();
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            // Pacing, not waiting for anything: the split is the point.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        client.write_all(piece).await.unwrap();
        client.flush().await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), client.read_to_end(&mut out))
        .await
        .expect("the listener answers and closes")
        .unwrap();
    let mut kept = Vec::with_capacity(out.len());
    for line in out.split_inclusive(|&b| b == b'\n') {
        if !line.to_ascii_lowercase().starts_with(b"date: ") {
            kept.extend_from_slice(line);
        }
    }
    kept
}

/// The statuses of the responses in `answer`, in order (each head
/// parsed, its body skipped by its length or its chunks).
fn statuses(mut answer: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    while !answer.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(n) = response.parse(answer).unwrap() else {
            panic!("a partial response: {}", String::from_utf8_lossy(answer));
        };
        out.push(response.code.unwrap());
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| std::str::from_utf8(h.value).unwrap().to_owned())
        };
        let length = header("content-length").map(|v| v.parse::<usize>().unwrap());
        let chunked = header("transfer-encoding").is_some_and(|v| v == "chunked");
        answer = &answer[n..];
        if let Some(length) = length {
            answer = &answer[length..];
        } else if chunked {
            loop {
                let line = answer.iter().position(|&b| b == b'\n').unwrap();
                let size = std::str::from_utf8(&answer[..line - 1]).unwrap();
                let size = usize::from_str_radix(size, 16).unwrap();
                answer = &answer[line + 1 + size + 2..];
                if size == 0 {
                    break;
                }
            }
        }
    }
    out
}

/// The real listener ([`serve`]) over loopback TCP: every request in
/// [`split_cases`], written in two writes at every split point, is
/// answered byte for byte as when written whole; and whole, each is
/// answered as HTTP says (a refused stream does not swallow what was
/// pipelined behind it; a stream ends the connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_split_at_every_byte_is_answered_as_the_whole() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let draining = CancellationToken::new();
    let limits = Limits {
        head_timeout: Duration::from_secs(30),
        max_connections: 256,
    };
    let server = tokio::spawn(serve(
        listener,
        stub_router(),
        draining.clone(),
        TaskTracker::new(),
        limits,
    ));
    let expected: [&[u16]; 9] = [
        &[200],
        &[401],
        &[200],
        &[404],
        &[400],
        &[200],
        &[200],
        &[401, 200],
        &[200, 200],
    ];
    for ((name, raw), want) in split_cases().into_iter().zip(expected) {
        let whole = answer(addr, &[&raw]).await;
        assert_eq!(
            statuses(&whole),
            want,
            "{name}: {}",
            String::from_utf8_lossy(&whole)
        );
        for k in split_points(raw.len()) {
            let (a, b) = raw.split_at(k);
            let split = answer(addr, &[a, b]).await;
            assert!(
                split == whole,
                "{name} split at {k}:\n{}\nwhole:\n{}",
                String::from_utf8_lossy(&split),
                String::from_utf8_lossy(&whole)
            );
        }
    }
    draining.cancel();
    server.await.unwrap();
}

#[test]
fn only_the_stream_request_line_is_kept_for_the_fast_path() {
    for ok in [
        &b""[..],
        b"G",
        b"GET ",
        b"GET /api/realtime/stream",
        b"GET /api/realtime/stream?o",
        b"GET /api/realtime/stream HTTP",
    ] {
        assert!(may_be_stream_request(ok), "{}", String::from_utf8_lossy(ok));
    }
    for other in [
        &b"POST"[..],
        b"GET /x",
        b"GET /api/realtime/streamx",
        b"PRI * HTTP/2.0",
        b"\x16\x03\x01",
        b"get /api",
    ] {
        assert!(
            !may_be_stream_request(other),
            "{}",
            String::from_utf8_lossy(other)
        );
    }
}

#[test]
fn the_head_end_is_found_from_where_the_new_bytes_start() {
    let raw = b"GET / HTTP/1.1\r\n\r\n";
    assert_eq!(find_head_end(raw, 0), Some(raw.len()));
    assert_eq!(find_head_end(raw, raw.len() - 4), Some(raw.len()));
    assert_eq!(find_head_end(raw, raw.len() - 3), None);
    assert_eq!(find_head_end(raw, raw.len() + 5), None);
}

#[tokio::test]
async fn a_body_ending_behind_a_batch_is_not_polled_again() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        out
    });
    let (socket, _) = listener.accept().await.unwrap();
    let frames = futures_util::stream::unfold(0, |n| async move {
        (n < 2).then(|| {
            (
                Ok::<_, std::convert::Infallible>(Bytes::from(format!("id: {n}\n\n"))),
                n + 1,
            )
        })
    });
    pump(&socket, Body::from_stream(frames), None)
        .await
        .unwrap();
    drop(socket);
    let out = client.await.unwrap();
    assert!(
        out.ends_with(b"0\r\n\r\n"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}
