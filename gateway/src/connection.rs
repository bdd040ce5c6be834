//! One SSE connection: the body stream that turns the organization's feed
//! into frames for one user, with resume, catch-up, heartbeats, expiry,
//! revocation and shutdown.
//!
//! Order of work on each poll (biased): a revocation (nothing more is sent,
//! not even what is queued); a membership re-check asked for; frames
//! already queued; then a history page while catching up; then a close
//! asked for (its reason is an atomic, read before anything else), the live
//! feed, shutdown, token expiry, the heartbeat. Frames whose id is not above
//! the last one sent are dropped, so a resumed or caught-up connection never
//! gets an event twice.
//!
//! Revocation never depends on the stream's position (ARCHITECTURE.md §7, invariant
//! 1): a `member.leave` of the stream's user is acted on before
//! de-duplication, the hub closes the member's streams through the registry
//! as the leave passes, and the membership is checked again before any
//! catch-up (a lag, a gap, a resubscription), since a leave may lie in
//! what the stream skips.
//! The stream ends itself on shutdown (axum's graceful shutdown would wait
//! forever for an SSE body otherwise).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::Stream;
use realtime_shared::event::EventId;
use std::pin::Pin;
use tokio::sync::broadcast::error::RecvError;

use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use std::sync::Arc;

use crate::caps::Caps;
use crate::delivery::{FeedMessage, Revocation, Subscription, Verdict, admit, decide};
use crate::frame::{Frame, data_only, now_ms};
use crate::history::History;
use crate::membership::Membership;
use crate::metrics as m;
use crate::registry::{CloseReason, Handle, Registration};

pub(crate) struct Connection {
    org: String,
    user: String,
    /// Filter and close signal, shared with PUT/DELETE and the drain.
    handle: Arc<Handle>,
    sub: Subscription,
    history: History,
    heartbeat: Duration,
    /// The `retry:` hint; a draining replica sends it jittered.
    retry: Duration,
    expires_at: Option<SystemTime>,
    /// Frames to send before anything else (the connection message, replays).
    pending: VecDeque<Bytes>,
    /// The id of the newest event this connection has passed (sent or
    /// filtered out); live frames at or below it are duplicates.
    last_seen: Option<EventId>,
    /// `Some(after)` while catching up from history.
    replay_after: Option<Option<EventId>>,
    /// Set when the stream must catch up from history (a resubscription, a
    /// lag) and has not yet learnt whether history still reaches back to
    /// `last_seen`; nothing live is taken meanwhile.
    resync: bool,
    /// Set when the connection must end once `pending` is sent (its user's
    /// `member.leave`, a drain). Nothing is offered after it.
    closing: bool,
    /// Set when the membership must be checked again before anything more
    /// is offered or sent: before a catch-up, and at a leave naming nobody.
    recheck: bool,
    /// For those re-checks.
    membership: Arc<Membership>,
    /// Metric handles, looked up once per connection rather than per event.
    delivered: metrics::Counter,
    latency: metrics::Histogram,
}

/// A `data.sync` telling the client to refetch: its resume point is older
/// than the retained history.
pub fn gap_message(org: &str, last: Option<EventId>) -> Bytes {
    let json = serde_json::json!({
        "type": "data.sync",
        "timestamp": now_ms(),
        "source": "api",
        "version": "1.0",
        "organizationId": org,
        "payload": {"reason": "gap", "lastEventId": last.map(|id| id.to_string())},
    });
    data_only(&json.to_string())
}

/// First wait before asking Redis again after an error while catching up.
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between two attempts.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Waiting out a Redis failure during a catch-up.
struct RedisRetry {
    at: Pin<Box<Sleep>>,
    backoff: Duration,
    /// The wait is over: ask Redis again.
    due: bool,
}

/// A stream's loop state. The close and expiry futures live here, made
/// once per connection: a fresh `cancelled()` or `sleep_until` on every
/// poll would register (and drop) a waiter and a timer per event per
/// connection, which showed in the fan-out profile.
struct Running {
    conn: Connection,
    heartbeat: Interval,
    expiry: Option<Pin<Box<Sleep>>>,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    /// While Redis fails during a catch-up: when to try again, and the
    /// current backoff. `None` (no allocation) otherwise.
    redis_retry: Option<Box<RedisRetry>>,
    _guard: m::ConnectionGuard,
    _registration: Registration,
    _lease: Lease,
}

/// A stream's place in the connection caps, given back when it ends.
pub(crate) struct Lease {
    caps: Caps,
    id: Arc<str>,
    user: Arc<str>,
    org: Arc<str>,
}

