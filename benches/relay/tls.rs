//! The bench's own certificate authority (made with rcgen at startup) and the rustls configs of
//! the TLS fixture upstream and of the direct TLS client.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

/// Everything TLS the bench needs; made once per run.
pub struct TlsMaterial {
    /// The CA certificate, PEM: written to the file given as `TARGET_CA_FILE` and to nginx.
    pub ca_pem: String,
    /// Config of the TLS fixture upstream: a leaf for `localhost` and `127.0.0.1`.
    pub server: Arc<rustls::ServerConfig>,
    /// Config of the direct client, trusting only the CA.
    pub client: Arc<rustls::ClientConfig>,
}

/// The name the direct client verifies; the proxy is given `https://127.0.0.1:<port>` too.
pub fn server_name() -> ServerName<'static> {
    ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn make() -> Result<TlsMaterial, String> {
    let err = |what: &str, e: &dyn std::fmt::Display| format!("tls setup: {what}: {e}");

    let ca_key = KeyPair::generate().map_err(|e| err("ca key", &e))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| err("ca params", &e))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "agent-loop-proxy bench CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| err("ca cert", &e))?;

    let leaf_key = KeyPair::generate().map_err(|e| err("leaf key", &e))?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()])
        .map_err(|e| err("leaf params", &e))?;
    leaf.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf_cert = leaf
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .map_err(|e| err("leaf cert", &e))?;

    let chain: Vec<CertificateDer<'static>> = vec![leaf_cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("server versions", &e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| err("server cert", &e))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca_cert.der().clone())
        .map_err(|e| err("root store", &e))?;
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("client versions", &e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];

    Ok(TlsMaterial {
        ca_pem: ca_cert.pem(),
        server: Arc::new(server),
        client: Arc::new(client),
    })
}
