//! A phase's figures and the report printed at the end.

use super::*;

/// A storm's outcome: streams cut at once, how many opened again and how
/// long until the last did, events a client got twice or out of order.
pub(crate) struct Storm {
    pub(crate) cut: u64,
    pub(crate) resumed: u64,
    pub(crate) seconds: f64,
    pub(crate) repeated: u64,
}

pub(crate) struct Phase {
    pub(crate) clients: u64,
    pub(crate) processes: usize,
    pub(crate) connect_seconds: f64,
    pub(crate) streams_reported: Option<f64>,
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_idle_kib: u64,
    pub(crate) added: u64,
    pub(crate) written: u64,
    pub(crate) write_rate: f64,
    pub(crate) expected: u64,
    pub(crate) delivered: u64,
    pub(crate) window_s: f64,
    pub(crate) send_p50: f64,
    pub(crate) send_p99: f64,
    pub(crate) send_max: f64,
    pub(crate) commit_p50: f64,
    pub(crate) commit_p99: f64,
    pub(crate) insert_p50: f64,
    pub(crate) insert_p99: f64,
    pub(crate) gateway_p50: f64,
    pub(crate) gateway_p99: f64,
    pub(crate) ingestor_p50: f64,
    pub(crate) ingestor_p99: f64,
    pub(crate) host_cpu: f64,
    pub(crate) gateway_cpu: f64,
    pub(crate) gateway_sys: f64,
    pub(crate) load_cpu: f64,
    pub(crate) ingestor_cpu: f64,
    pub(crate) redis_cpu: f64,
    pub(crate) rss_after_kib: u64,
    pub(crate) ended: u64,
    pub(crate) gave_up: u64,
    pub(crate) storm: Option<Storm>,
    /// Events not above a client's last id (repeats or out of order).
    pub(crate) not_newer: u64,
    /// Per second of the phase: % of deliveries over 10 ms, slowest (ms).
    pub(crate) seconds: Vec<(f64, f64)>,
}

pub(crate) fn kib_per(delta_kib: i64, n: u64) -> f64 {
    delta_kib as f64 * 1024.0 / 1000.0 / n as f64
}

pub(crate) fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

