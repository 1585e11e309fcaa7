//! The connection the cache talks through: one Redis (a reconnecting
//! `ConnectionManager`) or a Redis Cluster (a `ClusterConnection`, which
//! follows the slots and their moves). Both are cheap to clone and speak
//! the same commands; every key the cache uses names one slot, so its Lua
//! scripts run on one node in a cluster too.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// Where the cache connects.
pub enum Backend {
    Single(redis::Client),
    Cluster(ClusterClient),
}

#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Backend {
    /// `urls`: one URL, or a cluster's nodes, comma-separated. Does not connect.
    pub fn open(urls: &str, cluster: bool, timeout: Duration) -> redis::RedisResult<Self> {
        if !cluster {
            return redis::Client::open(urls).map(Backend::Single);
        }
        let nodes: Vec<&str> = urls.split(',').map(str::trim).collect();
        ClusterClient::builder(nodes)
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(1)
            .build()
            .map(Backend::Cluster)
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Backend::Cluster(_))
    }

    pub async fn connect(&self, timeout: Duration) -> redis::RedisResult<Conn> {
        match self {
            Backend::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout)
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .map(Conn::Single)
            }
            Backend::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
        }
    }

    /// The one Redis, for pub/sub (the in-process tier runs only on one
    /// Redis: see [`super::Cache::new`]).
    pub(super) fn single(&self) -> Option<&redis::Client> {
        match self {
            Backend::Single(client) => Some(client),
            Backend::Cluster(_) => None,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
