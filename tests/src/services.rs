//! The Postgres and Redis servers shared by every test of one test process:
//! all the integration tests, which are one binary (`tests/tests/main.rs`).

use std::sync::OnceLock;

use crate::context::TestContext;
use crate::postgres::PostgresServer;
use crate::redis::RedisServer;
use crate::redis_cluster::RedisCluster;

/// One Postgres and one Redis for the whole test binary, each started on
/// first use. Tests isolate themselves on it through [`TestContext`] (own
/// database, slot, publication and key prefix); a test that stops, restarts
/// or breaks a server starts its own [`PostgresServer`] / [`RedisServer`]
/// instead.
///
/// Only plain processes and paths live here, no tokio object: every
/// `#[tokio::test]` has its own runtime, and a connection made in one
/// would die with it.
///
/// Statics are never dropped: the servers' watchdogs stop them when the
/// test process exits (see `watchdog.rs`).
#[derive(Debug)]
pub struct Services {
    postgres: OnceLock<PostgresServer>,
    redis: OnceLock<RedisServer>,
    redis_cluster: OnceLock<RedisCluster>,
}

/// The process-wide [`Services`].
pub fn shared() -> &'static Services {
    static SHARED: Services = Services {
        postgres: OnceLock::new(),
        redis: OnceLock::new(),
        redis_cluster: OnceLock::new(),
    };
    &SHARED
}

impl Services {
    /// The shared Postgres, started (blocking) on first use. Panics with the
    /// server's log tail if it cannot start.
    pub fn postgres(&self) -> &PostgresServer {
        self.postgres.get_or_init(|| {
            PostgresServer::start()
                .unwrap_or_else(|e| panic!("starting the shared Postgres: {e:#}"))
        })
    }

    /// The shared Redis, started (blocking) on first use.
    pub fn redis(&self) -> &RedisServer {
        self.redis.get_or_init(|| {
            RedisServer::start().unwrap_or_else(|e| panic!("starting the shared Redis: {e:#}"))
        })
    }

    /// The shared Redis Cluster (3 primaries, 1 replica each), started
    /// (blocking) on first use. Tests that fail nodes over or move slots
    /// start their own [`RedisCluster`].
    pub fn redis_cluster(&self) -> &RedisCluster {
        self.redis_cluster.get_or_init(|| {
            RedisCluster::start()
                .unwrap_or_else(|e| panic!("starting the shared Redis Cluster: {e:#}"))
        })
    }

    /// A fresh [`TestContext`] on the shared Postgres and the shared Redis
    /// Cluster (`REDIS_URL` = its seed list).
    pub async fn cluster_context(&'static self) -> TestContext {
        let (postgres, redis) =
            crate::context::blocking(move || (self.postgres(), self.redis_cluster().url())).await;
        TestContext::create(postgres, redis).await
    }

    /// A fresh [`TestContext`] on the shared servers; same as
    /// [`TestContext::new`].
    pub async fn context(&'static self) -> TestContext {
        let (postgres, redis) =
            crate::context::blocking(move || (self.postgres(), self.redis().url())).await;
        TestContext::create(postgres, redis).await
    }
}
