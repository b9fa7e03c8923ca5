//! TLS on every hop, with mutual authentication: [`Tls`] is one party's certificate and key
//! and the cluster's CA; [`make_certificates`] makes a development CA and certificates
//! (`sealdb cert`).
//!
//! Who is who comes from the certificate, checked by the TLS handshake against the cluster's
//! CA, and then by its names:
//!
//! ```text
//!   node certificate     SAN DNS "node.sealdb"  (+ the node's host names and addresses)
//!   client certificate   SAN DNS "client.sealdb"
//! ```
//!
//! - Every server requires a client certificate signed by the cluster's CA: a client without
//!   one, or with one from another CA, is refused at the handshake.
//! - Every client checks that the server's certificate is valid for [`NODE_NAME`], whatever
//!   address it dialled: only a cluster node can answer.
//! - Peer-only calls (`Subscribe`, `RequestWindow`, `Verdicts`, and reads for a window) also
//!   require the caller's certificate to be valid for [`NODE_NAME`]
//!   ([`require_node`]): a client's certificate does not let it act as a node.
//!
//! Without TLS (no `[tls]` in a node's configuration) nothing is encrypted or authenticated,
//! and peer-only calls are open: a node says so in its log, as a warning when it listens
//! beyond loopback.

use std::path::Path;

use rustls_pki_types::{CertificateDer, ServerName};
use tonic::Status;

use crate::wire::SetupError;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The name every node certificate carries, and the name clients verify servers by.
pub const NODE_NAME: &str = "node.sealdb";

/// The name client certificates carry.
pub const CLIENT_NAME: &str = "client.sealdb";

/// One party's TLS material (PEM): the cluster's CA certificate, its own certificate and key.
#[derive(Clone)]
pub struct Tls {
    ca: Certificate,
    identity: Identity,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls { .. }")
    }
}

impl Tls {
    /// From PEM text.
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Tls {
        Tls { ca: Certificate::from_pem(ca), identity: Identity::from_pem(cert, key) }
    }

    /// Reads the CA certificate, this party's certificate and its key from PEM files.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Tls, SetupError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| SetupError::Read { path: p.into(), source })
        };
        Ok(Tls::from_pem(&read(ca)?, &read(cert)?, &read(key)?))
    }

    /// `dir/ca.pem` with `dir/NAME.pem` and `dir/NAME.key`, as `sealdb cert` writes
    /// them (`name` is `node` or `client`).
    pub fn load_dir(dir: &Path, name: &str) -> Result<Tls, SetupError> {
        Tls::load(
            &dir.join("ca.pem"),
            &dir.join(format!("{name}.pem")),
            &dir.join(format!("{name}.key")),
        )
    }

    /// A server that presents this certificate and requires one from every client.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(self.identity.clone()).client_ca_root(self.ca.clone())
    }

    /// A client that presents this certificate and accepts only cluster nodes as servers.
    pub(crate) fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(NODE_NAME)
    }
}

/// Refuses a peer-only call from a caller that is not a cluster node, when the server runs
/// TLS (`secure`). Without TLS there is no identity to check.
pub fn require_node<T>(request: &tonic::Request<T>, secure: bool) -> Result<(), Status> {
    if !secure {
        return Ok(());
    }
    let certs = request.peer_certs();
    let is_node = certs.as_deref().and_then(|c| c.first()).is_some_and(|cert| {
        let der = CertificateDer::from(cert.as_ref());
        let name = ServerName::try_from(NODE_NAME).expect("a valid DNS name");
        webpki::EndEntityCert::try_from(&der)
            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
    });
    if !is_node {
        return Err(Status::permission_denied("only cluster nodes may call this"));
    }
    Ok(())
}
