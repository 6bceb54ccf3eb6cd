//! Saying goodbye. When this device stops on purpose, every peer whose session carries
//! data gets a sealed `Reset { reason: Closed }`: on a direct link it travels in the
//! link's QUIC close itself (`TransportCommand::Farewell`, one packet that needs no
//! stream data to get through), through the relay as a live forward (best effort: the
//! relay connection closes with the node). The peer shows the session as closed at once
//! instead of Ready until its heartbeats fail.

use crate::core::{DirectConnection, Output};
use crate::state::Via;
use tether_protocol::{DeviceId, RelayForward, ResetReason, SessionFrame, TransportCommand};

impl DirectConnection {
    /// This device is stopping: says goodbye to every peer with a usable session, and
    /// returns how many were told. Nothing else changes; the node stops next.
    pub fn close_sessions(&mut self) -> usize {
        let peers: Vec<(DeviceId, Via)> = self
            .peers
            .iter()
            .filter(|(_, peer)| peer.usable())
            .filter_map(|(device, peer)| peer.bound.map(|via| (*device, via)))
            .collect();
        let goodbye = SessionFrame::Reset {
            reason: ResetReason::Closed,
        };
        let mut told = 0;
        for (device, via) in peers {
            let Some(frame) = self.seal_wire(device, &goodbye) else {
                continue;
            };
            self.outputs.push_back(match via {
                Via::Link(link) => Output::Transport(TransportCommand::Farewell { link, frame }),
                Via::Relay => Output::RelayForward(RelayForward { to: device, frame }),
            });
            told += 1;
        }
        told
    }
}
