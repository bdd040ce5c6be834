//! The public HTTP API: `GET /api/realtime/stream` (DESIGN §3) and CORS.
//!
//! Request path, in order: credentials (401) → query (400) → Redis
//! subscription confirmed (503) → membership (403) → resume point → stream.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use realtime_shared::event::EventId;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::{self, Verification, Verifier};
use crate::channels::ChannelFilter;
use crate::frame::data_only;
use crate::history::History;
use crate::hub::Hub;
use crate::membership::Membership;
use crate::metrics as m;
use crate::stream::{Connection, gap_message, now_ms};

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
    pub shutdown: CancellationToken,
}

pub fn router(state: Arc<AppState>, cors_origins: &[String]) -> Router {
    let router = Router::new()
        .route("/api/realtime/stream", get(stream))
        .with_state(state);
    let origins: Vec<HeaderValue> = cors_origins
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

fn reject(status: StatusCode, reason: &'static str, why: &str) -> Response {
    metrics::counter!(m::REJECTED, "reason" => reason).increment(1);
    metrics::counter!(m::CONNECTIONS_TOTAL, "result" => reason).increment(1);
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{why}\n"),
    )
        .into_response()
}

struct Query {
    organization_id: Option<String>,
    channel: Option<String>,
    last_event_id: Option<String>,
}

fn parse_query(raw: Option<&str>) -> Query {
    let mut q = Query {
        organization_id: None,
        channel: None,
        last_event_id: None,
    };
    for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "organizationId" => q.organization_id = Some(value.into_owned()),
            "channel" => q.channel = Some(value.into_owned()),
            "lastEventId" => q.last_event_id = Some(value.into_owned()),
            _ => {}
        }
    }
    q
}

async fn stream(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if app.shutdown.is_cancelled() {
        return reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down; retry",
        );
    }
    // 1. Who is asking.
    let Some(credential) = auth::credentials_from_headers(&headers) else {
        return reject(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "authentication required",
        );
    };
    let (user, expires_at) = match app.verifier.verify(&credential).await {
        Ok(Verification::Identity(identity)) => (identity.user_id, identity.expires_at),
        Ok(Verification::LookUpSession { token }) => {
            match app.membership.session_user(&token).await {
                Ok(Some((user, expires))) => (user, Some(expires)),
                Ok(None) => {
                    return reject(
                        StatusCode::UNAUTHORIZED,
                        "unauthenticated",
                        "invalid or expired session",
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "session lookup failed");
                    return reject(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "session store unavailable; retry",
                    );
                }
            }
        }
        Err(e) if e.status() == StatusCode::UNAUTHORIZED => {
            tracing::debug!(error = %e, "credential refused");
            return reject(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "invalid or expired credentials",
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "credentials cannot be checked now");
            return reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "credentials cannot be checked now; retry",
            );
        }
    };

    // 2. What is asked.
    let query = parse_query(raw.as_deref());
    let org = match query.organization_id.filter(|o| !o.is_empty()) {
        None => {
            return reject(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "organizationId is required",
            );
        }
        Some(o) if o.len() > MAX_ORG_ID => {
            return reject(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "organizationId is too long",
            );
        }
        // Ids are text keys: control characters (NUL above all, which
        // Postgres refuses in text) are never part of one.
        Some(o) if o.chars().any(char::is_control) => {
            return reject(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "organizationId contains control characters",
            );
        }
        Some(o) => o,
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

    // 3. Subscribe first, so nothing published from now on is missed.
    let mut sub = app.hub.join(&org);
    let Some(subscribed_since) = sub.ready(app.io_timeout).await else {
        return reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "event feed unavailable; retry",
        );
    };

    // 4. Membership, checked after the subscription: a revocation from
    // here on reaches this replica.
    let org_name = match app
        .membership
        .organization_name(&user, &org, subscribed_since)
        .await
    {
        Ok(Some(name)) => name,
        Ok(None) => {
            return reject(
                StatusCode::FORBIDDEN,
                "forbidden",
                "not a member of this organization",
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "membership query failed");
            return reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "membership unavailable; retry",
            );
        }
    };

    // 5. Where the stream starts.
    let connection_id = uuid_like();
    let mut pending = VecDeque::new();
    let hello = serde_json::json!({
        "type": "connection",
        "status": "connected",
        "timestamp": now_ms(),
        "organizationId": org,
        "organizationName": org_name,
        "channel": channel_name,
        "userId": user,
        "connectionId": connection_id,
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
            Err(_) => {
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
    let conn = Connection {
        org,
        user,
        filter,
        sub,
        history: app.history.clone(),
        heartbeat: app.heartbeat,
        expires_at,
        shutdown: app.shutdown.clone(),
        pending,
        last_seen,
        replay_after,
        closing: false,
        delivered: metrics::counter!(m::EVENTS_DELIVERED),
        latency: metrics::histogram!(m::COMMIT_TO_SEND),
    };
    let body = Body::from_stream(conn.into_body(m::ConnectionGuard::new()));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache, no-transform")
        .header("x-accel-buffering", "no")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
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
