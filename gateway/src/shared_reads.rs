//! Reads shared by the streams that ask for the same thing at the same
//! time ([`SharedReads`]): when a replica drains or dies, thousands of its
//! clients come back on the others with the same `Last-Event-ID` per
//! organization, and each would otherwise send Redis its own `XINFO` and
//! `XRANGE` for the same answer.
//!
//! Why a read is shared only with those who asked *before it was sent*: a
//! resuming stream subscribes to its organization's feed first, then reads
//! history; an event is either in what it reads or reaches it live. A read
//! sent before a stream subscribed could miss an event published between
//! the two that the stream's receiver did not get either. So the first
//! caller for a key opens a *gathering* entry, lets every task that is
//! ready run once (`yield_now`: a storm's other resumes join then, and an
//! idle replica loses nothing), closes the entry and only then sends the
//! read; whoever arrives after that opens a new entry.
//!
//! Bounded: at most [`OPEN`] entries gather at once (past that a caller
//! reads alone), and an entry lives only while its first caller waits. No
//! lock is held across an await. If the first caller is dropped before its
//! read ends, those who joined read for themselves (their reads are sent
//! after they asked, which keeps the rule above).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

/// Keys gathering at once, at most.
pub(crate) const OPEN: usize = 4096;

/// Reads keyed by `K` giving `V`, shared by the callers that asked while
/// the first one gathered (see the module docs).
pub(crate) struct SharedReads<K, V> {
    /// Entries still gathering: joiners take a receiver of the answer.
    gathering: Mutex<HashMap<K, watch::Receiver<Option<V>>>>,
}

impl<K: Hash + Eq + Clone, V: Clone> Default for SharedReads<K, V> {
    fn default() -> Self {
        SharedReads {
            gathering: Mutex::new(HashMap::new()),
        }
    }
}

/// Closes a gathering entry if its first caller goes away while it is
/// still open.
struct Gathering<'a, K: Hash + Eq, V> {
    reads: &'a SharedReads<K, V>,
    key: Option<K>,
    rx: watch::Receiver<Option<V>>,
}

impl<K: Hash + Eq, V> Gathering<'_, K, V> {
    fn close(&mut self) {
        if let Some(key) = self.key.take() {
            let mut gathering = self.reads.lock();
            if gathering
                .get(&key)
                .is_some_and(|rx| rx.same_channel(&self.rx))
            {
                gathering.remove(&key);
            }
        }
    }
}

impl<K: Hash + Eq, V> Drop for Gathering<'_, K, V> {
    fn drop(&mut self) {
        self.close();
    }
}

