//! What the bench measures on the host: RSS, CPU, Redis CPU, the binaries' metrics.

use super::*;

pub(crate) use realtime_tests::bench::{cpu_seconds, cpu_split, redis_cpu_seconds};

/// Resident memory of a process in KiB (`VmRSS`).
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    realtime_tests::bench::status_kib(pid, "VmRSS")
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// A gateway metric's value from its `/metrics` (first sample of `name`).
pub(crate) async fn gateway_metric(admin: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The gateway's `realtime_gateway_commit_to_send_seconds` histogram:
/// (upper bound in s, cumulative count) per bucket.
pub(crate) const GATEWAY_LATENCY: &str = "realtime_gateway_commit_to_send_seconds";
pub(crate) const INGESTOR_LATENCY: &str = "realtime_ingestor_commit_to_publish_seconds";

/// A Prometheus histogram's cumulative buckets, as (upper bound, count).
pub(crate) async fn latency_buckets(admin: &str, histogram: &str) -> Vec<(f64, u64)> {
    let Ok(response) = reqwest::get(format!("http://{admin}/metrics")).await else {
        return Vec::new();
    };
    let text = response.text().await.unwrap_or_default();
    let prefix = format!("{histogram}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(prefix.as_str())?;
            let (le, count) = rest.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The bucket bound under which fraction `p` of the samples added between
/// `before` and `after` fall, in ms.
pub(crate) fn bucket_quantile_ms(before: &[(f64, u64)], after: &[(f64, u64)], p: f64) -> f64 {
    let count = |v: &[(f64, u64)], le: f64| v.iter().find(|(b, _)| *b == le).map_or(0, |(_, c)| *c);
    let total = after
        .last()
        .map_or(0, |(le, c)| c.saturating_sub(count(before, *le)));
    if total == 0 {
        return f64::NAN;
    }
    let rank = ((total as f64 * p).ceil() as u64).max(1);
    after
        .iter()
        .find(|(le, c)| c.saturating_sub(count(before, *le)) >= rank)
        .map_or(f64::NAN, |(le, _)| le * 1e3)
}

/// CPU time used so far by every process on the host, in seconds: the sum
/// over `/proc/<pid>/stat` of user + system time, plus the time of reaped
/// children (so a process that ends between two readings still counts).
/// Per-process times are exact (`/proc/stat`'s are sampled per tick and
/// miss short bursts).
pub(crate) fn host_busy_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut ticks = 0.0;
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        // utime, stime, cutime, cstime: fields 14 to 17.
        ticks += rest
            .split_whitespace()
            .skip(11)
            .take(4)
            .filter_map(|v| v.parse::<f64>().ok())
            .sum::<f64>();
    }
    ticks / 100.0
}
