//! The two background loops every endpoint-owning actor needs: hand accepted links to
//! the actor, and write a link's frames in order.

use actix::{Actor, Addr, Handler, Message};
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tether_transport::{Endpoint, Link, LinkSender};
use tokio::sync::mpsc;

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
pub(crate) struct LinkWriter {
    queue: mpsc::UnboundedSender<Bytes>,
    queued_bytes: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
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
        self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        self.queue.send(frame).map_err(|_| WriteRefused::Closed)
    }
}

/// Writes the frames queued on the returned writer to `sender`, in order; a failed
/// write ends the loop and calls `on_error` with the reason. Frames refused because
/// the queue was full are counted in `dropped`.
pub(crate) fn spawn_writer(
    sender: LinkSender,
    dropped: Arc<AtomicU64>,
    on_error: impl FnOnce(String) + Send + 'static,
) -> LinkWriter {
    let (queue, mut frames) = mpsc::unbounded_channel::<Bytes>();
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let written = queued_bytes.clone();
    tokio::spawn(async move {
        while let Some(frame) = frames.recv().await {
            let len = frame.len();
            let result = sender.send_frame(frame).await;
            written.fetch_sub(len, Ordering::Relaxed);
            if let Err(error) = result {
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
    use tokio::sync::oneshot;

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

    #[actix_rt::test]
    async fn a_busy_owner_delays_accepted_links_but_never_stops_their_flow() {
        let config = TransportConfig::default();
        let server = Endpoint::bind_udp(loopback(), config.clone())
            .await
            .expect("a loopback endpoint binds");
        let client = Endpoint::bind_udp(loopback(), config)
            .await
            .expect("a loopback endpoint binds");
        let addr = server.local_addr().expect("bound");
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
}
