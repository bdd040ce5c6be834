//! `POST /api/realtime/stream`: a member's `user.activity`.

use super::*;

/// `POST /api/realtime/stream?organizationId=`: a member publishes a
/// `user.activity` to the organization, as themselves.
pub(super) async fn post_activity(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Refusal> {
    let (user, _) = authenticate_change(&app, &headers, &uri).await?;
    let org = organization_param(parse_query(raw.as_deref()).organization_id)?;
    // Checked fresh (no cached answer): this replica may not be subscribed
    // to the organization, so it might not have seen a revocation.
    match app
        .membership
        .organization_name(&user, &org, Instant::now())
        .await
    {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(Refusal::plain(
                StatusCode::FORBIDDEN,
                "not a member of this organization",
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, "membership query failed");
            return Err(Refusal::plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "membership unavailable; retry",
            ));
        }
    }
    let content = match publishing::activity_message(&org, &user, &body) {
        Ok(c) => c,
        Err(e) => return Err(Refusal::plain(StatusCode::BAD_REQUEST, &e.to_string())),
    };
    // Counted after validation: a refused body costs a parse, not a place.
    if let Err(not_until) = app.activity_limiter.check_key(&user) {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        return Err(Refusal::too_many(
            "activity_rate_limited",
            "too many activity posts; slow down",
            wait.as_secs().max(1),
        ));
    }
    Ok(emit(&app, &content).await)
}
