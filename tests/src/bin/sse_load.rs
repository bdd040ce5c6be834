//! `sse_load`: a load client for `bench_fanout`. Opens `--count` SSE streams
//! to one gateway (HTTP/1.1, one plain TCP connection each, the chunked
//! `text/event-stream` body parsed minimally), keeps them open and times
//! every event they receive.
//!
//! Client `k` (from `--first` to `--first + --count - 1`) reads organization
//! `org{k % orgs:04}` as user `org{…}-u{(k / orgs) % users}`, with an HS256
//! bearer token minted from `--secret`.
//!
//! Timing, per delivered event, on this host's wall clock (µs):
//! - `send`: receive time − the µs written by the bench into the row's
//!   `description` just before it sent the INSERT (so the INSERT, its commit,
//!   the ingestor, Redis, the gateway and this read are all included);
//! - `commit`: receive time − the event's `timestamp` (the commit time, whole
//!   ms: up to 1 ms too high).
//!
//! Protocol: one JSON line on stdout when every stream is open (or gave up):
//! `{"type":"ready",…}`; then commands on stdin, one per line: `reset`
//! (zero the counters, answers `{"type":"reset"}`), `report` (answers
//! `{"type":"report",…}` with histograms as `[[µs, count],…]`), `quit`.
//! End of stdin ends the process too, so it never outlives the bench.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connection attempts per client before it gives up.
const ATTEMPTS: u32 = 5;
/// Longest wait for response headers and the connection message.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

struct Args {
    addr: String,
    secret: String,
    first: u64,
    count: u64,
    orgs: u64,
    users: u64,
    concurrency: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut map = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(key) = it.next() {
        let key = key
            .strip_prefix("--")
            .ok_or_else(|| anyhow::anyhow!("unexpected argument {key:?}"))?
            .to_owned();
        let value = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("--{key} needs a value"))?;
        map.insert(key, value);
    }
    let get = |k: &str| {
        map.get(k)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("--{k} is required"))
    };
    let num = |k: &str, default: u64| -> anyhow::Result<u64> {
        match map.get(k) {
            Some(v) => v.parse().map_err(|e| anyhow::anyhow!("--{k} {v:?}: {e}")),
            None => Ok(default),
        }
    };
    Ok(Args {
        addr: get("addr")?,
        secret: get("secret")?,
        first: num("first", 0)?,
        count: num("count", 1000)?,
        orgs: num("orgs", 100)?.max(1),
        users: num("users", 3)?.max(1),
        concurrency: num("concurrency", 100)?.max(1) as usize,
    })
}

fn org_id(i: u64) -> String {
    format!("org{i:04}")
}

fn user_id(org: u64, j: u64) -> String {
    format!("org{org:04}-u{j}")
}

/// Latencies in µs: 10 µs buckets below 100 ms, 1 ms buckets up to 60 s,
/// one overflow bucket.
struct Histogram {
    counts: Vec<u64>,
}

const FINE: u64 = 100_000;
const FINE_STEP: u64 = 10;
const COARSE_STEP: u64 = 1_000;
const COARSE_BUCKETS: u64 = 59_900;

impl Histogram {
    fn new() -> Self {
        Self {
            counts: vec![0; (FINE / FINE_STEP + COARSE_BUCKETS + 1) as usize],
        }
    }

    fn record(&mut self, us: u64) {
        let b = if us < FINE {
            us / FINE_STEP
        } else {
            FINE / FINE_STEP + ((us - FINE) / COARSE_STEP).min(COARSE_BUCKETS)
        };
        self.counts[b as usize] += 1;
    }

    /// The lower bound (µs) of bucket `b`.
    fn value(b: u64) -> u64 {
        if b < FINE / FINE_STEP {
            b * FINE_STEP
        } else {
            FINE + (b - FINE / FINE_STEP) * COARSE_STEP
        }
    }

    fn sparse(&self) -> Vec<[u64; 2]> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(b, c)| [Self::value(b as u64), *c])
            .collect()
    }

    fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
    }
}

