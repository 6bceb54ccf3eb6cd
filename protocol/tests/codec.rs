//! Wire codec tests: exact bytes of every frame kind (snapshots), round trips of
//! arbitrary frames, and total decoding of hostile input.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use std::net::SocketAddr;
use tether_protocol::wire::{
    HandshakeMessage, MigrationAck, MigrationPing, RelayMessage, RendezvousMessage, ResetReason,
    SealedFrame, ServerRefusal, SessionFrame, WireFrame,
};
use tether_protocol::{
    decode, decode_session, encode, encode_session, ChannelId, DecodeError, DeviceId, Epoch,
    SessionId, MAX_FRAME_LEN, WIRE_VERSION,
};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn session() -> SessionId {
    SessionId::from_random_bytes([7; 16])
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address")
}

/// One example of every link frame kind.
fn wire_examples() -> Vec<(&'static str, WireFrame)> {
    let device = DeviceId([0x11; 32]);
    vec![
        (
            "handshake_init",
            WireFrame::HandshakeInit(HandshakeMessage {
                session: session(),
                noise: vec![0xaa; 4],
            }),
        ),
        (
            "handshake_response",
            WireFrame::HandshakeResponse(HandshakeMessage {
                session: session(),
                noise: vec![0xbb; 4],
            }),
        ),
        (
            "sealed",
            WireFrame::Sealed(SealedFrame {
                session: session(),
                key_id: 0xdead_beef,
                nonce: 42,
                ciphertext: vec![0xcc; 8],
            }),
        ),
        (
            "relay_challenge",
            WireFrame::Relay(RelayMessage::Challenge {
                nonce: [3; 32],
                server_key: [4; 32],
            }),
        ),
        (
            "relay_authenticate",
            WireFrame::Relay(RelayMessage::Authenticate {
                device,
                proof: vec![4; 4],
                rendezvous_only: false,
                rendezvous_ids: Vec::new(),
            }),
        ),
        (
            "relay_welcome",
            WireFrame::Relay(RelayMessage::Welcome {
                proof: vec![5; 32],
                observed: Some("198.51.100.7:40123".parse().unwrap()),
            }),
        ),
        (
            "relay_observed",
            WireFrame::Relay(RelayMessage::Observed {
                addr: "[2001:db8::7]:40123".parse().unwrap(),
            }),
        ),
        (
            "relay_enqueue",
            WireFrame::Relay(RelayMessage::Enqueue {
                to: device,
                request: 9,
                ttl_ms: 60_000,
                envelope: vec![5; 3],
            }),
        ),
        (
            "relay_enqueued",
            WireFrame::Relay(RelayMessage::Enqueued { request: 9 }),
        ),
        (
            "relay_fetch",
            WireFrame::Relay(RelayMessage::Fetch { max: 16 }),
        ),
        (
            "relay_push",
            WireFrame::Relay(RelayMessage::Push {
                from: device,
                envelope_id: 77,
                envelope: vec![6; 3],
            }),
        ),
        (
            "relay_delivered",
            WireFrame::Relay(RelayMessage::Delivered {
                envelope_ids: vec![77, 78],
            }),
        ),
        (
            "relay_forward",
            WireFrame::Relay(RelayMessage::Forward {
                to: device,
                frame: vec![7; 3],
            }),
        ),
        (
            "relay_forwarded",
            WireFrame::Relay(RelayMessage::Forwarded {
                from: device,
                frame: vec![8; 3],
            }),
        ),
        (
            "relay_refused",
            WireFrame::Relay(RelayMessage::Refused {
                request: Some(9),
                reason: ServerRefusal::QueueFull,
            }),
        ),
        (
            "relay_path_probe",
            WireFrame::Relay(RelayMessage::PathProbe {
                padding: vec![0; 3],
            }),
        ),
        (
            "rendezvous_publish",
            WireFrame::Rendezvous(RendezvousMessage::Publish {
                rendezvous_id: [9; 32],
                ttl_ms: 30_000,
                hint: vec![1; 4],
            }),
        ),
        (
            "rendezvous_lookup",
            WireFrame::Rendezvous(RendezvousMessage::Lookup {
                rendezvous_id: [9; 32],
            }),
        ),
        (
            "rendezvous_hints",
            WireFrame::Rendezvous(RendezvousMessage::Hints {
                rendezvous_id: [9; 32],
                hints: vec![serde_bytes::ByteBuf::from(vec![2; 3])],
            }),
        ),
        (
            "rendezvous_refused",
            WireFrame::Rendezvous(RendezvousMessage::Refused {
                reason: ServerRefusal::NotYours,
            }),
        ),
        (
            "rendezvous_peer_seen",
            WireFrame::Rendezvous(RendezvousMessage::PeerSeen {
                rendezvous_id: [9; 32],
                addr: addr("198.51.100.7:40000"),
            }),
        ),
    ]
}

