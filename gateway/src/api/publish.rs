//! `POST /api/realtime/publish`: server-side publishing with the key.

use super::*;

/// `POST /api/realtime/publish`: server-side publish with the publish key.
///
/// A client IP that sent `REALTIME_PUBLISH_KEY_FAILURES` wrong keys gets
/// 429 until its failures drain, before its key is compared (so a guess
/// made while locked out tells nothing, right or wrong). The comparison
/// itself is constant-time. A missing key is a failure too.
pub(super) async fn publish(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let Some(key) = app.publish_key.as_deref() else {
        return Err(Refusal::plain(
            StatusCode::NOT_FOUND,
            "the publish API is off (REALTIME_PUBLISH_KEY is not set)",
        ));
    };
    let client = client_ip::limit_key(app.client_ip.resolve(peer.ip(), &headers));
    if let Err(wait) = app.publish_strikes.check(client, Instant::now()) {
        metrics::counter!(m::REJECTED, "reason" => "publish_key_failures").increment(1);
        return Err(Refusal::plain(
            StatusCode::TOO_MANY_REQUESTS,
            "too many wrong publish keys from this address; wait",
        )
        .retry_after(wait.as_secs_f64().ceil().max(1.0) as u64));
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        app.publish_strikes.fail(client, Instant::now());
        return Err(Refusal::plain(
            StatusCode::UNAUTHORIZED,
            "Authorization: Bearer <publish key> required",
        ));
    };
    if !bool::from(presented.as_bytes().ct_eq(key.as_bytes())) {
        app.publish_strikes.fail(client, Instant::now());
        return Err(Refusal::plain(
            StatusCode::UNAUTHORIZED,
            "wrong publish key",
        ));
    }
    let content = match publishing::api_message(&body) {
        Ok(c) => c,
        Err(e) => return Err(Refusal::plain(StatusCode::BAD_REQUEST, &e.to_string())),
    };
    Ok(emit(&app, &content).await)
}

pub(super) async fn emit(app: &AppState, content: &str) -> Response {
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