impl<K: Hash + Eq, V> SharedReads<K, V> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, watch::Receiver<Option<V>>>> {
        self.gathering
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl<K: Hash + Eq + Clone, V: Clone> SharedReads<K, V> {
    /// The answer of `read` for `key`: one this caller sends, or that of a
    /// read another caller sends after this one asked.
    pub(crate) async fn read<F, Fut>(&self, key: K, read: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let joined = {
            let mut gathering = self.lock();
            match gathering.get(&key) {
                Some(rx) => Ok(rx.clone()),
                None if gathering.len() >= OPEN => Err(None),
                None => {
                    let (tx, rx) = watch::channel(None);
                    gathering.insert(key.clone(), rx.clone());
                    Err(Some((tx, rx)))
                }
            }
        };
        match joined {
            Ok(mut rx) => {
                // The first caller's answer; if it went away without one,
                // read alone (sent now, after this caller asked).
                if let Ok(answer) = rx.wait_for(Option::is_some).await
                    && let Some(answer) = answer.as_ref()
                {
                    return answer.clone();
                }
                read().await
            }
            Err(None) => read().await,
            Err(Some((tx, rx))) => {
                let mut open = Gathering {
                    reads: self,
                    key: Some(key),
                    rx,
                };
                tokio::task::yield_now().await;
                open.close();
                let answer = read().await;
                tx.send_replace(Some(answer.clone()));
                answer
            }
        }
    }

    /// Entries gathering now (for tests).
    #[cfg(test)]
    pub(crate) fn gathering(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Callers that ask together share one read; a caller that asks once
    /// the read was sent gets a read of its own (never an answer older
    /// than its question).
    #[tokio::test(flavor = "current_thread")]
    async fn callers_share_only_reads_sent_after_they_asked() {
        let reads: Arc<SharedReads<&'static str, u64>> = Arc::default();
        let sent = Arc::new(AtomicUsize::new(0));
        // The "data": a counter bumped after every read is sent, so an
        // answer says which read it came from.
        let read = |sent: Arc<AtomicUsize>| async move {
            let n = sent.fetch_add(1, Ordering::SeqCst) as u64;
            tokio::task::yield_now().await;
            n
        };
        let together: Vec<_> = (0..100)
            .map(|_| {
                let (reads, sent) = (reads.clone(), sent.clone());
                tokio::spawn(async move { reads.read("org", || read(sent)).await })
            })
            .collect();
        let mut answers = Vec::new();
        for t in together {
            answers.push(t.await.unwrap());
        }
        assert_eq!(sent.load(Ordering::SeqCst), 1, "one read for 100 callers");
        assert!(answers.iter().all(|&a| a == 0));
        assert_eq!(reads.gathering(), 0);
        // Another key: its own read.
        assert_eq!(reads.read("other", || read(sent.clone())).await, 1);
        assert_eq!(reads.gathering(), 0);
    }

    /// A caller that asks while a read is in flight (sent before it asked)
    /// does not get that read's answer: it sends its own.
    #[tokio::test(flavor = "current_thread")]
    async fn a_read_in_flight_is_not_joined() {
        let reads: Arc<SharedReads<&'static str, u64>> = Arc::default();
        let sent = Arc::new(tokio::sync::Notify::new());
        let gate = Arc::new(tokio::sync::Notify::new());
        let first = {
            let (reads, sent, gate) = (reads.clone(), sent.clone(), gate.clone());
            tokio::spawn(async move {
                reads
                    .read("org", || async move {
                        sent.notify_one();
                        gate.notified().await;
                        0
                    })
                    .await
            })
        };
        sent.notified().await;
        let second = {
            let reads = reads.clone();
            tokio::spawn(async move { reads.read("org", || async { 1 }).await })
        };
        // Joined to the first read, the second would wait for the gate:
        // a deadline turns that into a failure rather than a hang.
        let answer = tokio::time::timeout(std::time::Duration::from_secs(5), second)
            .await
            .expect("the second read was joined to one sent before it asked");
        assert_eq!(answer.unwrap(), 1, "an answer older than the question");
        gate.notify_one();
        assert_eq!(first.await.unwrap(), 0);
        assert_eq!(reads.gathering(), 0);
    }

    /// A joiner whose first caller is dropped mid-read reads alone, after
    /// it asked; the entry is gone either way.
    #[tokio::test(flavor = "current_thread")]
    async fn joiners_read_alone_when_the_first_caller_goes_away() {
        let reads: Arc<SharedReads<&'static str, u64>> = Arc::default();
        let first = {
            let reads = reads.clone();
            tokio::spawn(async move { reads.read("org", std::future::pending::<u64>).await })
        };
        let joiner = {
            let reads = reads.clone();
            tokio::spawn(async move { reads.read("org", || async { 7 }).await })
        };
        // Let both start: the first gathers, the joiner joins, the first
        // closes the entry and hangs in its read.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(reads.gathering(), 0);
        first.abort();
        assert_eq!(joiner.await.unwrap(), 7);
        // Dropped while still gathering: the entry goes with it.
        let mut gatherer = Box::pin(reads.read("org", std::future::pending::<u64>));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(gatherer.as_mut().poll(&mut cx).is_pending());
        assert_eq!(reads.gathering(), 1, "the gatherer opened its entry");
        drop(gatherer);
        assert_eq!(reads.gathering(), 0);
    }
}
