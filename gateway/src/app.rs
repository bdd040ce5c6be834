//! The public HTTP API (DESIGN §3): `GET`, `POST`, `PUT`, `DELETE
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
use crate::connection::{Connection, Lease, gap_message};
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
use crate::strikes::Strikes;

/// Longest organization id accepted (ids are short text keys).
const MAX_ORG_ID: usize = 256;

pub struct AppState {
    pub hub: Hub,
    pub history: History,
    pub membership: Arc<Membership>,
    pub verifier: Verifier,
    pub heartbeat: Duration,
    pub retry: Duration,
    pub io_timeout: Duration,
    /// Cancelled at SIGTERM: new streams are refused from then on.
    pub draining: CancellationToken,
    /// Cancelled when the replica stops; every stream's close token is a
    /// child of it.
    pub stop: CancellationToken,
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
pub struct RouterOptions {
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
pub fn activity_limiter(rate: u32, burst: u32) -> DefaultKeyedRateLimiter<String> {
    let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
}

/// The public routes. The limiters' key maps (and the publish-key strikes)
/// are trimmed every few seconds until `stop`, so they hold only recently
/// seen clients.
pub fn router(state: Arc<AppState>, options: RouterOptions) -> Router {
    let stop = state.stop.clone();
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

/// Which per-IP limiter refused a request.
#[derive(Clone, Copy)]
enum Limited {
    /// A stream connect (`GET`, `HEAD`): counted as a refused connection.
    Connect,
    /// A `POST`, `PUT` or `DELETE`.
    Request,
}

/// `routes` with a per-client-IP limit on `methods` (tower_governor, keyed
/// by [`ClientIp`]): `rate` per second with `burst`, 429 with
/// `Retry-After` beyond; a `rate` of 0 leaves them unlimited. The limiter
/// runs before the handlers, so a refused request costs no I/O.
fn limit_per_ip(
    routes: Router<Arc<AppState>>,
    client_ip: &ClientIp,
    rate: f64,
    burst: u32,
    methods: Vec<Method>,
    limited: Limited,
    stop: &CancellationToken,
) -> Router<Arc<AppState>> {
    if rate <= 0.0 {
        return routes;
    }
    let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
    let Some(config) = GovernorConfigBuilder::default()
        .period(period)
        .burst_size(burst.max(1))
        .methods(methods)
        .key_extractor(client_ip.clone())
        .finish()
    else {
        return routes;
    };
    let limiter = config.limiter().clone();
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    limiter.retain_recent();
                    limiter.shrink_to_fit();
                }
            }
        }
    });
    routes.layer(GovernorLayer::new(config).error_handler(move |e| match e {
        tower_governor::GovernorError::TooManyRequests { wait_time, .. } => match limited {
            Limited::Connect => too_many(
                "rate_limited",
                "too many new connections; slow down",
                wait_time.max(1),
            ),
            Limited::Request => {
                metrics::counter!(m::REJECTED, "reason" => "request_rate_limited").increment(1);
                let mut response = plain(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many requests; slow down",
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(wait_time.max(1)));
                response
            }
        },
        _ => reject(
            StatusCode::INTERNAL_SERVER_ERROR,
            "error",
            "client address unknown",
        ),
    }))
}

fn reject(status: StatusCode, reason: &'static str, why: &str) -> Response {
    metrics::counter!(m::REJECTED, "reason" => reason).increment(1);
    metrics::counter!(m::CONNECTIONS_TOTAL, "result" => reason).increment(1);
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{why}\n"),
    )
        .into_response();
    response.extensions_mut().insert(Refusal(why.to_owned()));
    response
}

/// Why a stream was refused, kept on the refusal so
/// [`for_event_source`] can say it in an SSE comment.
#[derive(Clone)]
struct Refusal(String);

/// Whether the request is an `EventSource`'s (or any client that says it
/// reads `text/event-stream`).
fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.as_bytes().windows(17).any(|w| w == b"text/event-stream"))
}

