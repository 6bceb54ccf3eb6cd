//! Unit tests of the relay server and client cores, with transition traces.

mod client;
mod server;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use tether_crypto::StaticKeypair;
use tether_protocol::{DeviceId, RelayMessage, WireFrame};

/// Deterministic keys: the server's and devices p1, p2, p3.
pub(crate) struct Keys {
    pub(crate) server: StaticKeypair,
    pub(crate) devices: Vec<StaticKeypair>,
}

impl Keys {
    pub(crate) fn new() -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let server = StaticKeypair::generate(&mut rng);
        let devices = (0..3).map(|_| StaticKeypair::generate(&mut rng)).collect();
        Self { server, devices }
    }

    /// Device `n` (1-based, as its alias pN).
    pub(crate) fn device(&self, n: usize) -> &StaticKeypair {
        &self.devices[n - 1]
    }

    pub(crate) fn id(&self, n: usize) -> DeviceId {
        DeviceId(*self.device(n).public().as_bytes())
    }

    pub(crate) fn names(&self) -> Names {
        Names(
            (1..=self.devices.len())
                .map(|n| (self.id(n), format!("p{n}")))
                .collect(),
        )
    }
}

/// Aliases for device ids in traces.
pub(crate) struct Names(BTreeMap<DeviceId, String>);

impl Names {
    pub(crate) fn of(&self, id: &DeviceId) -> String {
        self.0.get(id).cloned().unwrap_or_else(|| "p?".into())
    }

    /// One relay message, ciphertext shown as a length.
    pub(crate) fn relay(&self, message: &RelayMessage) -> String {
        match message {
            RelayMessage::Challenge { .. } => "Challenge nonce[32B]".into(),
            RelayMessage::Authenticate { device, proof, .. } => {
                format!("Authenticate {} proof[{}B]", self.of(device), proof.len())
            }
            RelayMessage::Welcome { observed, .. } => match observed {
                Some(addr) => format!("Welcome observed={addr}"),
                None => "Welcome".into(),
            },
            RelayMessage::Observed { addr } => format!("Observed {addr}"),
            RelayMessage::PathProbe { padding } => format!("PathProbe padding[{}B]", padding.len()),
            RelayMessage::Enqueue {
                to,
                request,
                ttl_ms,
                envelope,
            } => format!(
                "Enqueue to={} req={request} ttl={ttl_ms}ms env[{}B]",
                self.of(to),
                envelope.len()
            ),
            RelayMessage::Enqueued { request } => format!("Enqueued req={request}"),
            RelayMessage::Fetch { max } => format!("Fetch max={max}"),
            RelayMessage::Push {
                from,
                envelope_id,
                envelope,
            } => format!(
                "Push from={} id={envelope_id} env[{}B]",
                self.of(from),
                envelope.len()
            ),
            RelayMessage::Delivered { envelope_ids } => format!("Delivered ids={envelope_ids:?}"),
            RelayMessage::Forward { to, frame } => {
                format!("Forward to={} frame[{}B]", self.of(to), frame.len())
            }
            RelayMessage::Forwarded { from, frame } => {
                format!("Forwarded from={} frame[{}B]", self.of(from), frame.len())
            }
            RelayMessage::Refused { request, reason } => {
                format!("Refused req={request:?} {reason:?}")
            }
        }
    }

    pub(crate) fn wire(&self, frame: &WireFrame) -> String {
        match frame {
            WireFrame::Relay(message) => self.relay(message),
            other => format!("{other:?}"),
        }
    }
}
