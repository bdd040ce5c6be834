//! A stand-in for the app's own origin in front of gateway replicas, for
//! browser tests of code that opens a RELATIVE stream URL (the original
//! app's hook opens `/api/realtime/stream?…` on the page's own origin).
//!
//! [`Front`] listens on a loopback port and
//! - serves one HTML page at `/` (any query string);
//! - forwards every request under `/api/realtime/` to one of the gateway
//!   replicas, round robin over the replicas per request, skipping a replica
//!   that refuses the TCP connection (a load balancer's passive health check,
//!   nginx's `proxy_next_upstream error`); when none accepts it answers 502,
//!   as a load balancer does;
//! - streams the answer byte for byte as it arrives (no buffering: SSE
//!   frames reach the browser when the gateway writes them), one request
//!   per connection (`Connection: close` both ways);
//! - records every forwarded request ([`Forwarded`]): which replica
//!   answered, its status, whether it was an accepted stream (the gateway's
//!   `connection` message came) and whether it has ended. A test reads this
//!   to see where the page is connected and how the page's requests were
//!   answered, without touching the page.
//!
//! Everything else gets a 404. [`Front::cut`] ends every forwarded exchange
//! at once, as a load balancer's restart or a network blip does. Dropping
//! the front stops it and cuts every forwarded connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The largest request head read before the connection is dropped.
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to one replica may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How much of an answer is kept to find its status and the gateway's
/// `connection` message (the first message of an accepted stream).
const SNIFF: usize = 8 * 1024;

/// One request the front forwarded (or could not).
#[derive(Debug, Clone, Default)]
pub struct Forwarded {
    /// The request target (path and query).
    pub target: String,
    /// The index (in the front's replica list) of the replica that got the
    /// request; `None` when no replica accepted a connection (answered 502).
    pub backend: Option<usize>,
    /// The status the replica answered with, once its status line came.
    pub status: Option<u16>,
    /// The answer carried the gateway's `connection` message: an open
    /// stream, not a refusal.
    pub connected: bool,
    /// The answer has ended (the replica or the client closed).
    pub ended: bool,
}

impl Forwarded {
    /// A 200 that ended without a `connection` message: the gateway's
    /// transient refusal for an `EventSource` (`retry:`, a comment, the end).
    pub fn is_transient_refusal(&self) -> bool {
        self.ended && self.status == Some(200) && !self.connected
    }

    /// An accepted stream that is still open.
    pub fn is_open_stream(&self) -> bool {
        self.connected && !self.ended
    }
}

/// See the module docs.
pub struct Front {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Forwarded>>>,
    /// Bumped by [`Front::cut`]; every exchange watches it.
    cuts: tokio::sync::watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Front {
    /// Starts a front on a free loopback port serving `page` at `/` and
    /// forwarding `/api/realtime/` to `backends` (the replicas' listen
    /// addresses, fixed for the front's life: a replica restarted on the
    /// same address is used again).
    pub async fn start(page: String, backends: Vec<SocketAddr>) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the front's port");
        let addr = listener.local_addr().expect("the front's address");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (cuts, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            page,
            backends,
            next: AtomicUsize::new(0),
            log: log.clone(),
            cuts: cuts.clone(),
        });
        let task = tokio::spawn(async move {
            // Dropped with this task: every connection task is aborted.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            connections.spawn(serve(stream, shared.clone()));
                        }
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Front {
            addr,
            log,
            cuts,
            task,
        }
    }

    /// Ends every exchange in flight now: both of its connections are
    /// closed without another byte (the client sees its stream end with no
    /// final frame). Later requests are forwarded as before.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// `http://127.0.0.1:PORT`: the page's origin.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request forwarded so far, in arrival order.
    pub fn forwarded(&self) -> Vec<Forwarded> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

struct Shared {
    page: String,
    backends: Vec<SocketAddr>,
    next: AtomicUsize,
    log: Arc<Mutex<Vec<Forwarded>>>,
    cuts: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn update(&self, index: usize, change: impl FnOnce(&mut Forwarded)) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = log.get_mut(index) {
            change(entry);
        }
    }
}

/// Reads the request head (up to the blank line); `None` when the client
/// closes, is too slow or sends too much.
async fn read_head(client: &mut TcpStream) -> Option<(Vec<u8>, usize)> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    let read = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(end + 4);
            }
            if buf.len() > MAX_HEAD {
                return None;
            }
            let n = client.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let end = tokio::time::timeout(HEAD_TIMEOUT, read).await.ok()??;
    Some((buf, end))
}

async fn serve(mut client: TcpStream, shared: Arc<Shared>) {
    let mut cut = shared.cuts.subscribe();
    let Some((buf, end)) = read_head(&mut client).await else {
        return;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let path = target.split('?').next().unwrap_or_default();

    if path == "/" && method == "GET" {
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\n\
             cache-control: no-store\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
            shared.page.len(),
            shared.page
        );
        let _ = client.write_all(answer.as_bytes()).await;
        let _ = client.shutdown().await;
        return;
    }
    if !path.starts_with("/api/realtime/") {
        let _ = client
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
        let _ = client.shutdown().await;
        return;
    }

    // The same head, one request per connection.
    let mut forwarded_head = format!("{request_line}\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or_default().trim();
        if ["connection", "keep-alive", "proxy-connection"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
        {
            continue;
        }
        forwarded_head.push_str(line);
        forwarded_head.push_str("\r\n");
    }
    forwarded_head.push_str("Connection: close\r\n\r\n");

    let index = {
        let mut log = shared.log.lock().unwrap_or_else(|p| p.into_inner());
        log.push(Forwarded {
            target: target.clone(),
            ..Forwarded::default()
        });
        log.len() - 1
    };

    let count = shared.backends.len();
    let start = shared.next.fetch_add(1, Ordering::Relaxed);
    let mut upstream = None;
    for attempt in 0..count {
        let backend = (start + attempt) % count;
        let addr = shared.backends[backend];
        if let Ok(Ok(stream)) =
            tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await
        {
            upstream = Some((backend, stream));
            break;
        }
    }
    let Some((backend, upstream)) = upstream else {
        shared.update(index, |f| {
            f.status = Some(502);
            f.ended = true;
        });
        let body = "no gateway replica is reachable\n";
        let answer = format!(
            "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = client.write_all(answer.as_bytes()).await;
        let _ = client.shutdown().await;
        return;
    };
    shared.update(index, |f| f.backend = Some(backend));

    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let mut first = forwarded_head.into_bytes();
    first.extend_from_slice(&buf[end..]);
    if upstream_write.write_all(&first).await.is_err() {
        shared.update(index, |f| f.ended = true);
        return;
    }
    // Client → replica: the rest of the request (nothing for a GET), then
    // the client's close, passed on.
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut upstream_write).await;
        let _ = upstream_write.shutdown().await;
    });
    // Replica → client, chunk by chunk as it arrives.
    let mut sniffed = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = upstream_read.read(&mut chunk) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = cut.changed() => break,
        };
        if sniffed.len() < SNIFF {
            sniffed.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&sniffed);
            let status = text
                .split("\r\n")
                .next()
                .filter(|_| text.contains("\r\n"))
                .and_then(|line| line.split(' ').nth(1))
                .and_then(|s| s.parse::<u16>().ok());
            let connected = text.contains(r#""type":"connection""#);
            shared.update(index, |f| {
                f.status = f.status.or(status);
                f.connected |= connected;
            });
        }
        if client_write.write_all(&chunk[..n]).await.is_err() {
            break;
        }
    }
    let _ = client_write.shutdown().await;
    up.abort();
    shared.update(index, |f| f.ended = true);
}