/// DESIGN §9 "Transient refusals for EventSource": a browser's
/// `EventSource` stops for good on any status but 200 (and on a 200 that is
/// not `text/event-stream`), so a refusal that is only transient (503:
/// Postgres, Redis or credentials unavailable, draining; 429: connection
/// caps) becomes a 200 `text/event-stream` holding a jittered `retry:` and
/// a `: <reason>` comment, then the end of the stream: the browser
/// reconnects by itself after that delay, spread out so a recovering
/// dependency is not hit by every client at once. The delay is drawn from
/// [base/2, 3·base/2) with base the larger of `REALTIME_RETRY` and the
/// refusal's `Retry-After`. 401, 403 and 400 stay final; callers that do
/// not accept `text/event-stream` keep the 429/503 with `Retry-After`.
fn for_event_source(response: Response, retry: Duration) -> Response {
    let status = response.status();
    if status != StatusCode::SERVICE_UNAVAILABLE && status != StatusCode::TOO_MANY_REQUESTS {
        return response;
    }
    let why = response
        .extensions()
        .get::<Refusal>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| "unavailable; retry".to_owned());
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or_default();
    let base = retry.max(retry_after).as_millis().max(2) as u64;
    let ms = base / 2 + rand::random_range(0..base);
    // One line: a comment cannot span lines.
    let why: String = why.chars().filter(|c| !c.is_control()).collect();
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache, no-transform")
        .header("x-accel-buffering", "no")
        .body(Body::from(format!("retry: {ms}\n: {why}\n\n")))
        .unwrap_or_else(|_| status.into_response())
}

/// 429 with `Retry-After` (seconds) and a reason.
fn too_many(reason: &'static str, why: &str, retry_after_secs: u64) -> Response {
    let mut response = reject(StatusCode::TOO_MANY_REQUESTS, reason, why);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

/// A `text/plain` answer of the non-stream endpoints (not counted as
/// stream connections).
fn plain(status: StatusCode, why: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{why}\n"),
    )
        .into_response()
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

struct Query {
    organization_id: Option<String>,
    channel: Option<String>,
    last_event_id: Option<String>,
    connection_id: Option<String>,
}

fn parse_query(raw: Option<&str>) -> Query {
    let mut q = Query {
        organization_id: None,
        channel: None,
        last_event_id: None,
        connection_id: None,
    };
    for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "organizationId" => q.organization_id = Some(value.into_owned()),
            "channel" => q.channel = Some(value.into_owned()),
            "lastEventId" => q.last_event_id = Some(value.into_owned()),
            "connectionId" => q.connection_id = Some(value.into_owned()),
            _ => {}
        }
    }
    q
}

/// Who is asking: the user id and when their credential expires, or the
/// refusal to send (401, or 503 when credentials cannot be checked now).
async fn authenticate(
    app: &AppState,
    headers: &HeaderMap,
) -> Result<(String, Option<SystemTime>), Response> {
    authenticate_with_session(app, headers)
        .await
        .map(|(user, expires, _)| (user, expires))
}

/// [`authenticate`], with the database session token when the credential
/// was one (a stream re-checks it while open: `crate::sessions`).
async fn authenticate_with_session(
    app: &AppState,
    headers: &HeaderMap,
) -> Result<(String, Option<SystemTime>, Option<String>), Response> {
    let Some(credential) = auth::credentials_from_headers(headers) else {
        return Err(reject(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "authentication required",
        ));
    };
    match app.verifier.verify(&credential).await {
        Ok(Verification::Identity(identity)) => Ok((identity.user_id, identity.expires_at, None)),
        Ok(Verification::LookUpSession { token }) => {
            match app.membership.session_user(&token).await {
                Ok(Some((user, expires))) => Ok((user, Some(expires), Some(token))),
                Ok(None) => Err(reject(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "invalid or expired session",
                )),
                Err(e) => {
                    tracing::warn!(error = %e, "session lookup failed");
                    Err(reject(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "session store unavailable; retry",
                    ))
                }
            }
        }
        Err(e) if e.status() == StatusCode::UNAUTHORIZED => {
            tracing::debug!(error = %e, "credential refused");
            Err(reject(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "invalid or expired credentials",
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, "credentials cannot be checked now");
            Err(reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "credentials cannot be checked now; retry",
            ))
        }
    }
}

