//! A Redis Cluster for tests: six `redis-server`s in cluster mode on
//! loopback ports (three masters, one replica each), and instances of the
//! server that share it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Backend, TestApp, TestDatabase};

/// How a node decides a master is gone (`cluster-node-timeout`, ms).
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// A node's cluster bus listens on its port + 10,000, and redis-server
/// refuses a port whose bus port would pass 65,535: six ports below that
/// whose bus ports are free too, chosen here rather than left to the
/// kernel's ephemeral range.
fn node_ports() -> Vec<u16> {
    let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
    let spread = std::process::id() as u64 * 7919
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
    let mut ports = Vec::with_capacity(6);
    let mut port = 20_000 + (spread % 20_000) as u16;
    while ports.len() < 6 {
        if free(port) && free(port + 10_000) {
            ports.push(port);
        }
        port = if port >= 45_000 { 20_000 } else { port + 1 };
    }
    ports
}
/// Six `redis-server`s in cluster mode, three masters with one replica
/// each, killed on drop.
pub struct RedisCluster {
    ports: Vec<u16>,
    nodes: Vec<Option<Child>>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start() -> Self {
        // Another test's server can take a port between its choice and the
        // node's bind: that node exits, and the port answers for someone
        // else. Such a start is thrown away and tried on other ports.
        for _ in 0..5 {
            if let Some(cluster) = Self::start_nodes() {
                return cluster.create();
            }
        }
        panic!("no six free ports for a Redis Cluster after five tries");
    }