/// One example of every sealed (session) frame kind.
fn session_examples() -> Vec<(&'static str, SessionFrame)> {
    vec![
        (
            "data",
            SessionFrame::Data {
                channel: ChannelId(1),
                seq: 5,
                payload: b"hello".to_vec(),
            },
        ),
        (
            "ack",
            SessionFrame::Ack {
                channel: ChannelId(1),
                next_expected: 6,
                credit: 256,
            },
        ),
        ("ping", SessionFrame::Ping { id: 3 }),
        ("pong", SessionFrame::Pong { id: 3 }),
        (
            "migration_ping",
            SessionFrame::MigrationPing(MigrationPing {
                epoch: Epoch(2),
                counter: 1,
                endpoints: vec![addr("192.0.2.7:4433"), addr("[2001:db8::1]:4433")],
                tag: [0x5a; 16],
            }),
        ),
        (
            "migration_ack",
            SessionFrame::MigrationAck(MigrationAck {
                epoch: Epoch(2),
                counter: 1,
                endpoints: vec![addr("198.51.100.3:4433")],
            }),
        ),
        (
            "path_challenge",
            SessionFrame::PathChallenge { data: [0x33; 16] },
        ),
        (
            "path_response",
            SessionFrame::PathResponse { data: [0x33; 16] },
        ),
        (
            "migrate",
            SessionFrame::Migrate {
                channel: ChannelId(1),
                incarnation: 0x1122_3344,
                next_seq: 6,
                first_unacked: 4,
            },
        ),
        ("padding", SessionFrame::Padding { bytes: vec![0; 4] }),
        (
            "observed_address",
            SessionFrame::ObservedAddress {
                addr: addr("203.0.113.9:40000"),
            },
        ),
        (
            "candidates",
            SessionFrame::Candidates {
                endpoints: vec!["198.51.100.7:40123".parse().unwrap()],
            },
        ),
        (
            "reset",
            SessionFrame::Reset {
                reason: ResetReason::MigrationWindowExpired,
            },
        ),
    ]
}

#[test]
fn exact_bytes_of_every_frame_kind() {
    let mut out = String::new();
    for (name, frame) in wire_examples() {
        let bytes = encode(&frame).unwrap();
        assert_eq!(decode(&bytes).unwrap(), frame, "{name}");
        out.push_str(&format!("wire/{name}: {}\n", hex(&bytes)));
    }
    for (name, frame) in session_examples() {
        let bytes = encode_session(&frame).unwrap();
        assert_eq!(decode_session(&bytes).unwrap(), frame, "{name}");
        out.push_str(&format!("session/{name}: {}\n", hex(&bytes)));
    }
    insta::assert_snapshot!(out);
}

#[test]
fn every_frame_starts_with_the_version_byte() {
    for (name, frame) in wire_examples() {
        assert_eq!(encode(&frame).unwrap()[0], WIRE_VERSION, "{name}");
    }
}

