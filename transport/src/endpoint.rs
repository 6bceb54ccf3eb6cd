//! The device's QUIC endpoint: client and server on one UDP socket, over real UDP or the
//! simulated network, able to move to a new local address while it runs.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{mpsc, Semaphore};
use tokio::task::AbortHandle;

use crate::config::TransportConfig;
use crate::error::{DialError, EndpointError, LostReason};
use crate::link::{close_code, Link, LinkRole, LinkShared, LINK_PREAMBLE};
use crate::quic;
use crate::receive_drops::ReceiveDrops;
use crate::sim::{HostId, SimNetwork};
use crate::socket::SocketFactory;
use crate::stats::{bump, EndpointCounters, EndpointStats};
use crate::sync::lock;
use tether_protocol::LinkId;

/// Accepted links waiting for [`Endpoint::accept`]. 16 is plenty for a device with a
/// handful of peers; when full, finished handshakes wait (back-pressure) rather than
/// piling up.
const ACCEPT_QUEUE: usize = 16;

type Registry = Arc<Mutex<LinkRegistry<LinkShared>>>;

/// Every link of the endpoint, weakly, so that a rebind reaches them all. Entries of
/// links gone are pruned when the map has doubled since the last prune: amortized
/// constant work per link, where pruning at every registration walked every link for
/// each new one (a node with 20 000 links did 20 000 steps per dial or accept).
struct LinkRegistry<T> {
    links: BTreeMap<LinkId, Weak<T>>,
    /// Prune when the map reaches this many entries.
    prune_at: usize,
}

impl<T> Default for LinkRegistry<T> {
    fn default() -> Self {
        Self {
            links: BTreeMap::new(),
            prune_at: Self::MIN_PRUNE_AT,
        }
    }
}

impl<T> LinkRegistry<T> {
    /// Least `prune_at`: a small map is pruned now and then regardless.
    const MIN_PRUNE_AT: usize = 64;

    /// Adds a link, first pruning the links gone if the map has grown enough.
    fn insert(&mut self, id: LinkId, link: Weak<T>) {
        if self.links.len() >= self.prune_at {
            self.prune();
        }
        self.links.insert(id, link);
    }

    fn prune(&mut self) {
        self.links.retain(|_, weak| weak.strong_count() > 0);
        self.prune_at = (self.links.len() * 2).max(Self::MIN_PRUNE_AT);
    }
}

struct Inner {
    quinn: quinn::Endpoint,
    config: TransportConfig,
    client: quinn::ClientConfig,
    factory: SocketFactory,
    counters: Arc<EndpointCounters>,
    receive_drops: Arc<ReceiveDrops>,
    links: Registry,
    next_link: Arc<AtomicU64>,
    accepted: tokio::sync::Mutex<mpsc::Receiver<Link>>,
    accept_task: AbortHandle,
    /// Serialises rebinds so two of them cannot interleave their bind/close steps.
    rebind_lock: Mutex<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.quinn.close(
            quinn::VarInt::from_u32(close_code::NORMAL),
            b"endpoint closed",
        );
    }
}

/// One QUIC endpoint per device: dials and accepts [`Link`]s on one UDP socket.
///
/// Cloning gives another handle to the same endpoint; it closes, and every link with
/// it, when the last handle is dropped (or on [`Endpoint::close`]).
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("local", &self.local_addr().ok())
            .field("factory", &self.inner.factory)
            .finish_non_exhaustive()
    }
}

/// What a [`Endpoint::rebind`] did to the endpoint's links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebindOutcome {
    /// The local address before.
    pub old: SocketAddr,
    /// The local address after.
    pub new: SocketAddr,
    /// Links we dialled: QUIC migrates them to the new address (if the peer can still
    /// be reached from it).
    pub migrating: Vec<LinkId>,
    /// Links we accepted: lost ([`LostReason::LocalAddressChanged`]); the session layer
    /// must re-dial the peer (a transport-only reconnect, not a handshake).
    pub lost: Vec<LinkId>,
}

impl Endpoint {
    /// Binds an endpoint on a real UDP socket (port 0 picks a free port).
    pub async fn bind_udp(
        addr: SocketAddr,
        config: TransportConfig,
    ) -> Result<Self, EndpointError> {
        Self::bind(SocketFactory::Udp, addr, config)
    }

