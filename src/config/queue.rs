//! `[queue]` and the node's role (`server.role`): where tasks wait for a process to run them, and which of
//! them a process takes (scale-out, issue 17).

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// What a `troupe serve` process does with tasks (`server.role`, `troupe serve --role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Takes tasks (HTTP, WebSocket, dashboard) and puts them on the queue; runs none.
    Api,
    /// Runs the tasks it reads from the queue; also serves HTTP (health, metrics, the API).
    Worker,
    /// Both: one process takes and runs tasks (the default, and the only role with the local queue).
    #[default]
    All,
}

impl Role {
    /// The role's name in settings, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Worker => "worker",
            Role::All => "all",
        }
    }

    /// Whether this role runs tasks.
    pub fn runs_tasks(self) -> bool {
        matches!(self, Role::Worker | Role::All)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "api" => Ok(Role::Api),
            "worker" => Ok(Role::Worker),
            "all" => Ok(Role::All),
            other => Err(format!("'{other}' is not a role: api, worker or all")),
        }
    }
}

/// Where tasks wait (`queue.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    /// In this process: the Director's own FIFO queue.
    Local,
    /// A Redis Stream read by a consumer group of worker processes.
    Redis,
}

/// `[queue]`
#[derive(Debug, Clone, Deserialize)]
pub struct QueueSettings {
    /// Where tasks wait.
    pub backend: QueueBackend,
    /// Redis for the queue (`redis://host:port/db`); empty: `redis.url`.
    pub url: String,
    /// The stream's name under `redis.key_prefix` (`{prefix}:{stream}`); the dead-letter stream is
    /// `{prefix}:{stream}:dead`.
    pub stream: String,
    /// The consumer group every worker reads through.
    pub group: String,
    /// This worker's name in the group; empty: the host name. Its pending entries are its own after a
    /// restart, so it should stay the same across restarts and differ between workers on one host.
    pub consumer: String,
    /// An entry delivered more than this many times goes to the dead-letter stream and its task fails.
    pub max_deliveries: u32,
    /// An entry pending this long without renewal is taken by another worker (`XAUTOCLAIM`), in seconds.
    pub claim_idle_seconds: u64,
    /// Seconds between two renewals of this worker's entries, and between two looks for idle ones.
    pub renew_seconds: u64,
    /// Longest wait of one blocking read (`XREADGROUP ... BLOCK`), in milliseconds.
    pub block_ms: u64,
    /// Most entries waiting unread; a submission beyond them gets 429 (nothing stored).
    pub max_waiting: u64,
}