#[derive(Default)]
struct Stats {
    /// Streams that received their connection message.
    connected: AtomicU64,
    /// Clients that gave up after `ATTEMPTS` failed attempts.
    gave_up: AtomicU64,
    /// Failed attempts (refused, non-200, timeout), retried or not.
    failed_attempts: AtomicU64,
    /// Streams the server ended after they were open.
    ended: AtomicU64,
    heartbeats: AtomicU64,
    /// Event frames (`id:`) received since the last reset.
    events: AtomicU64,
    /// Of those, the ones carrying the bench's send time (timed).
    timed: AtomicU64,
    /// Wall-clock µs of the first and last timed event since the reset.
    first_us: AtomicU64,
    last_us: AtomicU64,
    send: Mutex<Option<Histogram>>,
    commit: Mutex<Option<Histogram>>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Stats {
    fn reset(&self) {
        self.events.store(0, Ordering::Relaxed);
        self.timed.store(0, Ordering::Relaxed);
        self.heartbeats.store(0, Ordering::Relaxed);
        self.first_us.store(u64::MAX, Ordering::Relaxed);
        self.last_us.store(0, Ordering::Relaxed);
        for h in [&self.send, &self.commit] {
            if let Some(h) = lock(h).as_mut() {
                h.clear();
            }
        }
    }

    /// One complete SSE message (without its blank line), read at `at_us`.
    /// Returns true for the connection message.
    fn message(&self, msg: &[u8], at_us: u64) -> bool {
        if msg.first() == Some(&b':') {
            self.heartbeats.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let Ok(text) = std::str::from_utf8(msg) else {
            return false;
        };
        if !text.starts_with("id: ") {
            return text.contains("\"type\":\"connection\"");
        }
        self.events.fetch_add(1, Ordering::Relaxed);
        let Some(sent_us) = number_after(text, "\"description\":\"") else {
            return false;
        };
        self.timed.fetch_add(1, Ordering::Relaxed);
        self.first_us.fetch_min(at_us, Ordering::Relaxed);
        self.last_us.fetch_max(at_us, Ordering::Relaxed);
        if let Some(h) = lock(&self.send).as_mut() {
            h.record(at_us.saturating_sub(sent_us));
        }
        if let Some(commit_ms) = number_after(text, "\"timestamp\":")
            && let Some(h) = lock(&self.commit).as_mut()
        {
            h.record(at_us.saturating_sub(commit_ms * 1000));
        }
        false
    }

    fn report(&self, clients: u64) -> serde_json::Value {
        let hist = |h: &Mutex<Option<Histogram>>| {
            lock(h).as_ref().map(Histogram::sparse).unwrap_or_default()
        };
        let first = self.first_us.load(Ordering::Relaxed);
        serde_json::json!({
            "type": "report",
            "clients": clients,
            "connected": self.connected.load(Ordering::Relaxed),
            "gave_up": self.gave_up.load(Ordering::Relaxed),
            "failed_attempts": self.failed_attempts.load(Ordering::Relaxed),
            "ended": self.ended.load(Ordering::Relaxed),
            "heartbeats": self.heartbeats.load(Ordering::Relaxed),
            "events": self.events.load(Ordering::Relaxed),
            "timed": self.timed.load(Ordering::Relaxed),
            "first_us": if first == u64::MAX { 0 } else { first },
            "last_us": self.last_us.load(Ordering::Relaxed),
            "send_hist": hist(&self.send),
            "commit_hist": hist(&self.commit),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The unsigned integer right after the first `key` in `text`.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits: &str = &text[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Undoes `Transfer-Encoding: chunked`, incrementally.
#[derive(Default)]
struct Dechunk {
    /// Bytes left in the current chunk's data.
    remaining: usize,
    /// The CRLF after a chunk's data is still to be skipped.
    crlf: bool,
    /// The terminating zero-size chunk was seen.
    done: bool,
}

impl Dechunk {
    /// Moves the payload of the complete parts of `raw` into `out`, and
    /// removes what it consumed from `raw`. Err on a malformed size line.
    fn feed(&mut self, raw: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<(), String> {
        let mut pos = 0;
        while pos < raw.len() && !self.done {
            if self.remaining > 0 {
                let take = self.remaining.min(raw.len() - pos);
                out.extend_from_slice(&raw[pos..pos + take]);
                pos += take;
                self.remaining -= take;
                if self.remaining == 0 {
                    self.crlf = true;
                }
                continue;
            }
            if self.crlf {
                if raw.len() - pos < 2 {
                    break;
                }
                pos += 2;
                self.crlf = false;
                continue;
            }
            let Some(nl) = raw[pos..].windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            let line = std::str::from_utf8(&raw[pos..pos + nl]).map_err(|e| e.to_string())?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|e| format!("bad chunk size {line:?}: {e}"))?;
            pos += nl + 2;
            if size == 0 {
                self.done = true;
            } else {
                self.remaining = size;
            }
        }
        raw.drain(..pos);
        Ok(())
    }
}

enum Outcome {
    /// Opened, then the server ended it.
    Ended,
    /// Never opened.
    Failed(String),
}

/// One stream: connect, send the request, read until it ends. `permit` is
/// released once the connection message arrived.
async fn session(
    args: &Args,
    stats: &Stats,
    org: &str,
    token: &str,
    mut permit: Option<OwnedSemaphorePermit>,
) -> Outcome {
    let handshake_deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let mut tcp =
        match tokio::time::timeout_at(handshake_deadline, TcpStream::connect(&args.addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Outcome::Failed(format!("connect: {e}")),
            Err(_) => return Outcome::Failed("connect: timeout".into()),
        };
    let _ = tcp.set_nodelay(true);
    let request = format!(
        "GET /api/realtime/stream?organizationId={org} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n",
        args.addr
    );
    if let Err(e) = tcp.write_all(request.as_bytes()).await {
        return Outcome::Failed(format!("write: {e}"));
    }
    let mut raw: Vec<u8> = Vec::with_capacity(2048);
    let mut body: Vec<u8> = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    let mut headers_done = false;
    let mut chunked = false;
    let mut dechunk = Dechunk::default();
    let mut opened = false;
    loop {
        let read = if opened {
            tcp.read(&mut chunk).await
        } else {
            match tokio::time::timeout_at(handshake_deadline, tcp.read(&mut chunk)).await {
                Ok(r) => r,
                Err(_) => return Outcome::Failed("no connection message in time".into()),
            }
        };
        let n = match read {
            Ok(0) | Err(_) if opened => return Outcome::Ended,
            Ok(0) => return Outcome::Failed("closed before the connection message".into()),
            Err(e) => return Outcome::Failed(format!("read: {e}")),
            Ok(n) => n,
        };
        let at = now_us();
        raw.extend_from_slice(&chunk[..n]);
        if !headers_done {
            let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&raw[..end]).into_owned();
            let status = head.lines().next().unwrap_or("").to_owned();
            if !status.starts_with("HTTP/1.1 200") {
                let rest = String::from_utf8_lossy(&raw[end + 4..]).trim().to_owned();
                return Outcome::Failed(format!("{status}: {rest}"));
            }
            chunked = head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked");
            raw.drain(..end + 4);
            headers_done = true;
        }
        if chunked {
            if let Err(e) = dechunk.feed(&mut raw, &mut body) {
                return Outcome::Failed(e);
            }
        } else {
            body.append(&mut raw);
        }
        let mut start = 0;
        while let Some(end) = body[start..].windows(2).position(|w| w == b"\n\n") {
            let msg = &body[start..start + end];
            if stats.message(msg, at) && !opened {
                opened = true;
                stats.connected.fetch_add(1, Ordering::Relaxed);
                permit.take();
            }
            start += end + 2;
        }
        body.drain(..start);
        if dechunk.done {
            return if opened {
                Outcome::Ended
            } else {
                Outcome::Failed("stream ended before the connection message".into())
            };
        }
    }
}

async fn client(
    k: u64,
    args: Arc<Args>,
    stats: Arc<Stats>,
    tokens: Arc<HashMap<String, String>>,
    gate: Arc<Semaphore>,
) {
    let org_index = k % args.orgs;
    let org = org_id(org_index);
    let user = user_id(org_index, (k / args.orgs) % args.users);
    let token = &tokens[&user];
    for attempt in 1..=ATTEMPTS {
        let Ok(permit) = gate.clone().acquire_owned().await else {
            return;
        };
        match session(&args, &stats, &org, token, Some(permit)).await {
            Outcome::Ended => {
                stats.ended.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Outcome::Failed(why) => {
                stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                if attempt == ATTEMPTS {
                    eprintln!("sse_load: client {k} ({user} → {org}) gave up: {why}");
                    stats.gave_up.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
            }
        }
    }
}

fn mint(user: &str, secret: &str) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = serde_json::json!({"sub": user, "iat": now, "exp": now + 4 * 3600});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// The soft limit on open files, from /proc/self/limits.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn print_line(value: &serde_json::Value) {
    println!("{value}");
}

async fn run() -> anyhow::Result<()> {
    let args = Arc::new(parse_args()?);
    if let Some(limit) = open_files_limit() {
        anyhow::ensure!(
            args.count + 64 <= limit,
            "--count {} needs more open files than this process may hold ({limit}); run several processes",
            args.count
        );
    }
    let mut tokens = HashMap::new();
    for k in args.first..args.first + args.count {
        let org = k % args.orgs;
        let user = user_id(org, (k / args.orgs) % args.users);
        if let std::collections::hash_map::Entry::Vacant(slot) = tokens.entry(user) {
            let token = mint(slot.key(), &args.secret)?;
            slot.insert(token);
        }
    }
    let tokens = Arc::new(tokens);
    let stats = Arc::new(Stats {
        send: Mutex::new(Some(Histogram::new())),
        commit: Mutex::new(Some(Histogram::new())),
        ..Stats::default()
    });
    stats.reset();
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let started = Instant::now();
    for k in args.first..args.first + args.count {
        tokio::spawn(client(
            k,
            args.clone(),
            stats.clone(),
            tokens.clone(),
            gate.clone(),
        ));
    }
    // Ready once every client is open or gave up.
    {
        let stats = stats.clone();
        let count = args.count;
        tokio::spawn(async move {
            loop {
                let connected = stats.connected.load(Ordering::Relaxed);
                let gave_up = stats.gave_up.load(Ordering::Relaxed);
                if connected + gave_up >= count {
                    print_line(&serde_json::json!({
                        "type": "ready",
                        "connected": connected,
                        "gave_up": gave_up,
                        "failed_attempts": stats.failed_attempts.load(Ordering::Relaxed),
                        "seconds": started.elapsed().as_secs_f64(),
                    }));
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        match line.trim() {
            "reset" => {
                stats.reset();
                print_line(&serde_json::json!({"type": "reset"}));
            }
            "report" => print_line(&stats.report(args.count)),
            "quit" => break,
            "" => {}
            other => eprintln!("sse_load: unknown command {other:?}"),
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // One thread: the bench's machine has two cores, shared with the
    // gateway it measures; a single-threaded client costs the least CPU.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run());
    // Open streams are dropped with the process; do not wait for tasks.
    std::process::exit(match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("sse_load: {e:#}");
            1
        }
    })
}
