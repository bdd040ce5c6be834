//! Per-client-IP rate limits (tower_governor) on the public routes.

use super::*;

/// Which per-IP limiter refused a request.
#[derive(Clone, Copy)]
pub(super) enum Limited {
    /// A stream connect (`GET`, `HEAD`): counted as a refused connection.
    Connect,
    /// A `POST`, `PUT` or `DELETE`.
    Request,
}

/// `routes` with a per-client-IP limit on `methods` (tower_governor, keyed
/// by [`ClientIp`]): `rate` per second with `burst`, 429 with
/// `Retry-After` beyond; a `rate` of 0 leaves them unlimited. The limiter
/// runs before the handlers, so a refused request costs no I/O.
pub(super) fn limit_per_ip(
    routes: Router<Arc<AppState>>,
    client_ip: &ClientIp,
    rate: f64,
    burst: u32,
    methods: Vec<Method>,
    limited: Limited,
    stop: &CancellationToken,
) -> Router<Arc<AppState>> {
    if rate <= 0.0 {
        return routes;
    }
    let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
    let Some(config) = GovernorConfigBuilder::default()
        .period(period)
        .burst_size(burst.max(1))
        .methods(methods)
        .key_extractor(client_ip.clone())
        .finish()
    else {
        return routes;
    };
    let limiter = config.limiter().clone();
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    limiter.retain_recent();
                    limiter.shrink_to_fit();
                }
            }
        }
    });
    routes.layer(GovernorLayer::new(config).error_handler(move |e| match e {
        tower_governor::GovernorError::TooManyRequests { wait_time, .. } => match limited {
            Limited::Connect => too_many(
                "rate_limited",
                "too many new connections; slow down",
                wait_time.max(1),
            ),
            Limited::Request => {
                metrics::counter!(m::REJECTED, "reason" => "request_rate_limited").increment(1);
                let mut response = plain(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many requests; slow down",
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(wait_time.max(1)));
                response
            }
        },
        _ => reject(
            StatusCode::INTERNAL_SERVER_ERROR,
            "error",
            "client address unknown",
        ),
    }))
}
