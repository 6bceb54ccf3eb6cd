//! A hostile client for the end-to-end tests: raw QUIC (quinn) against a `tether` node
//! or relay over real loopback UDP, from source addresses of its own, as the attacks of
//! issue 12 were made. It runs on a thread and runtime of its own ([`Background`]), so
//! the connections it holds keep being answered while the test waits on processes.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use futures_util::future::join_all;
use tether_transport::{quic, TransportConfig};

/// The link preamble a Tether frame stream starts with (`transport/src/link.rs`).
pub const LINK_PREAMBLE: &[u8; 4] = b"TLK1";

/// A tokio runtime on a thread of its own, running until dropped.
pub struct Background {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    /// Starts the runtime and its thread.
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            });
        });
        Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Runs `future` on the runtime and waits for its output.
    pub fn run<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv()
            .expect("the background task ran to its end (it panicked otherwise)")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What became of one connection attempt.
pub enum Attempt {
    /// The QUIC handshake completed (and the preamble was sent on the stream, if asked
    /// for; the stream is kept open).
    Established(quinn::Connection, Option<quinn::SendStream>),
    /// The server refused it (`CONNECTION_REFUSED`).
    Refused,
    /// Anything else: a timeout, a close, a reset.
    Failed,
}

/// Connections held, and how the attempts went.
#[derive(Default)]
pub struct Held {
    /// Established connections, still held by this client.
    pub connections: Vec<quinn::Connection>,
    /// Their open frame streams, if they sent the preamble.
    streams: Vec<quinn::SendStream>,
    /// Attempts the server refused.
    pub refused: u64,
    /// Attempts that failed otherwise.
    pub failed: u64,
}

impl Held {
    fn add(&mut self, attempt: Attempt) {
        match attempt {
            Attempt::Established(c, stream) => {
                self.connections.push(c);
                self.streams.extend(stream);
            }
            Attempt::Refused => self.refused += 1,
            Attempt::Failed => self.failed += 1,
        }
    }

    /// Held connections the server has closed since.
    pub fn closed_by_server(&self) -> usize {
        self.connections
            .iter()
            .filter(|c| c.close_reason().is_some())
            .count()
    }
}

/// Mallory: one quinn client endpoint per source address.
#[derive(Clone)]
pub struct Mallory {
    endpoints: Vec<quinn::Endpoint>,
    client: quinn::ClientConfig,
}

impl Mallory {
    /// Binds one client endpoint on each of `sources` (loopback addresses other than
    /// the well-behaved peers', so the server tells them apart). Call on a runtime.
    pub fn bind(sources: &[IpAddr]) -> Self {
        let endpoints = sources
            .iter()
            .map(|ip| quinn::Endpoint::client(SocketAddr::new(*ip, 0)).unwrap())
            .collect();
        Self {
            endpoints,
            client: quic::client_config(&TransportConfig::default()).unwrap(),
        }
    }

