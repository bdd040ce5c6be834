//! The `sse_load` processes and their totals.

use super::*;
use realtime_tests::bench::LoadReport;

/// One `sse_load` process: its stdin for commands, its stdout for JSON
/// answers. Killed when dropped; it also exits when its stdin closes, so it
/// never outlives the bench.
pub(crate) struct LoadProcess {
    pub(crate) child: Child,
    pub(crate) stdin: ChildStdin,
    pub(crate) lines: Lines<BufReader<ChildStdout>>,
    pub(crate) clients: u64,
}

impl LoadProcess {
    pub(crate) fn spawn(
        s: &Settings,
        addr: &str,
        resume_addr: &str,
        first: u64,
        count: u64,
    ) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(binary_path("sse_load"))
            .args(["--addr", addr, "--secret", JWT_SECRET])
            .args(["--resume-addr", resume_addr])
            .args(["--first", &first.to_string(), "--count", &count.to_string()])
            .args([
                "--orgs",
                &s.orgs.to_string(),
                "--users",
                &s.users.to_string(),
            ])
            .args(["--concurrency", &s.concurrency.to_string()])
            .args(["--round-us", &s.round_us.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting sse_load")?;
        let stdin = child.stdin.take().context("sse_load stdin")?;
        let stdout = child.stdout.take().context("sse_load stdout")?;
        Ok(Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            clients: count,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub(crate) async fn send(&mut self, command: &str) -> anyhow::Result<()> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .context("writing to sse_load")?;
        self.stdin.flush().await.context("writing to sse_load")
    }

    /// The next JSON line of type `kind`, within `within`.
    pub(crate) async fn expect(&mut self, kind: &str, within: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .with_context(|| format!("sse_load did not answer {kind:?} within {within:?}"))?
                .context("reading sse_load")?
                .with_context(|| format!("sse_load exited before answering {kind:?}"))?;
            let Ok(value) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if value["type"] == kind {
                return Ok(value);
            }
        }
    }

    pub(crate) async fn request(&mut self, command: &str, kind: &str) -> anyhow::Result<Value> {
        self.send(command).await?;
        self.expect(kind, Duration::from_secs(30)).await
    }
}

/// The load processes' reports, summed.
#[derive(Default)]
pub(crate) struct Totals {
    pub(crate) connected: u64,
    pub(crate) gave_up: u64,
    pub(crate) ended: u64,
    /// Streams cut that opened again, when the last did (µs), and events
    /// not above a client's last id (repeats or out of order).
    pub(crate) resumed: u64,
    pub(crate) resumed_last_us: u64,
    pub(crate) not_newer: u64,
    pub(crate) events: u64,
    pub(crate) timed: u64,
    pub(crate) first_us: u64,
    pub(crate) last_us: u64,
    pub(crate) send: BTreeMap<u64, u64>,
    pub(crate) commit: BTreeMap<u64, u64>,
    /// Unix second → [timed, over 10 ms, max µs].
    pub(crate) seconds: BTreeMap<u64, [u64; 3]>,
}

impl Totals {
    pub(crate) fn add(&mut self, r: &LoadReport) {
        self.connected += r.connected;
        self.gave_up += r.gave_up;
        self.ended += r.ended;
        self.resumed += r.resumed;
        self.resumed_last_us = self.resumed_last_us.max(r.resumed_last_us);
        self.not_newer += r.not_newer;
        self.events += r.events;
        self.timed += r.timed;
        if r.timed > 0 {
            self.first_us = if self.first_us == 0 {
                r.first_us
            } else {
                self.first_us.min(r.first_us)
            };
            self.last_us = self.last_us.max(r.last_us);
        }
        for &[unix_second, timed, slow, max] in &r.seconds {
            let second = self.seconds.entry(unix_second).or_default();
            second[0] += timed;
            second[1] += slow;
            second[2] = second[2].max(max);
        }
        for (hist, map) in [
            (&r.send_hist, &mut self.send),
            (&r.commit_hist, &mut self.commit),
        ] {
            for &[value, count] in hist {
                *map.entry(value).or_default() += count;
            }
        }
    }
}

pub(crate) async fn collect(procs: &mut [LoadProcess]) -> anyhow::Result<Totals> {
    let mut totals = Totals::default();
    for p in procs.iter_mut() {
        let report = p.request("report", "report").await?;
        totals.add(&serde_json::from_value(report).context("sse_load's report")?);
    }
    Ok(totals)
}

/// The `p` quantile (0..=1) of a histogram of µs values, in ms.
pub(crate) fn quantile_ms(hist: &BTreeMap<u64, u64>, p: f64) -> f64 {
    let total: u64 = hist.values().sum();
    if total == 0 {
        return f64::NAN;
    }
    let rank = ((total as f64 * p).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (v, c) in hist {
        seen += c;
        if seen >= rank {
            return *v as f64 / 1000.0;
        }
    }
    f64::NAN
}

/// The `p` quantile of `sorted` in ms (NaN when empty), by the one
/// definition every bench uses (`realtime_tests::bench::quantile`).
pub(crate) fn quantile_ms_of(sorted: &[Duration], p: f64) -> f64 {
    realtime_tests::bench::quantile(sorted, p).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}
