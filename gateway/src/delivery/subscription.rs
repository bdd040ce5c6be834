//! A stream's hold on its organization's feed ([`Subscription`]): its
//! receiver while its task delivers, and the park/unpark calls of the
//! protocol in the `delivery` module docs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use realtime_shared::event::EventId;
use tokio::sync::{broadcast, watch};

use super::FeedMessage;
use super::feed::Lane;
use super::joined::Joined;
use super::outlet::{Outlet, Unparked};

/// A stream's hold on an organization's feed; dropping it releases the
/// Redis subscription when it was the last one on this replica.
///
/// A stream with an [`Outlet`] can park ([`Subscription::park`]): it gives
/// up its receiver and its lane writes its live frames straight to its
/// socket until the stream takes it back ([`Subscription::unpark`]) or the
/// lane hands it back. While parked, `rx` is `None`.
pub(crate) struct Subscription {
    joined: Arc<Joined>,
    channel: String,
    rx: Option<broadcast::Receiver<FeedMessage>>,
    ready: watch::Receiver<Option<Instant>>,
    /// The lane of the organization's feed this stream belongs to, for
    /// its life (counted in by `OrgFeed::join`, out on drop).
    lane: Arc<Lane>,
    outlet: Option<Arc<Outlet>>,
}

impl Subscription {
    /// Made by [`super::Hub::join`], which counted it in (in the channel's
    /// entry and in `lane`); `rx` is the lane's.
    pub(super) fn new(
        joined: Arc<Joined>,
        channel: String,
        rx: broadcast::Receiver<FeedMessage>,
        ready: watch::Receiver<Option<Instant>>,
        lane: Arc<Lane>,
    ) -> Self {
        Subscription {
            joined,
            channel,
            rx: Some(rx),
            ready,
            lane,
            outlet: None,
        }
    }

    /// Makes this stream able to park: the listener writes its body itself.
    pub(crate) fn set_outlet(&mut self, outlet: Arc<Outlet>) {
        self.outlet = Some(outlet);
    }

    pub(crate) fn outlet(&self) -> Option<&Arc<Outlet>> {
        self.outlet.as_ref()
    }

    /// The receiver (`None` while parked) and, when the stream could park
    /// but for the listener still writing, its outlet.
    pub(crate) fn receiver_and_waiting_outlet(
        &mut self,
    ) -> (
        Option<&mut broadcast::Receiver<FeedMessage>>,
        Option<&Outlet>,
    ) {
        let outlet = self
            .outlet
            .as_deref()
            .filter(|outlet| outlet.waits_for_listener());
        (self.rx.as_mut(), outlet)
    }

    pub(crate) fn is_parked(&self) -> bool {
        self.rx.is_none()
    }

    /// Parks the stream when it can: it has an outlet with a socket and its
    /// receiver holds nothing unread (checked under the lane's lock, so no
    /// frame falls between the receiver and the direct writes). `last_seen`
    /// travels with it. Returns whether it is parked.
    pub(crate) fn park(&mut self, last_seen: Option<EventId>) -> bool {
        let (Some(outlet), Some(rx)) = (&self.outlet, self.rx.take()) else {
            return self.rx.is_none();
        };
        match self.lane.park(outlet, rx, last_seen) {
            Ok(()) => true,
            Err(rx) => {
                self.rx = Some(rx);
                false
            }
        }
    }

    /// Takes the stream back (it is parked) with a fresh receiver. Returns
    /// the newest id the feed passed for it, and whether its place was lost
    /// (never expected; the stream then catches up from history).
    pub(crate) fn unpark(&mut self) -> (Option<EventId>, bool) {
        let back = match &self.outlet {
            Some(outlet) => self.lane.unpark(outlet),
            None => self.lane.lost(),
        };
        let Unparked {
            rx,
            last_seen,
            lost,
        } = back;
        self.rx = Some(rx);
        (last_seen, lost)
    }

    /// Waits until the lane hands the parked stream back (or, rarely, wakes
    /// it for nothing: unparking is right either way).
    pub(crate) async fn handed_back(&self) {
        match &self.outlet {
            Some(outlet) => outlet.handed_back().await,
            None => std::future::pending().await,
        }
    }

    /// When Redis confirmed the current subscription to the organization;
    /// `None` while it is down (see [`Self::ready`]).
    pub(crate) fn subscribed_since(&self) -> Option<Instant> {
        *self.ready.borrow()
    }

    /// Resolves once Redis confirmed the subscription (or at once when it
    /// already had) with the time it did: every event of the organization
    /// published since then reaches this replica, so a membership checked
    /// after it cannot have been revoked unseen. `None` if not confirmed
    /// within `timeout`.
    pub(crate) async fn ready(&mut self, timeout: Duration) -> Option<Instant> {
        match tokio::time::timeout(timeout, self.ready.wait_for(Option::is_some)).await {
            Ok(Ok(since)) => *since,
            _ => None,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let (Some(outlet), None) = (&self.outlet, &self.rx) {
            drop(self.lane.unpark(outlet));
        }
        self.lane.streams.fetch_sub(1, Ordering::Relaxed);
        self.joined.leave(&self.channel);
    }
}