    /// Six nodes, each answering on its port as the process started here
    /// (its `process_id`), or `None` if any lost its port.
    fn start_nodes() -> Option<Self> {
        let dir = tempfile::tempdir().expect("a temp dir");
        let ports = node_ports();
        let nodes = ports
            .iter()
            .map(|port| {
                let port = port.to_string();
                let child = Command::new("redis-server")
                    .args(["--port", &port, "--bind", "127.0.0.1"])
                    .args(["--cluster-enabled", "yes"])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                    .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                    .args(["--save", "", "--appendonly", "no"])
                    .arg("--dir")
                    .arg(dir.path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server runs (is it installed?)");
                Some(child)
            })
            .collect();
        let mut cluster = RedisCluster {
            ports,
            nodes,
            _dir: dir,
        };
        for i in 0..cluster.ports.len() {
            let port = cluster.ports[i];
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let child = cluster.nodes[i].as_mut().expect("just started");
                if !matches!(child.try_wait(), Ok(None)) {
                    return None;
                }
                let pid = Self::text(port, redis::cmd("INFO").arg("server"));
                let ours = format!("process_id:{}", child.id());
                if pid.lines().any(|line| line.trim() == ours) {
                    break;
                }
                if !pid.is_empty() {
                    return None;
                }
                assert!(
                    Instant::now() < deadline,
                    "redis-server on {port} did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Some(cluster)
    }

    /// Joins the six nodes into a cluster, three masters with a replica each.
    fn create(self) -> Self {
        let cluster = self;
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("redis-cli runs");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        cluster.wait_healthy(&cluster.ports.clone());
        cluster
    }

    /// `REDIS_CLUSTER_URLS` for the servers: every node.
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect();
        urls.join(" ")
    }

    pub fn query(port: u16, command: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
        command.query(&mut conn)
    }

    pub fn text(port: u16, command: &redis::Cmd) -> String {
        match Self::query(port, command) {
            Ok(value) => redis::from_redis_value(value).unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits until every node in `ports` reports the cluster `ok` (every
    /// slot served) and every replica among them has synchronised with its
    /// master (a replica that never did will not take over: its data counts
    /// as too old).
    pub fn wait_healthy(&self, ports: &[u16]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let healthy = ports.iter().all(|port| {
                let replication = Self::text(*port, redis::cmd("INFO").arg("replication"));
                Self::text(*port, redis::cmd("CLUSTER").arg("INFO")).contains("cluster_state:ok")
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            });
            if healthy {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster never became healthy"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The port of the master serving `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        let port = self.live_ports()[0];
        let slot: i64 = redis::from_redis_value(
            Self::query(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).expect("KEYSLOT"),
        )
        .expect("a slot number");
        let nodes = Self::text(port, redis::cmd("CLUSTER").arg("NODES"));
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (start, end) = range.split_once('-').unwrap_or((range, range));
                match (start.parse::<i64>(), end.parse::<i64>()) {
                    (Ok(start), Ok(end)) => (start..=end).contains(&slot),
                    _ => false,
                }
            });
            if serves {
                let address = fields[1].split('@').next().expect("host:port@cport");
                return address
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("a port");
            }
        }
        panic!("no master serves slot {slot}:\n{nodes}");
    }

    /// Moves `key`'s slot to another master, as `redis-cli --cluster
    /// reshard` does: IMPORTING on the new owner, MIGRATING on the old,
    /// MIGRATE of the slot's keys, then the new owner announced to every
    /// master. Returns the new owner's port.
    pub fn migrate_slot(&self, key: &str) -> u16 {
        let from = self.master_of(key);
        let to = self
            .masters()
            .into_iter()
            .find(|p| *p != from)
            .expect("another master");
        let id = |port: u16| Self::text(port, redis::cmd("CLUSTER").arg("MYID"));
        let (from_id, to_id) = (id(from), id(to));
        let slot: i64 = redis::from_redis_value(
            Self::query(from, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).expect("KEYSLOT"),
        )
        .expect("a slot number");
        let setslot = |port: u16, state: &str, node: &str| {
            Self::query(
                port,
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg(state)
                    .arg(node),
            )
            .unwrap_or_else(|e| panic!("SETSLOT {slot} {state} on {port}: {e}"));
        };
        setslot(to, "IMPORTING", &from_id);
        setslot(from, "MIGRATING", &to_id);
        loop {
            let keys: Vec<String> = redis::from_redis_value(
                Self::query(
                    from,
                    redis::cmd("CLUSTER")
                        .arg("GETKEYSINSLOT")
                        .arg(slot)
                        .arg(100),
                )
                .expect("GETKEYSINSLOT"),
            )
            .expect("keys");
            if keys.is_empty() {
                break;
            }
            let mut migrate = redis::cmd("MIGRATE");
            migrate
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys);
            Self::query(from, &migrate).expect("MIGRATE");
        }
        setslot(to, "NODE", &to_id);
        setslot(from, "NODE", &to_id);
        for port in self
            .masters()
            .into_iter()
            .filter(|p| *p != from && *p != to)
        {
            setslot(port, "NODE", &to_id);
        }
        to
    }

    /// The ports of the live masters.
    fn masters(&self) -> Vec<u16> {
        self.live_ports()
            .into_iter()
            .filter(|port| {
                Self::text(*port, redis::cmd("INFO").arg("replication")).contains("role:master")
            })
            .collect()
    }

    pub fn live_ports(&self) -> Vec<u16> {
        self.ports
            .iter()
            .zip(&self.nodes)
            .filter(|(_, child)| child.is_some())
            .map(|(port, _)| *port)
            .collect()
    }

    /// Kills the node on `port` (as a crash would).
    pub fn kill(&mut self, port: u16) {
        let index = self.ports.iter().position(|p| *p == port).expect("a node");
        if let Some(mut child) = self.nodes[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in self.nodes.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub async fn instances_on(
    cluster: &RedisCluster,
    db: &TestDatabase,
    prefix: &str,
) -> (TestApp, TestApp) {
    let backend = Backend::postgres();
    let urls = cluster.urls();
    let extra = [
        ("REDIS_CLUSTER_URLS", urls.as_str()),
        ("REDIS_PREFIX", prefix),
    ];
    let a = TestApp::spawn_on(&backend, &db.url, &extra).await;
    let b = TestApp::spawn_on(&backend, &db.url, &extra).await;
    a.wait_redis(true).await;
    b.wait_redis(true).await;
    (a, b)
}
