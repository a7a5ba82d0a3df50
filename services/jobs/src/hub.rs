//! Wake-ups within and between replicas: a job queued (workers claim), a
//! cancel asked for (the worker holding the job stops it), new events
//! (watchers read them). In this process they are delivered at once; on
//! PostgreSQL a trigger on `jobs` NOTIFYs every replica too (LISTEN
//! rdm_jobs). Polling stays the fallback: a missed wake-up costs a second.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

/// How often workers and watchers look without being woken.
pub const POLL: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Hub {
    /// A job may be due.
    pub queued: Notify,
    /// Jobs whose events moved, by id.
    changed: Option<broadcast::Sender<String>>,
    /// The jobs running in this process, to stop on a cancel.
    running: Mutex<HashMap<String, CancellationToken>>,
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            changed: Some(broadcast::channel(4096).0),
            ..Default::default()
        })
    }

    /// Follows the NOTIFYs of every replica (PostgreSQL), reconnecting
    /// after a lost connection; stops with the process.
    pub fn listen(self: &Arc<Self>, url: String) {
        let hub = self.clone();
        tokio::spawn(async move {
            loop {
                match sqlx::postgres::PgListener::connect(&url).await {
                    Ok(mut listener) => {
                        if let Err(e) = listener.listen("rdm_jobs").await {
                            tracing::warn!(error = %e, "LISTEN rdm_jobs failed");
                        } else {
                            while let Ok(n) = listener.recv().await {
                                hub.deliver(n.payload());
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot LISTEN for jobs (polling meanwhile)")
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        });
    }

    /// A notification's payload: `q`, `c:<id>` or `e:<id>`.
    fn deliver(&self, payload: &str) {
        match payload.split_once(':') {
            None => self.queued.notify_one(),
            Some(("c", id)) => self.cancel(id),
            Some((_, id)) => self.changed(id),
        }
    }

    pub fn changed(&self, id: &str) {
        if let Some(tx) = &self.changed {
            let _ = tx.send(id.to_owned());
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        match &self.changed {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Stops job `id` if it runs here.
    pub fn cancel(&self, id: &str) {
        if let Some(token) = self.running.lock().expect("running jobs").get(id) {
            token.cancel();
        }
    }

    /// Job `id` runs here until the guard drops; the token says when to stop.
    pub fn run(self: &Arc<Self>, id: &str) -> (Running, CancellationToken) {
        let token = CancellationToken::new();
        self.running
            .lock()
            .expect("running jobs")
            .insert(id.to_owned(), token.clone());
        (
            Running {
                hub: self.clone(),
                id: id.to_owned(),
            },
            token,
        )
    }

    pub fn running(&self) -> Vec<String> {
        self.running
            .lock()
            .expect("running jobs")
            .keys()
            .cloned()
            .collect()
    }
}

/// A job running in this process; dropped when it is done.
pub struct Running {
    hub: Arc<Hub>,
    id: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.hub
            .running
            .lock()
            .expect("running jobs")
            .remove(&self.id);
    }
}
