//! The relay and rendezvous server: a QUIC endpoint in front of the relay queue logic
//! (`tether_rcs::RelayQueueServer`) and the rendezvous table (`tether_pms`). It runs on
//! any transport (real UDP or the simulated network). Connections authenticate with the
//! relay protocol's challenge, both ways and bound to the QUIC connection (its TLS
//! exporter, [`LinkHandle::channel_binding`]); rendezvous requests are served only on an authenticated
//! connection, on behalf of the device it proved to be. Who is admitted, how long a
//! connection may stay unauthenticated, the quotas and the rate limits are the queue
//! core's ([`RelayServerConfig`]); the rendezvous table keeps its own quotas. The
//! shell asks the queue core about every rendezvous request
//! ([`RelayQueueServer::rendezvous_request`]) before the table serves it, and sends the
//! table's pushes (a member's new hint, or where the server sees a member, for the
//! other member) on the other member's authenticated connection
//! ([`RelayQueueServer::connection_of`]). Where the server sees each device's own
//! authenticated connection is the queue core's to say ([`RelayQueueServer::poll_seen`]:
//! when it authenticates, moves, ends); the shell hands every such report to the table
//! after each input ([`RendezvousTable::seen`]).
//!
//! # The queue's store
//! The server keeps its queue in a [`RelayQueueStore`]: in memory ([`RelayServer::start`],
//! what the simulator uses unless it restarts the relay), or any other backend
//! ([`RelayServer::start_with_store`]: `tether relay` passes a redb file). At start it
//! prunes expired envelopes from the store and hands the rest to the queue core.
//!
//! # Group commit
//! Every link's reader task puts what it reads (frames, address changes, its end) in
//! one bounded inbox ([`INBOX_CAPACITY`]). Each time the actor wakes up it takes every
//! event waiting there, at most [`MAX_INPUTS_PER_COMMIT`], feeds them to the queue core
//! one after another, then applies all the changes they caused in one commit, and
//! only then sends what they produced (the core holds it back until told of the
//! commit, rendezvous answers included, so a connection's answers keep their order),
//! so an `Enqueued` answer means the envelope is durable and a durable store costs one
//! disk sync per batch instead of one per frame. A store on disk
//! ([`RelayQueueStore::commits_to_disk`]) commits on a thread of its own: the actor
//! waits for the commit without taking inputs, while its runtime keeps serving the
//! connections, so what arrives during one commit is the next batch. A store in memory
//! commits at once in the actor's thread (the simulator's, whose paused clock must not
//! run on while a commit is pending). A failed commit is logged and counted
//! (`store_failures`); the envelopes stay queued in memory. Answers still waiting for
//! a link that ended are dropped with it.
//!
//! # Messages
//! - in: accepted links, batches of link events from the inbox, writer failures, timer
//!   ticks, [`GetServerCounters`], [`GetServerState`].
//! - out: frames written to links; link closes.

use crate::link_tasks::{forward_accepted, spawn_writer, Accepted, LinkWriter};
use actix::fut::{ActorFutureExt, WrapFuture};
use actix::{Actor, AsyncContext, Context, Handler, Message, MessageResult, StreamHandler};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::Poll;
use tether_crypto::PublicKey;
use tether_pms::{RendezvousTable, RendezvousTableConfig, TableCounters};
use tether_protocol::shell::{runtime_now, CoreTimer};
use tether_protocol::{RendezvousMessage, WireFrame};
use tether_rcs::server::MAX_INPUTS_PER_COMMIT;
use tether_rcs::{
    ConnId, DeviceSeen, MemoryRelayQueueStore, QueueChange, RelayQueueServer, RelayQueueStore,
    RelayServerConfig, RelayServerCounters, RelayStoreError, ServerInput, ServerOutput,
};
use tether_transport::{Endpoint, LinkHandle};
use tokio::sync::{mpsc, oneshot};