impl Lease {
    pub(crate) fn new(caps: Caps, handle: &Handle) -> Self {
        Lease {
            caps,
            id: handle.id.clone(),
            user: handle.user.clone(),
            org: handle.org.clone(),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.caps
            .release(self.id.clone(), self.user.clone(), self.org.clone());
    }
}

/// `retry:` drawn uniformly from [retry/2, 3·retry/2): clients closed at
/// the same moment of a drain come back spread out.
pub(crate) fn jittered_retry(retry: Duration) -> Bytes {
    let base = retry.as_millis().max(2) as u64;
    let ms = base / 2 + rand::random_range(0..base);
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// What a stream starts from, as the stream handler established it; the
/// rest of a [`Connection`]'s state starts empty.
pub(crate) struct Opening {
    pub(crate) org: String,
    pub(crate) user: String,
    /// Filter and close signal, shared with PUT/DELETE and the drain.
    pub(crate) handle: Arc<Handle>,
    /// The organization's feed, subscribed and confirmed.
    pub(crate) sub: Subscription,
    pub(crate) history: History,
    pub(crate) membership: Arc<Membership>,
    pub(crate) heartbeat: Duration,
    /// The `retry:` hint; a draining replica sends it jittered.
    pub(crate) retry: Duration,
    /// When the credential expires (the stream ends then).
    pub(crate) expires_at: Option<SystemTime>,
    /// The connection message and any frames replayed before going live.
    pub(crate) pending: VecDeque<Bytes>,
    /// The newest event id already sent (the resume point, or the last
    /// replayed event).
    pub(crate) last_seen: Option<EventId>,
    /// `Some(after)`: catch up from history after that id before going live.
    pub(crate) replay_after: Option<Option<EventId>>,
    /// Metric handles shared with the stream's outlet.
    pub(crate) delivered: metrics::Counter,
    pub(crate) latency: metrics::Histogram,
}

impl Connection {
    /// The one way a connection is made: from its [`Opening`], not
    /// re-checking, not closing, not resyncing.
    pub(crate) fn new(opening: Opening) -> Self {
        let Opening {
            org,
            user,
            handle,
            sub,
            history,
            membership,
            heartbeat,
            retry,
            expires_at,
            pending,
            last_seen,
            replay_after,
            delivered,
            latency,
        } = opening;
        Self {
            org,
            user,
            handle,
            sub,
            history,
            heartbeat,
            retry,
            expires_at,
            pending,
            last_seen,
            replay_after,
            resync: false,
            closing: false,
            recheck: false,
            membership,
            delivered,
            latency,
        }
    }

    /// The response body. Ends on shutdown, expiry or revocation. A Redis
    /// failure while catching up is waited out (bounded backoff, heartbeats
    /// still sent, close and expiry still honoured), never read as "no
    /// history".
    pub(crate) fn into_body(
        self,
        guard: m::ConnectionGuard,
        registration: Registration,
        lease: Lease,
    ) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + self.heartbeat, self.heartbeat);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let expiry = self.expires_at.map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            Box::pin(tokio::time::sleep_until(Instant::now() + left))
        });
        let closed = Box::pin(self.handle.closed().clone().cancelled_owned());
        let running = Running {
            conn: self,
            heartbeat,
            expiry,
            closed,
            redis_retry: None,
            _guard: guard,
            _registration: registration,
            _lease: lease,
        };
        futures_util::stream::unfold(running, |mut r| async move {
            r.next().await.map(|bytes| (Ok(bytes), r))
        })
    }

    /// Takes a frame from the feed (`live`) or a replay through the
    /// delivery rule ([`decide`]: revocation, duplicates, user target,
    /// channel filter) and queues it if it is to be sent. Commit→send
    /// latency is recorded for live frames only: a replay's age says how
    /// long the client was away, not how fast we are.
    ///
    /// A revocation is acted on here: the user's own leave closes the
    /// stream after the leave itself is offered ([`admit`]); a leave naming
    /// nobody asks for a membership re-check and is never forwarded.
    /// Nothing is offered once the stream is closing or must re-check its
    /// membership; a catch-up stops there.
    fn offer(&mut self, frame: &Frame, live: bool) {
        if self.closing || self.recheck {
            return;
        }
        let filter = self.handle.filter();
        let verdict = match decide(frame, &mut self.last_seen, &self.user, filter) {
            Verdict::Revoke(Revocation::Member) => {
                self.closing = true;
                admit(frame, &mut self.last_seen, &self.user, filter)
            }
            Verdict::Revoke(Revocation::Unknown) => {
                // Never forwarded: it only says "ask again".
                self.recheck = true;
                self.last_seen = self.last_seen.max(Some(frame.id));
                return;
            }
            verdict => verdict,
        };
        if verdict == Verdict::Send {
            self.pending.push_back(frame.bytes.clone());
            self.delivered.increment(1);
            if live {
                self.latency.record(frame.latency_secs(now_ms()));
            }
        }
    }

    /// Asks again whether the user is a member; `false`: the stream ends
    /// (not a member, or the answer cannot be had: fail closed, the client
    /// reconnects and is answered then). A cached answer is trusted only if
    /// it was obtained after the current subscription was confirmed (every
    /// leave since then passed this replica and dropped it).
    async fn recheck_membership(&mut self) -> bool {
        self.recheck = false;
        let since = self
            .sub
            .subscribed_since()
            .unwrap_or_else(std::time::Instant::now);
        match self
            .membership
            .organization_name(&self.user, &self.org, since)
            .await
        {
            Ok(Some(_)) => true,
            Ok(None) => {
                metrics::counter!(m::REVOKED, "reason" => "recheck").increment(1);
                self.handle.close(CloseReason::Revoked);
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, org = %self.org, "membership re-check failed; closing the stream");
                false
            }
        }
    }

    /// The stream's last frame once it is closed: a jittered `retry:` for a
    /// drain (the stream ends after it), nothing otherwise (the replica's
    /// stop cancels the token without a reason).
    fn close(&mut self) -> Option<Bytes> {
        if self.handle.close_reason() != CloseReason::Drain {
            return None;
        }
        self.closing = true;
        Some(jittered_retry(self.retry))
    }

    /// Asks for a catch-up from history (the live feed may have missed
    /// something). The membership is checked again first: a leave may lie
    /// in what is skipped. Nothing live is taken until [`Self::start_catch_up`]
    /// has run.
    fn ask_catch_up(&mut self) {
        self.recheck = true;
        self.resync = true;
    }

    /// Starts catching up from history after the last event seen, or sends
    /// `data.sync` when history no longer reaches back that far. A Redis
    /// error leaves `resync` set and is returned: the caller waits and asks
    /// again (an error is never a gap).
    async fn start_catch_up(&mut self) -> redis::RedisResult<()> {
        if let Some(last) = self.last_seen
            && self.history.has_gap(&self.org, last).await?
        {
            // Where to go on from, read before the data.sync is queued: if
            // this fails, nothing has been sent and the whole check is done
            // again.
            let newest = self.history.newest(&self.org).await?;
            self.pending.push_back(gap_message(&self.org, Some(last)));
            self.last_seen = newest.max(self.last_seen);
        }
        self.resync = false;
        self.replay_after = Some(self.last_seen);
        Ok(())
    }
}

