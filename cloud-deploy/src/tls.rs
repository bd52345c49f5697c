//! Optional TLS for both planes, from a PEM certificate chain and private key.
//!
//! The device plane uses tonic's rustls support; the control plane wraps its TCP listener in a
//! [`TlsListener`] that completes the handshake before handing the connection to axum.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

use crate::CloudError;

/// Why the TLS certificate or key cannot serve, naming the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file does not parse; `what` is `certificate` or `key`.
    #[error("TLS {what} {}: {source}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("TLS certificate {}: no certificate in the file", path.display())]
    NoCertificate { path: PathBuf },
    /// The key does not belong to the certificate, or either is of a kind rustls refuses.
    #[error("TLS certificate/key pair {}: {source}", path.display())]
    KeyPair {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// The crypto provider offers none of the protocol versions asked for.
    #[error("TLS: {0}")]
    Protocols(#[source] rustls::Error),
}

/// A slow or silent client gets this long to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the certificate chain and key are (PEM files).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>, CloudError> {
    std::fs::read(path).map_err(|e| CloudError::io(path, e))
}

/// Turns a PEM parsing error into one naming the file and what it should hold.
fn unparsable<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(pem::Error) -> TlsError + 'a {
    move |source| TlsError::Pem {
        what,
        path: path.to_owned(),
        source,
    }
}

impl TlsFiles {
    /// The PEM bytes of (certificate chain, private key).
    pub fn load(&self) -> Result<(Vec<u8>, Vec<u8>), CloudError> {
        Ok((read(&self.cert_pem)?, read(&self.key_pem)?))
    }

    /// A rustls server configuration (ring provider) for the control plane.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, CloudError> {
        let (cert_pem, key_pem) = self.load()?;
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(unparsable("certificate", &self.cert_pem))?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate {
                path: self.cert_pem.clone(),
            }
            .into());
        }
        let key =
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(unparsable("key", &self.key_pem))?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocols)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::KeyPair {
            path: self.cert_pem.clone(),
            source,
        })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// A TCP listener whose accepted connections have completed a TLS handshake.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl TlsListener {
    /// Wraps `tcp` with `config`.
    pub fn new(tcp: TcpListener, config: rustls::ServerConfig) -> TlsListener {
        TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "control plane accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
