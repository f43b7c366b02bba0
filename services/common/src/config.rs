//! Settings more than one role reads. Every flag has a `PIXELMESH_*` environment variable and a
//! default that works on one machine.

use std::time::Duration;

use clap::Args;

/// A settings group at its flags' defaults, as their `#[arg]` attributes give them (the one
/// place they are written), without reading the environment: what a settings struct's
/// `Default` returns.
pub fn flag_defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults")).mut_args(|arg| arg.env(None));
    let matches = command.get_matches_from(["defaults"]);
    T::from_arg_matches(&matches).expect("the flags' defaults parse")
}

/// The URLs of a setting that takes one or several, comma-separated (a NATS cluster's
/// nodes, the gateway's schedulers), trimmed, empty ones skipped.
pub fn url_list(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

#[derive(Debug, Clone, Args)]
pub struct NatsConfig {
    /// NATS server URL (JetStream must be enabled). A cluster is a comma-separated list of
    /// its nodes' URLs; any one is enough to find the rest, the list is for starting while
    /// one of them is down.
    #[arg(
        long = "nats-url",
        env = "PIXELMESH_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,
    /// Copies JetStream keeps of every stream and bucket pixelmesh creates: 1 on a single
    /// server, 3 on a 3-node cluster so the mesh goes on when one node dies. Streams that
    /// exist already are updated to it.
    #[arg(
        long = "nats-replicas",
        env = "PIXELMESH_NATS_REPLICAS",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=5)
    )]
    pub replicas: u16,
}

/// How the shared JetStream work queue behaves. The filter creates (or updates) the consumer,
/// so these settings belong to the filter's flags.
#[derive(Debug, Clone, Args)]
pub struct QueueConfig {
    /// Seconds a worker may hold a task without acking before JetStream redelivers it.
    /// Workers send in-progress acks while they work, so this only bounds how long a crashed
    /// worker's tasks wait.
    #[arg(long, env = "PIXELMESH_ACK_WAIT_SECS", default_value_t = 30)]
    pub ack_wait_secs: u64,
    /// Deliveries of one task before its image is recorded as failed with the last error.
    #[arg(long, env = "PIXELMESH_MAX_DELIVER", default_value_t = 5)]
    pub max_deliver: i64,
}

impl QueueConfig {
    pub fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.ack_wait_secs.max(1))
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            ack_wait_secs: 30,
            max_deliver: 5,
        }
    }
}

/// gRPC address of another role, e.g. `http://127.0.0.1:50052`.
pub fn grpc_url(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

#[cfg(test)]
mod tests {
    use super::url_list;

    #[test]
    fn a_cluster_url_is_its_nodes() {
        assert_eq!(url_list("nats://a:4222"), ["nats://a:4222"]);
        assert_eq!(
            url_list("nats://a:4222, nats://b:4222,nats://c:4222,"),
            ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
        );
    }
}