/// Link events (frames read, address changes, ends) waiting for the server, from all
/// links together. A reader whose event finds the inbox full waits, and stops reading
/// its link meanwhile (QUIC's flow control then holds its device back), so a relay
/// that falls behind holds at most this many frames read and not handled, at most 66
/// MiB at the largest frame. 4 096 is 16 full batches ([`MAX_INPUTS_PER_COMMIT`]): a
/// thousand connected devices each with a few requests in flight fit while a commit
/// runs.
pub const INBOX_CAPACITY: usize = 16 * MAX_INPUTS_PER_COMMIT;

/// The server actor. See the module docs.
pub struct RelayServer {
    endpoint: Endpoint,
    queue: RelayQueueServer,
    store: Committer,
    /// A commit runs on the store's thread (the actor waits for it).
    commit_in_flight: bool,
    /// Store commits that failed.
    store_failures: u64,
    table: RendezvousTable,
    conns: BTreeMap<ConnId, ServerConn>,
    next_conn: u64,
    timer: CoreTimer,
    /// Every frame received from devices, when an audit asked for it.
    tap: Option<Vec<Vec<u8>>>,
    /// Frames dropped because a connection's writer queue was full.
    writes_dropped: Arc<AtomicU64>,
    /// Where the links' reader tasks put what they read.
    inbox: mpsc::Sender<LinkEvent>,
    /// The inbox's other end, until `started` hands it to the context.
    inbox_batches: Option<InboxBatches>,
}

/// Where the queue's changes are committed (see the module docs).
enum Committer {
    /// In the actor's thread, at once: a store in memory.
    Inline(Box<dyn RelayQueueStore + Send>),
    /// On the store's own thread: a store on disk. At most one commit is in flight.
    Thread(std::sync::mpsc::Sender<CommitJob>),
}

/// One commit for the store's thread, and where its result goes.
struct CommitJob {
    changes: Vec<QueueChange>,
    done: oneshot::Sender<Result<(), RelayStoreError>>,
}

/// Starts the thread that applies `store`'s commits; it ends when the server does.
fn spawn_committer(
    mut store: Box<dyn RelayQueueStore + Send>,
) -> std::io::Result<std::sync::mpsc::Sender<CommitJob>> {
    let (jobs, receiver) = std::sync::mpsc::channel::<CommitJob>();
    std::thread::Builder::new()
        .name("relay-store".into())
        .spawn(move || {
            while let Ok(CommitJob { changes, done }) = receiver.recv() {
                let _ = done.send(store.apply(&changes));
            }
        })?;
    Ok(jobs)
}

fn committer_gone() -> RelayStoreError {
    RelayStoreError::from(Box::<dyn std::error::Error + Send + Sync>::from(
        "the relay store's thread stopped",
    ))
}

/// What a link's reader task tells the server, in the order it happened on the link.
#[derive(Debug)]
enum LinkEvent {
    /// A frame was read.
    Bytes(ConnId, Bytes),
    /// The link's remote address changed to this one (before the frame that showed it).
    Moved(ConnId, SocketAddr),
    /// The link ended.
    Ended(ConnId),
}

/// The events waiting in the inbox when the server woke up (at most
/// [`MAX_INPUTS_PER_COMMIT`]): handled together, with one commit.
#[derive(Debug)]
struct LinkEvents(Vec<LinkEvent>);

/// The inbox as a stream of batches: each item takes every event waiting, up to
/// [`MAX_INPUTS_PER_COMMIT`].
struct InboxBatches(mpsc::Receiver<LinkEvent>);

