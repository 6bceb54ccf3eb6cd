//! The Rcs actor shell: it dials on start, feeds transport events to the core, fans
//! its outputs out to the recipients, and carries the rendezvous client's messages.

// Test code: a panic is a failed test, so unwrap and expect are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use actix::{Actor, Context, Handler};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::sync::{Arc, Mutex};
use tether_crypto::StaticKeypair;
use tether_protocol::{
    LinkId, LinkOwner, OwnedCommand, PathKind, RelayDelivered, RelayEnqueueResult, RelayMessage,
    RelayStatus, RendezvousFromServer, RendezvousMessage, RendezvousToServer, TransportCommand,
    TransportEvent, TransportPort, WireFrame,
};
use tether_rcs::{GetRelayClientCounters, Orchestrator, Recipients, RelayClientConfig};

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

macro_rules! record {
    ($message:ty, $describe:expr) => {
        impl Handler<$message> for Recorder {
            type Result = ();
            fn handle(&mut self, message: $message, _ctx: &mut Self::Context) {
                let describe: fn(&$message) -> String = $describe;
                self.0.lock().unwrap().push(describe(&message));
            }
        }
    };
}

record!(OwnedCommand, |m| match &m.command {
    _ if m.owner != LinkOwner::Rcs => format!("{:?} from {:?}", m.command, m.owner),
    TransportCommand::Dial { .. } => "Dial".into(),
    TransportCommand::Transmit { frame, .. } => match tether_protocol::decode(frame) {
        Ok(WireFrame::Relay(RelayMessage::Authenticate { .. })) => "Transmit Authenticate".into(),
        Ok(WireFrame::Rendezvous(RendezvousMessage::Lookup { .. })) => "Transmit Lookup".into(),
        other => format!("Transmit {other:?}"),
    },
    TransportCommand::Close { .. } => "Close".into(),
    TransportCommand::Farewell { .. } => "Farewell".into(),
});
record!(RelayDelivered, |_| "Delivered".into());
record!(RelayEnqueueResult, |_| "EnqueueResult".into());
record!(RelayStatus, |m| format!("Status {}", m.connected));
record!(RendezvousFromServer, |m| match &m.0 {
    RendezvousMessage::Hints { .. } => "Rendezvous Hints".into(),
    other => format!("Rendezvous {other:?}"),
});

#[actix::test]
async fn actor_dials_on_start_authenticates_and_reports_status_to_every_recipient() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let recorder = Recorder(log.clone()).start();
    let second = Recorder(log.clone()).start();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let device = StaticKeypair::generate(&mut rng);
    let server = StaticKeypair::generate(&mut rng);
    let config = RelayClientConfig::new(
        device.clone(),
        *server.public(),
        "203.0.113.1:443".parse().unwrap(),
        ChaCha8Rng::seed_from_u64(1).get_seed(),
    );
    let actor = Orchestrator::new(
        config.clone(),
        Recipients {
            transport: TransportPort::new(LinkOwner::Rcs, recorder.clone().recipient()),
            delivered: recorder.clone().recipient(),
            enqueue_result: recorder.clone().recipient(),
            status: vec![recorder.clone().recipient(), second.clone().recipient()],
            rendezvous: recorder.clone().recipient(),
        },
    )
    .start();
    actor.send(GetRelayClientCounters).await.unwrap();
    recorder.send(Flush).await.unwrap();
    second.send(Flush).await.unwrap();
    assert_eq!(log.lock().unwrap().as_slice(), ["Dial"]);

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
    let frame = |m| tether_protocol::encode(&WireFrame::Relay(m)).unwrap();
    actor.do_send(TransportEvent::FrameReceived {
        link: LinkId(1),
        frame: frame(RelayMessage::Challenge {
            nonce: [1; 32],
            server_key: *server.public().as_bytes(),
        }),
    });
    actor.do_send(TransportEvent::FrameReceived {
        link: LinkId(1),
        frame: frame(RelayMessage::Welcome {
            proof: tether_crypto::server_proof(&server, device.public(), &[1; 32], &[0xB1; 32])
                .to_vec(),
            observed: None,
        }),
    });
    actor.do_send(TransportEvent::FrameReceived {
        link: LinkId(1),
        frame: vec![0xde, 0xad],
    });
    // Both recorders have the status before the rendezvous traffic starts.
    actor.send(GetRelayClientCounters).await.unwrap();
    recorder.send(Flush).await.unwrap();
    second.send(Flush).await.unwrap();
    actor.do_send(RendezvousToServer(RendezvousMessage::Lookup {
        rendezvous_id: [5; 32],
    }));
    actor.do_send(TransportEvent::FrameReceived {
        link: LinkId(1),
        frame: tether_protocol::encode(&WireFrame::Rendezvous(RendezvousMessage::Hints {
            rendezvous_id: [5; 32],
            hints: Vec::new(),
        }))
        .unwrap(),
    });
    let counters = actor.send(GetRelayClientCounters).await.unwrap();
    recorder.send(Flush).await.unwrap();
    second.send(Flush).await.unwrap();
    assert_eq!(
        log.lock().unwrap().as_slice(),
        [
            "Dial",
            "Transmit Authenticate",
            "Status true",
            "Status true",
            "Transmit Lookup",
            "Rendezvous Hints"
        ]
    );
    assert_eq!(counters.connection.connects, 1);
    assert_eq!(counters.decode_errors, 1);
}
