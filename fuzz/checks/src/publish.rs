//! Publish-body validation (`POST /api/realtime/publish` and a member's
//! `POST /api/realtime/stream`): any body is accepted or refused with a
//! reason, and what is accepted is accepted again by the ingestor's own
//! rules (`Draft::from_message`), so an accepted publish is never skipped.

use realtime_gateway::publishing::{activity_message, api_message};
use realtime_shared::message::Draft;

pub fn check(data: &[u8]) {
    // The first byte picks the endpoint; the rest is the body.
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let content = if which & 1 == 0 {
        api_message(body)
    } else {
        activity_message("org_fuzz", "user_fuzz", body)
    };
    if let Ok(content) = content
        && let Err(e) = Draft::from_message(content.as_bytes())
    {
        panic!("accepted body refused by the ingestor: {e}: {content}");
    }
}
