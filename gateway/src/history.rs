//! Reading the Redis histories for resume and catch-up: the organization's
//! stream and the broadcast stream, merged by id (ids are commit order).
//!
//! A reconnect storm (a replica drained or gone, its clients resuming here
//! at once, with one `Last-Event-ID` per organization) asks the same
//! questions thousands of times: pages and gap checks are shared by the
//! streams asking for the same (organization, position) together
//! ([`SharedReads`]: one `XRANGE` page per organization and position, not
//! one per client, and never an answer read before the question).

use std::sync::Arc;

use realtime_shared::event::{EventId, Scope};
use realtime_shared::history::newest_id;
use realtime_shared::keys::Keys;
use realtime_shared::redis_target::RedisConn;

use crate::frame::Frame;
use crate::shared_reads::SharedReads;

/// Pages being read, shared by (organization, after).
type PageReads = SharedReads<(Arc<str>, Option<EventId>), redis::RedisResult<Arc<Page>>>;

/// Gap checks being made, shared by (organization, last).
type GapReads = SharedReads<(Arc<str>, EventId), redis::RedisResult<bool>>;

/// Entries read per stream per page: bounds memory per catching-up client.
pub(crate) const PAGE: usize = 256;

type RawEntry = (String, Vec<(String, Vec<u8>)>);

#[derive(Clone)]
pub(crate) struct History {
    /// Reconnects by itself after a Redis restart.
    conn: RedisConn,
    keys: Keys,
    /// Pages being read, by (organization, after).
    pages: Arc<PageReads>,
    /// Gap checks being made, by (organization, last).
    gaps: Arc<GapReads>,
}

/// One page of a merged replay.
pub(crate) struct Page {
    pub frames: Vec<Arc<Frame>>,
    /// More entries may follow the last one.
    pub more: bool,
    /// The id of the last entry read, whether or not it parsed: where the
    /// next page starts.
    pub last: Option<EventId>,
}

impl History {
    pub(crate) fn new(conn: RedisConn, keys: Keys) -> Self {
        Self {
            conn,
            keys,
            pages: Arc::default(),
            gaps: Arc::default(),
        }
    }

    /// Frames with ids above `after` (all when `None`) from both streams,
    /// merged in id order, at most [`PAGE`] per stream. `more` is set when
    /// either stream may hold further entries; the caller asks again after
    /// the last frame it got. Shared with the streams asking for the same
    /// page together (see the module docs); the read is sent after the call.
    pub(crate) async fn page(
        &self,
        org: &str,
        after: Option<EventId>,
    ) -> redis::RedisResult<Arc<Page>> {
        self.pages
            .read((org.into(), after), || async {
                self.read_page(org, after).await.map(Arc::new)
            })
            .await
    }

    async fn read_page(&self, org: &str, after: Option<EventId>) -> redis::RedisResult<Page> {
        let org_key = self.keys.history(&Scope::Organization(org.to_owned()));
        let all_key = self.keys.history(&Scope::Broadcast);
        let start = match after {
            Some(id) => format!("({id}"),
            None => "-".to_owned(),
        };
        // Two commands sent together, not one pipeline: on a Redis Cluster
        // the two streams live in different slots.
        let read = |key: &str| {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("XRANGE");
            cmd.arg(key).arg(&start).arg("+").arg("COUNT").arg(PAGE);
            async move { cmd.query_async::<Vec<RawEntry>>(&mut conn).await }
        };
        let (a, b) = futures_util::future::try_join(read(&org_key), read(&all_key)).await?;
        let more = a.len() == PAGE || b.len() == PAGE;
        // When one stream filled its page, entries of the other beyond the
        // last id of the full one must wait for the next page (they may be
        // preceded by entries of the full stream not read yet).
        let limit = [(&a, a.len() == PAGE), (&b, b.len() == PAGE)]
            .iter()
            .filter(|(_, full)| *full)
            .filter_map(|(entries, _)| {
                entries
                    .last()
                    .and_then(|(id, _)| id.parse::<EventId>().ok())
            })
            .min();
        let mut frames = Vec::with_capacity(a.len() + b.len());
        let mut last = None;
        let mut unreadable = 0usize;
        for (id, fields) in a.iter().chain(b.iter()) {
            // Data, not an error: Redis stream ids always parse as event ids;
            // anything else could not be resumed from anyway.
            let Ok(id) = id.parse::<EventId>() else {
                continue;
            };
            if limit.is_some_and(|l| id > l) {
                continue;
            }
            last = last.max(Some(id));
            let frame = fields
                .iter()
                .find(|(f, _)| f == "e")
                .and_then(|(_, bytes)| Frame::parse(bytes).ok());
            match frame {
                Some(frame) => frames.push(Arc::new(frame)),
                None => unreadable += 1,
            }
        }
        if unreadable > 0 {
            tracing::warn!(
                org,
                unreadable,
                "skipping history entries that are not events"
            );
        }
        frames.sort_by_key(|f| f.id);
        Ok(Page { frames, more, last })
    }

    /// Whether resuming after `last` could skip events: the stream was
    /// trimmed (`entries-added` > `length`) and its oldest retained entry is
    /// above `last`, or something after `last` was deleted
    /// (`max-deleted-entry-id`), or `last` is not an id these histories
    /// could have produced (above both streams' last id, e.g. after Redis
    /// lost its data). At the exact trim boundary this answers "gap" where
    /// none was: the client refetches, which is safe.
    ///
    /// Only Redis's `ERR no such key` counts as a missing stream; any other
    /// error is returned, and callers retry or refuse transiently, never
    /// send `data.sync` on it.
    ///
    /// Shared with the streams asking about the same position together.
    pub(crate) async fn has_gap(&self, org: &str, last: EventId) -> redis::RedisResult<bool> {
        self.gaps
            .read((org.into(), last), || self.check_gap(org, last))
            .await
    }

