//! The two background loops every endpoint-owning actor needs: hand accepted links to
//! the actor, and write a link's frames in order.

use actix::{Actor, Addr, Handler, Message};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tether_transport::{Endpoint, Link, LinkSender};
use tokio::sync::Notify;

/// Bytes that may wait for one link's writer: 16 MiB, twice a peer's receive budget
/// (`Limits::receive_budget`), so a session at full speed never meets it, while a link
/// whose peer stops reading (QUIC's flow control then stops the writer) holds at most
/// this much. Beyond it frames are dropped and counted, as a full network queue would
/// drop them: the session layer resends what it needs.
pub const MAX_WRITER_QUEUE_BYTES: usize = 16 * 1024 * 1024;

/// A link the endpoint accepted, for the actor that owns the endpoint.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Accepted(pub Link);

/// Forwards every link `endpoint` accepts to `owner`, until the endpoint closes or the
/// actor is gone.
///
/// A busy owner (a full mailbox) makes the loop wait, never stop: the accepted links
/// wait in the endpoint's bounded queue meanwhile, and the endpoint's handshake slots
/// are returned as the queue drains. Only the owner's end stops the loop.
pub(crate) fn forward_accepted<A>(endpoint: Endpoint, owner: Addr<A>)
where
    A: Actor + Handler<Accepted>,
    A::Context: actix::dev::ToEnvelope<A, Accepted>,
{
    tokio::spawn(async move {
        while let Some(link) = endpoint.accept().await {
            if owner.send(Accepted(link)).await.is_err() {
                // The owner stopped: nobody will take links from this endpoint again.
                break;
            }
        }
    });
}

/// The queue in front of one link's writer task, bounded by
/// [`MAX_WRITER_QUEUE_BYTES`].
///
/// A plain `VecDeque` behind a lock, not a tokio channel: a channel allocates a block of
/// 32 slots and a cache-padded channel state (about 1.5 KiB) for each link up front, and
/// a node with many idle sessions holds two links per session; this queue allocates
/// nothing until a frame is queued, then only what the frames in flight need.
pub(crate) struct LinkWriter {
    queue: Arc<WriterQueue>,
    queued_bytes: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
}

/// What a [`LinkWriter`] and its task share.
#[derive(Default)]
struct WriterQueue {
    state: Mutex<QueueState>,
    /// Wakes the task: a frame was queued, or the writer was dropped. A wake-up that
    /// comes while the task is busy is kept (a `Notify` permit), so none is lost.
    wake: Notify,
}

#[derive(Default)]
struct QueueState {
    frames: VecDeque<Bytes>,
    /// The [`LinkWriter`] was dropped: the task writes what is queued, then ends.
    writer_dropped: bool,
    /// The task ended (a failed write): nothing more is queued.
    task_ended: bool,
}

impl WriterQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Nothing panics while holding the lock; if something did, the queue's state
        // is still consistent (each change is a single push, pop or flag).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why a frame was not queued for a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteRefused {
    /// The link's queue holds [`MAX_WRITER_QUEUE_BYTES`]: dropped and counted.
    Full,
    /// The writer stopped (the link is ending).
    Closed,
}

impl LinkWriter {
    /// Queues `frame`, unless the queue is full (dropped, counted) or the link ended.
    pub(crate) fn send(&self, frame: Bytes) -> Result<(), WriteRefused> {
        let len = frame.len();
        if self.queued_bytes.load(Ordering::Relaxed) + len > MAX_WRITER_QUEUE_BYTES {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(WriteRefused::Full);
        }
        {
            let mut state = self.queue.lock();
            if state.task_ended {
                return Err(WriteRefused::Closed);
            }
            self.queued_bytes.fetch_add(len, Ordering::Relaxed);
            state.frames.push_back(frame);
        }
        self.queue.wake.notify_one();
        Ok(())
    }
}

impl Drop for LinkWriter {
    fn drop(&mut self) {
        self.queue.lock().writer_dropped = true;
        self.queue.wake.notify_one();
    }
}

