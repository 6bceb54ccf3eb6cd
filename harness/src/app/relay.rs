//! `tether relay`: the relay queue and rendezvous server on a real UDP endpoint, with
//! an optional control socket (`tether status`) and Prometheus metrics.

use super::config::RelaySettings;
use super::control::{self, Request};
use super::metrics::{self, millis, RelayStatusReport, TransportReport};
use crate::relay_server::{GetServerCounters, RelayServer, RelayServerHandle};
use rand::RngCore;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;
use tether_transport::Endpoint;
use tokio::io::{AsyncWriteExt, BufReader};

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayRunError {
    /// The UDP endpoint could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The server could not start.
    #[error("cannot start the relay: {0}")]
    Start(std::io::Error),
    /// The control socket could not be opened.
    #[error(transparent)]
    Control(#[from] control::BindError),
    /// The metrics listener could not be opened.
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsBindError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// What a started relay tells its caller.
#[derive(Debug, Clone)]
pub struct RelayReady {
    /// The server's public key (hex): devices are configured with it.
    pub public_key: String,
    /// The bound UDP address.
    pub listen: SocketAddr,
    /// The metrics address, if any.
    pub metrics: Option<SocketAddr>,
}

struct Shared {
    handle: RelayServerHandle,
    endpoint: Endpoint,
    started: Instant,
}

impl Shared {
    async fn report(&self) -> RelayStatusReport {
        let counters = self
            .handle
            .addr
            .send(GetServerCounters)
            .await
            .unwrap_or_default();
        let stats = self.endpoint.stats();
        RelayStatusReport {
            public_key: self.handle.public.to_hex(),
            listen: self.handle.local_addr.to_string(),
            uptime_ms: millis(self.started.elapsed()),
            counters: RelayStatusReport::counters_of(&counters, &stats),
            transport: TransportReport::from(stats),
        }
    }
}

/// Runs the relay until SIGINT or SIGTERM. `ready` is called once it listens.
pub async fn run_relay(
    settings: RelaySettings,
    ready: impl FnOnce(&RelayReady),
) -> Result<(), RelayRunError> {
    let endpoint = Endpoint::bind_udp(settings.listen, settings.transport.clone())
        .await
        .map_err(|e| RelayRunError::Listen {
            addr: settings.listen,
            reason: e.to_string(),
        })?;
    let mut seed = [0_u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let handle = RelayServer::start(endpoint.clone(), settings.keypair.clone(), seed)
        .map_err(RelayRunError::Start)?;
    let shared = Rc::new(Shared {
        handle,
        endpoint,
        started: Instant::now(),
    });
    if let Some(path) = &settings.control_socket {
        let listener = control::bind(path).await?;
        actix_rt::spawn(accept_control(listener, shared.clone()));
    }
    let mut metrics_addr = None;
    if let Some(addr) = settings.metrics_addr {
        let listener = metrics::bind_metrics(addr).await?;
        metrics_addr = listener.local_addr().ok();
        let shared = shared.clone();
        actix_rt::spawn(metrics::serve_metrics(listener, move || {
            let shared = shared.clone();
            async move { Some(metrics::relay_prometheus(&shared.report().await)) }
        }));
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(RelayRunError::Signals)?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(RelayRunError::Signals)?;
    let public_key = shared.handle.public.to_hex();
    let listen = shared.handle.local_addr;
    tracing::info!(%listen, public_key = %public_key, "relay started");
    ready(&RelayReady {
        public_key,
        listen,
        metrics: metrics_addr,
    });
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::info!("relay stopping");
    shared.handle.addr.do_send(tether_protocol::Shutdown);
    if let Some(path) = &settings.control_socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

async fn accept_control(listener: tokio::net::UnixListener, shared: Rc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let shared = shared.clone();
        actix_rt::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut reader = BufReader::new(read);
            let line = match control::read_request(&mut reader).await {
                Err(e) => control::error_line(&e),
                Ok(Request::Status) => {
                    control::ok_line(serde_json::json!({ "relay": shared.report().await }))
                }
                Ok(_) => control::error_line("this is a relay: it only answers status"),
            };
            let _ = write.write_all(line.as_bytes()).await;
        });
    }
}
