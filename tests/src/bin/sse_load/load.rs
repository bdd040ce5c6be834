//! The load: every client connection, driven by one mio poll.

use super::*;

/// Where a client is.
pub(crate) enum Phase {
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

pub(crate) struct Client {
    pub(crate) k: u64,
    pub(crate) phase: Phase,
    pub(crate) stream: Option<TcpStream>,
    pub(crate) attempt: u32,
    /// When a handshake in progress times out.
    pub(crate) deadline: Instant,
    pub(crate) request: Arc<[u8]>,
    pub(crate) head_done: bool,
    pub(crate) chunked: bool,
    pub(crate) raw: Vec<u8>,
    pub(crate) body: Vec<u8>,
    pub(crate) dechunk: Dechunk,
    /// The newest event id received (`lsn-index`), sent as
    /// `Last-Event-ID` when the stream is cut and resumes.
    pub(crate) last_id: Option<(u64, u64)>,
    /// Cut by a `cut` command and not yet open again.
    pub(crate) resuming: bool,
}

impl Client {
    pub(crate) fn reset_io(&mut self) {
        self.stream = None;
        self.head_done = false;
        self.chunked = false;
        self.raw = Vec::new();
        self.body = Vec::new();
        self.dechunk = Dechunk::default();
    }
}

/// What a read did to a client.
pub(crate) enum Progress {
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
pub(crate) struct Rounds {
    pub(crate) round: Duration,
}

impl Rounds {
    pub(crate) fn after(&self, read_anything: bool) {
        if read_anything && !self.round.is_zero() {
            std::thread::sleep(self.round);
        }
    }
}

pub(crate) struct Load {
    pub(crate) args: Args,
    pub(crate) addr: SocketAddr,
    pub(crate) resume_addr: Option<SocketAddr>,
    pub(crate) poll: Poll,
    pub(crate) clients: Vec<Client>,
    pub(crate) stats: Stats,
    pub(crate) keys: Keys,
    /// Clients waiting for a handshake slot, in order.
    pub(crate) queue: VecDeque<usize>,
    /// Retries not yet due: (when, client).
    pub(crate) retries: Vec<(Instant, usize)>,
    /// Handshakes in flight (at most `args.concurrency`).
    pub(crate) in_flight: usize,
    pub(crate) scratch: Box<[u8]>,
    pub(crate) started: Instant,
    pub(crate) ready_printed: bool,
    /// When handshake deadlines were last checked.
    pub(crate) last_deadline_scan: Instant,
    /// `\n\n`, the end of an SSE message: the searcher built once, not per
    /// delivery.
    pub(crate) blank_line: memchr::memmem::Finder<'static>,
}

impl Load {
    /// Starts queued clients while handshake slots are free.
    pub(crate) fn start_queued(&mut self) {
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

    pub(crate) fn connect(&mut self, i: usize) -> Result<(), String> {
        let client = &mut self.clients[i];
        client.reset_io();
        client.attempt += 1;
        client.deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        // A resume goes to the other replica (`--resume-addr`), as after a
        // drain, with the last id seen.
        let addr = match (client.resuming, self.resume_addr) {
            (true, Some(addr)) => addr,
            _ => self.addr,
        };
        if client.resuming {
            client.request = resume_request(&client.request, client.last_id);
        }
        let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
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
    pub(crate) fn fail(&mut self, i: usize, why: String) {
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
    pub(crate) fn event(&mut self, i: usize, writable: bool, readable: bool, at_us: u64) {
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
                let client = &mut self.clients[i];
                client.phase = Phase::Open;
                if std::mem::take(&mut client.resuming) {
                    self.stats.resumed += 1;
                    self.stats.resumed_last_us = self.stats.resumed_last_us.max(at_us);
                }
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

    pub(crate) fn send_request(&mut self, i: usize) -> Result<(), String> {
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
    pub(crate) fn read(&mut self, i: usize, at_us: u64) -> Progress {
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
        while let Some(end) = self.blank_line.find(&client.body[start..]) {
            let msg = &client.body[start..start + end];
            if let Some(id) = event_id(msg) {
                if client.last_id.is_some_and(|last| id <= last) {
                    // Not above the last one: a repeat or out of order.
                    self.stats.not_newer += 1;
                    start += end + 2;
                    continue;
                }
                client.last_id = Some(id);
            }
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
    pub(crate) fn timers(&mut self) {
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

    /// Cuts every open stream at once; each reconnects (to `--resume-addr`
    /// when given) with `Last-Event-ID` set to the last id it received.
    pub(crate) fn cut(&mut self) -> u64 {
        let mut cut = 0;
        for i in 0..self.clients.len() {
            let client = &mut self.clients[i];
            if !matches!(client.phase, Phase::Open) {
                continue;
            }
            if let Some(mut stream) = client.stream.take() {
                let _ = self.poll.registry().deregister(&mut stream);
            }
            client.reset_io();
            client.phase = Phase::Waiting;
            client.attempt = 0;
            client.resuming = true;
            self.stats.connected -= 1;
            self.queue.push_back(i);
            cut += 1;
        }
        cut
    }

    pub(crate) fn maybe_ready(&mut self) {
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

/// The `lsn-index` id of an event message (`id: …` first line).
pub(crate) fn event_id(msg: &[u8]) -> Option<(u64, u64)> {
    let rest = msg.strip_prefix(b"id: ")?;
    let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let text = std::str::from_utf8(&rest[..end]).ok()?;
    let (lsn, index) = text.split_once('-')?;
    Some((lsn.parse().ok()?, index.parse().ok()?))
}

/// `request` with its `Last-Event-ID` set to `last` (replacing any).
pub(crate) fn resume_request(request: &[u8], last: Option<(u64, u64)>) -> Arc<[u8]> {
    let text = String::from_utf8_lossy(request);
    let mut head: String = text
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|l| !l.starts_with("Last-Event-ID:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    if let Some((lsn, index)) = last {
        head.push_str(&format!("Last-Event-ID: {lsn}-{index}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes().into()
}