#[test]
fn wrong_version_is_a_typed_error() {
    let mut bytes = encode(&WireFrame::Relay(RelayMessage::Welcome {
        proof: vec![5; 32],
        observed: None,
    }))
    .unwrap();
    bytes[0] = WIRE_VERSION + 1;
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::UnsupportedVersion(WIRE_VERSION + 1))
    );
}

#[test]
fn empty_input_is_a_typed_error() {
    assert_eq!(decode(&[]), Err(DecodeError::Empty));
    assert_eq!(decode_session(&[]), Err(DecodeError::Empty));
}

#[test]
fn oversized_input_is_rejected_before_parsing() {
    let bytes = vec![WIRE_VERSION; MAX_FRAME_LEN + 1];
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::TooLarge {
            len: MAX_FRAME_LEN + 1,
            max: MAX_FRAME_LEN
        })
    );
}

#[test]
fn oversized_frame_cannot_be_encoded() {
    let frame = WireFrame::Sealed(SealedFrame {
        session: session(),
        key_id: 1,
        nonce: 1,
        ciphertext: vec![0; MAX_FRAME_LEN],
    });
    assert!(matches!(
        encode(&frame),
        Err(tether_protocol::EncodeError::TooLarge { .. })
    ));
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut bytes = encode(&WireFrame::Relay(RelayMessage::Welcome {
        proof: vec![5; 32],
        observed: None,
    }))
    .unwrap();
    bytes.push(0);
    assert_eq!(decode(&bytes), Err(DecodeError::TrailingBytes(1)));
}

#[test]
fn every_truncation_of_every_example_is_an_error() {
    for (name, frame) in wire_examples() {
        let bytes = encode(&frame).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "{name} cut at {cut}");
        }
    }
    for (name, frame) in session_examples() {
        let bytes = encode_session(&frame).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                decode_session(&bytes[..cut]).is_err(),
                "{name} cut at {cut}"
            );
        }
    }
}

#[test]
fn a_huge_declared_length_does_not_allocate_it() {
    // A sealed frame whose ciphertext header is rewritten to claim 4 GiB (bin32 with
    // length 0xffffffff). Decoding must fail on the short input, not allocate 4 GiB.
    let frame = WireFrame::Sealed(SealedFrame {
        session: session(),
        key_id: 1,
        nonce: 1,
        ciphertext: vec![0xcc; 8],
    });
    let mut bytes = encode(&frame).unwrap();
    let header_at = bytes.len() - 10;
    assert_eq!(&bytes[header_at..header_at + 2], &[0xc4, 0x08]);
    bytes.splice(header_at..header_at + 2, [0xc6, 0xff, 0xff, 0xff, 0xff]);
    assert!(matches!(decode(&bytes), Err(DecodeError::Malformed(_))));
}

#[test]
fn deeply_nested_input_is_rejected() {
    // 10 000 nested one-element arrays: must be a depth error, not a stack overflow.
    let mut bytes = vec![WIRE_VERSION];
    bytes.extend(std::iter::repeat_n(0x91, 10_000));
    bytes.push(0x00);
    assert!(decode(&bytes).is_err());
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn arb_device() -> impl Strategy<Value = DeviceId> {
    any::<[u8; 32]>().prop_map(DeviceId)
}

fn arb_session() -> impl Strategy<Value = SessionId> {
    any::<[u8; 16]>().prop_map(SessionId::from_random_bytes)
}

/// Addresses as the wire carries them: IPv6 flow info and scope id are not sent (they
/// are meaningful only on the host that chose them).
fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ]
}

fn arb_refusal() -> impl Strategy<Value = ServerRefusal> {
    prop_oneof![
        Just(ServerRefusal::NotAuthenticated),
        Just(ServerRefusal::BadProof),
        Just(ServerRefusal::QueueFull),
        Just(ServerRefusal::QuotaExceeded),
        Just(ServerRefusal::TooLarge),
        Just(ServerRefusal::NotConnected),
        Just(ServerRefusal::NotYours),
        Just(ServerRefusal::NotAdmitted),
        Just(ServerRefusal::RateLimited),
        Just(ServerRefusal::Replaced),
    ]
}

