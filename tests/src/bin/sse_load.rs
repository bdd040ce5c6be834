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
//! One thread, one `epoll` (mio) over every stream, no async runtime: this
//! client shares the host with the gateway it measures, so what it spends
//! per frame (a read, a scan for the message end and two numbers) is kept to
//! the least. `--round-us N` (default 0): read in rounds at least N µs apart
//! instead of as data arrives (see [`Rounds`]); latencies then include up to
//! N µs of waiting.
//!
//! Protocol: one JSON line on stdout when every stream is open (or gave up):
//! `{"type":"ready",…}`; then commands on stdin, one per line: `reset`
//! (zero the counters, answers `{"type":"reset"}`), `report` (answers
//! `{"type":"report",…}` with histograms as `[[µs, count],…]` and
//! `seconds` as `[[unix second, timed, over 10 ms, max µs],…]`), `quit`.
//! End of stdin ends the process too, so it never outlives the bench.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use memchr::memmem::Finder;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

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
    /// Read in rounds this far apart (µs); 0: read as data arrives.
    round_us: u64,
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
        round_us: num("round-us", 0)?.min(100_000),
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

/// Counters and histograms; one thread owns them.
struct Stats {
    /// Streams that received their connection message.
    connected: u64,
    /// Clients that gave up after `ATTEMPTS` failed attempts.
    gave_up: u64,
    /// Failed attempts (refused, non-200, timeout), retried or not.
    failed_attempts: u64,
    /// Streams the server ended after they were open.
    ended: u64,
    heartbeats: u64,
    /// Event frames (`id:`) received since the last reset.
    events: u64,
    /// Of those, the ones carrying the bench's send time (timed).
    timed: u64,
    /// Wall-clock µs of the first and last timed event since the reset.
    first_us: u64,
    last_us: u64,
    send: Histogram,
    commit: Histogram,
    /// By second of the wall clock (of the read): timed events, how many of
    /// them took over `SLOW_US`, the slowest (µs). Shows whether a tail is
    /// a few stalls or spread over the run.
    seconds: BTreeMap<u64, [u64; 3]>,
}

/// The line between fast and slow in the per-second series.
const SLOW_US: u64 = 10_000;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The searches a message needs, built once.
struct Keys {
    description: Finder<'static>,
    timestamp: Finder<'static>,
    connection: Finder<'static>,
}

impl Keys {
    fn new() -> Self {
        Keys {
            description: Finder::new(b"\"description\":\""),
            timestamp: Finder::new(b"\"timestamp\":"),
            connection: Finder::new(b"\"type\":\"connection\""),
        }
    }
}