impl futures_core::Stream for InboxBatches {
    type Item = LinkEvents;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<LinkEvents>> {
        let mut events = Vec::new();
        match self
            .0
            .poll_recv_many(cx, &mut events, MAX_INPUTS_PER_COMMIT)
        {
            Poll::Ready(0) => Poll::Ready(None),
            Poll::Ready(_) => Poll::Ready(Some(LinkEvents(events))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Starts recording every frame the server receives (for tests that audit what a
/// server can see, invariant 7).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct StartTap;

/// The frames recorded since [`StartTap`].
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Vec<Vec<u8>>")]
pub struct GetTap;

struct ServerConn {
    writer: LinkWriter,
    handle: LinkHandle,
}

/// A handle to a running server.
pub struct RelayServerHandle {
    /// The actor.
    pub addr: actix::Addr<RelayServer>,
    /// Where it listens.
    pub local_addr: SocketAddr,
    /// Its public key (devices are configured with it).
    pub public: PublicKey,
}

/// Asks for the server's counters.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "RelayServerCounters")]
pub struct GetServerCounters;

/// Asks for the counters of the queue and the rendezvous table, and what they hold now.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "RelayServerState")]
pub struct GetServerState;

/// What [`GetServerState`] answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayServerState {
    /// The queue core's counters (authentication, admission, rate limits, envelopes).
    pub counters: RelayServerCounters,
    /// The rendezvous table's counters.
    pub rendezvous: TableCounters,
    /// Bytes stored in the queue, charged as against its global bound.
    pub stored_bytes: usize,
    /// Envelopes stored in the queue.
    pub stored_envelopes: usize,
    /// Rendezvous ids in the table.
    pub rendezvous_ids: usize,
    /// Connections open, authenticated or not.
    pub connections: usize,
    /// Frames dropped because a connection's writer queue was full (its device stopped
    /// reading).
    pub writes_dropped: u64,
}

/// A link's writer failed: the link is over.
#[derive(Message)]
#[rtype(result = "()")]
struct ConnEnded(ConnId);

impl RelayServer {
    /// Starts a server on `endpoint` with `config` (its keypair, challenge seed from
    /// OS entropy in production, admission policy and bounds) and its queue in memory
    /// only (lost when it stops); the config's `unix_ms_at_start` is set from the wall
    /// clock.
    pub fn start(
        endpoint: Endpoint,
        mut config: RelayServerConfig,
    ) -> std::io::Result<RelayServerHandle> {
        config.unix_ms_at_start = crate::unix_ms();
        Self::start_with_store(
            endpoint,
            config,
            RendezvousTableConfig::default(),
            Box::new(MemoryRelayQueueStore::new()),
        )
    }

    /// Starts a server whose queue is kept in `store` and taken over from it: what the
    /// store holds and has not expired is pushed to its recipients when they connect.
    /// The config's `unix_ms_at_start` must be the wall clock now (Unix ms): stored
    /// expiries are wall-clock times. `rendezvous` bounds the rendezvous table. A store
    /// that cannot be read is an error, and nothing is started.
    pub fn start_with_store(
        endpoint: Endpoint,
        config: RelayServerConfig,
        rendezvous: RendezvousTableConfig,
        mut store: Box<dyn RelayQueueStore + Send>,
    ) -> std::io::Result<RelayServerHandle> {
        let local_addr = endpoint.local_addr()?;
        let public = *config.keypair.public();
        let unix_ms_at_start = config.unix_ms_at_start;
        let now = runtime_now();
        let mut queue = RelayQueueServer::new(config, now);
        let pruned = store
            .expire(unix_ms_at_start)
            .map_err(std::io::Error::other)?;
        let loaded = store.load().map_err(std::io::Error::other)?;
        let found = loaded.envelopes.len();
        queue.restore(now, loaded);
        let changes: Vec<QueueChange> = std::iter::from_fn(|| queue.poll_change()).collect();
        store.apply(&changes).map_err(std::io::Error::other)?;
        let c = queue.counters();
        if pruned + found as u64 + c.store_undecodable > 0 {
            tracing::info!(
                restored = c.restored,
                expired = pruned + c.expired,
                over_bounds = c.restore_dropped,
                undecodable = c.store_undecodable,
                "relay queue taken over from the store"
            );
        }
        queue.committed();
        let store = if store.commits_to_disk() {
            Committer::Thread(spawn_committer(store)?)
        } else {
            Committer::Inline(store)
        };
        let table = RendezvousTable::new(rendezvous, now);
        let (inbox, inbox_receiver) = mpsc::channel(INBOX_CAPACITY);
        let addr = RelayServer {
            endpoint,
            queue,
            store,
            commit_in_flight: false,
            store_failures: 0,
            writes_dropped: Arc::default(),
            table,
            conns: BTreeMap::new(),
            next_conn: 1,
            timer: CoreTimer::default(),
            tap: None,
            inbox,
            inbox_batches: Some(InboxBatches(inbox_receiver)),
        }
        .start();
        Ok(RelayServerHandle {
            addr,
            local_addr,
            public,
        })
    }

    /// Applies the queue's store changes in one commit, tells the queue, then sends
    /// its outputs. With the store on its own thread, the actor waits for the commit
    /// (taking no input) and sends the outputs when it is done.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        if self.commit_in_flight {
            // Its end drains again.
            return;
        }
        let changes: Vec<QueueChange> = std::iter::from_fn(|| self.queue.poll_change()).collect();
        if changes.is_empty() {
            return self.release(ctx);
        }
        let count = changes.len();
        match &mut self.store {
            Committer::Inline(store) => {
                let result = store.apply(&changes);
                self.committed(result, count, ctx);
            }
            Committer::Thread(jobs) => {
                let (done, result) = oneshot::channel();
                if jobs.send(CommitJob { changes, done }).is_err() {
                    return self.committed(Err(committer_gone()), count, ctx);
                }
                self.commit_in_flight = true;
                ctx.wait(result.into_actor(self).map(move |result, server, ctx| {
                    server.commit_in_flight = false;
                    let result = result.unwrap_or_else(|_| Err(committer_gone()));
                    server.committed(result, count, ctx);
                }));
            }
        }
    }

    /// A commit of `count` changes ended: counts a failure, sends what waited for it,
    /// and commits what was reported meanwhile.
    fn committed(
        &mut self,
        result: Result<(), RelayStoreError>,
        count: usize,
        ctx: &mut Context<Self>,
    ) {
        if let Err(error) = result {
            self.store_failures += 1;
            tracing::error!(
                %error,
                changes = count,
                "relay queue commit failed: these envelopes stay queued in memory but \
                 would not survive a restart"
            );
        }
        self.release(ctx);
        if self.queue.commit_pending() {
            self.drain(ctx);
        }
    }

    /// Tells the queue that what it reported is committed, sends every output it
    /// releases, and re-arms the timer.
    fn release(&mut self, ctx: &mut Context<Self>) {
        self.queue.committed();
        while let Some(output) = self.queue.poll_output() {
            match output {
                ServerOutput::Send(conn, frame) => self.send(conn, &frame),
                ServerOutput::CloseWith(conn, frame) => {
                    if let Some(state) = self.conns.remove(&conn) {
                        match tether_protocol::encode(&frame) {
                            Ok(bytes) => state.handle.close_with_farewell(&bytes),
                            Err(_) => state.handle.close(),
                        }
                    }
                }
                ServerOutput::Close(conn) => {
                    if let Some(state) = self.conns.remove(&conn) {
                        state.handle.close();
                    }
                }
            }
        }
        let next = [self.queue.poll_timeout(), self.table.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        self.timer.rearm(ctx, next, |server, ctx| {
            server.queue.handle_timeout(runtime_now());
            server.table.handle_timeout(runtime_now());
            server.pass_seen();
            server.drain(ctx);
        });
    }

    /// Feeds one frame read from `conn`.
    fn frame(&mut self, conn: ConnId, bytes: Bytes) {
        if let Some(tap) = self.tap.as_mut() {
            tap.push(bytes.to_vec());
        }
        match tether_protocol::decode(&bytes) {
            Ok(WireFrame::Relay(message)) => {
                self.queue
                    .handle(runtime_now(), ServerInput::Frame(conn, message));
            }
            Ok(WireFrame::Rendezvous(message)) => {
                let now = runtime_now();
                let answer = match self.queue.rendezvous_request(now, conn, &message) {
                    Ok(device) => self.table.handle(now, device, message),
                    Err(reason) => Some(RendezvousMessage::Refused { reason }),
                };
                if let Some(answer) = answer {
                    // In order with the connection's other answers.
                    self.queue.rendezvous_answer(conn, answer);
                }
                self.send_pushes();
            }
            // Anything else (peer frames, garbage) is counted by the queue server.
            Ok(_) | Err(_) => {
                self.queue
                    .handle(runtime_now(), ServerInput::Bytes(conn, bytes.to_vec()));
            }
        }
    }

    /// Hands the queue's reports of where devices are seen to the rendezvous table, and
    /// sends what the table pushes for them.
    fn pass_seen(&mut self) {
        while let Some(DeviceSeen {
            device,
            addr,
            rendezvous_ids,
        }) = self.queue.poll_seen()
        {
            if !rendezvous_ids.is_empty() {
                self.table.join(runtime_now(), device, &rendezvous_ids);
            }
            self.table.seen(device, addr);
        }
        self.send_pushes();
    }

    /// Sends the table's pushes (for a pair's other member) on the member's
    /// connection, in order with that connection's answers; a member without one
    /// misses them.
    fn send_pushes(&mut self) {
        while let Some((member, push)) = self.table.poll_push() {
            if let Some(to) = self.queue.connection_of(&member) {
                self.queue.rendezvous_answer(to, push);
            }
        }
    }

    /// The link `conn` is over: it closes at once, and answers still waiting for it
    /// are dropped.
    fn ended(&mut self, conn: ConnId) {
        if let Some(state) = self.conns.remove(&conn) {
            state.handle.close();
            self.queue.handle(runtime_now(), ServerInput::Closed(conn));
        }
    }

    fn send(&mut self, conn: ConnId, frame: &WireFrame) {
        let Some(state) = self.conns.get(&conn) else {
            return;
        };
        if let Ok(bytes) = tether_protocol::encode(frame) {
            let _ = state.writer.send(Bytes::from(bytes));
        }
    }
}

impl Actor for RelayServer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        forward_accepted(self.endpoint.clone(), ctx.address());
        if let Some(batches) = self.inbox_batches.take() {
            ctx.add_stream(batches);
        }
        // Arms the expiry timer of envelopes taken over from the store.
        self.drain(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.endpoint.close();
    }
}

impl Handler<Accepted> for RelayServer {
    type Result = ();

    fn handle(&mut self, message: Accepted, ctx: &mut Self::Context) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let handle = message.0.handle().clone();
        let Some(binding) = handle.channel_binding() else {
            // Without a binding no proof can verify; never the case once QUIC's
            // handshake is done.
            handle.close();
            return;
        };
        let remote = handle.remote_addr();
        let (sender, mut receiver) = message.0.split();
        let me = ctx.address();
        let inbox = self.inbox.clone();
        tokio::spawn(async move {
            let mut last_remote = receiver.handle().remote_addr();
            while let Ok(Some(frame)) = receiver.recv_frame().await {
                let remote = receiver.handle().remote_addr();
                if remote != last_remote {
                    last_remote = remote;
                    if inbox.send(LinkEvent::Moved(conn, remote)).await.is_err() {
                        return; // the server stopped
                    }
                }
                if inbox.send(LinkEvent::Bytes(conn, frame)).await.is_err() {
                    return;
                }
            }
            let _ = inbox.send(LinkEvent::Ended(conn)).await;
        });
        let writer = spawn_writer(sender, self.writes_dropped.clone(), move |_| {
            me.do_send(ConnEnded(conn))
        });
        self.conns.insert(conn, ServerConn { writer, handle });
        self.queue
            .handle(runtime_now(), ServerInput::Opened(conn, binding, remote));
        self.drain(ctx);
    }
}

impl StreamHandler<LinkEvents> for RelayServer {
    fn handle(&mut self, LinkEvents(events): LinkEvents, ctx: &mut Self::Context) {
        for event in events {
            match event {
                LinkEvent::Bytes(conn, bytes) => self.frame(conn, bytes),
                LinkEvent::Moved(conn, remote) => {
                    self.queue
                        .handle(runtime_now(), ServerInput::Moved(conn, remote));
                }
                LinkEvent::Ended(conn) => self.ended(conn),
            }
            self.pass_seen();
            if self.queue.commit_due() {
                self.drain(ctx);
            }
        }
        self.drain(ctx);
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {
        // The actor holds a sender of the inbox, so it never ends while the actor runs.
    }
}

impl Handler<ConnEnded> for RelayServer {
    type Result = ();