/// [`authenticate`] for a state-changing request (`POST`, `PUT`,
/// `DELETE`): a session cookie is honoured only from an allowed origin
/// (403 otherwise, before any lookup); a bearer token needs no check.
async fn authenticate_change(
    app: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<(String, Option<SystemTime>), Response> {
    let by_cookie = matches!(
        auth::credentials_from_headers(headers),
        Some(auth::Credential::SessionCookie { .. })
    );
    if by_cookie && !app.origins.allows(headers, uri) {
        metrics::counter!(m::REJECTED, "reason" => "cross_origin").increment(1);
        return Err(plain(
            StatusCode::FORBIDDEN,
            "a cookie-authenticated change needs an allowed Origin (REALTIME_CORS_ORIGINS or this host)",
        ));
    }
    authenticate(app, headers).await
}

/// `organizationId` checked: present, bounded, no control characters.
// A refusal is built once per refused request, off the hot path.
#[allow(clippy::result_large_err)]
fn organization_param(org: Option<String>) -> Result<String, Response> {
    match org.filter(|o| !o.is_empty()) {
        None => Err(reject(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "organizationId is required",
        )),
        Some(o) if o.len() > MAX_ORG_ID => Err(reject(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "organizationId is too long",
        )),
        // Ids are text keys: control characters (NUL above all, which
        // Postgres refuses in text) are never part of one.
        Some(o) if o.chars().any(char::is_control) => Err(reject(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "organizationId contains control characters",
        )),
        Some(o) => Ok(o),
    }
}

/// A membership answer as the stream handler needs it: the organization's
/// name, or the refusal (403 for a non-member, 503 when the query failed).
// A refusal is built once per refused request, off the hot path.
#[allow(clippy::result_large_err)]
fn member_or_refusal(answer: Result<Option<String>, MembershipError>) -> Result<String, Response> {
    match answer {
        Ok(Some(name)) => Ok(name),
        Ok(None) => Err(reject(
            StatusCode::FORBIDDEN,
            "forbidden",
            "not a member of this organization",
        )),
        Err(e) => {
            tracing::warn!(error = %e, "membership query failed");
            Err(reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "membership unavailable; retry",
            ))
        }
    }
}

