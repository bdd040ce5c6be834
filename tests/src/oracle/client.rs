//! EventSource-like SSE clients: each one reads one organization's stream
//! from a random gateway replica and, whenever the stream ends (a replica
//! died or drained, a revocation, a transient refusal, on purpose), opens
//! a new one on a random replica with `Last-Event-ID` after the `retry:`
//! delay the server asked for, as a browser's `EventSource` does. Everything
//! it receives is logged for the oracle.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use realtime_shared::event::EventId;
use tokio::sync::watch;
use tokio::time::Instant;

use super::cluster::Replicas;

/// `retry:` before the server sent one (the `EventSource` default).
const DEFAULT_RETRY: Duration = Duration::from_secs(3);
/// A stream silent for this long (heartbeats are every second) is
/// treated as dead, as a browser would after its network timeout.
const IDLE: Duration = Duration::from_secs(15);
/// The response head must come within this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How a client behaves besides resuming whenever its stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Reads until the stream ends.
    Steady,
    /// Also leaves at random moments on purpose and resumes.
    Restless,
    /// Its user's membership is removed and re-added by the schedule; on a
    /// 403 it tries again after the retry delay (as an app re-creating its
    /// `EventSource` with the id it stored).
    Churn,
}

/// Who a client is.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub index: usize,
    pub user: String,
    pub org: String,
    pub behaviour: Behaviour,
    pub token: String,
    /// Seeds its replica choice and its random leaving.
    pub seed: u64,
}

/// What an event was about, from its JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKey {
    /// `property.update` of this property id.
    Property(String),
    /// `member.join` (`leave: false`) or `member.leave` of this user.
    Member { leave: bool, user: String },
    /// Anything else: its type.
    Other(String),
}

/// One event a client received.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: EventId,
    /// Its `organizationId` (`None`: none, e.g. a broadcast).
    pub org: Option<String>,
    pub key: EventKey,
    /// Index into [`ClientLog::sessions`].
    pub session: usize,
}

/// One stream a client opened (a 200 response).
#[derive(Debug, Clone)]
pub struct Session {
    /// When the request was sent.
    pub requested_at: Instant,
    /// When its `connection` message arrived.
    pub connected_at: Option<Instant>,
    /// The `Last-Event-ID` it sent.
    pub resumed_from: Option<EventId>,
    pub replica: SocketAddr,
    /// Why it ended (`None`: still open).
    pub end: Option<&'static str>,
}

/// Everything one client saw, for the oracle.
#[derive(Debug, Default)]
pub struct ClientLog {
    pub events: Vec<Received>,
    pub sessions: Vec<Session>,
    /// Every `data.sync` received: when, in which session, its `data`.
    pub syncs: Vec<(Instant, usize, String)>,
    /// Every non-200 answer: `"<status> from <replica>: <body>"`.
    pub refusals: Vec<String>,
    /// 200 answers that closed without a `connection` message (transient
    /// refusals for `EventSource`).
    pub transient: usize,
    /// Requests that got no answer (replica down, connection reset).
    pub connect_errors: usize,
    /// Events that were not JSON or had no usable id.
    pub malformed: Vec<String>,
}

impl ClientLog {
    /// The id of the newest event received.
    pub fn last_id(&self) -> Option<EventId> {
        self.events.last().map(|e| e.id)
    }
}

/// A client's log, shared with the oracle (never locked across an await).
pub type SharedLog = Arc<Mutex<ClientLog>>;

