//! The Pms actor shell: it sends nothing until the server connection is up, hands its
//! requests to the relay client, and fans hints out to every recipient.

// Test code: a panic is a failed test, so unwrap and expect are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use actix::{Actor, Context, Handler};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tether_crypto::{seal_hint, RelationshipKey, RendezvousId, StaticKeypair};
use tether_pms::{
    encode_endpoints, GetRendezvousClientCounters, Orchestrator, Recipients, RendezvousClientConfig,
};
use tether_protocol::{
    DeviceId, LookupEndpointHint, PeerEndpointHint, RelayStatus, RendezvousFromServer,
    RendezvousMessage, RendezvousToServer, RequestId,
};

/// Records every message it receives, as text.
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Actor for Recorder {
    type Context = Context<Self>;
}

/// Answered once every message sent to the recorder before it was handled.
#[derive(actix::Message)]
#[rtype(result = "()")]
struct Flush;

impl Handler<Flush> for Recorder {
    type Result = ();
    fn handle(&mut self, _message: Flush, _ctx: &mut Self::Context) {}
}

impl Handler<RendezvousToServer> for Recorder {
    type Result = ();
    fn handle(&mut self, message: RendezvousToServer, _ctx: &mut Self::Context) {
        let text = match message.0 {
            RendezvousMessage::Lookup { .. } => "ToServer Lookup".to_string(),
            other => format!("ToServer {other:?}"),
        };
        self.0.lock().unwrap().push(text);
    }
}

impl Handler<PeerEndpointHint> for Recorder {
    type Result = ();
    fn handle(&mut self, message: PeerEndpointHint, _ctx: &mut Self::Context) {
        self.0
            .lock()
            .unwrap()
            .push(format!("Hint {:?}", message.endpoints));
    }
}

#[actix::test]
async fn actor_waits_for_the_connection_and_sends_hints_to_every_recipient() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let recorder = Recorder(log.clone()).start();
    let second = Recorder(log.clone()).start();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let device = StaticKeypair::generate(&mut rng);
    let peer = StaticKeypair::generate(&mut rng);
    let rk = RelationshipKey::generate(&mut rng);
    let peer_id = DeviceId(*peer.public().as_bytes());
    let unix = 1_700_000_000_000;
    let config = RendezvousClientConfig::new(
        device.clone(),
        BTreeMap::from([(peer_id, rk.clone())]),
        unix,
        [1; 32],
    );
    let actor = Orchestrator::new(
        config,
        Recipients {
            to_server: recorder.clone().recipient(),
            hint: vec![recorder.clone().recipient(), second.clone().recipient()],
        },
    )
    .start();
    actor.do_send(LookupEndpointHint {
        request: RequestId(1),
        peer: peer_id,
    });
    actor.send(GetRendezvousClientCounters).await.unwrap();
    recorder.send(Flush).await.unwrap();
    assert!(
        log.lock().unwrap().is_empty(),
        "nothing goes out before the connection is up"
    );

    actor.do_send(RelayStatus { connected: true });
    let endpoints = ["192.0.2.1:9".parse().unwrap()];
    let hint = seal_hint(
        &rk,
        peer.public(),
        &encode_endpoints(&endpoints),
        unix,
        60_000,
        &mut rng,
    )
    .unwrap();
    actor.do_send(RendezvousFromServer(RendezvousMessage::Hints {
        rendezvous_id: RendezvousId::from_rk(&rk).0,
        hints: vec![hint.into()],
    }));
    actor.send(GetRendezvousClientCounters).await.unwrap();
    recorder.send(Flush).await.unwrap();
    second.send(Flush).await.unwrap();
    assert_eq!(
        log.lock().unwrap().as_slice(),
        [
            "ToServer Lookup",
            "Hint [192.0.2.1:9]",
            "Hint [192.0.2.1:9]"
        ]
    );
}
