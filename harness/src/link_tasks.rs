//! The two background loops every endpoint-owning actor needs: hand accepted links to
//! the actor, and write a link's frames in order.

use actix::{Actor, Addr, Handler, Message};
use bytes::Bytes;
use tether_transport::{Endpoint, Link, LinkSender};
use tokio::sync::mpsc;

/// A link the endpoint accepted, for the actor that owns the endpoint.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Accepted(pub Link);

/// Forwards every link `endpoint` accepts to `owner`, until the endpoint closes or the
/// actor is gone.
pub(crate) fn forward_accepted<A>(endpoint: Endpoint, owner: Addr<A>)
where
    A: Actor + Handler<Accepted>,
    A::Context: actix::dev::ToEnvelope<A, Accepted>,
{
    tokio::spawn(async move {
        while let Some(link) = endpoint.accept().await {
            if owner.try_send(Accepted(link)).is_err() {
                break;
            }
        }
    });
}

/// Writes the frames queued on the returned sender to `sender`, in order; a failed
/// write ends the loop and calls `on_error` with the reason.
pub(crate) fn spawn_writer(
    sender: LinkSender,
    on_error: impl FnOnce(String) + Send + 'static,
) -> mpsc::UnboundedSender<Bytes> {
    let (writer, mut queue) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        while let Some(frame) = queue.recv().await {
            if let Err(error) = sender.send_frame(frame).await {
                on_error(error.to_string());
                break;
            }
        }
    });
    writer
}