pub fn lock(log: &SharedLog) -> std::sync::MutexGuard<'_, ClientLog> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the client until `stop` turns true.
pub async fn run(
    spec: ClientSpec,
    replicas: Arc<Replicas>,
    log: SharedLog,
    mut stop: watch::Receiver<bool>,
) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("an HTTP client");
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut retry = DEFAULT_RETRY;
    loop {
        if *stop.borrow() {
            return;
        }
        let replica = replicas.pick(&mut rng);
        let last = lock(&log).last_id();
        let url = format!(
            "http://{replica}/api/realtime/stream?organizationId={}",
            spec.org
        );
        let mut request = http
            .get(&url)
            .header("accept", "text/event-stream")
            .header("cache-control", "no-cache")
            .bearer_auth(&spec.token);
        if let Some(last) = last {
            request = request.header("last-event-id", last.to_string());
        }
        let requested_at = Instant::now();
        let response = tokio::select! {
            r = tokio::time::timeout(HEAD_TIMEOUT, request.send()) => r,
            _ = stop.changed() => return,
        };
        match response {
            Ok(Ok(response)) if response.status() == 200 => {
                let session = {
                    let mut log = lock(&log);
                    log.sessions.push(Session {
                        requested_at,
                        connected_at: None,
                        resumed_from: last,
                        replica,
                        end: None,
                    });
                    log.sessions.len() - 1
                };
                let leave_after = match spec.behaviour {
                    Behaviour::Restless => Some(Duration::from_millis(rng.random_range(100..2500))),
                    _ => None,
                };
                let outcome =
                    read_stream(response, session, &log, &mut retry, leave_after, &mut stop).await;
                let mut log = lock(&log);
                if log.sessions[session].connected_at.is_none() {
                    log.transient += 1;
                }
                log.sessions[session].end = Some(outcome);
                if outcome == "stopped" {
                    return;
                }
            }
            Ok(Ok(response)) => {
                let status = response.status().as_u16();
                let body = tokio::time::timeout(HEAD_TIMEOUT, response.text())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                // An EventSource stops for good on such an answer; this one
                // goes on (as an app re-creating it would), and the oracle
                // judges the refusal.
                lock(&log)
                    .refusals
                    .push(format!("{status} from {replica}: {}", body.trim()));
            }
            Ok(Err(_)) | Err(_) => lock(&log).connect_errors += 1,
        }
        // EventSource waits its reconnection time before the next attempt.
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Reads one stream until it ends; returns why.
async fn read_stream(
    response: reqwest::Response,
    session: usize,
    log: &SharedLog,
    retry: &mut Duration,
    leave_after: Option<Duration>,
    stop: &mut watch::Receiver<bool>,
) -> &'static str {
    let mut body = response.bytes_stream();
    let mut parser = Parser::default();
    let mut leave_at = leave_after.map(|d| Instant::now() + d);
    loop {
        let leave = async move {
            match leave_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let chunk = tokio::select! {
            c = tokio::time::timeout(IDLE, body.next()) => c,
            _ = leave => {
                // Not before it has an id to resume from: a stream without
                // one is live-only, and leaving it would skip events.
                if lock(log).last_id().is_some() {
                    return "left on purpose";
                }
                leave_at = leave_after.map(|d| Instant::now() + d);
                continue;
            }
            _ = stop.changed() => return "stopped",
        };
        let bytes = match chunk {
            Err(_) => return "idle",
            Ok(None) => return "closed",
            Ok(Some(Err(_))) => return "broken",
            Ok(Some(Ok(bytes))) => bytes,
        };
        for message in parser.feed(&bytes) {
            if let Some(ms) = message.retry {
                *retry = Duration::from_millis(ms);
            }
            let Some(data) = message.data else { continue };
            record(log, session, message.id.as_deref(), &data);
        }
    }
}

/// Logs one message.
fn record(log: &SharedLog, session: usize, id: Option<&str>, data: &str) {
    let mut log = lock(log);
    let Ok(json) = serde_json::from_str::<serde_json::Value>(data) else {
        log.malformed.push(data.to_owned());
        return;
    };
    let kind = json["type"].as_str().unwrap_or_default();
    if kind == "connection" {
        log.sessions[session].connected_at = Some(Instant::now());
        return;
    }
    if kind == "data.sync" {
        log.syncs.push((Instant::now(), session, data.to_owned()));
        return;
    }
    let Some(parsed) = id.and_then(|id| id.parse::<EventId>().ok()) else {
        log.malformed.push(data.to_owned());
        return;
    };
    let payload = &json["payload"];
    let key = match kind {
        "property.update" => {
            EventKey::Property(payload["propertyId"].as_str().unwrap_or("?").to_owned())
        }
        "member.join" | "member.leave" => EventKey::Member {
            leave: kind == "member.leave",
            user: payload["memberId"].as_str().unwrap_or("?").to_owned(),
        },
        other => EventKey::Other(other.to_owned()),
    };
    log.events.push(Received {
        id: parsed,
        org: json["organizationId"].as_str().map(str::to_owned),
        key,
        session,
    });
}

/// One dispatched SSE message.
#[derive(Debug, Default, PartialEq, Eq)]
struct Message {
    id: Option<String>,
    data: Option<String>,
    retry: Option<u64>,
}

/// The `text/event-stream` line parser of the HTML standard, reduced to
/// what the gateway sends: `id`, `data` (joined with `\n`), `retry`,
/// comments; `\n`, `\r\n` or `\r` line ends; a blank line dispatches.
#[derive(Debug, Default)]
struct Parser {
    line: Vec<u8>,
    pending: Message,
    after_cr: bool,
}

impl Parser {
    fn feed(&mut self, bytes: &[u8]) -> Vec<Message> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.line_end(&line, &mut out);
                }
                _ => self.line.push(b),
            }
        }
        out
    }

    fn line_end(&mut self, line: &[u8], out: &mut Vec<Message>) {
        if line.is_empty() {
            let message = std::mem::take(&mut self.pending);
            if message.data.is_some() || message.retry.is_some() {
                out.push(message);
            }
            return;
        }
        if line[0] == b':' {
            return;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = text.split_once(':').unwrap_or((&text, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => self.pending.id = Some(value.to_owned()),
            "data" => match &mut self.pending.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.pending.data = Some(value.to_owned()),
            },
            "retry" => self.pending.retry = value.parse().ok(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_split_frames_comments_and_retry() {
        let mut p = Parser::default();
        let wire =
            b"retry: 300\ndata: {\"a\":1}\n\n: heartbeat 1\n\nid: 5-0\r\ndata: x\r\ndata:y\r\n\r\n";
        let mut all = Vec::new();
        for chunk in wire.chunks(3) {
            all.extend(p.feed(chunk));
        }
        assert_eq!(
            all,
            vec![
                Message {
                    id: None,
                    data: Some("{\"a\":1}".into()),
                    retry: Some(300)
                },
                Message {
                    id: Some("5-0".into()),
                    data: Some("x\ny".into()),
                    retry: None
                },
            ]
        );
    }
}