/// The unsigned integer right after the first `key` in `text`.
fn number_after(text: &[u8], key: &Finder<'_>) -> Option<u64> {
    let start = key.find(text)? + key.needle().len();
    let digits = &text[start..];
    let end = digits
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 || end > 19 {
        return None;
    }
    Some(
        digits[..end]
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}

impl Stats {
    fn new() -> Self {
        let mut stats = Stats {
            connected: 0,
            gave_up: 0,
            failed_attempts: 0,
            ended: 0,
            heartbeats: 0,
            events: 0,
            timed: 0,
            first_us: u64::MAX,
            last_us: 0,
            send: Histogram::new(),
            commit: Histogram::new(),
            seconds: BTreeMap::new(),
        };
        stats.reset();
        stats
    }

    fn reset(&mut self) {
        self.events = 0;
        self.timed = 0;
        self.heartbeats = 0;
        self.first_us = u64::MAX;
        self.last_us = 0;
        self.send.clear();
        self.commit.clear();
        self.seconds.clear();
    }

    /// One complete SSE message (without its blank line), read at `at_us`.
    /// Returns true for the connection message.
    fn message(&mut self, keys: &Keys, msg: &[u8], at_us: u64) -> bool {
        if msg.first() == Some(&b':') {
            self.heartbeats += 1;
            return false;
        }
        if !msg.starts_with(b"id: ") {
            return keys.connection.find(msg).is_some();
        }
        self.events += 1;
        let Some(sent_us) = number_after(msg, &keys.description) else {
            return false;
        };
        self.timed += 1;
        self.first_us = self.first_us.min(at_us);
        self.last_us = self.last_us.max(at_us);
        let took = at_us.saturating_sub(sent_us);
        self.send.record(took);
        let second = self.seconds.entry(at_us / 1_000_000).or_default();
        second[0] += 1;
        second[1] += u64::from(took > SLOW_US);
        second[2] = second[2].max(took);
        if let Some(commit_ms) = number_after(msg, &keys.timestamp) {
            self.commit.record(at_us.saturating_sub(commit_ms * 1000));
        }
        false
    }

    fn report(&self, clients: u64) -> serde_json::Value {
        serde_json::json!({
            "type": "report",
            "clients": clients,
            "connected": self.connected,
            "gave_up": self.gave_up,
            "failed_attempts": self.failed_attempts,
            "ended": self.ended,
            "heartbeats": self.heartbeats,
            "events": self.events,
            "timed": self.timed,
            "first_us": if self.first_us == u64::MAX { 0 } else { self.first_us },
            "last_us": self.last_us,
            "send_hist": self.send.sparse(),
            "commit_hist": self.commit.sparse(),
            "seconds": self
                .seconds
                .iter()
                .map(|(s, [n, slow, max])| [*s, *n, *slow, *max])
                .collect::<Vec<_>>(),
        })
    }
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
            let Some(nl) = memchr::memmem::find(&raw[pos..], b"\r\n") else {
                if raw.len() - pos > 64 {
                    return Err("chunk size line too long".into());
                }
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

/// Where a client is.
enum Phase {
    /// Waiting for a handshake slot or a retry's time.
    Waiting,
    /// Connecting, then sending the request (`written` bytes of it so far).
    Connecting { written: usize },
    /// Request sent; reading the response head, then the body up to the
    /// connection message.
    Opening,
    /// Open: counting frames.
    Open,
    /// Ended, or gave up.
    Done,
}

struct Client {
    k: u64,
    phase: Phase,
    stream: Option<TcpStream>,
    attempt: u32,
    /// When a handshake in progress times out.
    deadline: Instant,
    request: Arc<[u8]>,
    head_done: bool,
    chunked: bool,
    raw: Vec<u8>,
    body: Vec<u8>,
    dechunk: Dechunk,
}

impl Client {
    fn reset_io(&mut self) {
        self.stream = None;
        self.head_done = false;
        self.chunked = false;
        self.raw = Vec::new();
        self.body = Vec::new();
        self.dechunk = Dechunk::default();
    }
}

/// What a read did to a client.
enum Progress {
    /// Nothing decisive.
    Pending,
    /// The connection message arrived.
    Opened,
    /// The stream ended (after it opened).
    Ended,
    /// The attempt failed (before it opened), with why.
    Failed(String),
}

/// Reading in rounds: after a round that read anything, the thread sleeps
/// `round` before it asks the kernel for more, and each round reads every
/// socket that became readable meanwhile. With nothing read it blocks in
/// `epoll_wait` as usual.
///
/// Why: this client shares the host with the gateway it measures. Blocked
/// in `epoll_wait`, it is woken by each frame the gateway writes, and on
/// loopback that wake-up (and the preemption that follows it) is paid
/// inside the gateway's `writev`: a quarter of the gateway's CPU in the
/// profile, a cost no gateway pays when its readers are browsers on other
/// hosts. Asleep in a timer, it is not woken by data. The price is on our
/// side of the measurement: a frame waits up to `round` before it is read
/// and timed, so latencies include up to `round` of the client's own delay.
struct Rounds {
    round: Duration,
}

impl Rounds {
    fn after(&self, read_anything: bool) {
        if read_anything && !self.round.is_zero() {
            std::thread::sleep(self.round);
        }
    }
}

struct Load {
    args: Args,
    addr: SocketAddr,
    poll: Poll,
    clients: Vec<Client>,
    stats: Stats,
    keys: Keys,
    /// Clients waiting for a handshake slot, in order.
    queue: VecDeque<usize>,
    /// Retries not yet due: (when, client).
    retries: Vec<(Instant, usize)>,
    /// Handshakes in flight (at most `args.concurrency`).
    in_flight: usize,
    scratch: Box<[u8]>,
    started: Instant,
    ready_printed: bool,
    /// When handshake deadlines were last checked.
    last_deadline_scan: Instant,
}

impl Load {
    /// Starts queued clients while handshake slots are free.
    fn start_queued(&mut self) {
        while self.in_flight < self.args.concurrency {
            let Some(i) = self.queue.pop_front() else {
                return;
            };
            self.in_flight += 1;
            if let Err(why) = self.connect(i) {
                self.fail(i, why);
            }
        }
    }

    fn connect(&mut self, i: usize) -> Result<(), String> {
        let client = &mut self.clients[i];
        client.reset_io();
        client.attempt += 1;
        client.deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let mut stream = TcpStream::connect(self.addr).map_err(|e| format!("connect: {e}"))?;
        self.poll
            .registry()
            .register(
                &mut stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("register: {e}"))?;
        client.stream = Some(stream);
        client.phase = Phase::Connecting { written: 0 };
        Ok(())
    }

    /// An attempt failed: retry later, or give up.
    fn fail(&mut self, i: usize, why: String) {
        self.in_flight -= 1;
        self.stats.failed_attempts += 1;
        let client = &mut self.clients[i];
        if let Some(mut stream) = client.stream.take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        client.reset_io();
        if client.attempt >= ATTEMPTS {
            let org = client.k % self.args.orgs;
            eprintln!(
                "sse_load: client {} ({} → {}) gave up: {why}",
                client.k,
                user_id(org, (client.k / self.args.orgs) % self.args.users),
                org_id(org)
            );
            client.phase = Phase::Done;
            self.stats.gave_up += 1;
        } else {
            client.phase = Phase::Waiting;
            let backoff = Duration::from_millis(250 * u64::from(client.attempt));
            self.retries.push((Instant::now() + backoff, i));
        }
    }

    /// Handles one readiness event for client `i`.
    fn event(&mut self, i: usize, writable: bool, readable: bool, at_us: u64) {
        if writable
            && matches!(self.clients[i].phase, Phase::Connecting { .. })
            && let Err(why) = self.send_request(i)
        {
            self.fail(i, why);
            return;
        }
        if !readable || !matches!(self.clients[i].phase, Phase::Opening | Phase::Open) {
            return;
        }
        match self.read(i, at_us) {
            Progress::Pending => {}
            Progress::Opened => {
                self.in_flight -= 1;
                self.stats.connected += 1;
                self.clients[i].phase = Phase::Open;
            }
            Progress::Ended => {
                self.stats.ended += 1;
                let client = &mut self.clients[i];
                if let Some(mut stream) = client.stream.take() {
                    let _ = self.poll.registry().deregister(&mut stream);
                }
                client.reset_io();
                client.phase = Phase::Done;
            }
            Progress::Failed(why) => self.fail(i, why),
        }
    }

    fn send_request(&mut self, i: usize) -> Result<(), String> {
        let client = &mut self.clients[i];
        let Phase::Connecting { written } = &mut client.phase else {
            return Ok(());
        };
        let Some(stream) = client.stream.as_mut() else {
            return Ok(());
        };
        if let Ok(Some(e)) | Err(e) = stream.take_error() {
            return Err(format!("connect: {e}"));
        }
        while *written < client.request.len() {
            match stream.write(&client.request[*written..]) {
                Ok(0) => return Err("write: closed".into()),
                Ok(n) => *written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                // Not connected yet: the next writable event comes once it is.
                Err(e) if e.kind() == ErrorKind::NotConnected => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        let _ = stream.set_nodelay(true);
        client.phase = Phase::Opening;
        // Only reads from now on: no wake-up when the send buffer drains.
        self.poll
            .registry()
            .reregister(stream, Token(i), Interest::READABLE)
            .map_err(|e| format!("reregister: {e}"))
    }

    /// Reads what client `i`'s socket has (edge-triggered: until it would
    /// block) and handles every complete message.
    fn read(&mut self, i: usize, at_us: u64) -> Progress {
        let client = &mut self.clients[i];
        let opened_before = matches!(client.phase, Phase::Open);
        let mut progress = Progress::Pending;
        let Some(stream) = client.stream.as_mut() else {
            return progress;
        };
        let mut eof = false;
        loop {
            match stream.read(&mut self.scratch) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => client.raw.extend_from_slice(&self.scratch[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    return if opened_before {
                        Progress::Ended
                    } else {
                        Progress::Failed(format!("read: {e}"))
                    };
                }
            }
        }
        if !client.head_done {
            let Some(end) = memchr::memmem::find(&client.raw, b"\r\n\r\n") else {
                if eof {
                    return Progress::Failed("closed before the response head".into());
                }
                if client.raw.len() > 64 * 1024 {
                    return Progress::Failed("response head too large".into());
                }
                return Progress::Pending;
            };
            let head = String::from_utf8_lossy(&client.raw[..end]).into_owned();
            let status = head.lines().next().unwrap_or("").to_owned();
            if !status.starts_with("HTTP/1.1 200") {
                let rest = String::from_utf8_lossy(&client.raw[end + 4..])
                    .trim()
                    .to_owned();
                return Progress::Failed(format!("{status}: {rest}"));
            }
            client.chunked = head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked");
            client.raw.drain(..end + 4);
            client.head_done = true;
        }
        if client.chunked {
            if let Err(e) = client.dechunk.feed(&mut client.raw, &mut client.body) {
                return Progress::Failed(e);
            }
        } else {
            client.body.append(&mut client.raw);
        }
        let mut start = 0;
        while let Some(end) = memchr::memmem::find(&client.body[start..], b"\n\n") {
            let msg = &client.body[start..start + end];
            if self.stats.message(&self.keys, msg, at_us)
                && !opened_before
                && matches!(progress, Progress::Pending)
            {
                progress = Progress::Opened;
            }
            start += end + 2;
        }
        client.body.drain(..start);
        let opened = opened_before || matches!(progress, Progress::Opened);
        if eof || client.dechunk.done {
            return if opened {
                // Opened in this very read and ended too: count both.
                if !opened_before {
                    self.in_flight -= 1;
                    self.stats.connected += 1;
                }
                Progress::Ended
            } else {
                Progress::Failed("stream ended before the connection message".into())
            };
        }
        progress
    }

    /// Retries that are due go back in the queue; handshakes past their
    /// deadline fail. Cheap when nothing is in flight.
    fn timers(&mut self) {
        let now = Instant::now();
        if !self.retries.is_empty() {
            let mut due = Vec::new();
            self.retries.retain(|&(at, i)| {
                if at <= now {
                    due.push(i);
                    false
                } else {
                    true
                }
            });
            self.queue.extend(due);
        }
        if self.in_flight > 0 && now >= self.last_deadline_scan + Duration::from_millis(50) {
            self.last_deadline_scan = now;
            let late: Vec<usize> = self
                .clients
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    matches!(c.phase, Phase::Connecting { .. } | Phase::Opening)
                        && c.deadline <= now
                })
                .map(|(i, _)| i)
                .collect();
            for i in late {
                let why = if matches!(self.clients[i].phase, Phase::Connecting { .. }) {
                    "connect: timeout"
                } else {
                    "no connection message in time"
                };
                self.fail(i, why.into());
            }
        }
    }

    fn maybe_ready(&mut self) {
        if self.ready_printed || self.stats.connected + self.stats.gave_up < self.args.count {
            return;
        }
        self.ready_printed = true;
        print_line(&serde_json::json!({
            "type": "ready",
            "connected": self.stats.connected,
            "gave_up": self.stats.gave_up,
            "failed_attempts": self.stats.failed_attempts,
            "seconds": self.started.elapsed().as_secs_f64(),
        }));
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
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

/// The token of the waker that stdin's reader thread uses.
const STDIN: Token = Token(usize::MAX);

fn main() {
    if let Err(e) = run() {
        eprintln!("sse_load: {e:#}");
        std::process::exit(1);
    }
    // Open streams are dropped with the process.
    std::process::exit(0);
}

fn run() -> anyhow::Result<()> {
    let args = parse_args()?;
    if let Some(limit) = open_files_limit() {
        anyhow::ensure!(
            args.count + 64 <= limit,
            "--count {} needs more open files than this process may hold ({limit}); run several processes",
            args.count
        );
    }
    let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(&args.addr)?
        .next()
        .ok_or_else(|| anyhow::anyhow!("--addr {:?} resolves to nothing", args.addr))?;
    let mut requests: HashMap<String, Arc<[u8]>> = HashMap::new();
    let mut clients = Vec::with_capacity(args.count as usize);
    for k in args.first..args.first + args.count {
        let org = k % args.orgs;
        let user = user_id(org, (k / args.orgs) % args.users);
        let key = format!("{user} {org}");
        let request = match requests.get(&key) {
            Some(r) => r.clone(),
            None => {
                let token = mint(&user, &args.secret)?;
                let r: Arc<[u8]> = format!(
                    "GET /api/realtime/stream?organizationId={} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n",
                    org_id(org),
                    args.addr
                )
                .into_bytes()
                .into();
                requests.insert(key, r.clone());
                r
            }
        };
        clients.push(Client {
            k,
            phase: Phase::Waiting,
            stream: None,
            attempt: 0,
            deadline: Instant::now(),
            request,
            head_done: false,
            chunked: false,
            raw: Vec::new(),
            body: Vec::new(),
            dechunk: Dechunk::default(),
        });
    }
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), STDIN)?);
    let (commands_tx, commands) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if commands_tx.send(line).is_err() {
                return;
            }
            let _ = waker.wake();
        }
        // End of stdin: the bench is gone.
        let _ = commands_tx.send("quit".into());
        let _ = waker.wake();
    });
    let rounds = Rounds {
        round: Duration::from_micros(args.round_us),
    };
    let count = args.count as usize;
    let mut load = Load {
        args,
        addr,
        poll,
        clients,
        stats: Stats::new(),
        keys: Keys::new(),
        queue: (0..count).collect(),
        retries: Vec::new(),
        in_flight: 0,
        scratch: vec![0u8; 64 * 1024].into_boxed_slice(),
        started: Instant::now(),
        ready_printed: false,
        last_deadline_scan: Instant::now(),
    };
    let mut events = Events::with_capacity(4096);
    loop {
        load.start_queued();
        load.maybe_ready();
        // Handshakes and retries need the clock; an open, quiet load does not.
        let timeout =
            (load.in_flight > 0 || !load.retries.is_empty()).then(|| Duration::from_millis(50));
        if let Err(e) = load.poll.poll(&mut events, timeout) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        let at_us = now_us();
        let mut read_anything = false;
        for event in events.iter() {
            if event.token() == STDIN {
                continue;
            }
            let i = event.token().0;
            let readable = event.is_readable() || event.is_read_closed() || event.is_error();
            let writable = event.is_writable() || event.is_error();
            read_anything |= readable;
            load.event(i, writable, readable, at_us);
        }
        while let Ok(line) = commands.try_recv() {
            match line.trim() {
                "reset" => {
                    load.stats.reset();
                    print_line(&serde_json::json!({"type": "reset"}));
                }
                "report" => print_line(&load.stats.report(load.args.count)),
                "quit" => return Ok(()),
                "" => {}
                other => eprintln!("sse_load: unknown command {other:?}"),
            }
        }
        load.timers();
        rounds.after(read_anything);
    }
}
