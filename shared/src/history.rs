//! Reads of a history stream (ARCHITECTURE.md §4) that both binaries make.

use redis::aio::ConnectionLike;

use crate::event::EventId;

/// The id of the newest entry of history stream `key` (`XREVRANGE key + -
/// COUNT 1`): `None` when the stream is empty or missing, or its newest id
/// is not an event id. The ingestor's cluster publisher names the last
/// broadcast with it on connecting; the gateway starts new streams, and
/// its cluster subscriber's broadcast order, from it.
pub async fn newest_id<C: ConnectionLike>(
    conn: &mut C,
    key: &str,
) -> redis::RedisResult<Option<EventId>> {
    let entries: Vec<(String, redis::Value)> = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(entries.first().and_then(|(id, _)| id.parse().ok()))
}
