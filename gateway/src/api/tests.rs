#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

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
