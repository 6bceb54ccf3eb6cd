//! Driving a sans-IO client of the relay (one that holds a
//! [`ServerLink`](tether_server_link::ServerLink) of its own, outside any node) over a
//! real UDP endpoint: `tether invite` / `accept` ([`super::pairing`]) and
//! `tether netcheck` ([`super::netcheck`]).
//!
//! The core does no IO and reads no clock: [`drive`] dials for it, carries the frames
//! of its links both ways, reports their channel bindings, ups and downs (the relay's
//! refusal carried in a link's close included), wakes it at its deadlines, and hands
//! every other output to the caller, until the caller says the run is over.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};
use tether_protocol::{LinkBound, LinkId, PathKind, RequestId, TransportCommand, TransportEvent};
use tokio::sync::mpsc;

/// What a core yields: a transport command for [`drive`], or something for the caller.
#[derive(Debug)]
pub enum CoreOutput<O> {
    /// Dial, transmit or close.
    Transport(TransportCommand),
    /// The caller's.
    Other(O),
}

/// A sans-IO client of the relay that [`drive`] runs.
pub trait ServerClientCore {
    /// What it yields besides transport commands.
    type Output;

    /// A transport event of one of its links or dials.
    fn transport(&mut self, now: Instant, event: TransportEvent);

    /// A link's channel binding (reported before the link's `LinkUp`).
    fn bound(&mut self, bound: LinkBound);

    /// Its deadline passed (spurious calls are harmless).
    fn handle_timeout(&mut self, now: Instant);

    /// Its next deadline.
    fn poll_timeout(&self) -> Option<Instant>;

    /// Its next output.
    fn poll_output(&mut self) -> Option<CoreOutput<Self::Output>>;
}

/// The local UDP address to dial `relay` from: the wildcard of its family, any port.
pub fn local_bind_for(relay: SocketAddr) -> SocketAddr {
    let ip = match relay.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}

/// The endpoint could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open a UDP endpoint: {0}")]
pub struct BindError(String);

enum Event {
    Dialled(RequestId, Result<tether_transport::Link, String>),
    Frame(LinkId, Vec<u8>),
    Down(LinkId, String),
}

/// Runs `core` over a fresh UDP endpoint (bound to [`local_bind_for`] `relay`) until
/// `on_output` breaks with the result; `on_output` gets the core back to answer it.
/// Every link is closed and the endpoint drained (at most a second) before it returns.
pub async fn drive<C: ServerClientCore, R>(
    relay: SocketAddr,
    core: &mut C,
    mut on_output: impl FnMut(&mut C, C::Output) -> ControlFlow<R>,
) -> Result<R, BindError> {
    let endpoint = tether_transport::Endpoint::bind_udp(
        local_bind_for(relay),
        tether_transport::TransportConfig::default(),
    )
    .await
    .map_err(|e| BindError(e.to_string()))?;
    let (events, mut incoming) = mpsc::unbounded_channel::<Event>();
    let mut writers: BTreeMap<
        LinkId,
        (mpsc::UnboundedSender<Vec<u8>>, tether_transport::LinkHandle),
    > = BTreeMap::new();
    let result = loop {
        let mut finished = None;
        while let Some(output) = core.poll_output() {
            match output {
                CoreOutput::Transport(TransportCommand::Dial { request, addrs }) => {
                    let endpoint = endpoint.clone();
                    let events = events.clone();
                    tokio::spawn(async move {
                        let link = tether_transport::dial_any(&endpoint, &addrs)
                            .await
                            .map_err(|e| e.to_string());
                        let _ = events.send(Event::Dialled(request, link));
                    });
                }
                CoreOutput::Transport(TransportCommand::Transmit { link, frame }) => {
                    if let Some((writer, _)) = writers.get(&link) {
                        let _ = writer.send(frame);
                    }
                }
                CoreOutput::Transport(
                    TransportCommand::Close { link } | TransportCommand::Farewell { link, .. },
                ) => {
                    if let Some((_, handle)) = writers.remove(&link) {
                        handle.close();
                    }
                }
                CoreOutput::Other(output) => {
                    if let ControlFlow::Break(result) = on_output(core, output) {
                        finished = Some(result);
                    }
                }
            }
        }
        if let Some(result) = finished {
            break result;
        }
        let wake = core
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            event = incoming.recv() => {
                let now = Instant::now();
                match event {
                    Some(Event::Dialled(request, Ok(link))) => {
                        let id = link.id();
                        let handle = link.handle().clone();
                        let remote = link.remote_addr();
                        if let Some(binding) = handle.channel_binding() {
                            core.bound(LinkBound { link: id, binding });
                        }
                        let writer = carry(link, id, &events);
                        writers.insert(id, (writer, handle));
                        core.transport(now, TransportEvent::LinkUp {
                            request: Some(request),
                            link: id,
                            path: PathKind::Direct,
                            remote: Some(remote),
                        });
                    }
                    Some(Event::Dialled(request, Err(reason))) => {
                        core.transport(now, TransportEvent::DialFailed { request, reason });
                    }
                    Some(Event::Frame(link, frame)) => {
                        core.transport(now, TransportEvent::FrameReceived { link, frame });
                    }
                    Some(Event::Down(link, reason)) if writers.remove(&link).is_some() => {
                        core.transport(now, TransportEvent::LinkDown { link, reason });
                    }
                    Some(Event::Down(..)) | None => {}
                }
            }
            () = tokio::time::sleep_until(wake) => core.handle_timeout(Instant::now()),
        }
    };
    for (_, (_, handle)) in writers {
        handle.close();
    }
    endpoint.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    Ok(result)
}

/// Carries a link's frames: what is written to the returned sender goes out, and what
/// arrives (then the link's end) comes back as events.
fn carry(
    link: tether_transport::Link,
    id: LinkId,
    events: &mpsc::UnboundedSender<Event>,
) -> mpsc::UnboundedSender<Vec<u8>> {
    let (sender, mut receiver) = link.split();
    let (writer, mut queue) = mpsc::unbounded_channel::<Vec<u8>>();
    let down = events.clone();
    tokio::spawn(async move {
        while let Some(frame) = queue.recv().await {
            if let Err(error) = sender.send_frame(frame.into()).await {
                let _ = down.send(Event::Down(id, error.to_string()));
                break;
            }
        }
    });
    let reader = events.clone();
    tokio::spawn(async move {
        let reason = loop {
            match receiver.recv_frame().await {
                Ok(Some(frame)) => {
                    if reader.send(Event::Frame(id, frame.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(None) => break "closed".to_string(),
                Err(error) => break error.to_string(),
            }
        };
        // The relay's refusal (not admitted, say) is its last frame, carried in its
        // close.
        if let Some(tether_transport::LostReason::Farewell { frame }) =
            receiver.handle().lost_reason()
        {
            let _ = reader.send(Event::Frame(id, frame));
        }
        let _ = reader.send(Event::Down(id, reason));
    });
    writer
}