    fn handle(&mut self, ConnEnded(conn): ConnEnded, ctx: &mut Self::Context) {
        self.ended(conn);
        self.pass_seen();
        self.drain(ctx);
    }
}

impl Handler<StartTap> for RelayServer {
    type Result = ();

    fn handle(&mut self, _message: StartTap, _ctx: &mut Self::Context) {
        self.tap.get_or_insert_with(Vec::new);
    }
}

impl Handler<GetTap> for RelayServer {
    type Result = MessageResult<GetTap>;

    fn handle(&mut self, _message: GetTap, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.tap.clone().unwrap_or_default())
    }
}

impl Handler<GetServerCounters> for RelayServer {
    type Result = MessageResult<GetServerCounters>;

    fn handle(&mut self, _message: GetServerCounters, _ctx: &mut Self::Context) -> Self::Result {
        let mut counters = self.queue.counters();
        counters.store_failures = self.store_failures;
        MessageResult(counters)
    }
}

impl Handler<GetServerState> for RelayServer {
    type Result = MessageResult<GetServerState>;

    fn handle(&mut self, _message: GetServerState, _ctx: &mut Self::Context) -> Self::Result {
        let mut counters = self.queue.counters();
        counters.store_failures = self.store_failures;
        MessageResult(RelayServerState {
            counters,
            rendezvous: self.table.counters(),
            stored_bytes: self.queue.stored_bytes(),
            stored_envelopes: self.queue.total_queued(),
            rendezvous_ids: self.table.ids(),
            connections: self.queue.connections(),
            writes_dropped: self
                .writes_dropped
                .load(std::sync::atomic::Ordering::Relaxed),
        })
    }
}

tether_protocol::stops_on_shutdown!(RelayServer);

#[cfg(test)]
mod tests {
    use super::*;
    use futures_core::Stream;