fn arb_relay() -> impl Strategy<Value = RelayMessage> {
    prop_oneof![
        (any::<[u8; 32]>(), any::<[u8; 32]>())
            .prop_map(|(nonce, server_key)| RelayMessage::Challenge { nonce, server_key }),
        (arb_device(), arb_bytes(64), any::<bool>(), arb_bytes(80)).prop_map(
            |(device, proof, rendezvous_only, rendezvous_ids)| {
                RelayMessage::Authenticate {
                    device,
                    proof,
                    rendezvous_only,
                    rendezvous_ids,
                }
            }
        ),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|proof| RelayMessage::Welcome {
            proof,
            observed: None
        }),
        (arb_device(), any::<u64>(), any::<u64>(), arb_bytes(256)).prop_map(
            |(to, request, ttl_ms, envelope)| RelayMessage::Enqueue {
                to,
                request,
                ttl_ms,
                envelope
            }
        ),
        any::<u64>().prop_map(|request| RelayMessage::Enqueued { request }),
        any::<u32>().prop_map(|max| RelayMessage::Fetch { max }),
        (arb_device(), any::<u64>(), arb_bytes(256)).prop_map(|(from, envelope_id, envelope)| {
            RelayMessage::Push {
                from,
                envelope_id,
                envelope,
            }
        }),
        proptest::collection::vec(any::<u64>(), 0..8)
            .prop_map(|envelope_ids| RelayMessage::Delivered { envelope_ids }),
        (arb_device(), arb_bytes(256)).prop_map(|(to, frame)| RelayMessage::Forward { to, frame }),
        (arb_device(), arb_bytes(256))
            .prop_map(|(from, frame)| RelayMessage::Forwarded { from, frame }),
        (any::<Option<u64>>(), arb_refusal())
            .prop_map(|(request, reason)| RelayMessage::Refused { request, reason }),
        arb_bytes(64).prop_map(|padding| RelayMessage::PathProbe { padding }),
    ]
}

fn arb_rendezvous() -> impl Strategy<Value = RendezvousMessage> {
    prop_oneof![
        (any::<[u8; 32]>(), any::<u64>(), arb_bytes(128)).prop_map(
            |(rendezvous_id, ttl_ms, hint)| RendezvousMessage::Publish {
                rendezvous_id,
                ttl_ms,
                hint
            }
        ),
        any::<[u8; 32]>().prop_map(|rendezvous_id| RendezvousMessage::Lookup { rendezvous_id }),
        (
            any::<[u8; 32]>(),
            proptest::collection::vec(arb_bytes(64), 0..4)
        )
            .prop_map(|(rendezvous_id, hints)| RendezvousMessage::Hints {
                rendezvous_id,
                hints: hints.into_iter().map(serde_bytes::ByteBuf::from).collect(),
            }),
        arb_refusal().prop_map(|reason| RendezvousMessage::Refused { reason }),
        (any::<[u8; 32]>(), arb_addr()).prop_map(|(rendezvous_id, addr)| {
            RendezvousMessage::PeerSeen {
                rendezvous_id,
                addr,
            }
        }),
    ]
}

fn arb_wire() -> impl Strategy<Value = WireFrame> {
    prop_oneof![
        (arb_session(), arb_bytes(128)).prop_map(|(session, noise)| WireFrame::HandshakeInit(
            HandshakeMessage { session, noise }
        )),
        (arb_session(), arb_bytes(128)).prop_map(|(session, noise)| {
            WireFrame::HandshakeResponse(HandshakeMessage { session, noise })
        }),
        (arb_session(), any::<u32>(), any::<u64>(), arb_bytes(512)).prop_map(
            |(session, key_id, nonce, ciphertext)| WireFrame::Sealed(SealedFrame {
                session,
                key_id,
                nonce,
                ciphertext
            })
        ),
        arb_relay().prop_map(WireFrame::Relay),
        arb_rendezvous().prop_map(WireFrame::Rendezvous),
    ]
}

