//! `PUT`/`DELETE /api/realtime/stream`: changing or closing streams held
//! by any replica.

use super::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChannelsBody {
    channels: Vec<String>,
}

/// `connectionId` checked: present and shaped like one of ours.
// A refusal is built once per refused request, off the hot path.
#[allow(clippy::result_large_err)]
pub(super) fn connection_param(id: Option<String>) -> Result<String, Refusal> {
    match id {
        Some(id) if id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') => {
            Ok(id)
        }
        Some(_) => Err(Refusal::plain(StatusCode::NOT_FOUND, "no such connection")),
        None => Err(Refusal::plain(
            StatusCode::BAD_REQUEST,
            "connectionId is required",
        )),
    }
}

/// Whether the caller holds the connection (on any replica): 404 otherwise,
/// so someone else's connection ids are indistinguishable from unknown ones.
pub(super) async fn owned(app: &AppState, user: &str, id: &str) -> Result<(), Refusal> {
    match app.caps.owns(user, id).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(Refusal::plain(StatusCode::NOT_FOUND, "no such connection")),
        Err(e) => {
            tracing::warn!(error = %e, "connection registry unavailable");
            Err(Refusal::plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "connection registry unavailable; retry",
            ))
        }
    }
}

/// `PUT /api/realtime/stream?connectionId=` with `{"channels":[…]}`.
pub(super) async fn put_stream(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Refusal> {
    let (user, _) = authenticate_change(&app, &headers, &uri).await?;
    let id = connection_param(parse_query(raw.as_deref()).connection_id)?;
    let channels = match serde_json::from_slice::<ChannelsBody>(&body) {
        Ok(b) => b.channels,
        Err(e) => {
            return Err(Refusal::plain(
                StatusCode::BAD_REQUEST,
                &format!("body must be {{\"channels\":[…]}}: {e}"),
            ));
        }
    };
    let (filter, name) = match ChannelFilter::parse_list(&channels) {
        Ok(f) => f,
        Err(e) => return Err(Refusal::plain(StatusCode::BAD_REQUEST, &e.to_string())),
    };
    owned(&app, &user, &id).await?;
    let command = Command::Filter {
        connection_id: id.clone(),
        user_id: user,
        mask: filter.bits(),
    };
    match app.control.send(command).await {
        Ok(()) => Ok(json_response(
            StatusCode::OK,
            serde_json::json!({"connectionId": id, "channel": name}),
        )),
        Err(e) => {
            tracing::warn!(error = %e, "control channel unavailable");
            Err(Refusal::plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "control channel unavailable; retry",
            ))
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
pub(super) async fn delete_stream(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, Refusal> {
    let (user, _) = authenticate_change(&app, &headers, &uri).await?;
    let query = parse_query(raw.as_deref());
    let command = if query.connection_id.is_some() {
        let id = connection_param(query.connection_id)?;
        owned(&app, &user, &id).await?;
        Command::Close {
            connection_id: id,
            user_id: user,
        }
    } else {
        match query.organization_id {
            Some(_) => {
                let org = organization_param(query.organization_id)?;
                match app.caps.has_stream_in(&user, &org).await {
                    Ok(true) => {}
                    Ok(false) => return Ok(StatusCode::NO_CONTENT.into_response()),
                    Err(e) => {
                        tracing::warn!(error = %e, "connection registry unavailable");
                        return Err(Refusal::plain(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "connection registry unavailable; retry",
                        ));
                    }
                }
                Command::CloseAll {
                    user_id: user,
                    organization_id: org,
                }
            }
            None => {
                return Err(Refusal::plain(
                    StatusCode::BAD_REQUEST,
                    "connectionId or organizationId is required",
                ));
            }
        }
    };
    match app.control.send(command).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e) => {
            tracing::warn!(error = %e, "control channel unavailable");
            Err(Refusal::plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "control channel unavailable; retry",
            ))
        }
    }
}
