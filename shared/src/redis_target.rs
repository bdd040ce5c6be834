//! Where Redis is: one node, or a Redis Cluster (ARCHITECTURE.md §4, *Redis
//! Cluster*). A `REDIS_URL` holding several comma-separated seed URLs
//! (`redis://a:7000,redis://b:7001,…`) means a cluster; one URL means one
//! node, the default.
//!
//! Both binaries open every Redis connection through a [`RedisTarget`], so
//! TLS, the CA bundle and the ACL user apply the same way in both modes, and
//! the callers differ only where Redis Cluster itself differs: sharded
//! pub/sub (`SPUBLISH`/`SSUBSCRIBE`), one hash slot per script call or
//! pipeline, and `SCAN` per primary.
//!
//! [`RedisConn`] is the one command-connection type the callers hold: a
//! `ConnectionManager` or `MultiplexedConnection` on one node, a
//! `ClusterConnection` on a cluster (which follows `-MOVED`/`-ASK`,
//! refreshes its slot map and reconnects by itself).

use std::path::Path;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ConnectionAddr, ConnectionInfo, RedisFuture, TlsCertificates, Value};

use crate::redis_conn::{RedisConfigError, describe_url_error, read_ca, redis_client};

/// One node or a cluster; cheap to clone.
#[derive(Clone)]
pub enum RedisTarget {
    Single(redis::Client),
    Cluster(ClusterSeeds),
}

/// A cluster's seed nodes and TLS roots: every cluster client (commands,
/// publishing, pub/sub with its own push channel) is built from them.
#[derive(Clone)]
pub struct ClusterSeeds {
    nodes: Vec<ConnectionInfo>,
    root_cert: Option<Vec<u8>>,
}

impl RedisTarget {
    /// Parses `REDIS_URL` (one URL, or several comma-separated seed URLs for
    /// a cluster) and the CA bundle. Nothing is connected; a bad URL or CA
    /// fails here, naming the variable and never quoting the URL.
    pub fn parse(url: &str, ca: Option<&Path>) -> Result<Self, RedisConfigError> {
        let urls: Vec<&str> = url.split(',').map(str::trim).collect();
        if urls.len() < 2 {
            return redis_client(url, ca).map(RedisTarget::Single);
        }
        let mut nodes = Vec::with_capacity(urls.len());
        let mut tls = None;
        for url in urls {
            if url.is_empty() {
                return Err(RedisConfigError::Url(
                    "an empty seed URL in the comma-separated list".to_owned(),
                ));
            }
            // One node's checks (scheme, `#insecure`, CA without TLS).
            redis_client(url, ca)?;
            let info = redis::IntoConnectionInfo::into_connection_info(url)
                .map_err(|e| RedisConfigError::Url(describe_url_error(&e)))?;
            let this_tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
            if tls.is_some_and(|t| t != this_tls) {
                return Err(RedisConfigError::Url(
                    "the cluster seed URLs mix redis:// and rediss://".to_owned(),
                ));
            }
            tls = Some(this_tls);
            nodes.push(info);
        }
        let root_cert = match ca {
            Some(path) => Some(read_ca(path)?),
            None => None,
        };
        let seeds = ClusterSeeds { nodes, root_cert };
        // The builder's own checks (credentials that differ between seeds…).
        seeds
            .builder()
            .build()
            .map_err(|e| RedisConfigError::Url(describe_url_error(&e)))?;
        Ok(RedisTarget::Cluster(seeds))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisTarget::Cluster(_))
    }

    /// A command connection that reconnects by itself: a
    /// `ConnectionManager` (two retries) on one node, a `ClusterConnection`
    /// (redirects followed, slot map refreshed) on a cluster.
    pub async fn command_connection(&self, timeout: Duration) -> redis::RedisResult<RedisConn> {
        match self {
            RedisTarget::Single(client) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(2);
                Ok(RedisConn::Manager(
                    client.get_connection_manager_with_config(config).await?,
                ))
            }
            RedisTarget::Cluster(seeds) => Ok(RedisConn::Cluster(
                seeds
                    .builder()
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .build()?
                    .get_async_connection()
                    .await?,
            )),
        }
    }

    /// The ingestor's publishing connection: a plain multiplexed connection
    /// on one node (an error ends the session, which reconnects); on a
    /// cluster a `ClusterConnection` that never retries a command by itself
    /// (`retries(0)`): a redirected or failed publish comes back as an error
    /// and the session re-sends from its last acknowledged position, in
    /// order, instead of the client retrying some commands of a batch after
    /// later ones (the history would refuse the earlier id as a replay).
    /// Redirects still refresh its slot map.
    pub async fn publishing_connection(&self, timeout: Duration) -> redis::RedisResult<RedisConn> {
        match self {
            RedisTarget::Single(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout));
                Ok(RedisConn::Multiplexed(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
            RedisTarget::Cluster(seeds) => Ok(RedisConn::Cluster(
                seeds
                    .builder()
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(0)
                    .build()?
                    .get_async_connection()
                    .await?,
            )),
        }
    }
}

