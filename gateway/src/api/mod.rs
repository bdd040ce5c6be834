//! The public HTTP API (ARCHITECTURE.md §3): `GET`, `POST`, `PUT`, `DELETE
//! /api/realtime/stream`, `POST /api/realtime/publish`, CORS, and the
//! per-IP rate limits.
//!
//! `GET` request path, in order: draining (503) → connect rate (429) →
//! credentials (401) → query (400) → membership precheck (403) → Redis
//! subscription confirmed (503) → membership since the subscription (403)
//! → connection caps (429) → resume point → stream.
//!
//! Every method is limited per client IP before any I/O: `GET` and `HEAD`
//! by the connect limiter (`REALTIME_CONNECT_RATE`; `HEAD` is then answered
//! 405 without running the stream handler: an SSE stream has no head worth
//! the membership queries and the subscription); `POST`, `PUT`, `DELETE`
//! and the publish API by the request limiter (`REALTIME_REQUEST_RATE`).
//! `OPTIONS` (CORS preflight) is answered by the CORS layer from its
//! configuration alone, no I/O, and is not limited. A cookie-authenticated
//! change must come from an allowed origin ([`crate::origin`]).

mod activity;
mod control;
mod limits;
mod publish;
mod refusal;
mod request;
mod stream;
#[cfg(test)]
mod tests;

use activity::*;
use control::*;
use limits::*;
use publish::*;
use refusal::*;
use request::*;
use stream::*;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::num::NonZeroU32;
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use realtime_shared::event::EventId;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::RequestBodyDeadlineLayer;

use crate::auth::{self, Verification, Verifier};
use crate::caps::{CapError, Caps};
use crate::channels::ChannelFilter;
use crate::client_ip::{self, ClientIp};
use crate::connection::{Connection, Lease, Opening, gap_message};
use crate::control::{Command, Control};
use crate::delivery::{Hub, Outlet};
use crate::frame::{data_only, now_ms};
use crate::history::History;
use crate::membership::{Membership, MembershipError};
use crate::metrics as m;
use crate::origin::Origins;
use crate::publishing::{self, Emitter, PublishError};
use crate::registry::Registry;
use crate::serve::StreamOutlet;
use crate::shutdown::Shutdown;
use crate::strikes::Strikes;

/// Longest organization id accepted (ids are short text keys).
const MAX_ORG_ID: usize = 256;

pub(crate) struct AppState {
    pub hub: Hub,
    pub history: History,
    pub membership: Arc<Membership>,
    pub verifier: Verifier,
    pub heartbeat: Duration,
    pub retry: Duration,
    pub io_timeout: Duration,
    /// Draining (new streams refused) and stop (every stream's close token
    /// is a child of it): see [`Shutdown`].
    pub shutdown: Shutdown,
    pub registry: Registry,
    pub caps: Caps,
    pub control: Control,
    pub emitter: Emitter,
    pub publish_key: Option<String>,
    /// `user.activity` posts per user (this replica).
    pub activity_limiter: DefaultKeyedRateLimiter<String>,
    /// Wrong publish keys per client IP (this replica).
    pub publish_strikes: Strikes,
    /// The client address behind trusted proxies (publish-key strikes).
    pub client_ip: ClientIp,
    /// Origins whose pages may change state with the caller's cookie.
    pub origins: Origins,
}

/// How the public router limits and shares.
pub(crate) struct RouterOptions {
    pub cors_origins: Vec<String>,
    /// New streams per second per client IP; 0: no limit.
    pub connect_rate: f64,
    pub connect_burst: u32,
    /// `POST`/`PUT`/`DELETE` requests per second per client IP; 0: no limit.
    pub request_rate: f64,
    pub request_burst: u32,
    pub client_ip: ClientIp,
    pub max_publish_bytes: usize,
    /// How long a request body may take to arrive, whole, from the end of
    /// its head (`REALTIME_HEAD_TIMEOUT`): a body dribbled a byte at a time
    /// must not hold a connection without a deadline.
    pub body_timeout: Duration,
}

/// A per-user limiter for `POST /api/realtime/stream`.
pub(crate) fn activity_limiter(rate: u32, burst: u32) -> DefaultKeyedRateLimiter<String> {
    let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
}

/// The public routes. The limiters' key maps (and the publish-key strikes)
/// are trimmed every few seconds until `stop`, so they hold only recently
/// seen clients.
pub(crate) fn router(state: Arc<AppState>, options: RouterOptions) -> Router {
    let stop = state.shutdown.stop.clone();
    let mut stream_routes = Router::new().route(
        "/api/realtime/stream",
        get(stream)
            .head(head_stream)
            .post(post_activity)
            .put(put_stream)
            .delete(delete_stream),
    );
    // A stream connect, whether `GET` or `HEAD`.
    stream_routes = limit_per_ip(
        stream_routes,
        &options.client_ip,
        options.connect_rate,
        options.connect_burst,
        vec![Method::GET, Method::HEAD],
        Limited::Connect,
        &stop,
    );
    // Outside the connect limiter, so its 429 is covered too.
    stream_routes = stream_routes.layer(axum::middleware::from_fn_with_state(
        state.retry,
        event_source_refusals,
    ));
    let strikes_state = state.clone();
    let strikes_stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = strikes_stop.cancelled() => return,
                _ = tick.tick() => strikes_state.publish_strikes.forget_drained(Instant::now()),
            }
        }
    });
    let router = stream_routes.route("/api/realtime/publish", post(publish));
    // Every state-changing call, on either route, under one per-IP budget.
    let router = limit_per_ip(
        router,
        &options.client_ip,
        options.request_rate,
        options.request_burst,
        vec![Method::POST, Method::PUT, Method::DELETE],
        Limited::Request,
        &stop,
    );
    let router = router
        .layer(DefaultBodyLimit::max(options.max_publish_bytes))
        .layer(RequestBodyDeadlineLayer::new(options.body_timeout))
        .with_state(state);
    let origins: Vec<HeaderValue> = options
        .cors_origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if origins.is_empty() {
        return router;
    }
    router.layer(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_credentials(true)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("last-event-id"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}
