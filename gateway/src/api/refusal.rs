//! Refusals: the plain-text answers, their metrics, and the form an
//! `EventSource` retries by itself.

use super::*;

/// A refused request: one type for every refusal of the API, whose
/// [`IntoResponse`] is the only place the answer is built and counted. A
/// stream refusal (`counted`) adds to `realtime_gateway_rejected_total` and
/// `realtime_gateway_connections_total{result}` under its reason and keeps
/// its message on the response ([`Why`]) for [`for_event_source`]; a plain
/// refusal of the other endpoints is not a stream connection and is not
/// counted there.
pub(super) struct Refusal {
    status: StatusCode,
    /// The metric label of a counted refusal.
    reason: Option<&'static str>,
    why: String,
    retry_after_secs: Option<u64>,
}

impl Refusal {
    /// A refused stream, counted under `reason`.
    pub(super) fn counted(status: StatusCode, reason: &'static str, why: &str) -> Self {
        Self {
            status,
            reason: Some(reason),
            why: why.to_owned(),
            retry_after_secs: None,
        }
    }

    /// A refusal of a non-stream endpoint (not counted as a connection).
    pub(super) fn plain(status: StatusCode, why: &str) -> Self {
        Self {
            status,
            reason: None,
            why: why.to_owned(),
            retry_after_secs: None,
        }
    }

    /// 429 with `Retry-After` (seconds), counted under `reason`.
    pub(super) fn too_many(reason: &'static str, why: &str, retry_after_secs: u64) -> Self {
        Self::counted(StatusCode::TOO_MANY_REQUESTS, reason, why).retry_after(retry_after_secs)
    }

    /// With `Retry-After` (seconds).
    pub(super) fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        if let Some(reason) = self.reason {
            metrics::counter!(m::REJECTED, "reason" => reason).increment(1);
            metrics::counter!(m::CONNECTIONS_TOTAL, "result" => reason).increment(1);
        }
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.why),
        )
            .into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.reason.is_some() {
            response.extensions_mut().insert(Why(self.why));
        }
        response
    }
}

/// A refused stream's answer (see [`Refusal::counted`]).
pub(super) fn reject(status: StatusCode, reason: &'static str, why: &str) -> Response {
    Refusal::counted(status, reason, why).into_response()
}

/// Why a stream was refused, kept on the refusal so
/// [`for_event_source`] can say it in an SSE comment.
#[derive(Clone)]
pub(super) struct Why(pub(super) String);

/// Whether the request is an `EventSource`'s (or any client that says it
/// reads `text/event-stream`).
pub(super) fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.as_bytes().windows(17).any(|w| w == b"text/event-stream"))
}

/// Transient refusals for EventSource (ARCHITECTURE.md §3): a browser's
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
pub(super) fn for_event_source(response: Response, retry: Duration) -> Response {
    let status = response.status();
    if status != StatusCode::SERVICE_UNAVAILABLE && status != StatusCode::TOO_MANY_REQUESTS {
        return response;
    }
    let why = response
        .extensions()
        .get::<Why>()
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
pub(super) fn too_many(reason: &'static str, why: &str, retry_after_secs: u64) -> Response {
    Refusal::too_many(reason, why, retry_after_secs).into_response()
}

/// A `text/plain` answer of the non-stream endpoints (see
/// [`Refusal::plain`]).
pub(super) fn plain(status: StatusCode, why: &str) -> Response {
    Refusal::plain(status, why).into_response()
}

pub(super) fn json_response(status: StatusCode, value: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}
