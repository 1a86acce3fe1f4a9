//! Merchant reads by id from the primary, several in one statement while the connections are busy.
//!
//! A read by id is one round trip for one row, and on a loaded machine the round trip, not the row,
//! is what costs: PostgreSQL spends about as much CPU on a `pgbench -S` select's protocol and wake-up
//! as on anything else it does for it, and the service as much again (BENCHMARKS.md, "Where a
//! no-store read's CPU goes"). Here a few workers take reads from one queue: an idle worker takes
//! the first read waiting and every read queued behind it (up to [`MAX_BATCH`]) and answers them with
//! one `WHERE id = ANY($1)`. Nothing waits to fill a batch, so a read on a quiet service goes alone
//! at once; reads batch only when every worker is busy, and then they would have waited anyway. It
//! is the batching DataLoader and PostgreSQL's own group commit do, written here because neither a
//! loader crate nor sqlx batches statements across callers on a connection.
//!
//! What a batch returns was read after every read in it was asked for, so each answer is as fresh as
//! a statement of its own would have been.

use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

use super::direct::DirectPool;
use super::merchants as q;
use crate::db_error::{is_connection_error, DbError};
use crate::service::model::Merchant;

/// Ids in one statement at most: bounds one statement's time and the latency it adds to the reads
/// at the front of a long queue.
const MAX_BATCH: usize = 64;

type Answer = Result<Option<Merchant>, DbError>;

struct Pending {
    id: Uuid,
    reply: oneshot::Sender<Answer>,
    /// Where the read was asked for, so the statement's span joins the request's trace.
    span: tracing::Span,
}

/// The queue of one shard's primary reads and the workers that serve it.
pub struct MerchantReads {
    pool: DirectPool,
    workers: usize,
    /// Started on the first read, inside the runtime (the pools are built before there may be one).
    queue: OnceLock<mpsc::UnboundedSender<Pending>>,
    /// Reads per statement (`kyb_db_merchant_read_batch_size`).
    sizes: Histogram,
}

impl MerchantReads {
    /// `workers` statements in flight at most; each holds one of `pool`'s connections while it runs.
    pub fn new(pool: DirectPool, workers: usize, sizes: Histogram) -> Self {
        Self {
            pool,
            workers: workers.max(1),
            queue: OnceLock::new(),
            sizes,
        }
    }

    /// The merchant `id` as the primary has it now, or `None`.
    pub async fn get(&self, id: Uuid) -> Answer {
        let (reply, answer) = oneshot::channel();
        // Unbounded, yet no longer than the reads in flight: each queued read is a request waiting
        // for its answer, and the server bounds those.
        self.queue
            .get_or_init(|| self.start())
            .send(Pending {
                id,
                reply,
                span: tracing::Span::current(),
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    fn start(&self) -> mpsc::UnboundedSender<Pending> {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..self.workers {
            tokio::spawn(work(self.pool.clone(), rx.clone(), self.sizes.clone()));
        }
        tx
    }
}

fn stopped() -> DbError {
    DbError::Unavailable("the merchant read workers stopped".into())
}

/// Serves batches until the queue's sender (the shard's pools) is dropped.
async fn work(
    pool: DirectPool,
    queue: Arc<Mutex<mpsc::UnboundedReceiver<Pending>>>,
    sizes: Histogram,
) {
    loop {
        let batch = {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            batch
        };
        // A read whose request has gone (cancelled, timed out) is not asked for.
        let batch: Vec<Pending> = batch.into_iter().filter(|p| !p.reply.is_closed()).collect();
        if batch.is_empty() {
            continue;
        }
        sizes.observe(batch.len() as f64);
        let ids: Vec<Uuid> = batch.iter().map(|p| p.id).collect();
        let callers: Vec<tracing::Span> = batch.iter().map(|p| p.span.clone()).collect();
        match read(&pool, &ids, &callers).await {
            Ok(found) => {
                for (p, m) in batch.into_iter().zip(by_read(&ids, found)) {
                    // The asker may have gone since; its answer is dropped.
                    let _ = p.reply.send(Ok(m));
                }
            }
            Err(e) => {
                for p in batch {
                    let _ = p.reply.send(Err(shared(&e)));
                }
            }
        }
    }
}

async fn read(
    pool: &DirectPool,
    ids: &[Uuid],
    callers: &[tracing::Span],
) -> Result<Vec<Merchant>, sqlx::Error> {
    let mut lease = pool.lease().await?;
    let found = q::get_many(lease.conn(), ids, callers).await;
    lease.finish(found)
}

/// Each read's merchant, in the order of `ids`: the row itself to the last read of an id, copies to
/// any read of it before that, `None` where the statement found none.
fn by_read(ids: &[Uuid], mut found: Vec<Merchant>) -> Vec<Option<Merchant>> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            let at = found.iter().position(|m| m.id == *id)?;
            Some(if ids[i + 1..].contains(id) {
                found[at].clone()
            } else {
                found.swap_remove(at)
            })
        })
        .collect()
}

/// One statement's error, told to each read of its batch.
fn shared(e: &sqlx::Error) -> DbError {
    if is_connection_error(e) {
        DbError::Unavailable(e.to_string())
    } else {
        DbError::Failed(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::BusinessInput;
    use crate::service::model::MerchantStatus;

    fn merchant(id: Uuid) -> Merchant {
        Merchant {
            id,
            business: BusinessInput {
                name: id.to_string(),
                description: None,
                website: None,
                country: None,
                declared_mcc: None,
            },
            status: MerchantStatus::Active,
            classification: None,
            version: 1,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    fn ids_of(answers: &[Option<Merchant>]) -> Vec<Option<Uuid>> {
        answers.iter().map(|m| m.as_ref().map(|m| m.id)).collect()
    }

    #[test]
    fn each_read_gets_its_own_merchant_whatever_order_the_rows_come_in() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let answers = by_read(&[a, b, c], vec![merchant(c), merchant(a), merchant(b)]);
        assert_eq!(ids_of(&answers), [Some(a), Some(b), Some(c)]);
    }

    #[test]
    fn a_missing_merchant_is_none_and_the_others_are_still_answered() {
        let (a, gone, b) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let answers = by_read(&[a, gone, b], vec![merchant(b), merchant(a)]);
        assert_eq!(ids_of(&answers), [Some(a), None, Some(b)]);
    }

    #[test]
    fn every_read_of_one_id_gets_the_merchant() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let answers = by_read(&[a, b, a, a], vec![merchant(a), merchant(b)]);
        assert_eq!(ids_of(&answers), [Some(a), Some(b), Some(a), Some(a)]);
        assert_eq!(answers[0], answers[3]);
    }
}
