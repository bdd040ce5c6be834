//! Waiting for a condition with a deadline, instead of sleeping.

use std::future::Future;
use std::panic::Location;
use std::time::Duration;

use tokio::time::Instant;

/// How often [`wait_until`] polls its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `condition` every [`POLL_INTERVAL`] until it returns `Some(value)`
/// and returns that value; panics naming `what`, the caller's location and
/// the elapsed time once `deadline` has passed.
///
/// A poll that itself hangs (say, a connection to a server that is down) is
/// cut off at the deadline too. Not an `async fn` so that `#[track_caller]`
/// works: the caller's location is taken before the future starts. Time is
/// tokio's, so the wait also ends under `tokio::time::pause()`.
///
/// ```ignore
/// let n = wait_until("3 events", Duration::from_secs(10), || async {
///     let len = history(&ctx).await.len();
///     (len >= 3).then_some(len)
/// })
/// .await;
/// ```
#[track_caller]
pub fn wait_until<F, Fut, T>(
    what: &str,
    deadline: Duration,
    mut condition: F,
) -> impl Future<Output = T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let caller = Location::caller();
    async move {
        let started = Instant::now();
        loop {
            let left = deadline.saturating_sub(started.elapsed());
            if let Ok(Some(value)) = tokio::time::timeout(left, condition()).await {
                return value;
            }
            if started.elapsed() >= deadline {
                panic!(
                    "timed out waiting until {what} (waited {:?}, deadline {deadline:?}) at {caller}",
                    started.elapsed()
                );
            }
            tokio::time::sleep(POLL_INTERVAL.min(deadline.saturating_sub(started.elapsed()))).await;
        }
    }
}
