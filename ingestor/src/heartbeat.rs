//! The slot's companion task, on an ordinary SQL connection:
//! - writes `pg_logical_emit_message(false, 'realtime-heartbeat', '')` every
//!   `REALTIME_WAL_HEARTBEAT`, so the stream sees a fresh WAL position that
//!   the session can acknowledge even when no published table changes (an
//!   idle publication must not pin WAL);
//! - reads the slot's `confirmed_flush_lsn` and lag into the metrics.
//!
//! It reconnects on its own; its failures never stop replication.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics as m;
use crate::session::HEARTBEAT_PREFIX;
use crate::setup;

const MONITOR_INTERVAL: Duration = Duration::from_secs(5);

pub(crate) struct Heartbeat {
    pub database_url: String,
    pub slot: String,
    pub interval: Duration,
    pub io_timeout: Duration,
}

impl Heartbeat {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            match setup::connect(&self.database_url, self.io_timeout).await {
                Ok(client) => {
                    if let Err(e) = self.beat(&client, &shutdown).await {
                        tracing::debug!(error = %e, "heartbeat connection failed; reconnecting");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "heartbeat cannot connect; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(MONITOR_INTERVAL) => {}
            }
        }
    }

    async fn beat(
        &self,
        client: &tokio_postgres::Client,
        shutdown: &CancellationToken,
    ) -> Result<(), tokio_postgres::Error> {
        let mut heartbeat = tokio::time::interval(self.interval);
        let mut monitor = tokio::time::interval(MONITOR_INTERVAL.min(self.interval));
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                _ = heartbeat.tick() => {
                    client
                        .execute("SELECT pg_logical_emit_message(false, $1, '')", &[&HEARTBEAT_PREFIX])
                        .await?;
                }
                _ = monitor.tick() => self.observe_slot(client).await?,
            }
        }
    }

    async fn observe_slot(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<(), tokio_postgres::Error> {
        let row = client
            .query_opt(
                "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::float8, \
                        (pg_current_wal_lsn() - confirmed_flush_lsn)::float8 \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await?;
        if let Some(row) = row {
            if let Some(confirmed) = row.get::<_, Option<f64>>(0) {
                metrics::gauge!(m::CONFIRMED_FLUSH_LSN).set(confirmed);
            }
            if let Some(lag) = row.get::<_, Option<f64>>(1) {
                metrics::gauge!(m::SLOT_LAG_BYTES).set(lag);
            }
        }
        Ok(())
    }
}