/// `GET /api/realtime/stream`: [`open_stream`]; a 503 gets a `Retry-After`
/// (`REALTIME_RETRY`, whole seconds, at least 1) where the refusal did not
/// set one. An `EventSource`'s transient refusals are rewritten around the
/// whole route ([`event_source_refusals`]).
async fn stream(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let retry = app.retry;
    let mut response = open_stream(app, headers, raw).await;
    if response.status() == StatusCode::SERVICE_UNAVAILABLE
        && !response.headers().contains_key(header::RETRY_AFTER)
    {
        let secs = retry.as_millis().div_ceil(1000).max(1) as u64;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// Middleware of the stream route: a `GET` that accepts
/// `text/event-stream` gets its transient refusals, the handler's and the
/// connect limiter's alike, in the form an `EventSource` retries
/// ([`for_event_source`]).
async fn event_source_refusals(
    State(retry): State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let event_source = request.method() == Method::GET && accepts_event_stream(request.headers());
    let response = next.run(request).await;
    if event_source {
        for_event_source(response, retry)
    } else {
        response
    }
}

async fn open_stream(app: Arc<AppState>, headers: HeaderMap, raw: Option<String>) -> Response {
    if app.draining.is_cancelled() {
        return reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down; retry",
        );
    }
    // 1. Who is asking.
    let (user, expires_at, session) = match authenticate_with_session(&app, &headers).await {
        Ok(who) => who,
        Err(refusal) => return refusal,
    };

    // 2. What is asked.
    let query = parse_query(raw.as_deref());
    let org = match organization_param(query.organization_id) {
        Ok(org) => org,
        Err(refusal) => return refusal,
    };
    let (filter, channel_name) = match ChannelFilter::parse(query.channel.as_deref()) {
        Ok(f) => f,
        Err(e) => return reject(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    // A header that is not ASCII is a bad id, not a missing one: the client
    // asked to resume and must not silently get a live-only stream.
    let resume_from = match headers.get("last-event-id") {
        Some(v) => match v.to_str() {
            Ok(v) => Some(v.to_owned()),
            Err(_) => {
                return reject(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "invalid Last-Event-ID",
                );
            }
        },
        None => query.last_event_id,
    }
    .filter(|s| !s.trim().is_empty());
    let resume_from = match resume_from.map(|s| s.trim().parse::<EventId>()) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => {
            return reject(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "invalid Last-Event-ID",
            );
        }
    };

    // 3. Non-members are refused before anything is subscribed for them.
    if let Err(refusal) = member_or_refusal(app.membership.precheck(&user, &org).await) {
        return refusal;
    }

    // 4. Subscribe, so nothing published from now on is missed.
    let mut sub = app.hub.join(&org);
    let Some(subscribed_since) = sub.ready(app.io_timeout).await else {
        return reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "event feed unavailable; retry",
        );
    };

    // 5. Membership, checked (again) after the subscription: a revocation
    // from here on reaches this replica.
    let answer = app
        .membership
        .organization_name(&user, &org, subscribed_since)
        .await;
    let org_name = match member_or_refusal(answer) {
        Ok(name) => name,
        Err(refusal) => return refusal,
    };

    // 6. A place under the caps, counted across replicas.
    let connection_id: Arc<str> = uuid_like().into();
    match app.caps.acquire(&connection_id, &user, &org).await {
        Ok(()) => {}
        Err(CapError::User) => {
            return too_many(
                "user_limit",
                "too many open streams for this user",
                app.caps.retry_after_secs(),
            );
        }
        Err(CapError::Organization) => {
            return too_many(
                "org_limit",
                "too many open streams for this organization",
                app.caps.retry_after_secs(),
            );
        }
        Err(CapError::Redis(e)) => {
            tracing::warn!(error = %e, "connection caps unavailable");
            return reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "connection caps unavailable; retry",
            );
        }
    }
    let registration = app.registry.register(
        connection_id.clone(),
        user.as_str().into(),
        org.as_str().into(),
        session.map(Into::into),
        filter,
        &app.stop,
    );
    // From here on, dropping `lease` gives the place back.
    let lease = Lease::new(app.caps.clone(), &registration.handle);

    // 7. Where the stream starts.
    let mut pending = VecDeque::new();
    let hello = serde_json::json!({
        "type": "connection",
        "status": "connected",
        "timestamp": now_ms(),
        "organizationId": org,
        "organizationName": org_name,
        "channel": channel_name,
        "userId": user,
        "connectionId": &*connection_id,
    });
    let mut first = format!("retry: {}\n", app.retry.as_millis()).into_bytes();
    first.extend_from_slice(&data_only(&hello.to_string()));
    pending.push_back(first.into());
    let (last_seen, replay_after) = match resume_from {
        Some(last) => match app.history.has_gap(&org, last).await {
            Ok(false) => (Some(last), Some(Some(last))),
            Ok(true) => {
                pending.push_back(gap_message(&org, Some(last)));
                match app.history.newest(&org).await {
                    Ok(newest) => (newest, None),
                    Err(_) => {
                        return reject(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "unavailable",
                            "history unavailable; retry",
                        );
                    }
                }
            }
            // Redis did not answer (restarting, loading its AOF, …): that
            // says nothing about a gap, so the client is refused transiently
            // (an EventSource gets 200 + `retry:`) and resumes with the same
            // id, never told to refetch for it.
            Err(e) => {
                tracing::debug!(error = %e, "history unavailable for a resume");
                return reject(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "history unavailable; retry",
                );
            }
        },
        // Live only; remember where "now" is so a lagging connection can
        // catch up from history.
        None => match app.history.newest(&org).await {
            Ok(newest) => (newest, None),
            Err(_) => {
                return reject(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "history unavailable; retry",
                );
            }
        },
    };
    metrics::counter!(m::CONNECTIONS_TOTAL, "result" => "accepted").increment(1);
    let delivered = metrics::counter!(m::EVENTS_DELIVERED);
    let latency = metrics::histogram!(m::COMMIT_TO_SEND);
    // Used only if the listener serves this stream itself (`crate::serve`).
    let outlet = Outlet::new(
        user.as_str().into(),
        registration.handle.clone(),
        delivered.clone(),
        latency.clone(),
    );
    sub.set_outlet(outlet.clone());
    let conn = Connection {
        org,
        user,
        handle: registration.handle.clone(),
        sub,
        history: app.history.clone(),
        heartbeat: app.heartbeat,
        retry: app.retry,
        expires_at,
        pending,
        last_seen,
        replay_after,
        resync: false,
        closing: false,
        recheck: false,
        membership: app.membership.clone(),
        delivered,
        latency,
    };
    let body = Body::from_stream(conn.into_body(m::ConnectionGuard::new(), registration, lease));
    Response::builder()
        .status(StatusCode::OK)
        .extension(StreamOutlet(outlet))
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache, no-transform")
        .header("x-accel-buffering", "no")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `HEAD /api/realtime/stream`: 405, answered without running the stream
/// handler (axum would otherwise run it whole, membership queries,
/// subscription and caps included, and drop the body). The connect limiter
/// has already counted it as a connect.
async fn head_stream() -> Response {
    let mut response = plain(
        StatusCode::METHOD_NOT_ALLOWED,
        "HEAD is not served on the stream; use GET",
    );
    response.headers_mut().insert(
        header::ALLOW,
        HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
    );
    response
}

/// `POST /api/realtime/stream?organizationId=`: a member publishes a
/// `user.activity` to the organization, as themselves.
async fn post_activity(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let (user, _) = match authenticate_change(&app, &headers, &uri).await {
        Ok(who) => who,
        Err(refusal) => return refusal,
    };
    let org = match organization_param(parse_query(raw.as_deref()).organization_id) {
        Ok(org) => org,
        Err(refusal) => return refusal,
    };
    // Checked fresh (no cached answer): this replica may not be subscribed
    // to the organization, so it might not have seen a revocation.
    match app
        .membership
        .organization_name(&user, &org, Instant::now())
        .await
    {
        Ok(Some(_)) => {}
        Ok(None) => return plain(StatusCode::FORBIDDEN, "not a member of this organization"),
        Err(e) => {
            tracing::warn!(error = %e, "membership query failed");
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "membership unavailable; retry",
            );
        }
    }
    let content = match publishing::activity_message(&org, &user, &body) {
        Ok(c) => c,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    // Counted after validation: a refused body costs a parse, not a place.
    if let Err(not_until) = app.activity_limiter.check_key(&user) {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        return too_many(
            "activity_rate_limited",
            "too many activity posts; slow down",
            wait.as_secs().max(1),
        );
    }
    emit(&app, &content).await
}

/// `POST /api/realtime/publish`: server-side publish with the publish key.
///
/// A client IP that sent `REALTIME_PUBLISH_KEY_FAILURES` wrong keys gets
/// 429 until its failures drain, before its key is compared (so a guess
/// made while locked out tells nothing, right or wrong). The comparison
/// itself is constant-time. A missing key is a failure too.
async fn publish(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(key) = app.publish_key.as_deref() else {
        return plain(
            StatusCode::NOT_FOUND,
            "the publish API is off (REALTIME_PUBLISH_KEY is not set)",
        );
    };
    let client = client_ip::limit_key(app.client_ip.resolve(peer.ip(), &headers));
    if let Err(wait) = app.publish_strikes.check(client, Instant::now()) {
        metrics::counter!(m::REJECTED, "reason" => "publish_key_failures").increment(1);
        let mut response = plain(
            StatusCode::TOO_MANY_REQUESTS,
            "too many wrong publish keys from this address; wait",
        );
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(wait.as_secs_f64().ceil().max(1.0) as u64),
        );
        return response;
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        app.publish_strikes.fail(client, Instant::now());
        return plain(
            StatusCode::UNAUTHORIZED,
            "Authorization: Bearer <publish key> required",
        );
    };
    if !bool::from(presented.as_bytes().ct_eq(key.as_bytes())) {
        app.publish_strikes.fail(client, Instant::now());
        return plain(StatusCode::UNAUTHORIZED, "wrong publish key");
    }
    let content = match publishing::api_message(&body) {
        Ok(c) => c,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    emit(&app, &content).await
}

async fn emit(app: &AppState, content: &str) -> Response {
    match app.emitter.emit(content).await {
        Ok(lsn) => {
            metrics::counter!(m::PUBLISHED).increment(1);
            json_response(
                StatusCode::ACCEPTED,
                serde_json::json!({"status": "accepted", "lsn": lsn}),
            )
        }
        Err(PublishError::BadBody(why)) => plain(StatusCode::BAD_REQUEST, &why),
        Err(PublishError::Unavailable(e)) => {
            tracing::warn!(error = %e, "publishing through Postgres failed");
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "database unavailable; retry",
            )
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelsBody {
    channels: Vec<String>,
}

/// `connectionId` checked: present and shaped like one of ours.
// A refusal is built once per refused request, off the hot path.
#[allow(clippy::result_large_err)]
fn connection_param(id: Option<String>) -> Result<String, Response> {
    match id {
        Some(id) if id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') => {
            Ok(id)
        }
        Some(_) => Err(plain(StatusCode::NOT_FOUND, "no such connection")),
        None => Err(plain(StatusCode::BAD_REQUEST, "connectionId is required")),
    }
}

/// Whether the caller holds the connection (on any replica): 404 otherwise,
/// so someone else's connection ids are indistinguishable from unknown ones.
async fn owned(app: &AppState, user: &str, id: &str) -> Result<(), Response> {
    match app.caps.owns(user, id).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(plain(StatusCode::NOT_FOUND, "no such connection")),
        Err(e) => {
            tracing::warn!(error = %e, "connection registry unavailable");
            Err(plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "connection registry unavailable; retry",
            ))
        }
    }
}

