//! Every connection that is not a fast-path stream, served by hyper with
//! the bytes already read put back in front, under the listener's head
//! deadlines (see the `serve` module docs).

use std::convert::Infallible;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use bytes::{Buf, Bytes};
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::metrics as m;
use crate::slots::Slot;

/// The deadlines of a connection handed to hyper.
pub(super) struct Deadlines {
    pub(super) head_timeout: Duration,
    /// When the wait for the first head started (the accept).
    pub(super) first: Instant,
    pub(super) slot: Slot,
}

/// Requests in flight on one hyper connection, and since when it has had
/// none: the connection waits for a head whenever it has none, and is
/// closed when that wait exceeds the head timeout.
struct Activity {
    state: Mutex<ActivityState>,
    /// Signalled when the last request in flight ends.
    idle: Notify,
    slot: Slot,
}

struct ActivityState {
    in_flight: usize,
    idle_since: Instant,
    /// Whether any request arrived (decides the close reason's label).
    served: bool,
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request's head has arrived; the guard ends it.
    fn start(self: &Arc<Self>) -> InFlight {
        let mut state = self.lock();
        state.in_flight += 1;
        state.served = true;
        self.slot.busy();
        InFlight(self.clone())
    }

    /// When the connection is to be closed unless a head arrives: `None`
    /// while a request is in flight.
    fn deadline(&self, head_timeout: Duration) -> Option<(Instant, bool)> {
        let state = self.lock();
        (state.in_flight == 0).then_some((state.idle_since + head_timeout, state.served))
    }
}

/// One request in flight, until its response body is dropped (written
/// whole, or abandoned).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
            drop(state);
            self.0.slot.waiting();
            self.0.idle.notify_one();
        }
    }
}

/// A response body that keeps its request counted as in flight.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The router's answer to the connection's first request, when the fast
/// path asked the router already (a refused stream): hyper's service gives
/// it for the first request hyper parses (that same head) instead of
/// asking the router twice.
#[derive(Clone)]
pub(super) struct Answered(pub(super) Arc<Mutex<Option<Response<Body>>>>);

impl Answered {
    fn take(&self) -> Option<Response<Body>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

pub(super) async fn hand_to_hyper(
    socket: TcpStream,
    prefix: Bytes,
    peer: SocketAddr,
    router: Router,
    draining: CancellationToken,
    deadlines: Deadlines,
    answered: Answered,
) {
    let Deadlines {
        head_timeout,
        first,
        slot,
    } = deadlines;
    let activity = Arc::new(Activity {
        state: Mutex::new(ActivityState {
            in_flight: 0,
            idle_since: first,
            served: false,
        }),
        idle: Notify::new(),
        slot: slot.clone(),
    });
    let service = {
        let activity = activity.clone();
        tower::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let in_flight = activity.start();
            let ready = answered.take();
            let router = router.clone();
            async move {
                let response = match ready {
                    Some(r) => r,
                    None => match router.oneshot(req.map(Body::new)).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    },
                };
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(Tracked {
                        body,
                        _in_flight: in_flight,
                    })
                }))
            }
        })
    };
    let io = TokioIo::new(Prefixed { prefix, io: socket });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own header timeout is a backstop: a second later than the
    // watchdog below, which counts its closes and covers HTTP/2 too.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout + Duration::from_secs(1));
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(service));
    let mut conn = std::pin::pin!(conn);
    let mut shutting_down = false;
    loop {
        let deadline = activity.deadline(head_timeout);
        let idle = activity.idle.notified();
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended");
                }
                return;
            }
            _ = draining.cancelled(), if !shutting_down => {
                conn.as_mut().graceful_shutdown();
                shutting_down = true;
            }
            _ = slot.evicted() => return,
            _ = tokio::time::sleep_until(deadline.map_or(first, |(at, _)| at)), if deadline.is_some() => {
                // Re-checked: a request may have started since.
                if let Some((at, served)) = activity.deadline(head_timeout)
                    && at <= Instant::now()
                {
                    let reason = if served { "idle" } else { "head_timeout" };
                    metrics::counter!(m::SOCKETS_CLOSED, "reason" => reason).increment(1);
                    return;
                }
            }
            _ = idle => {}
        }
    }
}

/// A socket with bytes already read put back in front.
struct Prefixed {
    prefix: Bytes,
    io: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