    /// Binds an endpoint on a host of the simulated network.
    pub async fn bind_sim(
        net: &SimNetwork,
        host: HostId,
        addr: SocketAddr,
        config: TransportConfig,
    ) -> Result<Self, EndpointError> {
        let factory = SocketFactory::Sim {
            net: net.clone(),
            host,
        };
        Self::bind(factory, addr, config)
    }

    /// Needs a tokio runtime (quinn spawns its driver); the public constructors are
    /// `async` to make that explicit.
    fn bind(
        factory: SocketFactory,
        addr: SocketAddr,
        config: TransportConfig,
    ) -> Result<Self, EndpointError> {
        config.validate()?;
        let counters = Arc::new(EndpointCounters::default());
        let receive_drops = Arc::new(ReceiveDrops::default());
        let socket = factory
            .bind(addr, counters.clone(), &receive_drops)
            .map_err(|source| EndpointError::Bind { addr, source })?;
        let server = quic::server_config(&config)?;
        let client = quic::client_config(&config)?;
        let mut endpoint_config = quic::endpoint_config(&config);
        endpoint_config.cid_generator(quic::counting_cid_generator(counters.clone()));
        let quinn = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| EndpointError::Bind { addr, source })?;

        let links: Registry = Arc::default();
        let next_link = Arc::new(AtomicU64::new(1));
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let acceptor = Acceptor {
            quinn: quinn.clone(),
            config: config.clone(),
            counters: counters.clone(),
            links: links.clone(),
            next_link: next_link.clone(),
            ready: tx,
        };
        let accept_task = tokio::spawn(acceptor.run()).abort_handle();
        Ok(Self {
            inner: Arc::new(Inner {
                quinn,
                config,
                client,
                factory,
                counters,
                receive_drops,
                links,
                next_link,
                accepted: tokio::sync::Mutex::new(rx),
                accept_task,
                rebind_lock: Mutex::new(()),
            }),
        })
    }

    /// The local address of the current socket.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.quinn.local_addr()
    }

    /// The configuration the endpoint was built with.
    pub fn config(&self) -> &TransportConfig {
        &self.inner.config
    }

    /// Traffic and drop counters.
    ///
    /// On Linux this reads the kernel's receive-buffer drops of the endpoint's socket
    /// (`/proc/self/net/udp` and `udp6`): a cheap call, but not one for a hot path.
    pub fn stats(&self) -> EndpointStats {
        self.inner
            .counters
            .receive_buffer_drops
            .store(self.inner.receive_drops.total(), Ordering::Relaxed);
        self.inner.counters.snapshot()
    }

    /// The next link a peer opened to us; `None` once the endpoint is closed.
    ///
    /// Handshakes run in the background: a slow or hostile peer never delays another.
    pub async fn accept(&self) -> Option<Link> {
        self.inner.accepted.lock().await.recv().await
    }

    /// Dials one address, bounded by the configured dial timeout. See
    /// [`dial_any`](crate::dial_any) for several candidates.
    pub async fn dial(&self, addr: SocketAddr) -> Result<Link, DialError> {
        match tokio::time::timeout(self.inner.config.dial_timeout, self.dial_inner(addr)).await {
            Ok(result) => result,
            Err(_) => Err(DialError::TimedOut { addr }),
        }
    }

    async fn dial_inner(&self, addr: SocketAddr) -> Result<Link, DialError> {
        let connecting = self
            .inner
            .quinn
            .connect_with(self.inner.client.clone(), addr, quic::SERVER_NAME)
            .map_err(|e| DialError::from_connect(addr, e))?;
        let conn = connecting
            .await
            .map_err(|e| DialError::from_connection(addr, e))?;
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| DialError::from_connection(addr, e))?;
        send.write_all(&LINK_PREAMBLE)
            .await
            .map_err(|e| DialError::Refused {
                addr,
                reason: e.to_string(),
            })?;
        let id = LinkId(self.inner.next_link.fetch_add(1, Ordering::Relaxed));
        let (link, shared) = Link::new(
            id,
            LinkRole::Dialled,
            conn,
            send,
            recv,
            self.inner.config.max_frame_len,
        );
        register(&self.inner.links, &shared);
        bump(&self.inner.counters.links_dialled);
        tracing::debug!(%id, %addr, "dialled link");
        Ok(link)
    }

    /// Moves the endpoint to a new local socket at `addr` (the device changed networks)
    /// without dropping the endpoint.
    ///
    /// Links we dialled try QUIC's own migration: the next packet goes out from the new
    /// address and the peer validates the new path; the peer's
    /// [`remote_addr`](crate::LinkHandle::remote_addr) then shows the new address.
    /// Links we accepted cannot migrate (RFC 9000 §9: only the client may) and are
    /// closed at once with [`LostReason::LocalAddressChanged`]; the peer notices at its
    /// idle timeout at the latest, sooner when the session layer re-dials.
    ///
    /// On error nothing changed: the old socket stays in use.
    pub fn rebind(&self, addr: SocketAddr) -> Result<RebindOutcome, EndpointError> {
        let _serial = lock(&self.inner.rebind_lock);
        let old = self
            .local_addr()
            .map_err(|source| EndpointError::Bind { addr, source })?;
        let socket = self
            .inner
            .factory
            .bind(addr, self.inner.counters.clone(), &self.inner.receive_drops)
            .map_err(|source| EndpointError::Bind { addr, source })?;
        let new = socket
            .local_addr()
            .map_err(|source| EndpointError::Bind { addr, source })?;
        self.inner
            .quinn
            .rebind_abstract(socket)
            .map_err(|source| EndpointError::Bind { addr, source })?;
        let mut migrating = Vec::new();
        let mut lost = Vec::new();
        for link in live_links(&self.inner.links) {
            match link.role() {
                LinkRole::Dialled => migrating.push(link.id()),
                LinkRole::Accepted => {
                    link.close_with(
                        LostReason::LocalAddressChanged,
                        close_code::ACCEPTOR_MOVED,
                        b"accepting side moved",
                    );
                    lost.push(link.id());
                }
            }
        }
        bump(&self.inner.counters.rebinds);
        tracing::info!(%old, %new, ?migrating, ?lost, "endpoint rebound");
        Ok(RebindOutcome {
            old,
            new,
            migrating,
            lost,
        })
    }

    /// Closes every link and stops accepting.
    pub fn close(&self) {
        self.inner.quinn.close(
            quinn::VarInt::from_u32(close_code::NORMAL),
            b"endpoint closed",
        );
        self.inner.accept_task.abort();
    }

    /// Resolves once every connection has finished closing (its close packets sent and
    /// its draining period over). A process that exits right after [`Endpoint::close`]
    /// may otherwise never send the close, or a farewell, at all.
    pub async fn wait_idle(&self) {
        self.inner.quinn.wait_idle().await;
    }
}

