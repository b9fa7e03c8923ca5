//! [`make_certificates`]: a development certificate authority and the node and client
//! certificates it signs (`sealdb cert`).

use std::path::Path;

use client::{CLIENT_NAME, NODE_NAME};

use crate::NodeError;

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
pub fn make_certificates(names: &[String]) -> Result<Certificates, NodeError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let err = |e: rcgen::Error| NodeError::Certificates(e.to_string());
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "sealdb development CA");
    let ca = params.self_signed(&ca_key).map_err(err)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(params, ca_key);
    let leaf = |names: Vec<String>, common: &str| -> Result<(String, String), NodeError> {
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
    pub fn write(&self, dir: &Path) -> Result<(), NodeError> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(dir).map_err(|e| NodeError::at(dir, e))?;
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
                .map_err(|e| NodeError::at(&path, e))?;
            std::io::Write::write_all(&mut file, text.as_bytes())
                .map_err(|e| NodeError::at(&path, e))?;
        }
        Ok(())
    }
}
