//! What a request says: its query, its credential and the organization
//! it names, each checked, or the refusal to send.

use super::*;

pub(super) struct Query {
    pub(super) organization_id: Option<String>,
    pub(super) channel: Option<String>,
    pub(super) last_event_id: Option<String>,
    pub(super) connection_id: Option<String>,
}

pub(super) fn parse_query(raw: Option<&str>) -> Query {
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
pub(super) async fn authenticate(
    app: &AppState,
    headers: &HeaderMap,
) -> Result<(String, Option<SystemTime>), Refusal> {
    authenticate_with_session(app, headers)
        .await
        .map(|(user, expires, _)| (user, expires))
}

/// [`authenticate`], with the database session token when the credential
/// was one (a stream re-checks it while open: `crate::sessions`).
pub(super) async fn authenticate_with_session(
    app: &AppState,
    headers: &HeaderMap,
) -> Result<(String, Option<SystemTime>, Option<String>), Refusal> {
    let Some(credential) = auth::credentials_from_headers(headers) else {
        return Err(Refusal::counted(
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
                Ok(None) => Err(Refusal::counted(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "invalid or expired session",
                )),
                Err(e) => {
                    tracing::warn!(error = %e, "session lookup failed");
                    Err(Refusal::counted(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "session store unavailable; retry",
                    ))
                }
            }
        }
        Err(e) if e.status() == StatusCode::UNAUTHORIZED => {
            tracing::debug!(error = %e, "credential refused");
            Err(Refusal::counted(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "invalid or expired credentials",
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, "credentials cannot be checked now");
            Err(Refusal::counted(
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
pub(super) async fn authenticate_change(
    app: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<(String, Option<SystemTime>), Refusal> {
    let by_cookie = matches!(
        auth::credentials_from_headers(headers),
        Some(auth::Credential::SessionCookie { .. })
    );
    if by_cookie && !app.origins.allows(headers, uri) {
        metrics::counter!(m::REJECTED, "reason" => "cross_origin").increment(1);
        return Err(Refusal::plain(
            StatusCode::FORBIDDEN,
            "a cookie-authenticated change needs an allowed Origin (REALTIME_CORS_ORIGINS or this host)",
        ));
    }
    authenticate(app, headers).await
}

/// `organizationId` checked: present, bounded, no control characters.
// A refusal is built once per refused request, off the hot path.
#[allow(clippy::result_large_err)]
pub(super) fn organization_param(org: Option<String>) -> Result<String, Refusal> {
    match org.filter(|o| !o.is_empty()) {
        None => Err(Refusal::counted(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "organizationId is required",
        )),
        Some(o) if o.len() > MAX_ORG_ID => Err(Refusal::counted(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "organizationId is too long",
        )),
        // Ids are text keys: control characters (NUL above all, which
        // Postgres refuses in text) are never part of one.
        Some(o) if o.chars().any(char::is_control) => Err(Refusal::counted(
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
pub(super) fn member_or_refusal(
    answer: Result<Option<String>, MembershipError>,
) -> Result<String, Refusal> {
    match answer {
        Ok(Some(name)) => Ok(name),
        Ok(None) => Err(Refusal::counted(
            StatusCode::FORBIDDEN,
            "forbidden",
            "not a member of this organization",
        )),
        Err(e) => {
            tracing::warn!(error = %e, "membership query failed");
            Err(Refusal::counted(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "membership unavailable; retry",
            ))
        }
    }
}
