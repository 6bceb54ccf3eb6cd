//! `tether relay`: the relay queue and rendezvous server on a real UDP endpoint, with
//! an optional control socket (`tether status`) and Prometheus metrics. Its queue is
//! kept in a redb file under `data_dir` ([`RELAY_QUEUE_FILE`]), so a restart, even
//! after SIGKILL, loses no envelope before its TTL.

use super::config::RelaySettings;
use super::control::{self, Request};
use super::metrics::{self, millis, RelayStatusReport, TransportReport};
use super::run::{self, RunError, StopSignals};
use crate::relay_server::{GetServerState, RelayServer, RelayServerHandle};
use rand::RngCore;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;
use tether_rcs::{Admission, RelayServerConfig};
use tether_store::RedbRelayQueueStore;
use tether_transport::Endpoint;
use tokio::io::{AsyncWriteExt, BufReader};

/// The relay's queue file, below `data_dir`: in a folder of its own, so a node's data
/// can share the `data_dir` without sharing a file.
pub const RELAY_QUEUE_FILE: &str = "relay/queue.redb";

/// Where the relay with this `data_dir` keeps its queue.
pub fn relay_queue_path(data_dir: &Path) -> PathBuf {
    data_dir.join(RELAY_QUEUE_FILE)
}

/// Creates the queue file's folder (mode 0700: envelopes are ciphertext, but who talks
/// to whom is not for other users) and opens the store.
fn open_queue_store(data_dir: &Path) -> Result<RedbRelayQueueStore, RunError> {
    let path = relay_queue_path(data_dir);
    if let Some(dir) = path.parent() {
        run::create_private_dir(dir)?;
    }
    Ok(RedbRelayQueueStore::open(&path)?)
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
        let state = self
            .handle
            .addr
            .send(GetServerState)
            .await
            .unwrap_or_default();
        let stats = self.endpoint.stats();
        RelayStatusReport {
            public_key: self.handle.public.to_hex(),
            listen: self.handle.local_addr.to_string(),
            uptime_ms: millis(self.started.elapsed()),
            counters: {
                let mut counters =
                    RelayStatusReport::counters_of(&state.counters, &state.rendezvous, &stats);
                counters.insert("writes_dropped".into(), state.writes_dropped);
                counters
            },
            holding: [
                ("stored_bytes", state.stored_bytes),
                ("stored_envelopes", state.stored_envelopes),
                ("rendezvous_ids", state.rendezvous_ids),
                ("connections", state.connections),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), u64::try_from(v).unwrap_or(u64::MAX)))
            .collect(),
            transport: TransportReport::from(stats),
        }
    }
}

/// Runs the relay until SIGINT or SIGTERM. `ready` is called once it listens.
pub async fn run_relay(
    settings: RelaySettings,
    ready: impl FnOnce(&RelayReady),
) -> Result<(), RunError> {
    let endpoint = run::bind(settings.listen, settings.transport.clone()).await?;
    // Everything that can fail is opened before the server starts, so a failure is one
    // error line and nothing is left half started.
    let metrics_listener = match settings.metrics_addr {
        Some(addr) => Some(metrics::bind_metrics(addr).await?),
        None => None,
    };
    let mut stop = StopSignals::install()?;
    let store = open_queue_store(&settings.data_dir)?;
    let queue_path = store.path().to_path_buf();
    // Last: it leaves a socket file behind.
    let control_listener = match &settings.control_socket {
        Some(path) => Some(control::bind(path).await?),
        None => None,
    };
    let mut seed = [0_u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let unix_ms = tether::unix_ms();
    let admission = describe_admission(&settings.admission);
    let mut config = RelayServerConfig::new(settings.keypair.clone(), seed, settings.admission);
    config.unix_ms_at_start = unix_ms;
    let handle = RelayServer::start_with_store(
        endpoint.clone(),
        config,
        Default::default(),
        Box::new(store),
    )
    .map_err(|source| RunError::Start {
        what: "relay",
        source,
    })?;
    let shared = Rc::new(Shared {
        handle,
        endpoint,
        started: Instant::now(),
    });
    if let Some(listener) = control_listener {
        actix_rt::spawn(accept_control(listener, shared.clone()));
    }
    let mut metrics_addr = None;
    if let Some(listener) = metrics_listener {
        metrics_addr = listener.local_addr().ok();
        let shared = shared.clone();
        actix_rt::spawn(metrics::serve_metrics(listener, move || {
            let shared = shared.clone();
            async move { Some(metrics::relay_prometheus(&shared.report().await)) }
        }));
    }
    let public_key = shared.handle.public.to_hex();
    let listen = shared.handle.local_addr;
    tracing::info!(%listen, public_key = %public_key, queue = %queue_path.display(), %admission, "relay started");
    ready(&RelayReady {
        public_key,
        listen,
        metrics: metrics_addr,
    });
    stop.received().await;
    tracing::info!("relay stopping");
    shared.handle.addr.do_send(tether_protocol::Shutdown);
    if let Some(path) = &settings.control_socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// The admission policy in a few words, for the start line and `--check`.
pub fn describe_admission(admission: &Admission) -> String {
    match admission {
        Admission::Open => "any device that proves a key (admission = \"open\")".to_string(),
        Admission::Allowlist(allowed) if allowed.len() == 1 => "an allowlist of 1 device".into(),
        Admission::Allowlist(allowed) => format!("an allowlist of {} devices", allowed.len()),
    }
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
