//! The link store task: the one owner of `state_dir/links.json`.
//!
//! A persist request writes the registry as it is when the write starts
//! (so one write covers every change made before it); requests that queue
//! up while a write runs are answered by the next single write. A failed
//! write (disk full, read-only flash) is answered with the error, the
//! registry keeps its in-memory state (a revocation stays in force), and
//! the task retries every few seconds until a write succeeds.

use std::path::PathBuf;
use std::sync::Arc;
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
    state_dir: PathBuf,
    registry: Arc<Registry>,
    token: CancellationToken,
) -> (StoreHandle, impl std::future::Future<Output = ()>) {
    let (tx, rx) = mpsc::channel(1024);
    (StoreHandle { tx }, run(state_dir, registry, rx, token))
}

async fn write(state_dir: &std::path::Path, registry: &Arc<Registry>) -> Result<(), String> {
    let dir = state_dir.to_path_buf();
    let file = registry.load().to_file();
    match tokio::task::spawn_blocking(move || links::save(&dir, &file)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("link store write task failed: {e}")),
    }
}

async fn run(
    state_dir: PathBuf,
    registry: Arc<Registry>,
    mut rx: mpsc::Receiver<Reply>,
    token: CancellationToken,
) {
    let mut dirty = false;
    let mut retry = tokio::time::interval(RETRY_EVERY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut replies = Vec::new();
        tokio::select! {
            r = rx.recv() => match r {
                Some(reply) => replies.push(reply),
                None => break,
            },
            _ = retry.tick(), if dirty => {}
            _ = token.cancelled() => break,
        }
        while let Ok(more) = rx.try_recv() {
            replies.push(more);
        }
        let result = write(&state_dir, &registry).await;
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
    // Last chance: persist what changed since the last good write.
    if dirty {
        if let Err(e) = write(&state_dir, &registry).await {
            tracing::error!(error = %e, "link state not persisted at shutdown");
        }
    }
}