fn arb_reset() -> impl Strategy<Value = ResetReason> {
    prop_oneof![
        Just(ResetReason::Closed),
        Just(ResetReason::MigrationWindowExpired),
        Just(ResetReason::UnknownSession),
        Just(ResetReason::Policy),
    ]
}

fn arb_session_frame() -> impl Strategy<Value = SessionFrame> {
    prop_oneof![
        (any::<u32>(), any::<u64>(), arb_bytes(512)).prop_map(|(channel, seq, payload)| {
            SessionFrame::Data {
                channel: ChannelId(channel),
                seq,
                payload,
            }
        }),
        (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(channel, next_expected, credit)| {
            SessionFrame::Ack {
                channel: ChannelId(channel),
                next_expected,
                credit,
            }
        }),
        any::<u64>().prop_map(|id| SessionFrame::Ping { id }),
        any::<u64>().prop_map(|id| SessionFrame::Pong { id }),
        arb_addr().prop_map(|addr| SessionFrame::ObservedAddress { addr }),
        (
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(arb_addr(), 0..4),
            any::<[u8; 16]>()
        )
            .prop_map(
                |(epoch, counter, endpoints, tag)| SessionFrame::MigrationPing(MigrationPing {
                    epoch: Epoch(epoch),
                    counter,
                    endpoints,
                    tag
                })
            ),
        (
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(arb_addr(), 0..4)
        )
            .prop_map(|(epoch, counter, endpoints)| SessionFrame::MigrationAck(
                MigrationAck {
                    epoch: Epoch(epoch),
                    counter,
                    endpoints
                }
            )),
        any::<[u8; 16]>().prop_map(|data| SessionFrame::PathChallenge { data }),
        any::<[u8; 16]>().prop_map(|data| SessionFrame::PathResponse { data }),
        (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(channel, incarnation, next_seq, first_unacked)| SessionFrame::Migrate {
                channel: ChannelId(channel),
                incarnation,
                next_seq,
                first_unacked,
            }
        ),
        arb_bytes(64).prop_map(|bytes| SessionFrame::Padding { bytes }),
        proptest::collection::vec(arb_addr(), 0..4)
            .prop_map(|endpoints| SessionFrame::Candidates { endpoints }),
        arb_reset().prop_map(|reason| SessionFrame::Reset { reason }),
    ]
}

proptest! {
    #[test]
    fn wire_frames_round_trip(frame in arb_wire()) {
        let bytes = encode(&frame).unwrap();
        prop_assert_eq!(decode(&bytes).unwrap(), frame);
    }

    #[test]
    fn session_frames_round_trip(frame in arb_session_frame()) {
        let bytes = encode_session(&frame).unwrap();
        prop_assert_eq!(decode_session(&bytes).unwrap(), frame);
    }

    #[test]
    fn random_bytes_never_panic(bytes in arb_bytes(2048)) {
        let _ = decode(&bytes);
        let _ = decode_session(&bytes);
    }

    #[test]
    fn versioned_random_bodies_never_panic(body in arb_bytes(2048)) {
        let mut bytes = vec![WIRE_VERSION];
        bytes.extend_from_slice(&body);
        let _ = decode(&bytes);
        let _ = decode_session(&bytes);
    }

    #[test]
    fn mutated_frames_never_panic(frame in arb_wire(), index in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = encode(&frame).unwrap();
        let at = index.index(bytes.len());
        bytes[at] = byte;
        // Either a typed error, or a frame that re-encodes and decodes to itself.
        if let Ok(decoded) = decode(&bytes) {
            let again = encode(&decoded).unwrap();
            prop_assert_eq!(decode(&again).unwrap(), decoded);
        }
    }
}
