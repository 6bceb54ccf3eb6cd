//! A chat between two paired devices, one line per message, that keeps going while
//! either terminal's machine changes networks.
//!
//! Each side needs its key file, the relay's address and public key, the other side's
//! public key and the pair's relationship key (`tether keygen` and `tether pair` make
//! them; a `tether relay` runs the relay):
//!
//! ```text
//! cargo run -p tether --example chat -- alice.key 127.0.0.1:7300 RELAY_KEY BOB_KEY RK
//! cargo run -p tether --example chat -- bob.key   127.0.0.1:7300 RELAY_KEY ALICE_KEY RK
//! ```
//!
//! Lines typed on stdin go to the peer; what the peer sends is printed. A key file that
//! does not exist is created, and its public key printed for the other side.

use std::error::Error;
use tether::{device_id, Node, NodeEvent, PublicKey, RelationshipKey};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [key_file, relay_addr, relay_key, peer_key, rk] = args.as_slice() else {
        return Err("usage: chat KEY_FILE RELAY_ADDR RELAY_KEY PEER_KEY RELATIONSHIP_KEY".into());
    };
    let peer_key = PublicKey::from_hex(peer_key)?;
    let mut node = Node::builder()
        .key_file(key_file)
        .relay(relay_addr.parse()?, PublicKey::from_hex(relay_key)?)
        .peer(peer_key, RelationshipKey::from_hex(rk)?)
        .start()
        .await?;
    println!("this device: {}", node.device().to_hex());
    let peer = device_id(&peer_key);
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line? {
                Some(line) => {
                    let seq = node.send(peer, line.into_bytes()).await?;
                    println!("  (sent #{seq})");
                }
                None => break,
            },
            event = node.next_event() => match event {
                Some(NodeEvent::Delivered { payload, .. }) => {
                    println!("peer: {}", String::from_utf8_lossy(&payload));
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