impl QueueSettings {
    /// What is wrong with these settings, given the database URL, Redis's own URL, the role and the lease
    /// time (`durability.lease_seconds`).
    pub(super) fn problems(
        &self,
        database_url: &str,
        redis_url: &str,
        role: Role,
        lease_seconds: u64,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        match self.backend {
            QueueBackend::Local => {
                if role != Role::All {
                    problems.push(format!(
                        "server.role = {role} needs queue.backend = \"redis\": with the local queue one process takes and runs every task (role all)"
                    ));
                }
                return problems;
            }
            QueueBackend::Redis => {}
        }
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            problems.push(
                "queue.backend = \"redis\" needs PostgreSQL as database.url: every node reads and writes the same records".into(),
            );
        }
        let url = self.redis_url(redis_url);
        if !url.starts_with("redis://") {
            problems.push(
                "queue.backend = \"redis\" needs a redis:// URL in queue.url or redis.url".into(),
            );
        }
        for (name, value) in [("stream", &self.stream), ("group", &self.group)] {
            if value.is_empty() || value.chars().any(char::is_whitespace) {
                problems.push(format!(
                    "queue.{name}: must be a non-empty name without spaces"
                ));
            }
        }
        if self.consumer.chars().any(char::is_whitespace) {
            problems.push("queue.consumer: must not contain spaces".into());
        }
        if !(1..=100).contains(&self.max_deliveries) {
            problems.push("queue.max_deliveries: must be within 1..=100".into());
        }
        if !(1..=3600).contains(&self.renew_seconds) {
            problems.push("queue.renew_seconds: must be within 1..=3600".into());
        }
        if self.claim_idle_seconds < self.renew_seconds.saturating_mul(3) {
            problems.push(format!(
                "queue.claim_idle_seconds: {} must be at least three times queue.renew_seconds ({}), so a live worker's entries are never taken",
                self.claim_idle_seconds, self.renew_seconds
            ));
        }
        // An entry idle this long was last renewed that long ago; its worker's last heartbeat may be one
        // renewal later, and must be older than the lease.
        if self.claim_idle_seconds <= lease_seconds + self.renew_seconds {
            problems.push(format!(
                "queue.claim_idle_seconds: {} must be above durability.lease_seconds + queue.renew_seconds ({}), so a worker that takes a dead worker's entry finds its lease expired",
                self.claim_idle_seconds,
                lease_seconds + self.renew_seconds
            ));
        }
        if !(1..=10_000_000).contains(&self.max_waiting) {
            problems.push("queue.max_waiting: must be within 1..=10000000".into());
        }
        if !(10..=60_000).contains(&self.block_ms) {
            problems.push("queue.block_ms: must be within 10..=60000".into());
        }
        problems
    }

    /// The Redis URL the queue uses: its own, or Redis's.
    pub fn redis_url<'a>(&'a self, redis_url: &'a str) -> &'a str {
        if self.url.is_empty() {
            redis_url
        } else {
            &self.url
        }
    }

    /// Whether tasks go through Redis.
    pub fn is_redis(&self) -> bool {
        self.backend == QueueBackend::Redis
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis() -> QueueSettings {
        QueueSettings {
            backend: QueueBackend::Redis,
            url: String::new(),
            stream: "tasks".into(),
            group: "workers".into(),
            consumer: String::new(),
            max_deliveries: 3,
            claim_idle_seconds: 30,
            renew_seconds: 5,
            block_ms: 1000,
            max_waiting: 10_000,
        }
    }

    #[test]
    fn roles_parse_and_only_all_runs_with_the_local_queue() {
        assert_eq!("api".parse::<Role>(), Ok(Role::Api));
        assert_eq!("worker".parse::<Role>(), Ok(Role::Worker));
        assert!("boss"
            .parse::<Role>()
            .unwrap_err()
            .contains("api, worker or all"));
        assert!(!Role::Api.runs_tasks() && Role::Worker.runs_tasks() && Role::All.runs_tasks());
        let local = QueueSettings {
            backend: QueueBackend::Local,
            ..redis()
        };
        assert!(local.problems("sqlite://x", "", Role::All, 10).is_empty());
        let problems = local.problems("sqlite://x", "", Role::Worker, 10);
        assert!(problems[0].contains("needs queue.backend"), "{problems:?}");
    }

    #[test]
    fn the_redis_queue_needs_postgres_redis_and_sane_times() {
        let queue = redis();
        let fine = queue.problems("postgres://db", "redis://127.0.0.1:6379", Role::Api, 10);
        assert!(fine.is_empty(), "{fine:?}");
        let problems = queue.problems("sqlite://x", "", Role::All, 10);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("PostgreSQL") && problems[1].contains("redis://"));
        let quick = QueueSettings {
            claim_idle_seconds: 8,
            ..redis()
        };
        let problems = quick.problems("postgres://db", "redis://r", Role::All, 10);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems
            .iter()
            .all(|p| p.starts_with("queue.claim_idle_seconds")));
        let own = QueueSettings {
            url: "redis://queue:6379".into(),
            ..redis()
        };
        assert_eq!(own.redis_url("redis://memory:6379"), "redis://queue:6379");
        assert_eq!(
            redis().redis_url("redis://memory:6379"),
            "redis://memory:6379"
        );
    }
}