fn register(links: &Registry, shared: &Arc<LinkShared>) {
    lock(links).insert(shared.id(), Arc::downgrade(shared));
}

fn live_links(links: &Registry) -> Vec<Arc<LinkShared>> {
    let mut registry = lock(links);
    registry.prune();
    registry
        .links
        .values()
        .filter_map(Weak::upgrade)
        .filter(|link| link.is_open())
        .collect()
}

/// The background accept loop: each incoming connection gets its own task, bounded by
/// `max_pending_accepts`, and finished links are queued for [`Endpoint::accept`].
struct Acceptor {
    quinn: quinn::Endpoint,
    config: TransportConfig,
    counters: Arc<EndpointCounters>,
    links: Registry,
    next_link: Arc<AtomicU64>,
    ready: mpsc::Sender<Link>,
}

/// Pending accepts per source address, each returned when its [`SourceSlot`] drops. It
/// holds at most `max_pending_accepts` + 1 entries: an entry lives only while one of its
/// slots is held, and a slot outlives the accept loop's turn only with a global permit.
#[derive(Debug, Default)]
struct PendingBySource(Mutex<BTreeMap<IpAddr, usize>>);

impl PendingBySource {
    /// A slot for `source`, unless it already holds `limit`.
    fn take(self: &Arc<Self>, source: IpAddr, limit: usize) -> Option<SourceSlot> {
        let mut pending = lock(&self.0);
        let held = pending.entry(source).or_default();
        if *held >= limit {
            return None;
        }
        *held += 1;
        Some(SourceSlot {
            table: self.clone(),
            source,
        })
    }
}

/// One pending accept of one source address; returned on drop, on every path.
struct SourceSlot {
    table: Arc<PendingBySource>,
    source: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut pending = lock(&self.table.0);
        if let Some(held) = pending.get_mut(&self.source) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                pending.remove(&self.source);
            }
        }
    }
}

