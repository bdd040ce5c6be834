//! Latency histograms and the per-client statistics sse_load reports.

use super::*;
use realtime_tests::bench::LoadReport;

/// Latencies in µs: 10 µs buckets below 100 ms, 1 ms buckets up to 60 s,
/// one overflow bucket.
pub(crate) struct Histogram {
    pub(crate) counts: Vec<u64>,
}

pub(crate) const FINE: u64 = 100_000;
pub(crate) const FINE_STEP: u64 = 10;
pub(crate) const COARSE_STEP: u64 = 1_000;
pub(crate) const COARSE_BUCKETS: u64 = 59_900;

impl Histogram {
    pub(crate) fn new() -> Self {
        Self {
            counts: vec![0; (FINE / FINE_STEP + COARSE_BUCKETS + 1) as usize],
        }
    }

    pub(crate) fn record(&mut self, us: u64) {
        let b = if us < FINE {
            us / FINE_STEP
        } else {
            FINE / FINE_STEP + ((us - FINE) / COARSE_STEP).min(COARSE_BUCKETS)
        };
        self.counts[b as usize] += 1;
    }

    /// The lower bound (µs) of bucket `b`.
    pub(crate) fn value(b: u64) -> u64 {
        if b < FINE / FINE_STEP {
            b * FINE_STEP
        } else {
            FINE + (b - FINE / FINE_STEP) * COARSE_STEP
        }
    }

    pub(crate) fn sparse(&self) -> Vec<[u64; 2]> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(b, c)| [Self::value(b as u64), *c])
            .collect()
    }

    pub(crate) fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
    }
}

/// Counters and histograms; one thread owns them.
pub(crate) struct Stats {
    /// Streams that received their connection message.
    pub(crate) connected: u64,
    /// Clients that gave up after `ATTEMPTS` failed attempts.
    pub(crate) gave_up: u64,
    /// Failed attempts (refused, non-200, timeout), retried or not.
    pub(crate) failed_attempts: u64,
    /// Streams the server ended after they were open.
    pub(crate) ended: u64,
    pub(crate) heartbeats: u64,
    /// Streams cut (`cut`) that opened again, and when the last did (µs).
    pub(crate) resumed: u64,
    pub(crate) resumed_last_us: u64,
    /// Events whose id was not above the client's last one: repeats or
    /// out of order (never timed).
    pub(crate) not_newer: u64,
    /// Event frames (`id:`) received since the last reset.
    pub(crate) events: u64,
    /// Of those, the ones carrying the bench's send time (timed).
    pub(crate) timed: u64,
    /// Wall-clock µs of the first and last timed event since the reset.
    pub(crate) first_us: u64,
    pub(crate) last_us: u64,
    pub(crate) send: Histogram,
    pub(crate) commit: Histogram,
    /// By second of the wall clock (of the read): timed events, how many of
    /// them took over `SLOW_US`, the slowest (µs). Shows whether a tail is
    /// a few stalls or spread over the run.
    pub(crate) seconds: BTreeMap<u64, [u64; 3]>,
}

/// The line between fast and slow in the per-second series.
pub(crate) const SLOW_US: u64 = 10_000;

pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The searches a message needs, built once.
pub(crate) struct Keys {
    pub(crate) description: Finder<'static>,
    pub(crate) timestamp: Finder<'static>,
    pub(crate) connection: Finder<'static>,
}

impl Keys {
    pub(crate) fn new() -> Self {
        Keys {
            description: Finder::new(b"\"description\":\""),
            timestamp: Finder::new(b"\"timestamp\":"),
            connection: Finder::new(b"\"type\":\"connection\""),
        }
    }
}

/// The unsigned integer right after the first `key` in `text`.
pub(crate) fn number_after(text: &[u8], key: &Finder<'_>) -> Option<u64> {
    let start = key.find(text)? + key.needle().len();
    let digits = &text[start..];
    let end = digits
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 || end > 19 {
        return None;
    }
    Some(
        digits[..end]
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}

impl Stats {
    pub(crate) fn new() -> Self {
        let mut stats = Stats {
            connected: 0,
            gave_up: 0,
            failed_attempts: 0,
            ended: 0,
            heartbeats: 0,
            resumed: 0,
            resumed_last_us: 0,
            not_newer: 0,
            events: 0,
            timed: 0,
            first_us: u64::MAX,
            last_us: 0,
            send: Histogram::new(),
            commit: Histogram::new(),
            seconds: BTreeMap::new(),
        };
        stats.reset();
        stats
    }

    pub(crate) fn reset(&mut self) {
        self.resumed = 0;
        self.resumed_last_us = 0;
        self.not_newer = 0;
        self.events = 0;
        self.timed = 0;
        self.heartbeats = 0;
        self.first_us = u64::MAX;
        self.last_us = 0;
        self.send.clear();
        self.commit.clear();
        self.seconds.clear();
    }

    /// One complete SSE message (without its blank line), read at `at_us`.
    /// Returns true for the connection message.
    pub(crate) fn message(&mut self, keys: &Keys, msg: &[u8], at_us: u64) -> bool {
        if msg.first() == Some(&b':') {
            self.heartbeats += 1;
            return false;
        }
        if !msg.starts_with(b"id: ") {
            return keys.connection.find(msg).is_some();
        }
        self.events += 1;
        let Some(sent_us) = number_after(msg, &keys.description) else {
            return false;
        };
        self.timed += 1;
        self.first_us = self.first_us.min(at_us);
        self.last_us = self.last_us.max(at_us);
        let took = at_us.saturating_sub(sent_us);
        self.send.record(took);
        let second = self.seconds.entry(at_us / 1_000_000).or_default();
        second[0] += 1;
        second[1] += u64::from(took > SLOW_US);
        second[2] = second[2].max(took);
        if let Some(commit_ms) = number_after(msg, &keys.timestamp) {
            self.commit.record(at_us.saturating_sub(commit_ms * 1000));
        }
        false
    }

    pub(crate) fn report(&self, clients: u64) -> LoadReport {
        LoadReport {
            clients,
            connected: self.connected,
            gave_up: self.gave_up,
            failed_attempts: self.failed_attempts,
            ended: self.ended,
            heartbeats: self.heartbeats,
            resumed: self.resumed,
            resumed_last_us: self.resumed_last_us,
            not_newer: self.not_newer,
            events: self.events,
            timed: self.timed,
            first_us: if self.first_us == u64::MAX {
                0
            } else {
                self.first_us
            },
            last_us: self.last_us,
            send_hist: self.send.sparse(),
            commit_hist: self.commit.sparse(),
            seconds: self
                .seconds
                .iter()
                .map(|(s, [n, slow, max])| [*s, *n, *slow, *max])
                .collect(),
        }
    }
}
