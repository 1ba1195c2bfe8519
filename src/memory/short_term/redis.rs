//! Short-term memory in Redis through a `deadpool-redis` pool.
//!
//! Keys, per task: `{prefix}:task:{id}:scratch` (a hash) and `{prefix}:task:{id}:window` (a list, trimmed to
//! the retention). Every write renews the expiry of both keys in the same atomic pipeline, so a task's
//! short-term memory goes as a whole, `ttl` after its last write.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::{self, FromRedisValue};
use deadpool_redis::{Config, Pool, PoolConfig, Runtime, Timeouts};

use super::{Retention, ShortTermError, ShortTermStore};
use crate::domain::TaskId;

/// Longest wait for a connection or a reply: a down Redis must not stall a step.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Short-term memory in Redis.
pub struct RedisStore {
    pool: Pool,
    prefix: String,
    retention: Retention,
}

impl RedisStore {
    /// A pool for `url` (connections are opened on first use).
    pub fn connect(url: &str, prefix: &str, retention: Retention) -> Result<Self, ShortTermError> {
        let mut config = Config::from_url(url);
        let mut pool = PoolConfig::new(16);
        pool.timeouts = Timeouts {
            wait: Some(TIMEOUT),
            create: Some(TIMEOUT),
            recycle: Some(TIMEOUT),
        };
        config.pool = Some(pool);
        let pool = config
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| ShortTermError::Config(e.to_string()))?;
        Ok(RedisStore {
            pool,
            prefix: prefix.to_owned(),
            retention,
        })
    }

    fn key(&self, task: TaskId, part: &str) -> String {
        format!("{}:task:{task}:{part}", self.prefix)
    }

    fn ttl_millis(&self) -> i64 {
        i64::try_from(self.retention.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    async fn query<T: FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, ShortTermError> {
        let mut connection = self.pool.get().await.map_err(redis_error)?;
        tokio::time::timeout(TIMEOUT, command.query_async(&mut connection))
            .await
            .map_err(|_| ShortTermError::Redis(format!("no reply within {TIMEOUT:?}")))?
            .map_err(redis_error)
    }

    async fn pipeline(&self, pipe: &redis::Pipeline) -> Result<(), ShortTermError> {
        let mut connection = self.pool.get().await.map_err(redis_error)?;
        tokio::time::timeout(TIMEOUT, pipe.query_async::<()>(&mut connection))
            .await
            .map_err(|_| ShortTermError::Redis(format!("no reply within {TIMEOUT:?}")))?
            .map_err(redis_error)
    }

    /// Adds the renewal of both keys' expiry to `pipe`.
    fn renew(&self, pipe: &mut redis::Pipeline, task: TaskId) {
        let ttl = self.ttl_millis();
        for part in ["scratch", "window"] {
            pipe.cmd("PEXPIRE")
                .arg(self.key(task, part))
                .arg(ttl)
                .ignore();
        }
    }
}

fn redis_error(error: impl std::fmt::Display) -> ShortTermError {
    ShortTermError::Redis(error.to_string())
}

#[async_trait]
impl ShortTermStore for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn put(&self, task: TaskId, key: &str, value: &str) -> Result<(), ShortTermError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(self.key(task, "scratch"))
            .arg(key)
            .arg(value)
            .ignore();
        self.renew(&mut pipe, task);
        self.pipeline(&pipe).await
    }

    async fn get(&self, task: TaskId, key: &str) -> Result<Option<String>, ShortTermError> {
        self.query(redis::cmd("HGET").arg(self.key(task, "scratch")).arg(key))
            .await
    }

    async fn scratchpad(&self, task: TaskId) -> Result<BTreeMap<String, String>, ShortTermError> {
        self.query(redis::cmd("HGETALL").arg(self.key(task, "scratch")))
            .await
    }

    async fn push(&self, task: TaskId, entry: &str) -> Result<(), ShortTermError> {
        let keep = isize::try_from(self.retention.window).unwrap_or(isize::MAX);
        let window = self.key(task, "window");
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("RPUSH")
            .arg(&window)
            .arg(entry)
            .ignore()
            .cmd("LTRIM")
            .arg(&window)
            .arg(-keep)
            .arg(-1)
            .ignore();
        self.renew(&mut pipe, task);
        self.pipeline(&pipe).await
    }

    async fn window(&self, task: TaskId) -> Result<Vec<String>, ShortTermError> {
        self.query(
            redis::cmd("LRANGE")
                .arg(self.key(task, "window"))
                .arg(0)
                .arg(-1),
        )
        .await
    }

    async fn absorb(
        &self,
        task: TaskId,
        scratchpad: &BTreeMap<String, String>,
        window: &[String],
    ) -> Result<(), ShortTermError> {
        let keep = isize::try_from(self.retention.window).unwrap_or(isize::MAX);
        let mut pipe = redis::pipe();
        pipe.atomic();
        if !scratchpad.is_empty() {
            let pad = self.key(task, "scratch");
            let mut hset = redis::cmd("HSET");
            hset.arg(&pad);
            for (key, value) in scratchpad {
                hset.arg(key).arg(value);
            }
            pipe.add_command(hset).ignore();
        }
        if !window.is_empty() {
            let key = self.key(task, "window");
            pipe.cmd("RPUSH").arg(&key).arg(window).ignore();
            pipe.cmd("LTRIM").arg(&key).arg(-keep).arg(-1).ignore();
        }
        self.renew(&mut pipe, task);
        self.pipeline(&pipe).await
    }

    async fn ping(&self) -> Result<(), ShortTermError> {
        let pong: String = self.query(&redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(ShortTermError::Redis(format!("PING answered {pong}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::contract;
    use super::*;

    /// The Redis the tests use (`scripts/setup.sh test` makes sure it runs); each test its own key prefix.
    fn store(ttl: Duration) -> RedisStore {
        let url = std::env::var("TROUPE_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!("troupe-test-{}", uuid::Uuid::new_v4().simple());
        RedisStore::connect(&url, &prefix, contract::retention(ttl)).unwrap()
    }

    #[tokio::test]
    async fn keeps_the_short_term_contract() {
        contract::behaves(&store(Duration::from_secs(60))).await;
    }

    #[tokio::test]
    async fn forgets_a_task_after_its_ttl() {
        let ttl = Duration::from_millis(300);
        contract::expires(&store(ttl), ttl).await;
    }

    #[tokio::test]
    async fn an_unreachable_server_is_an_error_not_a_hang() {
        // Port 1 on loopback: nothing listens there.
        let store = RedisStore::connect(
            "redis://127.0.0.1:1",
            "x",
            contract::retention(Duration::from_secs(1)),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let error = store.ping().await.unwrap_err();
        assert!(matches!(error, ShortTermError::Redis(_)), "{error}");
        assert!(started.elapsed() < TIMEOUT * 2);
    }
}