impl Acceptor {
    async fn run(self) {
        let slots = Arc::new(Semaphore::new(self.config.max_pending_accepts));
        let by_source = Arc::new(PendingBySource::default());
        while let Some(incoming) = self.quinn.accept().await {
            let source = incoming.remote_address().ip();
            let Some(source_slot) =
                by_source.take(source, self.config.max_pending_accepts_per_source)
            else {
                bump(&self.counters.incoming_refused);
                tracing::debug!(%source, "refusing incoming: too many pending from this address");
                incoming.refuse();
                continue;
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                bump(&self.counters.incoming_refused);
                tracing::debug!(remote = %incoming.remote_address(), "refusing incoming: too many pending");
                incoming.refuse();
                continue;
            };
            let task = PendingAccept {
                config: self.config.clone(),
                counters: self.counters.clone(),
                links: self.links.clone(),
                next_link: self.next_link.clone(),
                ready: self.ready.clone(),
            };
            tokio::spawn(async move {
                task.run(incoming).await;
                drop(permit);
                drop(source_slot);
            });
        }
    }
}

struct PendingAccept {
    config: TransportConfig,
    counters: Arc<EndpointCounters>,
    links: Registry,
    next_link: Arc<AtomicU64>,
    ready: mpsc::Sender<Link>,
}

/// Why an incoming connection did not become a link.
enum AcceptFailure {
    Failed(String),
    BadPreamble,
}

impl PendingAccept {
    async fn run(self, incoming: quinn::Incoming) {
        let remote = incoming.remote_address();
        let established =
            tokio::time::timeout(self.config.accept_timeout, self.establish(incoming)).await;
        let link = match established {
            Ok(Ok(link)) => link,
            Ok(Err(AcceptFailure::BadPreamble)) => {
                bump(&self.counters.bad_streams);
                tracing::debug!(%remote, "incoming stream is not a Tether link");
                return;
            }
            Ok(Err(AcceptFailure::Failed(why))) => {
                bump(&self.counters.accept_failures);
                tracing::debug!(%remote, %why, "incoming connection failed");
                return;
            }
            Err(_) => {
                bump(&self.counters.accept_failures);
                tracing::debug!(%remote, "incoming connection timed out");
                return;
            }
        };
        bump(&self.counters.links_accepted);
        tracing::debug!(id = %link.id(), %remote, "accepted link");
        // If nobody accepts any more (endpoint closed), the link is dropped and closed.
        let _ = self.ready.send(link).await;
    }

    async fn establish(&self, incoming: quinn::Incoming) -> Result<Link, AcceptFailure> {
        let failed = |e: &dyn fmt::Display| AcceptFailure::Failed(e.to_string());
        let conn = incoming.await.map_err(|e| failed(&e))?;
        let (send, mut recv) = conn.accept_bi().await.map_err(|e| failed(&e))?;
        let mut preamble = [0u8; LINK_PREAMBLE.len()];
        recv.read_exact(&mut preamble)
            .await
            .map_err(|e| failed(&e))?;
        if preamble != LINK_PREAMBLE {
            conn.close(
                quinn::VarInt::from_u32(close_code::BAD_PREAMBLE),
                b"not a tether link",
            );
            return Err(AcceptFailure::BadPreamble);
        }
        let id = LinkId(self.next_link.fetch_add(1, Ordering::Relaxed));
        let (link, shared) = Link::new(
            id,
            LinkRole::Accepted,
            conn,
            send,
            recv,
            self.config.max_frame_len,
        );
        register(&self.links, &shared);
        Ok(link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_registry_stays_within_twice_the_live_links() {
        let mut registry: LinkRegistry<u64> = LinkRegistry::default();
        let mut live = Vec::new();
        for n in 0..100_000_u64 {
            let link = Arc::new(n);
            registry.insert(LinkId(n), Arc::downgrade(&link));
            // One link in ten stays open; the others close at once.
            if n % 10 == 0 {
                live.push(link);
            }
            let bound = (2 * live.len()).max(LinkRegistry::<u64>::MIN_PRUNE_AT) + 1;
            assert!(
                registry.links.len() <= bound,
                "{} entries for {} live links",
                registry.links.len(),
                live.len()
            );
        }
        // Every live link is still there.
        registry.prune();
        assert_eq!(registry.links.len(), live.len());
    }
}