/// `PUT /api/realtime/stream?connectionId=` with `{"channels":[…]}`.
async fn put_stream(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let (user, _) = match authenticate_change(&app, &headers, &uri).await {
        Ok(who) => who,
        Err(refusal) => return refusal,
    };
    let id = match connection_param(parse_query(raw.as_deref()).connection_id) {
        Ok(id) => id,
        Err(refusal) => return refusal,
    };
    let channels = match serde_json::from_slice::<ChannelsBody>(&body) {
        Ok(b) => b.channels,
        Err(e) => {
            return plain(
                StatusCode::BAD_REQUEST,
                &format!("body must be {{\"channels\":[…]}}: {e}"),
            );
        }
    };
    let (filter, name) = match ChannelFilter::parse_list(&channels) {
        Ok(f) => f,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    if let Err(refusal) = owned(&app, &user, &id).await {
        return refusal;
    }
    let command = Command::Filter {
        connection_id: id.clone(),
        user_id: user,
        mask: filter.bits(),
    };
    match app.control.send(command).await {
        Ok(()) => json_response(
            StatusCode::OK,
            serde_json::json!({"connectionId": id, "channel": name}),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "control channel unavailable");
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "control channel unavailable; retry",
            )
        }
    }
}

/// `DELETE /api/realtime/stream?connectionId=` (one stream) or
/// `?organizationId=` (all of the caller's streams to that organization).
///
/// `closeAll` goes to every replica, so it is sent only when the caller
/// holds at least one live stream in that organization (a lease in the
/// caps, on any replica); otherwise there is nothing to close and the
/// answer is the same 204 without a broadcast. This needs no membership
/// query: a caller can only ever close their own streams, and one who has
/// none there costs one Redis script, not a message to every replica.
async fn delete_stream(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Response {
    let (user, _) = match authenticate_change(&app, &headers, &uri).await {
        Ok(who) => who,
        Err(refusal) => return refusal,
    };
    let query = parse_query(raw.as_deref());
    let command = if query.connection_id.is_some() {
        let id = match connection_param(query.connection_id) {
            Ok(id) => id,
            Err(refusal) => return refusal,
        };
        if let Err(refusal) = owned(&app, &user, &id).await {
            return refusal;
        }
        Command::Close {
            connection_id: id,
            user_id: user,
        }
    } else {
        match query.organization_id {
            Some(_) => {
                let org = match organization_param(query.organization_id) {
                    Ok(org) => org,
                    Err(refusal) => return refusal,
                };
                match app.caps.has_stream_in(&user, &org).await {
                    Ok(true) => {}
                    Ok(false) => return StatusCode::NO_CONTENT.into_response(),
                    Err(e) => {
                        tracing::warn!(error = %e, "connection registry unavailable");
                        return plain(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "connection registry unavailable; retry",
                        );
                    }
                }
                Command::CloseAll {
                    user_id: user,
                    organization_id: org,
                }
            }
            None => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    "connectionId or organizationId is required",
                );
            }
        }
    };
    match app.control.send(command).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "control channel unavailable");
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "control channel unavailable; retry",
            )
        }
    }
}

