//! A chat between two paired devices, one line per message, that keeps going while
//! either terminal's machine changes networks.
//!
//! After `tether invite` on one machine and `tether accept CODE` on the other, each
//! side runs the chat from its node config (instead of `tether node`, which would hold
//! the same device key, port and data folder), and talks to the config's first peer:
//!
//! ```text
//! cargo run -p tether --example chat -- ~/.config/tether/node.toml
//! ```
//!
//! Or with everything on the command line: the key file, the relay's address and public
//! key, the other side's public key and the pair's relationship key (`tether keygen` and
//! `tether pair` make them; a `tether relay` runs the relay). A key file that does not
//! exist is created, and its public key printed for the other side.
//!
//! ```text
//! cargo run -p tether --example chat -- alice.key 127.0.0.1:7300 RELAY_KEY BOB_KEY RK
//! cargo run -p tether --example chat -- bob.key   127.0.0.1:7300 RELAY_KEY ALICE_KEY RK
//! ```
//!
//! Lines typed on stdin go to the peer; what the peer sends is printed, and so is each
//! acknowledgement (the peer has the message: it will not be lost or sent again). When
//! stdin ends (Ctrl-D, or the end of a piped file), the chat leaves once the peer has
//! every message.

use std::collections::VecDeque;
use std::error::Error;
use tether::{
    device_id, ChannelId, Node, NodeBuilder, NodeEvent, PublicKey, RelationshipKey, SendError,
};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Most lines read ahead of the peer's queue while it is full.
const READ_AHEAD: usize = 64;

const USAGE: &str = "usage: chat NODE_CONFIG | chat KEY_FILE RELAY_ADDR RELAY_KEY PEER_KEY RK";

/// The node's settings and the peer to talk to, from the command line.
fn from_args(args: &[String]) -> Result<(NodeBuilder, PublicKey), Box<dyn Error>> {
    match args {
        [config] => {
            let settings = tether::config::load_node(config.as_ref())?;
            let peer = settings
                .peers
                .first()
                .ok_or("the config has no [[peers]]")?;
            println!("talking to {} (the config's first peer)", peer.name);
            Ok((NodeBuilder::from_config(&settings), peer.peer.public))
        }
        [key_file, relay_addr, relay_key, peer_key, rk] => {
            let peer = PublicKey::from_hex(peer_key)?;
            let builder = Node::builder()
                .key_file(key_file)
                .relay(relay_addr.parse()?, PublicKey::from_hex(relay_key)?)
                .peer(peer, RelationshipKey::from_hex(rk)?);
            Ok((builder, peer))
        }
        _ => Err(USAGE.into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (builder, peer_key) = from_args(&args)?;
    let mut node = builder.start().await?;
    println!("this device: {}", node.device().to_hex());
    let peer = device_id(&peer_key);
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    // Lines read while the peer's queue is full wait here: the chat keeps reading its
    // events meanwhile (a `send` that waits would not), so deliveries keep flowing both
    // ways and the peer's acknowledgements make room.
    let mut waiting: VecDeque<Vec<u8>> = VecDeque::new();
    // Once stdin ends, the chat leaves when the peer has every message sent.
    let (mut sent, mut acknowledged, mut input_ended) = (0, 0, false);
    loop {
        while let Some(line) = waiting.front() {
            match node.try_send(peer, line.clone()).await {
                Ok(seq) => {
                    waiting.pop_front();
                    sent = seq + 1;
                    println!("  (sent #{seq})");
                }
                Err(SendError::QueueFull { .. }) => break,
                Err(error) => return Err(error.into()),
            }
        }
        if input_ended && waiting.is_empty() && acknowledged >= sent {
            break;
        }
        tokio::select! {
            line = lines.next_line(), if !input_ended && waiting.len() < READ_AHEAD => match line? {
                Some(line) => waiting.push_back(line.into_bytes()),
                None => {
                    input_ended = true;
                    if acknowledged < sent || !waiting.is_empty() {
                        println!("  (waiting for the peer to have every message; Ctrl-C leaves)");
                    }
                }
            },
            event = node.next_event() => match event {
                Some(NodeEvent::Delivered { payload, .. }) => {
                    println!("peer: {}", String::from_utf8_lossy(&payload));
                }
                Some(NodeEvent::Acknowledged { peer: from, channel, below })
                    if from == peer && channel == ChannelId(0) =>
                {
                    acknowledged = acknowledged.max(below);
                    println!("  (the peer has every message before #{below})");
                }
                Some(NodeEvent::Status { to, .. }) => println!("  (session {to})"),
                Some(_) => {}
                None => break,
            },
        }
    }
    node.stop().await;
    Ok(())
}
