//! Membership churn: one user per organization whose membership the
//! schedule removes and gives back, each change committed together with a
//! row of `oracle_membership_log` (a table no route publishes), so the
//! database says which `member.leave`/`member.join` events exist.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::TestContext;

/// The log table, created by the run's seed SQL.
pub const LOG_TABLE_SQL: &str = "CREATE TABLE oracle_membership_log (
    op bigint PRIMARY KEY, \"organizationId\" text NOT NULL, \"userId\" text NOT NULL, leave boolean NOT NULL);";

/// A churn user's time out of its organization, as the harness saw it.
#[derive(Debug, Clone)]
pub struct Window {
    pub user: String,
    /// The removal's commit returned.
    pub removed: Instant,
    /// The re-add was about to be sent (`None`: never re-added).
    pub readding: Option<Instant>,
}

/// The churn users (`users[n]` belongs to `orgs[n]`) and their windows.
#[derive(Debug)]
pub struct Churn {
    pub users: Vec<(String, String)>,
    windows: Mutex<Vec<Window>>,
    next_op: Mutex<i64>,
}

impl Churn {
    pub fn new(users: Vec<(String, String)>) -> Self {
        Self {
            users,
            windows: Mutex::default(),
            next_op: Mutex::new(0),
        }
    }

    /// Every window so far.
    pub fn windows(&self) -> Vec<Window> {
        self.windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Removes churn user `n` from its organization.
    pub async fn remove(&self, ctx: &TestContext, n: usize) {
        let user = &self.users[n].0;
        self.change(
            ctx,
            "DELETE FROM organization_members WHERE \"userId\" = $1 AND \"organizationId\" = $2",
            n,
            true,
        )
        .await;
        self.windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Window {
                user: user.clone(),
                removed: Instant::now(),
                readding: None,
            });
    }

    /// Gives churn user `n` its membership back.
    pub async fn add(&self, ctx: &TestContext, n: usize) {
        let user = &self.users[n].0;
        if let Some(window) = self
            .windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter_mut()
            .rev()
            .find(|w| &w.user == user && w.readding.is_none())
        {
            window.readding = Some(Instant::now());
        }
        self.change(
            ctx,
            "INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES ('m-' || $1 || '-' || $2, $1, $2)",
            n,
            false,
        )
        .await;
    }

    /// Runs `sql` (params: user, org) and the log row in one transaction
    /// until it surely committed: after a failure the log row says whether
    /// the commit happened.
    async fn change(&self, ctx: &TestContext, sql: &str, n: usize, leave: bool) {
        let (user, org) = &self.users[n];
        let op = {
            let mut next = self.next_op.lock().unwrap_or_else(PoisonError::into_inner);
            *next += 1;
            *next
        };
        let started = Instant::now();
        loop {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "membership change of {user} in {org} not committed within 120 s"
            );
            let client = super::writer::connect(ctx).await;
            let result = async {
                client.batch_execute("BEGIN").await?;
                client.execute(sql, &[user, org]).await?;
                client
                    .execute(
                        "INSERT INTO oracle_membership_log (op, \"organizationId\", \"userId\", leave) VALUES ($1, $2, $3, $4)",
                        &[&op, org, user, &leave],
                    )
                    .await?;
                client.batch_execute("COMMIT").await
            }
            .await;
            if result.is_ok() {
                return;
            }
            let check = super::writer::connect(ctx).await;
            if let Ok(rows) = check
                .query("SELECT 1 FROM oracle_membership_log WHERE op = $1", &[&op])
                .await
                && !rows.is_empty()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