/// Writes the frames queued on the returned writer to `sender`, in order; a failed
/// write ends the loop and calls `on_error` with the reason. Frames refused because
/// the queue was full are counted in `dropped`. Once the writer is dropped, the loop
/// writes what is still queued and ends.
pub(crate) fn spawn_writer(
    sender: LinkSender,
    dropped: Arc<AtomicU64>,
    on_error: impl FnOnce(String) + Send + 'static,
) -> LinkWriter {
    let queue = Arc::new(WriterQueue::default());
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let written = queued_bytes.clone();
    let shared = queue.clone();
    tokio::spawn(async move {
        loop {
            let next = {
                let mut state = shared.lock();
                match state.frames.pop_front() {
                    Some(frame) => Some(frame),
                    None if state.writer_dropped => break,
                    None => None,
                }
            };
            let Some(frame) = next else {
                shared.wake.notified().await;
                continue;
            };
            let len = frame.len();
            let result = sender.send_frame(frame).await;
            written.fetch_sub(len, Ordering::Relaxed);
            if let Err(error) = result {
                let mut state = shared.lock();
                state.task_ended = true;
                let unsent: usize = state.frames.drain(..).map(|f| f.len()).sum();
                written.fetch_sub(unsent, Ordering::Relaxed);
                drop(state);
                on_error(error.to_string());
                break;
            }
        }
    });
    LinkWriter {
        queue,
        queued_bytes,
        dropped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix::{AsyncContext, Context, WrapFuture};
    use std::time::Duration;
    use tether_transport::TransportConfig;
    use tokio::sync::{mpsc, oneshot};

    /// Links sent to the owner before it is released; each is handed to the test.
    const LINKS: usize = 6;

    /// An owner whose mailbox holds one message and which handles nothing until it is
    /// released, as an actor busy with other work would.
    struct BusyOwner {
        release: Option<oneshot::Receiver<()>>,
        handed: mpsc::UnboundedSender<Link>,
    }

    impl Actor for BusyOwner {
        type Context = Context<Self>;

        fn started(&mut self, ctx: &mut Self::Context) {
            ctx.set_mailbox_capacity(1);
            if let Some(release) = self.release.take() {
                ctx.wait(
                    async move {
                        let _ = release.await;
                    }
                    .into_actor(self),
                );
            }
        }
    }

    impl Handler<Accepted> for BusyOwner {
        type Result = ();

        fn handle(&mut self, accepted: Accepted, _ctx: &mut Self::Context) {
            let _ = self.handed.send(accepted.0);
        }
    }

    fn loopback() -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], 0))
    }

    /// A server and a client endpoint on loopback, and the server's address.
    async fn loopback_pair() -> (Endpoint, Endpoint, std::net::SocketAddr) {
        let config = TransportConfig::default();
        let server = Endpoint::bind_udp(loopback(), config.clone())
            .await
            .expect("a loopback endpoint binds");
        let client = Endpoint::bind_udp(loopback(), config)
            .await
            .expect("a loopback endpoint binds");
        let addr = server.local_addr().expect("bound");
        (server, client, addr)
    }

    #[actix_rt::test]
    async fn a_busy_owner_delays_accepted_links_but_never_stops_their_flow() {
        let (server, client, addr) = loopback_pair().await;
        let (release, released) = oneshot::channel();
        let (handed, mut links) = mpsc::unbounded_channel();
        let owner = BusyOwner {
            release: Some(released),
            handed,
        }
        .start();
        forward_accepted(server.clone(), owner);

        // More links than the owner's mailbox holds, while it is busy.
        let mut dialled = Vec::new();
        for _ in 0..LINKS {
            dialled.push(client.dial(addr).await.expect("loopback dial"));
        }
        let mut turns = 0;
        while server.stats().links_accepted < LINKS as u64 {
            turns += 1;
            assert!(
                turns < 100_000,
                "the endpoint accepted {:?}",
                server.stats()
            );
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            // Let the forwarding loop meet the full mailbox.
            tokio::task::yield_now().await;
        }
        let _ = release.send(());

        let bound = Duration::from_secs(10);
        for n in 0..LINKS {
            let link = tokio::time::timeout(bound, links.recv()).await;
            assert!(
                matches!(link, Ok(Some(_))),
                "link {n} of {LINKS} never reached the owner"
            );
        }
        // And the endpoint still hands over a link that comes later.
        dialled.push(client.dial(addr).await.expect("loopback dial"));
        let late = tokio::time::timeout(bound, links.recv()).await;
        assert!(matches!(late, Ok(Some(_))), "a later link never arrived");
    }

    #[actix_rt::test]
    async fn a_writer_holds_no_queue_until_a_frame_comes_and_writes_frames_in_order() {
        let (server, client, addr) = loopback_pair().await;
        let bound = Duration::from_secs(10);
        let dialled = client.dial(addr).await.expect("loopback dial");
        let accepted = tokio::time::timeout(bound, server.accept())
            .await
            .expect("the dialled link is accepted in time")
            .expect("the endpoint is open");
        let (sender, _dialled_receiver) = dialled.split();
        let (_accepted_sender, mut receiver) = accepted.split();

        let writer = spawn_writer(sender, Arc::default(), |_| {});
        // An idle link's writer allocates no queue.
        assert_eq!(writer.queue.lock().frames.capacity(), 0);

        const FRAMES: u32 = 200;
        for n in 0..FRAMES {
            writer
                .send(Bytes::from(n.to_be_bytes().to_vec()))
                .expect("the queue has room");
        }
        // Dropped with frames still queued: they are written all the same.
        drop(writer);
        for n in 0..FRAMES {
            let frame = tokio::time::timeout(bound, receiver.recv_frame())
                .await
                .expect("each frame arrives in time")
                .expect("the link is up")
                .expect("the stream is open");
            assert_eq!(frame.as_ref(), n.to_be_bytes(), "frame {n} out of order");
        }
    }
}