    /// One attempt from source `source` (an index, wrapping): the QUIC handshake and, if
    /// `preamble`, the frame stream with the link preamble; then nothing more.
    pub async fn attempt(&self, source: usize, target: SocketAddr, preamble: bool) -> Attempt {
        let endpoint = &self.endpoints[source % self.endpoints.len()];
        let Ok(connecting) = endpoint.connect_with(self.client.clone(), target, quic::SERVER_NAME)
        else {
            return Attempt::Failed;
        };
        let connection = match connecting.await {
            Ok(c) => c,
            Err(quinn::ConnectionError::ConnectionClosed(close))
                if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                return Attempt::Refused
            }
            Err(_) => return Attempt::Failed,
        };
        if !preamble {
            return Attempt::Established(connection, None);
        }
        let Ok((mut send, _recv)) = connection.open_bi().await else {
            return Attempt::Failed;
        };
        if send.write_all(LINK_PREAMBLE).await.is_err() {
            return Attempt::Failed;
        }
        // The stream stays open (never finished): the link waits for a handshake.
        Attempt::Established(connection, Some(send))
    }

    /// `n` attempts, `at_once` at a time, spread over the source addresses; every
    /// established connection is held.
    pub async fn hold(&self, target: SocketAddr, n: usize, at_once: usize, preamble: bool) -> Held {
        let mut held = Held::default();
        let mut next = 0;
        while next < n {
            let batch = (next..n.min(next + at_once)).map(|i| self.attempt(i, target, preamble));
            next = n.min(next + at_once);
            for attempt in join_all(batch).await {
                held.add(attempt);
            }
        }
        held
    }

    /// One round of connection churn, prepared: `links` links (QUIC and the link
    /// preamble, eight at a time from each source: as many as a node lets one address
    /// have in their handshake), a few connections abandoned during their QUIC
    /// handshake, and eight connections from each source opened up to their frame
    /// stream. The round's burst ([`ChurnRound::burst`]) then sends those preambles
    /// and closes the links, at once.
    pub async fn churn_round(&self, target: SocketAddr, links: usize) -> ChurnRound {
        let held = self
            .hold(target, links, 8 * self.endpoints.len(), true)
            .await;
        let mut round = ChurnRound {
            links: held.connections,
            waiting: Vec::new(),
            refused: held.refused,
        };
        for source in 0..self.endpoints.len() {
            self.abandon(source, target).await;
        }
        let sources = (0..8).flat_map(|_| 0..self.endpoints.len());
        let waiting = join_all(sources.map(|source| self.stream_without_preamble(source, target)));
        for (attempt, stream) in waiting.await {
            match (attempt, stream) {
                (Attempt::Established(c, _), Some(stream)) => round.waiting.push((c, stream)),
                (Attempt::Refused, _) => round.refused += 1,
                _ => {}
            }
        }
        round
    }

    /// A connection from `source` whose frame stream is open, nothing written on it.
    async fn stream_without_preamble(
        &self,
        source: usize,
        target: SocketAddr,
    ) -> (Attempt, Option<quinn::SendStream>) {
        let connection = match self.attempt(source, target, false).await {
            Attempt::Established(c, _) => c,
            other => return (other, None),
        };
        match connection.open_bi().await {
            Ok((send, _recv)) => (Attempt::Established(connection, None), Some(send)),
            Err(_) => (Attempt::Failed, None),
        }
    }

    /// Starts a connection from `source` and abandons it once its first flight left.
    async fn abandon(&self, source: usize, target: SocketAddr) {
        let endpoint = &self.endpoints[source % self.endpoints.len()];
        if let Ok(connecting) =
            endpoint.connect_with(self.client.clone(), target, quic::SERVER_NAME)
        {
            tokio::task::yield_now().await;
            drop(connecting);
        }
    }
}

/// A prepared round of connection churn (see [`Mallory::churn_round`]).
pub struct ChurnRound {
    links: Vec<quinn::Connection>,
    waiting: Vec<(quinn::Connection, quinn::SendStream)>,
    /// Attempts the server refused while the round was prepared.
    pub refused: u64,
}

impl ChurnRound {
    /// Links arriving and links ending in one burst: the waiting connections send their
    /// preamble, then the round's links are closed. Returns once every one of them has
    /// sent its packet (or `until` passed), with the connections that became links, for
    /// the next round to close.
    pub async fn burst(mut self, until: tokio::time::Instant) -> Vec<quinn::Connection> {
        let sent = |c: &quinn::Connection| c.stats().udp_tx.datagrams;
        // Those the server closed already send nothing more.
        let all: Vec<quinn::Connection> = (self.waiting.iter().map(|(c, _)| c.clone()))
            .chain(self.links.iter().cloned())
            .filter(|c| c.close_reason().is_none())
            .collect();
        let before: Vec<u64> = all.iter().map(sent).collect();
        for (_, stream) in &mut self.waiting {
            let _ = stream.write_all(LINK_PREAMBLE).await;
        }
        for connection in &self.links {
            connection.close(0u32.into(), b"churn");
        }
        while all.iter().zip(&before).any(|(c, b)| sent(c) == *b)
            && tokio::time::Instant::now() < until
        {
            tokio::task::yield_now().await;
        }
        self.waiting.into_iter().map(|(c, _)| c).collect()
    }
}

/// `127.0.0.N` for each `N` in `hosts`: loopback addresses for hostile sources.
pub fn loopback_sources(hosts: std::ops::RangeInclusive<u8>) -> Vec<IpAddr> {
    hosts.map(|n| IpAddr::from([127, 0, 0, n])).collect()
}
