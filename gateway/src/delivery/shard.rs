//! A fan-out shard: one task per runtime worker, delivering the jobs the
//! [`super::Hub`] queued for the lanes it owns, in queue order.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use realtime_shared::event::{EventId, EventType};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::FeedMessage;
use super::feed::Lane;
use crate::trace::Fanout;

/// Jobs queued per shard, at most: past it the subscriber waits (Redis
/// buffers meanwhile, or drops the connection, which ends in a resync).
pub(super) const SHARD_QUEUE: usize = 4096;

/// One message for one lane of an organization's feed.
pub(super) struct Job {
    pub(super) lane: Arc<Lane>,
    pub(super) message: FeedMessage,
    /// The event's fan-out span, ended once every lane had the event.
    pub(super) trace: Option<Arc<TraceDone>>,
}

/// Ends a fan-out span when the last lane delivered the event (on drop),
/// with the number of streams reached.
pub(super) struct TraceDone {
    pub(super) fanout: Option<Fanout>,
    pub(super) connections: AtomicUsize,
    pub(super) event_type: EventType,
    pub(super) id: EventId,
    pub(super) broadcast: bool,
}

impl Drop for TraceDone {
    fn drop(&mut self) {
        if let Some(fanout) = self.fanout.take() {
            fanout.finish(
                self.event_type,
                &self.id,
                self.broadcast,
                self.connections.load(Ordering::Relaxed),
            );
        }
    }
}

/// Jobs a shard takes off its queue at once, at most: a lane with several
/// of them writes each parked stream its frames in one `writev`.
const SHARD_BATCH: usize = 64;

/// A shard: delivers its jobs in order until `shutdown`. It takes every
/// job queued (up to [`SHARD_BATCH`]) and gives each lane its own in one
/// call, in queue order: when the shard keeps up that is one job at a time;
/// when it falls behind, the frames a stream has pending leave in one
/// system call, which is what bounds the backlog (the cost of a delivery is
/// mostly the syscall, not the bytes).
pub(super) async fn fan_out(mut jobs: mpsc::Receiver<Job>, shutdown: CancellationToken) {
    let mut batch: Vec<Job> = Vec::with_capacity(SHARD_BATCH);
    let mut taken: Vec<bool> = Vec::with_capacity(SHARD_BATCH);
    let mut group: Vec<usize> = Vec::with_capacity(SHARD_BATCH);
    let mut messages: Vec<FeedMessage> = Vec::with_capacity(SHARD_BATCH);
    let mut reached: Vec<usize> = Vec::with_capacity(SHARD_BATCH);
    loop {
        let n = tokio::select! {
            _ = shutdown.cancelled() => return,
            n = jobs.recv_many(&mut batch, SHARD_BATCH) => n,
        };
        if n == 0 {
            return;
        }
        taken.clear();
        taken.resize(batch.len(), false);
        for first in 0..batch.len() {
            if taken[first] {
                continue;
            }
            group.clear();
            for (j, job) in batch.iter().enumerate().skip(first) {
                if !taken[j] && Arc::ptr_eq(&job.lane, &batch[first].lane) {
                    taken[j] = true;
                    group.push(j);
                }
            }
            messages.clear();
            messages.extend(group.iter().map(|&j| batch[j].message.clone()));
            reached.clear();
            reached.resize(group.len(), 0);
            batch[first].lane.deliver(&messages, &mut reached);
            for (&j, &count) in group.iter().zip(&reached) {
                if let Some(trace) = &batch[j].trace {
                    trace.connections.fetch_add(count, Ordering::Relaxed);
                }
            }
        }
        messages.clear();
        // Ends the spans of events every lane has had.
        batch.clear();
    }
}