    async fn next_batch(batches: &mut InboxBatches) -> Option<Vec<LinkEvent>> {
        std::future::poll_fn(|cx| Pin::new(&mut *batches).poll_next(cx))
            .await
            .map(|LinkEvents(events)| events)
    }

    #[tokio::test]
    async fn the_inbox_holds_at_most_its_capacity_and_a_wakeup_takes_one_batch() {
        let (inbox, receiver) = mpsc::channel(INBOX_CAPACITY);
        let mut batches = InboxBatches(receiver);
        for n in 0..INBOX_CAPACITY as u64 {
            inbox
                .try_send(LinkEvent::Ended(ConnId(n)))
                .expect("room below the capacity");
        }
        // Full: a reader's next event waits (its link is not read meanwhile).
        assert!(matches!(
            inbox.try_send(LinkEvent::Ended(ConnId(u64::MAX))),
            Err(mpsc::error::TrySendError::Full(_))
        ));
        let mut expected = 0;
        while expected < INBOX_CAPACITY as u64 {
            let batch = next_batch(&mut batches).await.expect("events waiting");
            // Every wakeup takes what is waiting, one batch at most, in order.
            assert_eq!(batch.len(), MAX_INPUTS_PER_COMMIT);
            for event in batch {
                assert!(matches!(event, LinkEvent::Ended(ConnId(n)) if n == expected));
                expected += 1;
            }
            // Room again for as many as were taken.
            inbox
                .try_send(LinkEvent::Moved(
                    ConnId(0),
                    SocketAddr::from(([127, 0, 0, 1], 1)),
                ))
                .expect("room after a batch was taken");
        }
        let rest = next_batch(&mut batches).await.expect("the later events");
        assert_eq!(rest.len(), INBOX_CAPACITY / MAX_INPUTS_PER_COMMIT);
        drop(inbox);
        assert!(next_batch(&mut batches).await.is_none());
    }
}
