//! The Pms actor shell: it dials on start and fans hints out to every recipient.

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
    DeviceId, LinkId, LinkOwner, LookupEndpointHint, OwnedCommand, PathKind, PeerEndpointHint,
    RelayMessage, RendezvousMessage, RequestId, TransportCommand, TransportEvent, TransportPort,
    WireFrame,
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

impl Handler<OwnedCommand> for Recorder {
    type Result = ();
    fn handle(&mut self, message: OwnedCommand, _ctx: &mut Self::Context) {
        let text = match message.command {
            _ if message.owner != LinkOwner::Pms => {
                format!("{:?} from {:?}", message.command, message.owner)
            }
            TransportCommand::Dial { .. } => "Dial".to_string(),
            TransportCommand::Transmit { frame, .. } => match tether_protocol::decode(&frame) {
                Ok(WireFrame::Relay(RelayMessage::Authenticate { .. })) => {
                    "Transmit Authenticate".into()
                }
                Ok(WireFrame::Rendezvous(RendezvousMessage::Lookup { .. })) => {
                    "Transmit Lookup".into()
                }
                other => format!("Transmit {other:?}"),
            },
            TransportCommand::Close { .. } => "Close".into(),
            TransportCommand::Farewell { .. } => "Farewell".into(),
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
async fn actor_dials_on_start_and_sends_hints_to_every_recipient() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let recorder = Recorder(log.clone()).start();
    let second = Recorder(log.clone()).start();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let device = StaticKeypair::generate(&mut rng);
    let peer = StaticKeypair::generate(&mut rng);
    let server = StaticKeypair::generate(&mut rng);
    let rk = RelationshipKey::generate(&mut rng);
    let peer_id = DeviceId(*peer.public().as_bytes());
    let unix = 1_700_000_000_000;
    let config = RendezvousClientConfig::new(
        device.clone(),
        *server.public(),
        "203.0.113.1:443".parse().unwrap(),
        BTreeMap::from([(peer_id, rk.clone())]),
        unix,
        [1; 32],
    );
    let actor = Orchestrator::new(
        config.clone(),
        Recipients {
            transport: TransportPort::new(LinkOwner::Pms, recorder.clone().recipient()),
            hint: vec![recorder.clone().recipient(), second.clone().recipient()],
        },
    )
    .start();
    actor.send(GetRendezvousClientCounters).await.unwrap();
    recorder.send(Flush).await.unwrap();
    second.send(Flush).await.unwrap();
    assert_eq!(log.lock().unwrap().as_slice(), ["Dial"]);

    let frame = |f: WireFrame| tether_protocol::encode(&f).unwrap();
    actor.do_send(tether_protocol::LinkBound {
        link: LinkId(1),
        binding: [0xB1; 32],
    });
    actor.do_send(TransportEvent::LinkUp {
        request: Some(config.server.first_dial_request),
        link: LinkId(1),
        path: PathKind::Direct,
        remote: None,
    });
    actor.do_send(TransportEvent::FrameReceived {
        link: LinkId(1),
        frame: frame(WireFrame::Relay(RelayMessage::Challenge {
            nonce: [1; 32],
            server_key: *server.public().as_bytes(),
        })),
    });
    actor.do_send(TransportEvent::FrameReceived {
        link: LinkId(1),
        frame: frame(WireFrame::Relay(RelayMessage::Welcome {
            proof: tether_crypto::server_proof(&server, device.public(), &[1; 32], &[0xB1; 32])
                .to_vec(),
        })),
    });
    actor.do_send(LookupEndpointHint {
        request: RequestId(1),
        peer: peer_id,
    });
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
    actor.do_send(TransportEvent::FrameReceived {
        link: LinkId(1),
        frame: frame(WireFrame::Rendezvous(RendezvousMessage::Hints {
            rendezvous_id: RendezvousId::from_rk(&rk).0,
            hints: vec![hint.into()],
        })),
    });
    let counters = actor.send(GetRendezvousClientCounters).await.unwrap();
    recorder.send(Flush).await.unwrap();
    second.send(Flush).await.unwrap();
    assert_eq!(counters.connection.connects, 1);
    assert_eq!(
        log.lock().unwrap().as_slice(),
        [
            "Dial",
            "Transmit Authenticate",
            "Transmit Lookup",
            "Hint [192.0.2.1:9]",
            "Hint [192.0.2.1:9]"
        ]
    );
}
