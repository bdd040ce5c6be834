//! The public listener: an accept loop that serves the SSE stream itself
//! and hands every other request to hyper.
//!
//! Why not hyper for the stream: an SSE connection lives for hours and
//! carries small frames. hyper keeps an HTTP/1 read buffer (8 KiB, grown to
//! 16 KiB after the head is read) and an 8 KiB header write buffer per
//! connection for its whole life, which was most of the gateway's memory
//! per idle stream, and it writes each body frame with its own `writev`.
//! Here the request head is read into a short-lived buffer, the axum router
//! answers it as usual (auth, CORS, every status and header are the
//! router's), and the body is written straight to the socket as chunked
//! encoding: frames ready together leave in one chunk and one `writev`.
//!
//! Only a plain `GET /api/realtime/stream` HTTP/1.1 request whose head fits
//! [`FAST_HEAD_LIMIT`], with no body, no upgrade and no `Expect`, takes
//! this path, and only when the router answers it with a stream. Anything
//! else, including every malformed or oversized request, goes to hyper with
//! the bytes already read put back in front, so hyper's checks and statuses
//! apply unchanged; it goes as soon as its first bytes show it is not a
//! stream request. A stream request the router refuses (401, 403, 429…)
//! goes to hyper too, with the router's answer: hyper writes it as it
//! would have, keeps the connection alive and answers what was pipelined
//! behind it. The head is read into a buffer that starts at 1 KiB, doubles
//! up to [`FAST_HEAD_LIMIT`] as needed and is freed once the head is
//! parsed. A stream's connection closes when the stream ends
//! (`Connection: close`): requests pipelined behind a stream are not
//! answered (RFC 9112 §9.3.2: the client retries them).
//!
//! Which path a connection takes, and what it is answered, depends only on
//! its bytes, never on how they were split into reads (tested by splitting
//! heads at every byte, and fuzzed through [`read_head_in_pieces`]).
//!
//! Deadlines and the cap (`REALTIME_HEAD_TIMEOUT`, `REALTIME_MAX_CONNECTIONS`):
//! every connection holds a [`Slot`] (see [`crate::slots`]) and must have
//! sent a whole request head within the head timeout of its accept, on
//! either path; a hyper keep-alive connection must send its next head
//! within the head timeout of its previous response's end. A slow client
//! cannot stretch this by sending a byte at a time: the deadline is fixed
//! when the wait starts. hyper's own `header_read_timeout` is set too, a
//! second later, as a backstop (it does nothing without a timer, which
//! hyper_util's builder does not set by itself); the deadline that counts
//! is the listener's: hyper's starts only when hyper gets the socket and
//! does not cover HTTP/2.
//!
//! Files: `head.rs` reads a connection's first bytes and tells a fast-path
//! stream request from the rest; `direct.rs` writes a stream's body to the
//! socket (shared with the stream's feed while the stream is parked, see
//! [`crate::delivery`]); `hyper_conn.rs` serves everything else through
//! hyper, under the same head deadlines.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Response, header};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::metrics as m;
use crate::slots::{Admission, Slot, Slots};

mod direct;
mod head;
mod hyper_conn;
#[cfg(test)]
mod tests;

pub use direct::StreamOutlet;
pub use head::{FAST_HEAD_LIMIT, HeadOutcome, read_head_in_pieces};

use direct::respond;
use head::{Head, read_head};
use hyper_conn::{Answered, Deadlines, hand_to_hyper};

/// The listener's protections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `REALTIME_HEAD_TIMEOUT`: how long a whole request head may take.
    pub head_timeout: Duration,
    /// `REALTIME_MAX_CONNECTIONS`, as derived: connections held at once.
    pub max_connections: usize,
}

/// Accepts connections until `draining`; each runs in a task tracked by
/// `tracker` and holds a slot under `limits.max_connections`. hyper
/// connections start a graceful shutdown at `draining` (keep-alive off,
/// in-flight requests finish); fast-path streams end through their own
/// close tokens.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    draining: CancellationToken,
    tracker: TaskTracker,
    limits: Limits,
) {
    let slots = Slots::new(limits.max_connections);
    loop {
        let accepted = tokio::select! {
            _ = draining.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let accepted_at = Instant::now();
        let slot = match slots.admit().await {
            Admission::Admitted { slot, evicted } => {
                if evicted {
                    metrics::counter!(m::SOCKETS_CLOSED, "reason" => "evicted").increment(1);
                }
                slot
            }
            Admission::Full => {
                // Closed without a response: an EventSource retries after
                // its delay (a 503 would stop it for good).
                metrics::counter!(m::SOCKETS_REFUSED).increment(1);
                drop(socket);
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let router = router.clone();
        let draining = draining.clone();
        tracker.spawn(async move {
            metrics::gauge!(m::SOCKETS).increment(1.0);
            serve_socket(
                socket,
                peer,
                router,
                draining,
                limits.head_timeout,
                accepted_at,
                slot.clone(),
            )
            .await;
            // The socket is closed by now; its place is given up here.
            metrics::gauge!(m::SOCKETS).decrement(1.0);
            drop(slot);
        });
    }
}

/// One accepted connection: its head read under the deadline, then the
/// fast path or hyper.
async fn serve_socket(
    mut socket: TcpStream,
    peer: SocketAddr,
    router: Router,
    draining: CancellationToken,
    head_timeout: Duration,
    accepted_at: Instant,
    slot: Slot,
) {
    slot.waiting();
    let head = tokio::select! {
        biased;
        _ = slot.evicted() => return,
        head = tokio::time::timeout_at(accepted_at + head_timeout, read_head(&mut socket, peer)) => match head {
            Ok(head) => head,
            Err(_) => {
                metrics::counter!(m::SOCKETS_CLOSED, "reason" => "head_timeout").increment(1);
                return;
            }
        },
    };
    match head {
        Head::Stream { request, read } => {
            if !slot.busy() {
                return;
            }
            let response = match router.clone().oneshot(*request).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            if is_stream(&response) {
                // The bytes read are only needed to hand a refusal to hyper:
                // freed now, or every idle stream would keep its head (3 KiB
                // of cookies is common) for its whole life.
                drop(read);
                metrics::counter!(m::SOCKETS_SERVED, "by" => "direct").increment(1);
                if let Err(e) = respond(socket, response).await {
                    tracing::debug!(error = %e, "stream connection ended");
                }
                return;
            }
            // A refusal: hyper parses the same head again, answers it with
            // this response, and serves whatever follows on the connection,
            // exactly as if the head had gone to hyper in the first place.
            metrics::counter!(m::SOCKETS_SERVED, "by" => "hyper").increment(1);
            let deadlines = Deadlines {
                head_timeout,
                first: Instant::now(),
                slot,
            };
            let answered = Answered(Arc::new(Mutex::new(Some(response))));
            hand_to_hyper(socket, read, peer, router, draining, deadlines, answered).await;
        }
        Head::Other(prefix) => {
            metrics::counter!(m::SOCKETS_SERVED, "by" => "hyper").increment(1);
            let deadlines = Deadlines {
                head_timeout,
                first: accepted_at,
                slot,
            };
            let answered = Answered(Arc::default());
            hand_to_hyper(socket, prefix, peer, router, draining, deadlines, answered).await;
        }
        Head::Gone => {}
    }
}

/// Whether the router's answer is a stream (the fast path writes it);
/// anything else is a refusal, which hyper writes.
fn is_stream(response: &Response<Body>) -> bool {
    response.status().is_success()
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}
