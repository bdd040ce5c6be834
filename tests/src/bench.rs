//! What the benchmarks (`src/bin/bench_*`) share: their settings from the
//! environment, a process's CPU time and memory from `/proc`, Redis's CPU
//! time, quantiles, and the report a load process (`sse_load`) sends to
//! `bench_fanout`. One definition each, so that every bench reports the
//! same figure the same way.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What an `sse_load` process reports when asked (`report` on its stdin):
/// one JSON line `{"type":"report", …}`, written by `sse_load` and summed
/// over the processes by `bench_fanout`. Times are µs since the Unix epoch.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "report")]
pub struct LoadReport {
    /// Streams the process was asked to hold.
    pub clients: u64,
    /// Streams that received their connection message.
    pub connected: u64,
    /// Clients that gave up after their last failed attempt.
    pub gave_up: u64,
    /// Failed attempts (refused, non-200, timeout), retried or not.
    pub failed_attempts: u64,
    /// Streams the server ended after they were open.
    pub ended: u64,
    pub heartbeats: u64,
    /// Streams cut that opened again, and when the last did.
    pub resumed: u64,
    pub resumed_last_us: u64,
    /// Events whose id was not above the client's last one: repeats or out
    /// of order (never timed).
    pub not_newer: u64,
    /// Events received, and those of them timed (carrying the bench's
    /// clock), with the first and last receive of a timed one (0 if none).
    pub events: u64,
    pub timed: u64,
    pub first_us: u64,
    pub last_us: u64,
    /// Latency histograms as (bucket value in µs, count) pairs, buckets with
    /// a count only: from the bench's clock, and from the commit timestamp.
    pub send_hist: Vec<[u64; 2]>,
    pub commit_hist: Vec<[u64; 2]>,
    /// Per Unix second of receipt: [second, timed, over 10 ms, slowest µs].
    pub seconds: Vec<[u64; 4]>,
}

/// The `u64` in environment variable `name`, or `default` when it is unset
/// or not a number.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// CPU seconds a process has used so far, (user, system), from
/// `/proc/<pid>/stat`; zeros once it is gone.
pub fn cpu_split(pid: u32) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0.0, 0.0);
    };
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) / 100.0, ticks(12) / 100.0)
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let (user, system) = cpu_split(pid);
    user + system
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`), if the process
/// and the field are there.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
}

/// CPU seconds (user + system) Redis has used so far (`INFO cpu`), summed
/// over `nodes` (one server, or every node of a cluster).
pub async fn redis_cpu_seconds(nodes: &mut [redis::aio::MultiplexedConnection]) -> f64 {
    let mut total = 0.0;
    for node in nodes {
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .query_async(node)
            .await
            .unwrap_or_default();
        total += info
            .lines()
            .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
            .filter_map(|l| l.split_once(':')?.1.trim().parse::<f64>().ok())
            .sum::<f64>();
    }
    total
}

/// The `p` quantile (0..=1) of `sorted`, by nearest rank (the smallest
/// value at or above a share `p` of the samples); `None` when empty.
pub fn quantile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly on purpose
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(quantile(&sorted, 0.5), Some(ms(50)));
        assert_eq!(quantile(&sorted, 0.99), Some(ms(99)));
        assert_eq!(quantile(&sorted, 1.0), Some(ms(100)));
        assert_eq!(quantile(&sorted, 0.0), Some(ms(1)));
        // Rounded up: the 9.5th of 10 samples is the 10th.
        assert_eq!(quantile(&sorted[..10], 0.95), Some(ms(10)));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn a_load_report_reads_back_as_written_and_says_its_type() {
        let report = LoadReport {
            clients: 3,
            connected: 2,
            timed: 5,
            send_hist: vec![[1_000, 4], [2_000, 1]],
            seconds: vec![[1_796_000_000, 5, 1, 12_000]],
            ..LoadReport::default()
        };
        let line = serde_json::to_string(&report).unwrap();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["type"], "report");
        assert_eq!(serde_json::from_value::<LoadReport>(value).unwrap(), report);
    }

    #[test]
    fn this_process_has_used_cpu_and_memory() {
        let pid = std::process::id();
        // Spin until the clock ticks over (10 ms), so the count is above 0.
        let start = std::time::Instant::now();
        while cpu_seconds(pid) == 0.0 && start.elapsed() < Duration::from_secs(5) {}
        assert!(cpu_seconds(pid) > 0.0);
        assert!(status_kib(pid, "VmRSS").is_some_and(|kib| kib > 0));
        assert_eq!(status_kib(pid, "NoSuchField"), None);
    }
}
