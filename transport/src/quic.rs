//! QUIC (quinn) configuration: an ephemeral self-signed certificate, ALPN `tether/1`,
//! TLS 1.3 with ring only, and a client that accepts any server certificate.
//!
//! # Why accepting any certificate is safe here
//!
//! QUIC is Tether's *transport*, not its authentication. Every frame that crosses a
//! link was sealed by the session layer with Noise keys that only the two paired
//! devices hold (their static keys and relationship key were exchanged at pairing), and
//! the peer's identity is established by the Noise handshake, never by QUIC. So:
//!
//! - there is no certificate authority that could vouch for a phone on a mobile network,
//!   and no name to check; each endpoint makes a fresh self-signed certificate at start;
//! - an attacker who answers our QUIC handshake in the peer's place (a man in the
//!   middle) terminates only the QUIC layer: it sees Noise ciphertext, cannot read or
//!   forge frames (they fail authentication and are dropped and counted upstream), and
//!   can only drop, delay or reorder traffic, which any on-path attacker can do anyway;
//! - the verifier still checks the TLS handshake *signatures* against the presented
//!   certificate, so the QUIC keys are bound to whoever holds that certificate's key and
//!   the TLS state machine is not short-circuited.
//!
//! Anything carried over QUIC that is not Noise-sealed would lose this protection; the
//! transport therefore carries sealed frames only.

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::TransportConfig;
use crate::error::EndpointError;
use crate::stats::{bump, EndpointCounters};

/// The ALPN protocol id of Tether links; a peer speaking anything else is refused.
pub const ALPN: &[u8] = b"tether/1";

/// The TLS server name every dial uses. It is never checked (see the module docs); it
/// only has to be a syntactically valid DNS name for rustls.
pub const SERVER_NAME: &str = "tether.invalid";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(e: impl std::fmt::Display) -> EndpointError {
    EndpointError::Tls(e.to_string())
}

/// A fresh self-signed Ed25519 certificate and its key.
///
/// Ed25519 because its signatures have a fixed size, which keeps packet sizes (and so
/// the simulated network's packet log) identical from run to run; the serial number is
/// fixed for the same reason (rcgen would otherwise derive it from the key).
fn ephemeral_certificate(
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), EndpointError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(tls_error)?;
    let mut params =
        rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()]).map_err(tls_error)?;
    params.serial_number = Some(rcgen::SerialNumber::from(1u64));
    let cert = params.self_signed(&key).map_err(tls_error)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((cert.der().clone(), key_der))
}

/// The server side of an endpoint: accepts links, allows client migration.
pub(crate) fn server_config(
    config: &TransportConfig,
) -> Result<quinn::ServerConfig, EndpointError> {
    let (cert, key) = ephemeral_certificate()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(tls_error)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No resumption: every link is a fresh, cheap QUIC handshake; tickets would only
    // make packet sizes depend on history.
    tls.send_tls13_tickets = 0;
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(tls).map_err(tls_error)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server
        .transport_config(config.quinn_transport(1)?)
        .migration(true)
        .max_incoming(config.max_pending_accepts);
    Ok(server)
}

/// The client side of an endpoint: dials links, accepts any server certificate.
///
/// Public so that tools and tests can speak raw QUIC to a Tether endpoint (a hostile
/// client, for one); an [`Endpoint`](crate::Endpoint) builds its own.
pub fn client_config(config: &TransportConfig) -> Result<quinn::ClientConfig, EndpointError> {
    let provider = provider();
    let verifier = Arc::new(AcceptAnyServerCert {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.resumption = Resumption::disabled();
    tls.enable_early_data = false;
    let crypto = QuicClientConfig::try_from(tls).map_err(tls_error)?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client
        .transport_config(config.quinn_transport(0)?)
        .token_store(Arc::new(quinn::NoneTokenStore));
    Ok(client)
}

/// quinn's endpoint-wide settings: seeded RNG when configured, and no greasing of the
/// QUIC fixed bit, so that our socket guard may drop datagrams with that bit clear as
/// not-QUIC.
pub(crate) fn endpoint_config(config: &TransportConfig) -> quinn::EndpointConfig {
    let mut endpoint = quinn::EndpointConfig::default();
    endpoint.grease_quic_bit(false).rng_seed(config.rng_seed);
    endpoint
}

/// The connection id generator of every endpoint: quinn's default (ids carrying a keyed
/// hash, so that quinn can tell ids it never issued), which also counts the datagrams
/// quinn drops for carrying such an id (`unknown_connection_dropped`). quinn asks
/// [`validate`](quinn::ConnectionIdGenerator::validate) exactly when a short-header
/// datagram matches no connection, and drops the datagram when it fails.
pub(crate) fn counting_cid_generator(
    counters: Arc<EndpointCounters>,
) -> impl Fn() -> Box<dyn quinn::ConnectionIdGenerator> + Send + Sync + 'static {
    move || {
        Box::new(CountingCids {
            inner: quinn_proto::HashedConnectionIdGenerator::new(),
            counters: counters.clone(),
        })
    }
}

/// quinn's hashed connection ids, counting the ones that fail validation.
struct CountingCids {
    inner: quinn_proto::HashedConnectionIdGenerator,
    counters: Arc<EndpointCounters>,
}

impl quinn::ConnectionIdGenerator for CountingCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        self.inner.generate_cid()
    }

    fn validate(&self, cid: &quinn::ConnectionId) -> Result<(), quinn_proto::InvalidCid> {
        let valid = self.inner.validate(cid);
        if valid.is_err() {
            bump(&self.counters.unknown_connection_dropped);
        }
        valid
    }

    fn cid_len(&self) -> usize {
        self.inner.cid_len()
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        self.inner.cid_lifetime()
    }
}

/// A certificate verifier that accepts any server certificate but still verifies the
/// TLS 1.3 handshake signature made with it. Safe only because peer identity comes from
/// Noise (see the module docs).
#[derive(Debug)]
struct AcceptAnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_build_with_ring_only() {
        let c = TransportConfig::default();
        server_config(&c).unwrap();
        client_config(&c).unwrap();
    }

    #[test]
    fn certificates_have_a_fixed_size() {
        let a = ephemeral_certificate().unwrap().0;
        let b = ephemeral_certificate().unwrap().0;
        assert_ne!(a, b);
        assert_eq!(a.len(), b.len());
    }
}
