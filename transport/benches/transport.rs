//! Throughput of one QUIC stream on real loopback: this crate's framed [`Link`] against
//! bare quinn, in the same run, so the crate's own overhead shows as a ratio.
//!
//! Run: `cargo bench -p tether-transport --bench transport`
//! Environment: `TETHER_BENCH_BYTES` (default 1 GiB per run), `TETHER_BENCH_FRAME`
//! (frame / chunk size, default 64 KiB), `TETHER_BENCH_ROUNDS` (default 5; the two
//! contenders alternate so machine noise hits both alike).
//!
//! Both sides use the same TLS setup (rustls with ring, TLS 1.3, a self-signed
//! certificate, the same cipher suite); bare quinn uses quinn's default transport
//! configuration and its zero-copy chunk API on both ends, which is the fastest way to
//! move bytes through quinn.

// A benchmark has no error path worth handling: any failure aborts the run loudly.
#![allow(clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tether_transport::bench::{bare_quinn_transfer, process_cpu_time, Amount};
use tether_transport::{Endpoint, TransportConfig};

const MIB: f64 = 1024.0 * 1024.0;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sends `total` bytes in frames of `frame` bytes over a Tether link; returns the time
/// from the first send to the last frame received.
async fn tether_run(total: usize, frame: usize) -> Duration {
    let config = TransportConfig::default();
    let server = Endpoint::bind_udp(loopback(), config.clone())
        .await
        .expect("bind server");
    let client = Endpoint::bind_udp(loopback(), config)
        .await
        .expect("bind client");
    let addr = server.local_addr().expect("server address");
    let (dialled, accepted) = tokio::join!(client.dial(addr), server.accept());
    let (tx, _rx) = dialled.expect("dial").split();
    let (_tx, mut rx) = accepted.expect("accept").split();
    let payload = Bytes::from(vec![0x5A; frame]);
    let frames = total / frame;

    let start = Instant::now();
    let sender = tokio::spawn(async move {
        for _ in 0..frames {
            tx.send_frame(payload.clone()).await.expect("send");
        }
        tx
    });
    let mut received = 0usize;
    while received < frames * frame {
        let f = rx.recv_frame().await.expect("recv").expect("frame");
        received += f.len();
    }
    let elapsed = start.elapsed();
    let tx = sender.await.expect("sender");
    if verbose() {
        let p = tx.handle().path_stats();
        println!(
            "    tether: rtt {:?} cwnd {} packets {} lost {}",
            p.rtt, p.congestion_window, p.sent_packets, p.lost_packets
        );
    }
    elapsed
}

/// The same transfer on bare quinn: one bidirectional stream, `write_chunk` of
/// `frame`-sized `Bytes`, `read_chunk` on the other end (quinn's default transport
/// configuration).
async fn quinn_run(total: usize, frame: usize) -> Duration {
    let (server_config, client_config) = bare_configs();
    let run = bare_quinn_transfer(
        server_config,
        client_config,
        "bench.invalid",
        loopback(),
        frame,
        Amount::Bytes(total),
    )
    .await
    .expect("bare quinn transfer");
    if verbose() {
        let p = run.stats.path;
        println!(
            "    quinn:  rtt {:?} cwnd {} packets {} lost {}",
            p.rtt, p.cwnd, p.sent_packets, p.lost_packets
        );
    }
    run.elapsed
}