impl ClusterSeeds {
    fn builder(&self) -> ClusterClientBuilder {
        let builder = ClusterClientBuilder::new(self.nodes.clone());
        match &self.root_cert {
            Some(pem) => builder.certs(TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            }),
            None => builder,
        }
    }

    /// A RESP3 cluster client whose push messages (sharded messages,
    /// `sunsubscribe` pushes, disconnections) go to `push`: the gateway's
    /// subscriber opens one per session.
    pub fn pubsub_client(
        &self,
        push: impl redis::aio::AsyncPushSender,
        timeout: Duration,
    ) -> redis::RedisResult<ClusterClient> {
        self.builder()
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push)
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .build()
    }
}

/// A command connection to one node or a cluster; cheap to clone (every
/// variant multiplexes).
#[derive(Clone)]
pub enum RedisConn {
    Manager(ConnectionManager),
    Multiplexed(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl RedisConn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }

    /// Whether Redis answers `PING`: the one node, or any one node of a
    /// cluster (a cluster with one shard failing over still serves every
    /// other shard's organizations, so readiness does not hang on it).
    pub async fn ping(&mut self) -> redis::RedisResult<()> {
        let cmd = redis::cmd("PING");
        match self {
            RedisConn::Cluster(conn) => conn
                .route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random))
                .await
                .map(drop),
            _ => cmd.query_async::<String>(self).await.map(drop),
        }
    }

    /// Every key matching `pattern` of `kind` (a Redis type name), by `SCAN`
    /// on the one node or on every primary of a cluster (a cluster `SCAN`
    /// would read one random node).
    pub async fn scan_keys(
        &mut self,
        pattern: &str,
        kind: &str,
    ) -> redis::RedisResult<Vec<String>> {
        let targets: Vec<Option<(String, u16)>> = match self {
            RedisConn::Cluster(conn) => primaries(conn).await?.into_iter().map(Some).collect(),
            _ => vec![None],
        };
        let mut keys = Vec::new();
        for target in targets {
            let mut cursor = "0".to_owned();
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(&cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .arg("TYPE")
                    .arg(kind);
                let reply: Value = match (&target, &mut *self) {
                    (Some((host, port)), RedisConn::Cluster(conn)) => {
                        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        });
                        conn.route_command(cmd, routing).await?
                    }
                    (_, conn) => cmd.query_async(conn).await?,
                };
                let (next, batch): (String, Vec<String>) = redis::from_redis_value(reply)?;
                keys.extend(batch);
                if next == "0" {
                    break;
                }
                cursor = next;
            }
        }
        Ok(keys)
    }
}

/// The primaries' (host, port), from `CLUSTER SLOTS`.
async fn primaries(conn: &mut ClusterConnection) -> redis::RedisResult<Vec<(String, u16)>> {
    let slots: Vec<Value> = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    let mut out: Vec<(String, u16)> = Vec::new();
    for range in slots {
        let Value::Array(parts) = range else { continue };
        let Some(Value::Array(primary)) = parts.get(2) else {
            continue;
        };
        let host: Option<String> = primary
            .first()
            .and_then(|v| redis::from_redis_value_ref(v).ok());
        let port: Option<u16> = primary
            .get(1)
            .and_then(|v| redis::from_redis_value_ref(v).ok());
        if let (Some(host), Some(port)) = (host, port)
            && !out.contains(&(host.clone(), port))
        {
            out.push((host, port));
        }
    }
    Ok(out)
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Manager(c) => c.req_packed_command(cmd),
            RedisConn::Multiplexed(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Manager(c) => c.get_db(),
            RedisConn::Multiplexed(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comma_separated_urls_are_a_cluster_and_one_url_is_not() {
        let one =
            RedisTarget::parse("redis://127.0.0.1:6379", None).unwrap_or_else(|e| panic!("{e}"));
        assert!(!one.is_cluster());
        let many = RedisTarget::parse("redis://127.0.0.1:7000, redis://127.0.0.1:7001", None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(many.is_cluster());
    }

    #[test]
    fn bad_seed_lists_name_the_variable_and_hide_the_password() {
        for url in [
            "redis://127.0.0.1:7000,",
            "redis://a:s3cret@127.0.0.1:7000,rediss://a:s3cret@127.0.0.1:7001",
            "redis://a:s3cret@127.0.0.1:7000,http://a:s3cret@host",
        ] {
            let e = match RedisTarget::parse(url, None) {
                Ok(_) => panic!("{url} parsed"),
                Err(e) => e.to_string(),
            };
            assert!(e.starts_with("REDIS_URL: "), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }
}
