//! The journal writer: applies DirectConnection's channel journal to the node's
//! [`ChannelStore`] in batches (group commit), and answers a `send` once the commit that
//! holds its message is done.
//!
//! Entries queue in the writer's mailbox in the order DirectConnection made them. The
//! writer commits whatever is pending as soon as its mailbox is drained (and at once at
//! [`MAX_PENDING`]), in one `apply`: entries that arrive while a commit runs share the
//! next one. A [`Flush`] (what `Node::send` awaits after DirectConnection accepted the
//! message) commits everything queued before it. After each commit the writer tells
//! DirectConnection how many entries are durable ([`JournalCommitted`]), which releases
//! the acks that waited for them. A store on disk commits on tokio's blocking pool, and
//! the writer takes no message meanwhile (the other actors go on); the memory store of
//! the simulator commits inline.

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, Recipient, ResponseActFuture,
    ResponseFuture, WrapFuture,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_protocol::{ChannelStore, ChannelStoreError, JournalCommitted, JournalEntry};

/// Entries that trigger a commit without waiting for the mailbox to drain: bounds the
/// writer's memory whatever the traffic.
pub const MAX_PENDING: usize = 4096;

/// A store shared with whoever outlives the node (the simulator keeps its memory store
/// across a simulated restart).
pub type SharedChannelStore = Arc<Mutex<Box<dyn ChannelStore>>>;

/// Where commits run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOn {
    /// On the writer's own thread: a store in memory.
    Inline,
    /// On tokio's blocking pool: a store on disk, whose commit waits for the disk.
    BlockingPool,
}

/// Commit everything queued so far; answered once it is durable.
#[derive(Debug, Clone, Copy, actix::Message)]
#[rtype(result = "Result<(), ChannelStoreError>")]
pub struct Flush;

/// The journal writer actor. See the module docs.
pub struct JournalWriter {
    store: SharedChannelStore,
    commit_on: CommitOn,
    /// DirectConnection, told after each commit.
    committed: Recipient<JournalCommitted>,
    pending: Vec<JournalEntry>,
    /// Entries received so far (the number of the last pending one).
    received: u64,
    /// A commit is due once the mailbox is drained.
    commit_armed: bool,
}

impl JournalWriter {
    /// A writer for `store` that reports its commits to `committed`.
    pub fn new(
        store: SharedChannelStore,
        commit_on: CommitOn,
        committed: Recipient<JournalCommitted>,
    ) -> Self {
        Self {
            store,
            commit_on,
            committed,
            pending: Vec::new(),
            received: 0,
            commit_armed: false,
        }
    }

    /// Commits the pending entries. The caller runs it with `ctx.wait`, so the writer
    /// takes no message until it is done and commits stay in journal order.
    fn commit(&mut self) -> ResponseActFuture<Self, Result<(), ChannelStoreError>> {
        let batch = std::mem::take(&mut self.pending);
        let through = self.received;
        let store = self.store.clone();
        let apply = move || -> Result<(), ChannelStoreError> {
            if batch.is_empty() {
                return Ok(());
            }
            let mut store = store
                .lock()
                .map_err(|_| ChannelStoreError("the channel store's lock was poisoned".into()))?;
            store.apply(&batch)
        };
        let applied: ResponseActFuture<Self, Result<(), ChannelStoreError>> = match self.commit_on {
            CommitOn::Inline => Box::pin(actix::fut::ready(apply())),
            CommitOn::BlockingPool => Box::pin(
                async move {
                    tokio::task::spawn_blocking(apply)
                        .await
                        .unwrap_or_else(|error| {
                            Err(ChannelStoreError(format!(
                                "the commit task failed: {error}"
                            )))
                        })
                }
                .into_actor(self),
            ),
        };
        Box::pin(applied.map(move |result, writer, _| {
            if result.is_ok() {
                writer.committed.do_send(JournalCommitted { through });
            }
            result
        }))
    }
}

impl Actor for JournalWriter {
    type Context = Context<Self>;
}

impl Handler<JournalEntry> for JournalWriter {
    type Result = ();

    fn handle(&mut self, entry: JournalEntry, ctx: &mut Self::Context) {
        self.pending.push(entry);
        self.received += 1;
        if self.pending.len() >= MAX_PENDING {
            ctx.wait(self.commit().map(|result, _, _| log_failure(result)));
        } else if !self.commit_armed {
            // Once what is already in the mailbox is handled: one commit for all of it.
            self.commit_armed = true;
            ctx.run_later(Duration::ZERO, |writer, ctx| {
                writer.commit_armed = false;
                ctx.wait(writer.commit().map(|result, _, _| log_failure(result)));
            });
        }
    }
}

impl Handler<Flush> for JournalWriter {
    type Result = ResponseFuture<Result<(), ChannelStoreError>>;

    fn handle(&mut self, _: Flush, ctx: &mut Self::Context) -> Self::Result {
        let (done, result) = tokio::sync::oneshot::channel();
        // The writer waits for the commit: what comes next belongs to the next one.
        ctx.wait(self.commit().map(|outcome, _, _| {
            let _ = done.send(outcome);
        }));
        Box::pin(async move {
            result
                .await
                .unwrap_or_else(|_| Err(ChannelStoreError("the journal writer stopped".into())))
        })
    }
}

fn log_failure(result: Result<(), ChannelStoreError>) {
    if let Err(error) = result {
        tracing::error!(%error, "the channel store failed to commit");
    }
}

tether_protocol::stops_on_shutdown!(JournalWriter);
