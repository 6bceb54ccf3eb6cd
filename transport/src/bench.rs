//! Measuring tools: bare quinn as a baseline for Tether's own links and sessions, and
//! the process's CPU time.
//!
//! A figure for Tether means something next to the same transfer on bare quinn, taken
//! in the same run on the same machine: this module holds that baseline, so the
//! transport's own benchmark and `tether bench throughput` measure it the same way.
//! [`bare_quinn_configs`] gives quinn exactly the QUIC settings a Tether endpoint uses
//! (transport parameters, TLS 1.3 with ring, ALPN); [`bare_quinn_transfer`] moves
//! bytes over one bidirectional stream with quinn's zero-copy chunk API on both ends,
//! the fastest way to move bytes through quinn.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::TransportConfig;
use crate::error::EndpointError;
use crate::quic::{self, SERVER_NAME};

/// Why a bare quinn transfer did not complete.
#[derive(Debug, thiserror::Error)]
#[error("bare quinn {stage}: {reason}")]
pub struct BareQuinnError {
    /// What was being done: bind, connect, stream, send or receive.
    pub stage: &'static str,
    /// What went wrong.
    pub reason: String,
}

fn failed(stage: &'static str) -> impl FnOnce(String) -> BareQuinnError {
    move |reason| BareQuinnError { stage, reason }
}

/// quinn's server and client configurations with the QUIC settings of a Tether
/// endpoint built from `config` (its transport parameters, MTU discovery off, TLS and
/// ALPN), and the server name the client must dial with.
pub fn bare_quinn_configs(
    config: &TransportConfig,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig, &'static str), EndpointError> {
    Ok((
        quic::server_config(config)?,
        quic::client_config(config)?,
        SERVER_NAME,
    ))
}

/// What one bare quinn transfer moved, and how fast.
#[derive(Debug, Clone)]
pub struct BareTransfer {
    /// Bytes the receiver read.
    pub bytes: usize,
    /// Chunks the sender wrote (each `chunk` bytes).
    pub chunks: usize,
    /// From the first write to the last byte read.
    pub elapsed: Duration,
    /// The sender's connection statistics at the end.
    pub stats: quinn::ConnectionStats,
}

/// How much a bare quinn transfer sends.
#[derive(Debug, Clone, Copy)]
pub enum Amount {
    /// This many bytes, rounded down to whole chunks.
    Bytes(usize),
    /// Chunks until this much time has passed.
    For(Duration),
}

/// Sends chunks of `chunk` bytes over one stream between two quinn endpoints bound to
/// `bind` (port 0 picks one), with `write_chunk` on one end and `read_chunk` on the
/// other, until `amount` is reached; the stream is finished and read to its end.
pub async fn bare_quinn_transfer(
    server_config: quinn::ServerConfig,
    client_config: quinn::ClientConfig,
    server_name: &str,
    bind: SocketAddr,
    chunk: usize,
    amount: Amount,
) -> Result<BareTransfer, BareQuinnError> {
    let chunk = chunk.max(1);
    let server =
        quinn::Endpoint::server(server_config, bind).map_err(|e| failed("bind")(e.to_string()))?;
    let mut client = quinn::Endpoint::client(bind).map_err(|e| failed("bind")(e.to_string()))?;
    client.set_default_client_config(client_config);
    let addr = server
        .local_addr()
        .map_err(|e| failed("bind")(e.to_string()))?;
    let accept = async {
        let incoming = server
            .accept()
            .await
            .ok_or_else(|| failed("connect")("the server endpoint closed".into()))?;
        let conn = incoming
            .await
            .map_err(|e| failed("connect")(e.to_string()))?;
        let (_send, recv) = conn
            .accept_bi()
            .await
            .map_err(|e| failed("stream")(e.to_string()))?;
        Ok::<_, BareQuinnError>((conn, recv))
    };
    let dial = async {
        let conn = client
            .connect(addr, server_name)
            .map_err(|e| failed("connect")(e.to_string()))?
            .await
            .map_err(|e| failed("connect")(e.to_string()))?;
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| failed("stream")(e.to_string()))?;
        // A stream is announced to the peer by its first bytes.
        send.write_all(b"go")
            .await
            .map_err(|e| failed("stream")(e.to_string()))?;
        Ok::<_, BareQuinnError>((conn, send, recv))
    };
    let (accepted, dialled) = tokio::join!(accept, dial);
    let (_server_conn, mut recv) = accepted?;
    let (client_conn, mut send, _recv) = dialled?;
    let mut first = [0u8; 2];
    recv.read_exact(&mut first)
        .await
        .map_err(|e| failed("stream")(e.to_string()))?;
    let payload = Bytes::from(vec![0x5A; chunk]);

    let start = Instant::now();
    let sender = tokio::spawn(async move {
        let mut chunks = 0usize;
        loop {
            let done = match amount {
                Amount::Bytes(total) => chunks >= total / chunk,
                Amount::For(time) => start.elapsed() >= time,
            };
            if done {
                break;
            }
            send.write_chunk(payload.clone())
                .await
                .map_err(|e| failed("send")(e.to_string()))?;
            chunks += 1;
        }
        send.finish().map_err(|e| failed("send")(e.to_string()))?;
        Ok::<_, BareQuinnError>((send, chunks))
    });
    let mut bytes = 0usize;
    while let Some(received) = recv
        .read_chunk(usize::MAX, true)
        .await
        .map_err(|e| failed("receive")(e.to_string()))?
    {
        bytes += received.bytes.len();
    }
    let elapsed = start.elapsed();
    let (send, chunks) = sender.await.map_err(|e| failed("send")(e.to_string()))??;
    drop(send);
    let stats = client_conn.stats();
    client_conn.close(0u32.into(), b"done");
    Ok(BareTransfer {
        bytes,
        chunks,
        elapsed,
        stats,
    })
}

/// CPU time (user + system) this process has used so far, from `/proc/self/stat`
/// (Linux; `None` elsewhere), in steps of 10 ms. Wall-clock throughput on a shared
/// machine swings with other processes' load; throughput per CPU-second is the steadier
/// measure of how much work each stack does per byte.
pub fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // Linux reports these in USER_HZ ticks, which is 100 on every supported target.
    Some(Duration::from_millis((utime + stime) * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bare_transfer_with_tether_settings_moves_every_byte() {
        let (server, client, name) = bare_quinn_configs(&TransportConfig::default()).unwrap();
        let bind = SocketAddr::from(([127, 0, 0, 1], 0));
        let run = bare_quinn_transfer(server, client, name, bind, 1000, Amount::Bytes(100_000))
            .await
            .unwrap();
        assert_eq!((run.bytes, run.chunks), (100_000, 100));
        let (server, client, name) = bare_quinn_configs(&TransportConfig::default()).unwrap();
        let time = Amount::For(Duration::from_millis(20));
        let run = bare_quinn_transfer(server, client, name, bind, 1000, time)
            .await
            .unwrap();
        assert_eq!(run.bytes, run.chunks * 1000);
        assert!(run.chunks > 0);
    }

    #[test]
    fn cpu_time_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(process_cpu_time().is_some());
        }
    }
}