/// Reassembles `total` bytes of `frame`-sized frames from packet-sized chunks with the
/// crate's decoder alone (no network), to show what the one copy a contiguous frame
/// costs: bare quinn hands out chunks without copying, a framed link cannot.
fn decoder_only(total: usize, frame: usize) -> f64 {
    use tether_transport::framing::{frame_header, FrameDecoder};
    // About the stream payload of one 1452-byte QUIC packet on loopback.
    const CHUNK: usize = 1400;
    let mut wire = Vec::new();
    wire.extend_from_slice(&frame_header(frame, usize::MAX).expect("header"));
    wire.extend_from_slice(&vec![0x5A; frame]);
    let wire = Bytes::from(wire);
    let chunks: Vec<Bytes> = (0..wire.len())
        .step_by(CHUNK)
        .map(|i| wire.slice(i..(i + CHUNK).min(wire.len())))
        .collect();
    let mut decoder = FrameDecoder::standalone(frame);
    let start = Instant::now();
    let mut out = 0usize;
    for _ in 0..total / frame {
        for c in &chunks {
            decoder.push(c.clone());
        }
        while let Some(f) = decoder.next_frame() {
            out += f.len();
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(out, total / frame * frame);
    mib_per_s(out, elapsed)
}

/// `TETHER_BENCH_VERBOSE=1` prints QUIC path statistics after each run.
fn verbose() -> bool {
    std::env::var_os("TETHER_BENCH_VERBOSE").is_some()
}

/// Runs one transfer; returns (wall-clock MiB/s, MiB per CPU-second).
fn measure(
    runtime: &tokio::runtime::Runtime,
    sent: usize,
    run: impl std::future::Future<Output = Duration>,
) -> (f64, f64) {
    let cpu_before = process_cpu_time();
    let wall = runtime.block_on(run);
    let cpu = match (cpu_before, process_cpu_time()) {
        (Some(a), Some(b)) if b > a => b - a,
        _ => Duration::from_secs(1_000_000),
    };
    (mib_per_s(sent, wall), mib_per_s(sent, cpu))
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn bare_configs() -> (quinn::ServerConfig, quinn::ClientConfig) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
    let cert = rcgen::CertificateParams::new(vec!["bench.invalid".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .expect("server tls");
    let server = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server_tls).expect("quic server"),
    ));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).expect("quic client"),
    ));
    (server, client)
}

fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / MIB / d.as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let total = env_usize("TETHER_BENCH_BYTES", 1 << 30);
    let frame = env_usize("TETHER_BENCH_FRAME", 64 * 1024).max(1);
    let rounds = env_usize("TETHER_BENCH_ROUNDS", 5).max(1);
    let sent = total / frame * frame;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    println!(
        "transport throughput: {:.0} MiB per run over one QUIC stream on loopback, {} B frames, {rounds} rounds",
        sent as f64 / MIB,
        frame
    );
    println!(
        "frame reassembly alone (the copy bare quinn does not make): {:.0} MiB/s",
        decoder_only(sent, frame)
    );
    let mut bare = Vec::new();
    let mut ours = Vec::new();
    let mut ratios = Vec::new();
    let mut cpu_ratios = Vec::new();
    for round in 1..=rounds {
        // Alternate who goes first, so a slow drift of machine load hits both alike.
        let ((q, qc), (t, tc)) = if round % 2 == 1 {
            let q = measure(&runtime, sent, quinn_run(sent, frame));
            (q, measure(&runtime, sent, tether_run(sent, frame)))
        } else {
            let t = measure(&runtime, sent, tether_run(sent, frame));
            (measure(&runtime, sent, quinn_run(sent, frame)), t)
        };
        println!(
            "round {round}: bare quinn {q:7.1} MiB/s ({qc:6.1} MiB/CPU-s)   tether-transport {t:7.1} MiB/s ({tc:6.1} MiB/CPU-s)   ratio {:.3} (CPU {:.3})",
            t / q,
            tc / qc
        );
        bare.push(q);
        ours.push(t);
        ratios.push(t / q);
        cpu_ratios.push(tc / qc);
    }
    let best_q = bare.iter().copied().fold(0.0, f64::max);
    let best_t = ours.iter().copied().fold(0.0, f64::max);
    let med_q = median(&mut bare);
    let med_t = median(&mut ours);
    println!(
        "best:   bare quinn {best_q:7.1} MiB/s   tether-transport {best_t:7.1} MiB/s   ratio {:.3}",
        best_t / best_q
    );
    println!(
        "median: bare quinn {med_q:7.1} MiB/s   tether-transport {med_t:7.1} MiB/s   ratio {:.3}",
        med_t / med_q
    );
    println!(
        "median of per-round ratios: wall-clock {:.3}, per CPU-second {:.3}",
        median(&mut ratios),
        median(&mut cpu_ratios)
    );
}