/// A random 128-bit id in UUID text form (v4 layout).
fn uuid_like() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_text(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn retry_ms(body: &str) -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix("retry: "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn only_an_event_stream_accept_counts() {
        let mut headers = HeaderMap::new();
        assert!(!accepts_event_stream(&headers));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(!accepts_event_stream(&headers));
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html, text/event-stream;q=0.9"),
        );
        assert!(accepts_event_stream(&headers));
    }

    #[tokio::test]
    async fn a_transient_refusal_becomes_a_retry_hint_and_a_final_one_stays() {
        let retry = Duration::from_secs(3);
        let unavailable = reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "membership unavailable; retry",
        );
        let answer = for_event_source(unavailable, retry);
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(
            answer.headers().get(header::CONTENT_TYPE).unwrap(),
            "text/event-stream"
        );
        let body = body_text(answer).await;
        assert!((1500..4500).contains(&retry_ms(&body)), "{body}");
        assert!(
            body.contains("\n: membership unavailable; retry\n\n"),
            "{body}"
        );

        // A cap's 429: the hint is never far below its Retry-After.
        let capped = too_many("user_limit", "too many open streams", 20);
        let body = body_text(for_event_source(capped, retry)).await;
        assert!((10_000..30_000).contains(&retry_ms(&body)), "{body}");

        for status in [
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::BAD_REQUEST,
        ] {
            let refusal = reject(status, "x", "final");
            assert_eq!(for_event_source(refusal, retry).status(), status);
        }
    }
}
