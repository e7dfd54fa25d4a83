//! Connections to the shared tier's server: one Redis, or a Redis Cluster found behind the
//! same URL.
//!
//! Managed Redis hands out one endpoint URL whether it is a cluster or not, so the mode is
//! detected, not configured: the first connection asks the seed `INFO cluster`; with
//! `cluster_enabled:1` every later connection is a cluster connection (redis-rs `cluster`:
//! it maps slots to nodes and follows `MOVED`/`ASK`), seeded with that URL, so any one node
//! of the cluster will do. Pub/sub stays on plain connections to the seed: a classic
//! `PUBLISH` reaches the subscribers of every node of a cluster.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterConnection};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Client, Cmd, Connection, ConnectionLike, RedisResult, TlsCertificates, Value};

use crate::error::{Error, Result};

/// How many times a cluster call is retried (redirections included: a `MOVED` costs one)
/// and the most it sleeps between tries: calls stay bounded when a node is down.
const CLUSTER_RETRIES: u32 = 3;
const CLUSTER_RETRY_WAIT_MS: (u64, u64) = (10, 100);

/// Mode not known yet / one server / a cluster.
const UNKNOWN: u8 = 0;
const SINGLE: u8 = 1;
const CLUSTER: u8 = 2;

/// Where the connections go, and how they are made.
pub(crate) struct Endpoint {
    /// The seed: the server, or one node of the cluster.
    client: Client,
    /// Immutable settings (its read-routing factory is a `dyn` without `RefUnwindSafe`;
    /// we set none, and a panic cannot leave settings half-written).
    cluster: AssertUnwindSafe<ClusterClient>,
    mode: AtomicU8,
    connect_timeout: Duration,
    command_timeout: Duration,
}

/// A connection to a server or to a whole cluster.
pub(super) enum Con {
    Single(Connection),
    Cluster(Box<ClusterConnection>),
}

impl Endpoint {
    /// Checks the URL (and reads the CA file); connects lazily.
    pub(crate) fn new(
        url: &str,
        shown: &str,
        tls_ca: Option<&[u8]>,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Self> {
        let unusable = |e: redis::RedisError| {
            Error::InvalidInput(format!("shared tier URL {shown} is not usable: {e}"))
        };
        let certs = || TlsCertificates {
            client_tls: None,
            root_cert: tls_ca.map(<[u8]>::to_vec),
        };
        let client = match tls_ca {
            Some(_) => Client::build_with_tls(url, certs()),
            None => Client::open(url),
        }
        .map_err(unusable)?;
        let mut cluster = ClusterClient::builder([url])
            .connection_timeout(connect_timeout)
            .response_timeout(command_timeout)
            .retries(CLUSTER_RETRIES)
            .min_retry_wait(CLUSTER_RETRY_WAIT_MS.0)
            .max_retry_wait(CLUSTER_RETRY_WAIT_MS.1);
        if tls_ca.is_some() {
            cluster = cluster.certs(certs());
        }
        Ok(Endpoint {
            client,
            cluster: AssertUnwindSafe(cluster.build().map_err(unusable)?),
            mode: AtomicU8::new(UNKNOWN),
            connect_timeout,
            command_timeout,
        })
    }

    /// A plain connection to the seed, with the timeouts (also for subscriptions).
    pub(super) fn connect_seed(&self) -> RedisResult<Connection> {
        let con = self
            .client
            .get_connection_with_timeout(self.connect_timeout)?;
        con.set_read_timeout(Some(self.command_timeout))?;
        con.set_write_timeout(Some(self.command_timeout))?;
        Ok(con)
    }

    /// A connection for commands: to the server, or to the cluster (detected once).
    pub(super) fn connect(&self) -> RedisResult<Con> {
        match self.mode.load(Ordering::Relaxed) {
            CLUSTER => self.connect_cluster(),
            SINGLE => self.connect_seed().map(Con::Single),
            _ => {
                let mut seed = self.connect_seed()?;
                let cluster = match redis::cmd("INFO").arg("cluster").query::<String>(&mut seed) {
                    Ok(text) => text.lines().any(|l| l.trim() == "cluster_enabled:1"),
                    // A server that refuses INFO (an ACL, a proxy) is not one we can
                    // route for: talk to it as to one server.
                    Err(err) if err.is_io_error() || err.is_timeout() => return Err(err),
                    Err(_) => false,
                };
                self.mode
                    .store(if cluster { CLUSTER } else { SINGLE }, Ordering::Relaxed);
                if cluster {
                    tracing::debug!("the shared tier's server is a Redis Cluster");
                    self.connect_cluster()
                } else {
                    Ok(Con::Single(seed))
                }
            }
        }
    }

    fn connect_cluster(&self) -> RedisResult<Con> {
        Ok(Con::Cluster(Box::new(self.cluster.get_connection()?)))
    }
}

/// A node that holds data: the server itself, or a cluster master (host, port).
pub(super) type Node = Option<(String, u16)>;

impl Con {
    /// The nodes that hold data (`SCAN` and `INFO` are per node).
    pub(super) fn nodes(&mut self) -> RedisResult<Vec<Node>> {
        match self {
            Con::Single(_) => Ok(vec![None]),
            Con::Cluster(con) => {
                let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut **con)?;
                Ok(masters(&nodes).into_iter().map(Some).collect())
            }
        }
    }

    /// Sends `cmd` to `node`.
    pub(super) fn query_node(&mut self, node: &Node, cmd: &Cmd) -> RedisResult<Value> {
        match (self, node) {
            (Con::Cluster(con), Some((host, port))) => {
                let route = SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                };
                con.route_command(cmd, RoutingInfo::SingleNode(route))
            }
            (con, _) => cmd.query(con),
        }
    }
}

/// The addresses of the masters in a `CLUSTER NODES` reply (lines `id host:port@bus flags
/// master ...`; failed masters skipped).
fn masters(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let addr = fields.nth(1)?;
            let flags = fields.next()?;
            let is_master = flags.split(',').any(|f| f == "master")
                && !flags.split(',').any(|f| f == "fail" || f == "noaddr");
            let (host, port) = addr.split('@').next()?.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            is_master.then(|| Some((host.to_owned(), port.parse().ok()?)))?
        })
        .collect()
}

impl ConnectionLike for Con {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        match self {
            Con::Single(c) => c.req_packed_command(cmd),
            Con::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        match self {
            Con::Single(c) => c.req_packed_commands(cmd, offset, count),
            Con::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Con::Single(c) => c.get_db(),
            Con::Cluster(c) => c.get_db(),
        }
    }

    fn check_connection(&mut self) -> bool {
        match self {
            Con::Single(c) => c.check_connection(),
            Con::Cluster(c) => c.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match self {
            Con::Single(c) => c.is_open(),
            Con::Cluster(c) => c.is_open(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_are_read_from_cluster_nodes_and_failed_ones_skipped() {
        let nodes = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7002@17002 master - 0 1 2 connected 5461-10922
c3 127.0.0.1:7003@17003 slave b2 0 1 2 connected
d4 127.0.0.1:7004@17004 master,fail - 0 1 4 connected
e5 [::1]:7005@17005 master - 0 1 5 connected 10923-16383
";
        assert_eq!(
            masters(nodes),
            [
                ("127.0.0.1".to_owned(), 7001),
                ("127.0.0.1".to_owned(), 7002),
                ("::1".to_owned(), 7005),
            ]
        );
    }
}
