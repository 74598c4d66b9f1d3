//! Redis servers of the tests' own: one `redis-server` (`tests/support/redis_server.rs`, for
//! exact command counts), or three in a Redis Cluster.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

pub use crate::redis_server::{command, OwnRedis};
use crate::services;

const HOST: &str = "127.0.0.1";

/// A server of the test's own, or `None` after reporting the skip (no `redis-server` here).
pub fn own_redis(test: &str) -> Option<OwnRedis> {
    match OwnRedis::start(false) {
        Ok(redis) => Some(redis),
        Err(err) => {
            services::missing(test, &format!("a redis-server of its own: {err}"));
            None
        }
    }
}

/// A Valkey server of the test's own, or `None` after reporting the skip.
pub fn own_valkey(test: &str) -> Option<OwnRedis> {
    match OwnRedis::start_valkey() {
        Ok(valkey) => Some(valkey),
        Err(err) => {
            services::missing(test, &format!("a Valkey server of its own: {err}"));
            None
        }
    }
}

/// Three servers of the test's own, made one Redis Cluster of three shards (no replicas).
pub struct OwnCluster {
    pub nodes: Vec<OwnRedis>,
}

impl OwnCluster {
    /// Three `program`s (`redis-server`, or a Valkey server) made one cluster.
    pub fn start(program: &str) -> Result<Self, String> {
        let nodes = (0..3)
            .map(|_| OwnRedis::start_program(program, true))
            .collect::<Result<Vec<_>, _>>()?;
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("{HOST}:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|err| format!("redis-cli cannot be run: {err}"))?;
        if !output.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if nodes.iter().all(|node| {
                command(node.port, "CLUSTER INFO")
                    .is_some_and(|info| info.contains("cluster_state:ok"))
            }) {
                return Ok(Self { nodes });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("the cluster did not reach cluster_state:ok within 20 s".to_owned())
    }

    /// How many keys each shard holds.
    pub fn keys_per_shard(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|node| {
                command(node.port, "DBSIZE")
                    .and_then(|reply| reply.strip_prefix(':')?.parse().ok())
                    .unwrap_or(0)
            })
            .collect()
    }
}

/// A cluster of `program`s of the test's own, or `None` after reporting the skip.
pub fn own_cluster(test: &str, program: &str) -> Option<OwnCluster> {
    match OwnCluster::start(program) {
        Ok(cluster) => Some(cluster),
        Err(err) => {
            services::missing(test, &format!("a cluster of {program}s of its own: {err}"));
            None
        }
    }
}
