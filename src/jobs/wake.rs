//! Waking idle workers after a commit through Redis pub/sub. Only a nudge: the job is already in
//! PostgreSQL, so a lost message (Redis down, a worker between subscriptions) costs at most one poll
//! interval, never a job.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::service::cache::l2::RedisCache;

/// The channel workers of `queue` listen on.
pub fn channel(key_prefix: &str, queue: &str) -> String {
    format!("{key_prefix}jobs:{queue}")
}

/// After the commit of an enqueue: tell the workers. Best effort.
pub async fn nudge(redis: Option<&RedisCache>, key_prefix: &str, queue: &str) {
    if let Some(r) = redis {
        if !r.publish(&channel(key_prefix, queue), "1").await {
            tracing::debug!(
                queue,
                "workers not nudged (Redis unavailable); they will poll"
            );
        }
    }
}

/// Subscribes to `queue`'s channel and wakes `notify` on every message, reconnecting after errors,
/// until shutdown. Returns at once without Redis (or with Redis Cluster, whose pub/sub this does not
/// follow): the workers poll.
pub async fn listen(
    config: &Config,
    queue: &str,
    notify: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let Some(url) = config
        .redis
        .url
        .as_ref()
        .filter(|_| config.redis.cluster_nodes.is_empty())
    else {
        return;
    };
    let client = match redis::Client::open(url.expose()) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "no Redis wake-ups; workers poll");
            return;
        }
    };
    let channel = channel(&config.cache.key_prefix, queue);
    loop {
        let session = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            tracing::debug!(channel, "listening for job wake-ups");
            // A message may have been missed while unsubscribed.
            notify.notify_one();
            let mut messages = pubsub.on_message();
            while messages.next().await.is_some() {
                notify.notify_one();
            }
            Ok::<_, redis::RedisError>(())
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = session => if let Err(e) = r {
                tracing::debug!(error = %e, "job wake-up subscription lost; polling meanwhile");
            },
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
