//! Failed publish-key attempts per client IP (`POST /api/realtime/publish`
//! with a wrong Bearer key).
//!
//! Each client key holds a count of recent failures that drains by one
//! every `period` (a leaky bucket kept as one instant, GCRA style). While
//! the count is at `allowed`, the client's publish requests are refused
//! with 429 *before* the key is compared, so a locked-out client learns
//! nothing about further guesses, not even from a right one. A right key
//! leaves the count alone: one client's failures never lock out another.
//!
//! Memory is bounded: entries whose count has drained are dropped as the
//! table fills, and at [`MAX_CLIENTS`] live entries new clients are not
//! tracked (their guesses are still subject to the per-IP request limit,
//! and a 32-byte key is not found by guessing).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most clients tracked at once.
pub(crate) const MAX_CLIENTS: usize = 100_000;

pub(crate) struct Strikes {
    allowed: u32,
    period: Duration,
    /// Per client: when its count will have drained to zero.
    clear_at: Mutex<HashMap<IpAddr, Instant>>,
}

impl Strikes {
    /// `allowed` failures per client (at least 1), one forgotten per `period`.
    pub(crate) fn new(allowed: u32, period: Duration) -> Self {
        Strikes {
            allowed: allowed.max(1),
            period: period.max(Duration::from_millis(1)),
            clear_at: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Instant>> {
        self.clear_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Err(wait)` while `client` has used up its failures: how long until
    /// it may try again.
    pub(crate) fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let Some(clear_at) = self.lock().get(&client).copied() else {
            return Ok(());
        };
        // `allowed` failures outstanding = clear_at - now > (allowed - 1) * period.
        let outstanding = clear_at.saturating_duration_since(now);
        let free_at = self.period * (self.allowed - 1);
        match outstanding.checked_sub(free_at) {
            Some(wait) if !wait.is_zero() => Err(wait),
            _ => Ok(()),
        }
    }

    /// Counts one failure of `client`.
    pub(crate) fn fail(&self, client: IpAddr, now: Instant) {
        let mut table = self.lock();
        if table.len() >= MAX_CLIENTS && !table.contains_key(&client) {
            table.retain(|_, clear_at| *clear_at > now);
            if table.len() >= MAX_CLIENTS {
                tracing::warn!(
                    clients = table.len(),
                    "too many clients with failed publish keys to track; not counting this one"
                );
                return;
            }
        }
        let clear_at = table.entry(client).or_insert(now);
        *clear_at = (*clear_at).max(now) + self.period;
    }

    /// Drops the clients whose failures have all drained (called
    /// periodically so the table holds only recent offenders).
    pub(crate) fn forget_drained(&self, now: Instant) {
        let mut table = self.lock();
        table.retain(|_, clear_at| *clear_at > now);
        table.shrink_to_fit();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_after_the_allowed_failures_until_one_drains() {
        let s = Strikes::new(3, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(s.check(ip, t0).is_ok());
            s.fail(ip, t0);
        }
        let wait = s.check(ip, t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(60));
        assert!(
            s.check(other, t0).is_ok(),
            "one client never locks out another"
        );
        let later = t0 + Duration::from_secs(30);
        assert_eq!(s.check(ip, later).unwrap_err(), Duration::from_secs(30));
        // One failure drained: one more try, and a failure locks again.
        let drained = t0 + Duration::from_secs(60);
        assert!(s.check(ip, drained).is_ok());
        s.fail(ip, drained);
        assert!(s.check(ip, drained).is_err());
        // All drained: forgotten.
        s.forget_drained(drained + Duration::from_secs(180));
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn the_table_is_bounded() {
        let s = Strikes::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..(MAX_CLIENTS as u32 + 10) {
            s.fail(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert_eq!(s.len(), MAX_CLIENTS);
        // Once the old entries have drained, new clients are tracked again.
        let later = t0 + Duration::from_secs(61);
        s.fail("198.51.100.1".parse().unwrap(), later);
        assert_eq!(s.len(), 1);
    }
}