/// Why a parked stream woke.
enum Woke {
    HandedBack,
    Closed,
    Expired,
    Heartbeat,
}

/// Resolves when the token expires; never without an expiry.
async fn expired(expiry: &mut Option<Pin<Box<Sleep>>>) {
    match expiry.as_mut() {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

fn heartbeat_frame() -> Bytes {
    Bytes::from(format!(": heartbeat {}\n\n", now_ms()))
}

impl Running {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if self.conn.sub.is_parked() {
                match self.wait_parked().await {
                    Some(out) => return out,
                    None => continue,
                }
            }
            let conn = &mut self.conn;
            // Revoked: nothing more, not even what is queued (it may hold
            // events committed after the leave).
            if conn.handle.close_reason() == CloseReason::Revoked {
                return None;
            }
            if conn.recheck && !Box::pin(conn.recheck_membership()).await {
                return None;
            }
            if let Some(bytes) = conn.pending.pop_front() {
                return Some(bytes);
            }
            if conn.closing {
                return None;
            }
            if self.redis_retry.as_ref().is_some_and(|r| !r.due) {
                match self.wait_to_retry().await {
                    Some(out) => return out,
                    None => continue,
                }
            }
            let conn = &mut self.conn;
            if conn.resync {
                // Boxed, like the page below: rare paths whose futures
                // would otherwise be part of every idle stream's state.
                if let Err(e) = Box::pin(conn.start_catch_up()).await {
                    self.redis_failed(&e);
                } else {
                    self.redis_retry = None;
                }
                continue;
            }
            if let Some(after) = conn.replay_after {
                let page = match Box::pin(conn.history.page(&conn.org, after)).await {
                    Ok(page) => page,
                    Err(e) => {
                        self.redis_failed(&e);
                        continue;
                    }
                };
                self.redis_retry = None;
                let conn = &mut self.conn;
                metrics::counter!(m::REPLAYED).increment(page.frames.len() as u64);
                let mut stopped_at = None;
                for frame in &page.frames {
                    conn.offer(frame, false);
                    if conn.closing || conn.recheck {
                        stopped_at = Some(frame.id);
                        break;
                    }
                }
                // Past every entry read, parsed or not: a page of entries
                // that cannot be parsed must not be read again and again.
                conn.replay_after = match stopped_at {
                    Some(id) => Some(Some(id)),
                    None if page.more => Some(page.last.or(after)),
                    None => None,
                };
                continue;
            }
            // The feed first in the select below: a frame is the common
            // wake-up, and taking it before looking at the close token saves
            // that token's lock on every delivery. A close asked for while
            // frames keep coming is still seen at once, from its reason.
            if conn.handle.close_reason() != CloseReason::None {
                return conn.close();
            }
            // Nothing of its own to send: hand the socket to the feed (see
            // `crate::delivery`), unless a frame is already waiting.
            if conn.sub.park(conn.last_seen) {
                continue;
            }
            // Not parked because the listener is still writing: try again
            // once it is done (the last branch below).
            let (Some(rx), waiting) = conn.sub.receiver_and_waiting_outlet() else {
                continue;
            };
            let listener_idle = async {
                match waiting {
                    Some(outlet) => outlet.listener_idle().await,
                    None => std::future::pending().await,
                }
            };
            let expiry = expired(&mut self.expiry);
            tokio::select! {
                biased;
                message = rx.recv() => match message {
                    Ok(FeedMessage::Frame(frame)) => conn.offer(&frame, true),
                    Ok(FeedMessage::Resync) | Err(RecvError::Lagged(_)) => conn.ask_catch_up(),
                    Err(RecvError::Closed) => return None,
                },
                _ = self.closed.as_mut() => return conn.close(),
                _ = expiry => return None,
                _ = self.heartbeat.tick() => return Some(heartbeat_frame()),
                _ = listener_idle => {}
            }
        }
    }

    /// Redis failed while catching up: try again after a backoff (doubled
    /// per failure up to [`RETRY_MAX`], jittered so the streams of a
    /// replica do not all ask again at once).
    fn redis_failed(&mut self, e: &redis::RedisError) {
        let backoff = match &self.redis_retry {
            Some(retry) => (retry.backoff * 2).min(RETRY_MAX),
            None => RETRY_FIRST,
        };
        tracing::debug!(error = %e, org = %self.conn.org, ?backoff, "history unavailable while catching up; retrying");
        let ms = backoff.as_millis() as u64;
        let wait = Duration::from_millis(ms / 2 + rand::random_range(0..ms.max(1)));
        let at = Instant::now() + wait;
        match &mut self.redis_retry {
            Some(retry) => {
                retry.at.as_mut().reset(at);
                retry.backoff = backoff;
                retry.due = false;
            }
            None => {
                self.redis_retry = Some(Box::new(RedisRetry {
                    at: Box::pin(tokio::time::sleep_until(at)),
                    backoff,
                    due: false,
                }));
            }
        }
    }

    /// Waiting to ask Redis again: the stream still ends on a close
    /// (shutdown, drain, revocation) or expiry and still sends heartbeats;
    /// nothing live is taken (the catch-up must come first). `Some(out)`:
    /// what [`Running::next`] returns; `None`: try again now.
    async fn wait_to_retry(&mut self) -> Option<Option<Bytes>> {
        let retry = self.redis_retry.as_mut()?;
        let expiry = expired(&mut self.expiry);
        tokio::select! {
            biased;
            _ = self.closed.as_mut() => Some(self.conn.close()),
            _ = expiry => Some(None),
            _ = retry.at.as_mut() => {
                // Ask again; the backoff stays until an attempt succeeds.
                retry.due = true;
                None
            }
            _ = self.heartbeat.tick() => Some(Some(heartbeat_frame())),
        }
    }

    /// Parked: waits until the feed hands the stream back or one of the
    /// stream's own reasons comes (close, expiry, heartbeat), then takes
    /// the stream back. `Some(out)`: what [`Running::next`] returns; `None`:
    /// go on. An empty frame tells the listener to write the rest of a
    /// chunk the feed began (`Outlet::take_leftover`).
    async fn wait_parked(&mut self) -> Option<Option<Bytes>> {
        let expiry = expired(&mut self.expiry);
        let woke = tokio::select! {
            biased;
            _ = self.conn.sub.handed_back() => Woke::HandedBack,
            _ = self.closed.as_mut() => Woke::Closed,
            _ = expiry => Woke::Expired,
            _ = self.heartbeat.tick() => Woke::Heartbeat,
        };
        let conn = &mut self.conn;
        let (last_seen, lost) = conn.sub.unpark();
        if lost {
            // Not expected (see `OrgFeed::unpark`): catch up from history
            // rather than risk a gap.
            tracing::error!(org = %conn.org, "a parked stream lost its place; catching up");
            conn.ask_catch_up();
        } else {
            conn.last_seen = last_seen;
        }
        let flush = conn.sub.outlet().is_some_and(|o| o.has_leftover());
        match woke {
            Woke::Closed => Some(conn.close()),
            Woke::Expired => Some(None),
            Woke::Heartbeat => Some(Some(heartbeat_frame())),
            Woke::HandedBack if flush => Some(Some(Bytes::new())),
            Woke::HandedBack => None,
        }
    }
}