    async fn check_gap(&self, org: &str, last: EventId) -> redis::RedisResult<bool> {
        let mut newest: Option<EventId> = None;
        for scope in [Scope::Organization(org.to_owned()), Scope::Broadcast] {
            let key = self.keys.history(&scope);
            let mut conn = self.conn.clone();
            let info: redis::RedisResult<redis::Value> = redis::cmd("XINFO")
                .arg("STREAM")
                .arg(&key)
                .query_async(&mut conn)
                .await;
            let info = match info {
                Ok(info) => info,
                // Nothing was ever written there (or Redis lost it): no
                // history of this scope, which the last-id check below
                // answers.
                Err(e) if is_no_such_key(&e) => continue,
                // Redis did not answer (reconnecting, `-LOADING` its AOF, a
                // timeout, an ACL refusal): not an empty history. Read as
                // one, a still-covered id would look above both streams and
                // the client would be told to refetch for nothing.
                Err(e) => return Err(e),
            };
            let fields = StreamInfo::new(&info);
            let trimmed = fields.number("entries-added") > fields.number("length");
            if trimmed
                && fields
                    .id("recorded-first-entry-id")
                    .is_some_and(|first| first > last)
            {
                return Ok(true);
            }
            if fields
                .id("max-deleted-entry-id")
                .is_some_and(|deleted| deleted > last)
            {
                return Ok(true);
            }
            // Unreadable: `None`, so the answer leans to "gap" (a refetch),
            // never to a resume that could skip events.
            newest = newest.max(fields.id("last-generated-id"));
        }
        Ok(newest.is_none_or(|newest| last > newest))
    }
}

/// Whether `e` is Redis's answer to `XINFO STREAM` on a key that does not
/// exist (`ERR no such key`): the one error that means "no history here".
fn is_no_such_key(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
        && e.detail()
            .is_some_and(|d| d.trim().eq_ignore_ascii_case("no such key"))
}

/// The flat key/value reply of `XINFO STREAM` (RESP2 array or RESP3 map).
struct StreamInfo<'a>(Vec<(&'a redis::Value, &'a redis::Value)>);

impl<'a> StreamInfo<'a> {
    fn new(v: &'a redis::Value) -> Self {
        match v {
            redis::Value::Array(items) => Self(
                items
                    .chunks(2)
                    .filter_map(|kv| match kv {
                        [k, v] => Some((k, v)),
                        _ => None,
                    })
                    .collect(),
            ),
            redis::Value::Map(pairs) => Self(pairs.iter().map(|(k, v)| (k, v)).collect()),
            _ => Self(Vec::new()),
        }
    }

    fn get(&self, name: &str) -> Option<&'a redis::Value> {
        self.0
            .iter()
            .find(|(k, _)| value_str(k).as_deref() == Some(name))
            .map(|(_, v)| *v)
    }

    fn id(&self, name: &str) -> Option<EventId> {
        value_str(self.get(name)?)?.parse().ok()
    }

    /// 0 when absent: `entries-added` and the id fields exist from Redis
    /// 7.0, which the ingestor already requires (its Redis function).
    fn number(&self, name: &str) -> u64 {
        match self.get(name) {
            Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
            Some(other) => value_str(other).and_then(|s| s.parse().ok()).unwrap_or(0),
            None => 0,
        }
    }
}

fn value_str(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

impl History {
    /// The newest id in either stream (`None` when both are empty).
    pub(crate) async fn newest(&self, org: &str) -> redis::RedisResult<Option<EventId>> {
        let org_key = self.keys.history(&Scope::Organization(org.to_owned()));
        let all_key = self.keys.history(&Scope::Broadcast);
        // Two commands, not one pipeline: see `page`.
        let (mut a, mut b) = (self.conn.clone(), self.conn.clone());
        let (org, all) = futures_util::future::try_join(
            newest_id(&mut a, &org_key),
            newest_id(&mut b, &all_key),
        )
        .await?;
        Ok(org.max(all))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::{ErrorKind, ServerErrorKind};

    fn server_error(kind: ServerErrorKind, detail: &str) -> redis::RedisError {
        redis::RedisError::from((ErrorKind::Server(kind), "server error", detail.to_owned()))
    }

    #[test]
    fn only_no_such_key_means_no_stream() {
        assert!(is_no_such_key(&server_error(
            ServerErrorKind::ResponseError,
            "no such key"
        )));
        // Redis loading its AOF, an ACL refusal, a dropped connection, a
        // timeout, another ERR: Redis did not say the stream is missing.
        assert!(!is_no_such_key(&server_error(
            ServerErrorKind::BusyLoading,
            "Redis is loading the dataset in memory"
        )));
        assert!(!is_no_such_key(&server_error(
            ServerErrorKind::NoPerm,
            "this user has no permissions to run the 'xinfo|stream' command"
        )));
        assert!(!is_no_such_key(&server_error(
            ServerErrorKind::ResponseError,
            "unknown subcommand"
        )));
        let io = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!is_no_such_key(&io));
        let timeout = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(!is_no_such_key(&timeout));
    }
}
