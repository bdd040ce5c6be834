//! Who gets a frame: the one rule both delivery paths apply, the feed
//! writing to a parked stream's socket and a stream's own task.
//!
//! In order:
//! 1. **Revocation** (a `member.leave` of the stream's user, or one naming
//!    nobody) is looked at before the stream's position: a leave at or
//!    below it still counts. The membership may have been checked before
//!    the leave was committed and the position taken after (ARCHITECTURE.md §7,
//!    invariant 1).
//! 2. **Duplicate**: at or below the newest id the stream has passed (a
//!    fresh receiver after a hand-back, a catch-up, a resume repeat frames
//!    the stream already had).
//! 3. **Target and filter**: an event for one user goes to that user's
//!    streams only; the stream's channel filter (changed by PUT at any
//!    time) drops the types it does not want. Either way the position moves
//!    past the frame.
//!
//! What the two paths do with a [`Verdict::Revoke`] differs and is theirs:
//! the feed hands a parked stream back without moving it (its task then
//! sees the same frame from a fresh receiver); the task acts on it (see
//! `Connection::offer` in `crate::connection`).

use realtime_shared::event::EventId;

use crate::channels::ChannelFilter;
use crate::frame::{Frame, Leave};

/// What a stream does with one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// At or below the stream's position: it has passed this already.
    Duplicate,
    /// Not for this stream (another user's, or filtered out): nothing is
    /// sent; the position moves past it.
    Skip,
    /// Send it; the position moves to it.
    Send,
    /// The frame ends or questions the stream's membership; the position
    /// is left where it was.
    Revoke(Revocation),
}

/// Why a frame revokes a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Revocation {
    /// The stream's own user left the organization: the stream ends. The
    /// leave itself is still offered to the client ([`admit`]).
    Member,
    /// A leave naming nobody ([`Leave::Unknown`]): the membership is
    /// checked again before anything after it is sent; the leave itself is
    /// never forwarded.
    Unknown,
}

/// The rule: what the stream of `user` with `filter`, positioned at
/// `last_seen`, does with `frame`. Moves `last_seen` to the frame on
/// [`Verdict::Skip`] and [`Verdict::Send`] only.
pub(crate) fn decide(
    frame: &Frame,
    last_seen: &mut Option<EventId>,
    user: &str,
    filter: ChannelFilter,
) -> Verdict {
    if frame.revokes(user) {
        // Its user's own leave, or a leave naming nobody.
        let why = match frame.leave() {
            Some(Leave::Unknown) => Revocation::Unknown,
            _ => Revocation::Member,
        };
        return Verdict::Revoke(why);
    }
    admit(frame, last_seen, user, filter)
}

/// The rule past revocation (steps 2 and 3): [`Verdict::Duplicate`],
/// [`Verdict::Skip`] or [`Verdict::Send`]. [`decide`] ends here for every
/// frame that revokes nothing; a stream's task calls it for its own user's
/// leave, which the client is sent before the stream ends.
pub(crate) fn admit(
    frame: &Frame,
    last_seen: &mut Option<EventId>,
    user: &str,
    filter: ChannelFilter,
) -> Verdict {
    if last_seen.is_some_and(|last| frame.id <= last) {
        return Verdict::Duplicate;
    }
    *last_seen = Some(frame.id);
    let for_me = frame.user_id.as_deref().is_none_or(|u| u == user);
    if for_me && filter.passes(frame.event_type) {
        Verdict::Send
    } else {
        Verdict::Skip
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: u64, event_type: &str, user: Option<&str>, member: Option<&str>) -> Frame {
        let user = user.map_or(String::new(), |u| format!(r#","userId":"{u}""#));
        let member = member.map_or("null".to_owned(), |m| format!(r#""{m}""#));
        let env = format!(
            r#"{{"event":{{"id":"{id}-0","type":"{event_type}","timestamp":1,"source":"postgres","version":"1.0","organizationId":"o","payload":{{"memberId":{member}}}}}{user}}}"#
        );
        Frame::parse(env.as_bytes()).unwrap()
    }

    fn at(id: u64) -> Option<EventId> {
        Some(EventId::new(id, 0))
    }

    #[test]
    fn duplicates_leave_the_position_alone() {
        let f = frame(5, "property.update", None, None);
        for last in [at(5), at(6)] {
            let mut seen = last;
            assert_eq!(
                decide(&f, &mut seen, "u1", ChannelFilter::ALL),
                Verdict::Duplicate
            );
            assert_eq!(seen, last);
        }
    }

    #[test]
    fn skipped_and_sent_frames_move_the_position() {
        let mine = frame(5, "property.update", Some("u1"), None);
        let theirs = frame(6, "property.update", Some("u2"), None);
        let mut seen = at(4);
        assert_eq!(
            decide(&mine, &mut seen, "u1", ChannelFilter::ALL),
            Verdict::Send
        );
        assert_eq!(seen, at(5));
        assert_eq!(
            decide(&theirs, &mut seen, "u1", ChannelFilter::ALL),
            Verdict::Skip
        );
        assert_eq!(seen, at(6));
        let (property_only, _) = ChannelFilter::parse(Some("property")).unwrap();
        let member = frame(7, "member.join", None, Some("u3"));
        assert_eq!(
            decide(&member, &mut seen, "u1", property_only),
            Verdict::Skip
        );
        assert_eq!(seen, at(7));
    }

    #[test]
    fn revocation_comes_before_the_position() {
        let own_leave = frame(3, "member.leave", None, Some("u1"));
        let unknown = frame(3, "member.leave", None, None);
        let other_leave = frame(3, "member.leave", None, Some("u2"));
        let mut seen = at(9);
        assert_eq!(
            decide(&own_leave, &mut seen, "u1", ChannelFilter::ALL),
            Verdict::Revoke(Revocation::Member)
        );
        assert_eq!(
            decide(&unknown, &mut seen, "u1", ChannelFilter::ALL),
            Verdict::Revoke(Revocation::Unknown)
        );
        assert_eq!(seen, at(9));
        assert_eq!(
            decide(&other_leave, &mut seen, "u1", ChannelFilter::ALL),
            Verdict::Duplicate
        );
        // The leave itself, past revocation, is admitted like any frame.
        let mut seen = at(2);
        assert_eq!(
            admit(&own_leave, &mut seen, "u1", ChannelFilter::ALL),
            Verdict::Send
        );
        assert_eq!(seen, at(3));
    }
}