pub(crate) fn print_report(
    s: &Settings,
    host_before: f64,
    rss_baseline: u64,
    max_clients: u64,
    phases: &[Phase],
) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "## bench-fanout, case {} ({cores} cores, {} gateway replica(s), everything on one host)",
        s.case.name(),
        s.replicas
    );
    println!();
    println!(
        "`make bench-fanout` (release ingestor and gateway, then `cargo run --release -p realtime-tests --bin bench_fanout`) with \
         BENCH_CASE={} BENCH_CLIENTS={} BENCH_ORGS={} BENCH_USERS={} BENCH_RATE={} BENCH_SECONDS={} BENCH_PER_PROCESS={} BENCH_CLIENT_ROUND_US={} BENCH_WARMUP_SECONDS={}",
        s.case.name(),
        s.phases
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(","),
        s.orgs,
        s.users,
        s.rate,
        s.seconds,
        s.per_process,
        s.round_us,
        s.warmup
    );
    println!(
        "clients spread evenly over {} organizations ({} users each), up to {max_clients} streams in `sse_load` processes of at most {}; \
         host CPU busy before the bench: {host_before:.2} cores",
        s.orgs, s.users, s.per_process
    );
    println!();
    println!(
        "| clients | sse_load processes | gateway RSS, idle | RSS per idle connection (clients added) | RSS per idle connection (0→N) |"
    );
    println!("|---|---|---|---|---|");
    println!("| 0 | 0 | {:.1} MB | | |", mb(rss_baseline));
    for p in phases {
        println!(
            "| {} | {} | {:.1} MB | {:.1} KB (+{}) | {:.1} KB |",
            p.clients,
            p.processes,
            mb(p.rss_idle_kib),
            kib_per(p.rss_idle_kib as i64 - p.rss_before_kib as i64, p.added),
            p.added,
            kib_per(p.rss_idle_kib as i64 - rss_baseline as i64, p.clients),
        );
    }
    println!();
    println!(
        "| clients | events/s written | deliveries/s | delivered / expected | latency p50 | p99 | max | by commit `timestamp` p50 / p99 | ingestor commit→publish p50 / p99 | gateway commit→send p50 / p99 | INSERT round trip p50 / p99 | CPU cores: gateway / sse_load / ingestor / Redis / rest of host | gateway RSS after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for p in phases {
        let rate = if p.window_s > 0.0 {
            p.delivered as f64 / p.window_s
        } else {
            f64::NAN
        };
        println!(
            "| {} | {:.0} | {rate:.0} | {} / {} | {:.2} ms | {:.2} ms | {:.1} ms | {:.0} / {:.0} ms | ≤ {} / ≤ {} ms | ≤ {} / ≤ {} ms | {:.2} / {:.2} ms | {:.2} / {:.2} / {:.2} / {:.2} / {:.2} | {:.1} MB |",
            p.clients,
            p.write_rate,
            p.delivered,
            p.expected,
            p.send_p50,
            p.send_p99,
            p.send_max,
            p.commit_p50,
            p.commit_p99,
            p.ingestor_p50,
            p.ingestor_p99,
            p.gateway_p50,
            p.gateway_p99,
            p.insert_p50,
            p.insert_p99,
            p.gateway_cpu,
            p.load_cpu,
            p.ingestor_cpu,
            p.redis_cpu,
            p.host_cpu - p.gateway_cpu - p.load_cpu - p.ingestor_cpu - p.redis_cpu,
            mb(p.rss_after_kib),
        );
    }
    println!();
    for p in phases {
        println!(
            "- {} clients: opened in {:.1} s, the gateway's `realtime_gateway_connections` says {}; {} events written; {} streams ended early, {} never opened",
            p.clients,
            p.connect_seconds,
            p.streams_reported
                .map_or_else(|| "?".to_owned(), |v| format!("{v:.0}")),
            p.written,
            p.ended,
            p.gave_up
        );
    }
    for p in phases {
        let per_delivery_us =
            p.gateway_cpu * p.written as f64 / p.write_rate.max(1.0) / p.delivered.max(1) as f64
                * 1e6;
        println!(
            "- {} clients: gateway CPU {:.1} µs per delivery, {:.0}% of it in the kernel; Redis CPU {:.1} µs per event written ({})",
            p.clients,
            per_delivery_us,
            100.0 * p.gateway_sys / p.gateway_cpu.max(1e-9),
            p.redis_cpu / p.write_rate.max(1.0) * 1e6,
            if s.case == Case::Cluster {
                "summed over the cluster's 6 nodes"
            } else {
                "one server"
            }
        );
    }
    println!(
        "- latency: the bench's clock just before it sends the INSERT → the load client reading the frame off its socket \
         (µs, wall clock, same host): INSERT + commit + ingestor + Redis + gateway + client read, so an upper bound on \
         commit→client by about the INSERT round trip, and including up to one client read round ({round}). By commit `timestamp`: receive − the event's commit time (whole ms, \
         up to 1 ms high). Ingestor commit→publish and gateway commit→send: their own histograms \
         (commit time → PUBLISHed to Redis; commit time → frame written or queued for the socket), as Prometheus bucket bounds",
        round = if s.round_us == 0 {
            "0: clients read as data arrives".to_owned()
        } else {
            format!(
                "{} µs, during which a client sleeps rather than being woken by each frame",
                s.round_us
            )
        }
    );
    println!(
        "- deliveries/s: timed events received by all clients / (last − first receive); CPU: CPU seconds per second of the \
         writing phase; rest of host: every other process on the machine (Postgres, this bench's writer, \
         and anything else running: above ~0.3 cores the host was shared and the latencies are not this code's alone)"
    );
    println!(
        "- RSS per idle connection: growth of the gateway's VmRSS from before a phase's clients connected to 3 s after, / the \
         clients added (later phases start after the previous phase's traffic); 0→N: from the gateway with no client; KB = 1000 bytes"
    );
    for p in phases {
        let series: Vec<String> = p
            .seconds
            .iter()
            .map(|(slow, max)| format!("{slow:.0}% ({max:.0})"))
            .collect();
        println!(
            "- {} clients, each second of the phase: share of deliveries over 10 ms (slowest, ms): {}",
            p.clients,
            series.join(", ")
        );
    }
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    for p in phases {
        println!(
            "- {} clients: {} events not above the client's last id (repeated or out of order)",
            p.clients, p.not_newer
        );
        if let Some(storm) = &p.storm {
            let lost = p.expected.saturating_sub(p.delivered);
            println!(
                "- storm at {} clients: {} streams cut at once, {} resumed on the other replica, the last {:.2} s after the cut; \
                 {lost} events lost, {} repeated; target all resumed within 10 s with 0 lost and 0 repeated: {}",
                p.clients,
                storm.cut,
                storm.resumed,
                storm.seconds,
                storm.repeated,
                verdict(
                    storm.resumed == storm.cut
                        && storm.seconds < 10.0
                        && lost == 0
                        && storm.repeated == 0
                )
            );
        }
    }
    for p in phases {
        let per_conn = kib_per(p.rss_idle_kib as i64 - p.rss_before_kib as i64, p.added);
        let latency = match s.case.p99_target_ms() {
            Some(target) => format!(
                "commit→client p99 < {target:.0} ms {} ({:.2} ms)",
                verdict(p.send_p99 < target),
                p.send_p99
            ),
            None => format!("commit→client p99 {:.2} ms (no target)", p.send_p99),
        };
        println!(
            "- targets at {} clients: {latency}; < 20 KB RSS per idle connection {} ({per_conn:.1} KB); every delivery {}",
            p.clients,
            verdict(per_conn < 20.0),
            verdict(p.delivered == p.expected)
        );
    }
}
