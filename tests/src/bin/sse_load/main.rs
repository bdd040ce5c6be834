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
//! `seconds` as `[[unix second, timed, over 10 ms, max µs],…]`), `cut`
//! (close every open stream at once; each reconnects, to `--resume-addr`
//! when given, with `Last-Event-ID` set to the last id it received; answers
//! `{"type":"cut","cut":n,"at_us":…}`), `quit`. An event whose id is not
//! above the last one a client received is counted in `not_newer` (a
//! repeat, or out of order) and not timed.
//! End of stdin ends the process too, so it never outlives the bench.

mod dechunk;
mod load;
mod stats;

use dechunk::*;
use load::*;
use stats::*;

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
    /// Where cut streams resume (default: `addr`).
    resume_addr: Option<String>,
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
        resume_addr: map.get("resume-addr").cloned(),
    })
}

fn org_id(i: u64) -> String {
    format!("org{i:04}")
}

fn user_id(org: u64, j: u64) -> String {
    format!("org{org:04}-u{j}")
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

fn print_line(value: &impl serde::Serialize) {
    let line = serde_json::to_string(value).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
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
            last_id: None,
            resuming: false,
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
    let resume_addr = match &args.resume_addr {
        Some(a) => Some(
            std::net::ToSocketAddrs::to_socket_addrs(a)?
                .next()
                .ok_or_else(|| anyhow::anyhow!("--resume-addr {a:?} resolves to nothing"))?,
        ),
        None => None,
    };
    let mut load = Load {
        args,
        addr,
        resume_addr,
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
        blank_line: Finder::new(b"\n\n"),
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
                "cut" => {
                    let cut = load.cut();
                    print_line(&serde_json::json!({"type": "cut", "cut": cut, "at_us": now_us()}));
                }
                "quit" => return Ok(()),
                "" => {}
                other => eprintln!("sse_load: unknown command {other:?}"),
            }
        }
        load.timers();
        rounds.after(read_anything);
    }
}
