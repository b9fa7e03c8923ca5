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
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Tls, String> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        Ok(Tls::from_pem(&read(ca)?, &read(cert)?, &read(key)?))
    }

    /// `dir/ca.pem` with `dir/NAME.pem` and `dir/NAME.key`, as [`make_certificates`] writes
    /// them (`name` is `node` or `client`).
    pub fn load_dir(dir: &Path, name: &str) -> Result<Tls, String> {
        Tls::load(
            &dir.join("ca.pem"),
            &dir.join(format!("{name}.pem")),
            &dir.join(format!("{name}.key")),
        )
    }

    /// A server that presents this certificate and requires one from every client.
    pub(crate) fn server(&self) -> ServerTlsConfig {
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
pub(crate) fn require_node<T>(request: &tonic::Request<T>, secure: bool) -> Result<(), Status> {
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

/// PEM text of a development CA and of certificates signed by it.
pub struct Certificates {
    /// The CA's certificate (`ca.pem`), which every node and client trusts.
    pub ca: String,
    /// The CA's key (`ca.key`): keep it away from the nodes.
    pub ca_key: String,
    /// A node certificate and key (`node.pem`, `node.key`), for every node.
    pub node: (String, String),
    /// A client certificate and key (`client.pem`, `client.key`).
    pub client: (String, String),
}

/// Makes a CA and a node and a client certificate signed by it. The node certificate is
/// valid for [`NODE_NAME`], `localhost`, 127.0.0.1 and `names` (host names or addresses the
/// nodes are reached at); the client certificate for [`CLIENT_NAME`] only.
pub fn make_certificates(names: &[String]) -> Result<Certificates, String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let err = |e: rcgen::Error| format!("making certificates: {e}");
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "sealdb development CA");
    let ca = params.self_signed(&ca_key).map_err(err)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(params, ca_key);
    let leaf = |names: Vec<String>, common: &str| -> Result<(String, String), String> {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(names).map_err(err)?;
        params.distinguished_name.push(DnType::CommonName, common);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer).map_err(err)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let mut node_names = vec![NODE_NAME.to_string(), "localhost".into(), "127.0.0.1".into()];
    node_names.extend(names.iter().cloned());
    Ok(Certificates {
        ca: ca.pem(),
        ca_key: ca_key_pem,
        node: leaf(node_names, "sealdb node")?,
        client: leaf(vec![CLIENT_NAME.to_string()], "sealdb client")?,
    })
}

impl Certificates {
    /// Writes `ca.pem`, `ca.key`, `node.pem`, `node.key`, `client.pem` and `client.key` in
    /// `dir` (keys readable by the owner only).
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let files = [
            ("ca.pem", &self.ca, 0o644),
            ("ca.key", &self.ca_key, 0o600),
            ("node.pem", &self.node.0, 0o644),
            ("node.key", &self.node.1, 0o600),
            ("client.pem", &self.client.0, 0o644),
            ("client.key", &self.client.1, 0o600),
        ];
        for (name, text, mode) in files {
            let path = dir.join(name);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            std::io::Write::write_all(&mut file, text.as_bytes())
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(())
    }
}
