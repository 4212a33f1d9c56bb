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
//!
//! Granting waits for the disk (protocol rule 18): a [`Grant`] is written
//! as part of the registry *before* it enters the registry, and enters it
//! only when the write succeeded. A refused grant was never in force, and
//! the retry writes the registry as it is, so it can never persist one
//! later. Revocations are in force before they reach this task.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::links::{self, Grant, Registry};

const RETRY_EVERY: Duration = Duration::from_secs(5);

type Reply = oneshot::Sender<Result<(), String>>;

/// Why a grant is not in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// It could not be written (the message says why).
    Disk(String),
    /// The id was revoked while the grant was being written.
    Revoked,
}

#[derive(Debug)]
enum Request {
    Persist(Reply),
    Grant(Grant, oneshot::Sender<Result<(), Refused>>),
}

/// Handle to the link store task.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Request>,
}

/// Over 1024 requests waiting: answered at once so the cloud retries.
const BUSY: &str = "link store busy";

impl StoreHandle {
    /// Asks for the registry to be written; the receiver says how it went.
    pub fn persist(&self) -> oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = oneshot::channel();
        // Full: the queued write will include this change too (every write
        // takes the registry as it is when it starts), but nobody would be
        // told; answer unavailable so the cloud retries and gets its `ok`
        // from a later write.
        if let Err(e) = self.tx.try_send(Request::Persist(tx)) {
            if let Request::Persist(tx) = e.into_inner() {
                let _ = tx.send(Err(BUSY.to_owned()));
            }
        }
        rx
    }

    /// Writes the registry with `grant` in it, then puts it in force; the
    /// receiver says how it went.
    pub fn grant(&self, grant: Grant) -> oneshot::Receiver<Result<(), Refused>> {
        let (tx, rx) = oneshot::channel();
        if let Err(e) = self.tx.try_send(Request::Grant(grant, tx)) {
            if let Request::Grant(_, tx) = e.into_inner() {
                let _ = tx.send(Err(Refused::Disk(BUSY.to_owned())));
            }
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

async fn write(store: &Shared, registry: &Arc<Registry>, grants: &[Grant]) -> Result<(), String> {
    let (registry, grants) = (registry.clone(), grants.to_vec());
    blocking(store, move |s| s.persist(&registry, &grants)).await
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

/// What one write answers: every request that arrived before it started.
#[derive(Default)]
struct Batch {
    persists: Vec<Reply>,
    grants: Vec<(Grant, oneshot::Sender<Result<(), Refused>>)>,
}

impl Batch {
    fn push(&mut self, r: Request) {
        match r {
            Request::Persist(reply) => self.persists.push(reply),
            Request::Grant(g, reply) => self.grants.push((g, reply)),
        }
    }

    fn is_empty(&self) -> bool {
        self.persists.is_empty() && self.grants.is_empty()
    }

    /// Answers everyone; on success the grants go into force first.
    fn answer(self, result: &Result<(), String>, registry: &Registry) {
        for (grant, reply) in self.grants {
            let r = match result {
                Ok(()) => registry.apply(&grant).map_err(|_| Refused::Revoked),
                Err(e) => Err(Refused::Disk(e.clone())),
            };
            if r.is_ok() {
                tracing::info!(link = grant.id(), "link created or updated");
            }
            let _ = reply.send(r);
        }
        for reply in self.persists {
            let _ = reply.send(result.clone());
        }
    }
}

async fn run(
    store: Shared,
    registry: Arc<Registry>,
    mut rx: mpsc::Receiver<Request>,
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
        let mut batch = Batch::default();
        tokio::select! {
            r = rx.recv() => match r {
                Some(req) => batch.push(req),
                None => break,
            },
            _ = retry.tick(), if dirty || mirror_failed || mirror_at_start => {}
            _ = token.cancelled() => break,
        }
        mirror_at_start = false;
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        if !batch.is_empty() || dirty {
            let grants: Vec<Grant> = batch.grants.iter().map(|(g, _)| g.clone()).collect();
            let result = write(&store, &registry, &grants).await;
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
                    // Also after a refused grant: the retry writes the
                    // registry without it over anything half-written.
                    dirty = true;
                }
            }
            batch.answer(&result, &registry);
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
        if let Err(e) = write(&store, &registry, &[]).await {
            tracing::error!(error = %e, "link state not persisted at shutdown");
        }
    }
    if needs_mirror(&store) {
        if let Err(e) = mirror(&store).await {
            tracing::warn!(error = %e, "links.json not updated at shutdown (the state is durable in links.slots)");
        }
    }
}
