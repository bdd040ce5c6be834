//! `GET`/`HEAD /api/realtime/stream`: opening a stream.

use super::*;

/// `GET /api/realtime/stream`: [`open_stream`]; a 503 gets a `Retry-After`
/// (`REALTIME_RETRY`, whole seconds, at least 1) where the refusal did not
/// set one. An `EventSource`'s transient refusals are rewritten around the
/// whole route ([`event_source_refusals`]).
pub(super) async fn stream(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let retry = app.retry;
    let mut response = open_stream(app, headers, raw).await.into_response();
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
pub(super) async fn event_source_refusals(
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

pub(super) async fn open_stream(
    app: Arc<AppState>,
    headers: HeaderMap,
    raw: Option<String>,
) -> Result<Response, Refusal> {
    if app.shutdown.draining.is_cancelled() {
        return Err(Refusal::counted(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down; retry",
        ));
    }
    // 1. Who is asking.
    let (user, expires_at, session) = authenticate_with_session(&app, &headers).await?;

    // 2. What is asked.
    let query = parse_query(raw.as_deref());
    let org = organization_param(query.organization_id)?;
    let (filter, channel_name) = match ChannelFilter::parse(query.channel.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            return Err(Refusal::counted(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &e.to_string(),
            ));
        }
    };
    // A header that is not ASCII is a bad id, not a missing one: the client
    // asked to resume and must not silently get a live-only stream.
    let resume_from = match headers.get("last-event-id") {
        Some(v) => match v.to_str() {
            Ok(v) => Some(v.to_owned()),
            Err(_) => {
                return Err(Refusal::counted(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "invalid Last-Event-ID",
                ));
            }
        },
        None => query.last_event_id,
    }
    .filter(|s| !s.trim().is_empty());
    let resume_from = match resume_from.map(|s| s.trim().parse::<EventId>()) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => {
            return Err(Refusal::counted(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "invalid Last-Event-ID",
            ));
        }
    };

    // 3. Non-members are refused before anything is subscribed for them.
    member_or_refusal(app.membership.precheck(&user, &org).await)?;

    // 4. Subscribe, so nothing published from now on is missed.
    let mut sub = app.hub.join(&org);
    let Some(subscribed_since) = sub.ready(app.io_timeout).await else {
        return Err(Refusal::counted(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "event feed unavailable; retry",
        ));
    };

    // 5. Membership, checked (again) after the subscription: a revocation
    // from here on reaches this replica.
    let answer = app
        .membership
        .organization_name(&user, &org, subscribed_since)
        .await;
    let org_name = member_or_refusal(answer)?;

    // 6. A place under the caps, counted across replicas.
    let connection_id: Arc<str> = uuid_like().into();
    match app.caps.acquire(&connection_id, &user, &org).await {
        Ok(()) => {}
        Err(CapError::User) => {
            return Err(Refusal::too_many(
                "user_limit",
                "too many open streams for this user",
                app.caps.retry_after_secs(),
            ));
        }
        Err(CapError::Organization) => {
            return Err(Refusal::too_many(
                "org_limit",
                "too many open streams for this organization",
                app.caps.retry_after_secs(),
            ));
        }
        Err(CapError::Redis(e)) => {
            tracing::warn!(error = %e, "connection caps unavailable");
            return Err(Refusal::counted(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "connection caps unavailable; retry",
            ));
        }
    }
    let registration = app.registry.register(
        connection_id.clone(),
        user.as_str().into(),
        org.as_str().into(),
        session.map(Into::into),
        filter,
        &app.shutdown.stop,
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
                        return Err(Refusal::counted(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "unavailable",
                            "history unavailable; retry",
                        ));
                    }
                }
            }
            // Redis did not answer (restarting, loading its AOF, …): that
            // says nothing about a gap, so the client is refused transiently
            // (an EventSource gets 200 + `retry:`) and resumes with the same
            // id, never told to refetch for it.
            Err(e) => {
                tracing::debug!(error = %e, "history unavailable for a resume");
                return Err(Refusal::counted(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "history unavailable; retry",
                ));
            }
        },
        // Live only; remember where "now" is so a lagging connection can
        // catch up from history.
        None => match app.history.newest(&org).await {
            Ok(newest) => (newest, None),
            Err(_) => {
                return Err(Refusal::counted(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "history unavailable; retry",
                ));
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
        latency.clone(),
    );
    sub.set_outlet(outlet.clone());
    let conn = Connection::new(Opening {
        org,
        user,
        handle: registration.handle.clone(),
        sub,
        history: app.history.clone(),
        membership: app.membership.clone(),
        heartbeat: app.heartbeat,
        retry: app.retry,
        expires_at,
        pending,
        last_seen,
        replay_after,
        delivered,
        latency,
    });
    let body = Body::from_stream(conn.into_body(m::ConnectionGuard::new(), registration, lease));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .extension(StreamOutlet(outlet))
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache, no-transform")
        .header("x-accel-buffering", "no")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

/// `HEAD /api/realtime/stream`: 405, answered without running the stream
/// handler (axum would otherwise run it whole, membership queries,
/// subscription and caps included, and drop the body). The connect limiter
/// has already counted it as a connect.
pub(super) async fn head_stream() -> Response {
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

/// A random 128-bit id in UUID text form (v4 layout).
pub(super) fn uuid_like() -> String {
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
