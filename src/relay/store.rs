//! The link store task: the one owner of the link state files.
//!
//! A persist request writes the registry as it is when the write starts
//! (so one write covers every change made before it); requests that queue
//! up while a write runs are answered by the next single write. The write
//! is [`links::Store::save`]: one slot of `links.slots` and one data flush
//! in the common case. The copy in `links.json` follows when no request
//! waits, so it never delays an ack. A failed write (disk full, read-only
//! flash) is answered with the error, the registry keeps its in-memory
//! state (a revocation stays in force), and the task retries every few
//! seconds until a write succeeds; a failed copy is retried the same way.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::links::{self, Registry};

const RETRY_EVERY: Duration = Duration::from_secs(5);

type Reply = oneshot::Sender<Result<(), String>>;

/// Handle to the link store task.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Reply>,
}

impl StoreHandle {
    /// Asks for the registry to be written; the receiver says how it went.
    pub fn persist(&self) -> oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::error::TrySendError::Full(tx) | mpsc::error::TrySendError::Closed(tx)) =
            self.tx.try_send(tx)
        {
            // Over 1024 requests waiting: the queued write will include
            // this change too (every write takes the registry as it is when
            // it starts), but nobody would be told; answer unavailable so
            // the cloud retries and gets its `ok` from a later write.
            let _ = tx.send(Err("link store busy".to_owned()));
        }
        rx
    }
}

/// Creates the handle and the task future.
pub fn spawn_store(
    store: links::Store,
    registry: Arc<Registry>,
    token: CancellationToken,
) -> (StoreHandle, impl std::future::Future<Output = ()>) {
    let (tx, rx) = mpsc::channel(1024);
    let store = Arc::new(Mutex::new(store));
    (StoreHandle { tx }, run(store, registry, rx, token))
}

type Shared = Arc<Mutex<links::Store>>;

/// Runs `f` on the store in the blocking pool (it writes and flushes).
async fn blocking<T: Send + 'static>(
    store: &Shared,
    f: impl FnOnce(&mut links::Store) -> Result<T, links::LinksError> + Send + 'static,
) -> Result<T, String> {
    let store = store.clone();
    let job = move || f(&mut store.lock().unwrap_or_else(|p| p.into_inner()));
    match tokio::task::spawn_blocking(job).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("link store write task failed: {e}")),
    }
}

async fn write(store: &Shared, registry: &Arc<Registry>) -> Result<(), String> {
    let file = registry.load().to_file();
    blocking(store, move |s| s.save(file).map(drop)).await
}

/// Copies the newest state to `links.json` if it is not there yet.
async fn mirror(store: &Shared) -> Result<(), String> {
    blocking(store, links::Store::mirror).await
}

fn needs_mirror(store: &Shared) -> bool {
    store
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .needs_mirror()
}

async fn run(
    store: Shared,
    registry: Arc<Registry>,
    mut rx: mpsc::Receiver<Reply>,
    token: CancellationToken,
) {
    let mut dirty = false;
    let mut retry = tokio::time::interval(RETRY_EVERY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut mirror_failed = false;
    // A copy the last run did not make (killed, or links.json unwritable):
    // the interval's first tick, at once, makes it.
    let mut mirror_at_start = needs_mirror(&store);
    loop {
        let mut replies = Vec::new();
        tokio::select! {
            r = rx.recv() => match r {
                Some(reply) => replies.push(reply),
                None => break,
            },
            _ = retry.tick(), if dirty || mirror_failed || mirror_at_start => {}
            _ = token.cancelled() => break,
        }
        mirror_at_start = false;
        while let Ok(more) = rx.try_recv() {
            replies.push(more);
        }
        if !replies.is_empty() || dirty {
            let result = write(&store, &registry).await;
            match &result {
                Ok(()) => {
                    if dirty {
                        tracing::info!("link state persisted again after earlier failures");
                    }
                    dirty = false;
                }
                Err(e) => {
                    if !dirty {
                        tracing::error!(error = %e, "persisting link state failed; retrying every 5 s");
                    }
                    dirty = true;
                }
            }
            for reply in replies {
                let _ = reply.send(result.clone());
            }
        }
        // The copy waits until no write is asked for.
        if rx.is_empty() && needs_mirror(&store) {
            match mirror(&store).await {
                Ok(()) => mirror_failed = false,
                Err(e) => {
                    if !mirror_failed {
                        tracing::warn!(error = %e, "copying link state to links.json failed (the state is durable in links.slots); retrying every 5 s");
                    }
                    mirror_failed = true;
                }
            }
        }
    }
    // Last chance: persist what changed since the last good write, and
    // leave `links.json` current.
    if dirty {
        if let Err(e) = write(&store, &registry).await {
            tracing::error!(error = %e, "link state not persisted at shutdown");
        }
    }
    if needs_mirror(&store) {
        if let Err(e) = mirror(&store).await {
            tracing::warn!(error = %e, "links.json not updated at shutdown (the state is durable in links.slots)");
        }
    }
}
