//! TLS to a gateway (rustls with the `ring` provider), and the bridge the TCP API
//! uses on both ends.
//!
//! The client reads and writes its socket without blocking from several tasks under
//! a lock ([`crate::wire`]), which a TLS session cannot share; so the session runs on
//! a task of its own that copies between the network and one end of a socket pair,
//! and the client works on the other end, unchanged ([`Stream::Bridged`]). The bridge
//! costs one local hop per direction, paid only when TLS is on.
//!
//! [`Stream::Bridged`]: crate::wire::Stream::Bridged

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

/// What a client needs to reach a gateway over TLS: the CA it trusts and the name the
/// gateway's certificate must carry.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").field("server_name", &self.server_name).finish()
    }
}

impl TlsClient {
    /// Trusts the certificates in the PEM file `ca` and expects `server_name` (a DNS
    /// name or an IP address) in the gateway's certificate.
    pub fn new(ca: &Path, server_name: &str) -> io::Result<TlsClient> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in
            CertificateDer::pem_file_iter(ca).map_err(|e| invalid(format!("{}: {e}", ca.display())))?
        {
            let cert = cert.map_err(|e| invalid(format!("{}: {e}", ca.display())))?;
            roots.add(cert).map_err(|e| invalid(format!("{}: {e}", ca.display())))?;
        }
        if roots.is_empty() {
            return Err(invalid(format!("{}: no certificate in it", ca.display())));
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| invalid(format!("server name `{server_name}`: {e}")))?;
        Ok(TlsClient { connector: TlsConnector::from(Arc::new(config)), server_name })
    }

    /// The TLS session over `tcp`, bridged to a socket the caller reads and writes.
    pub async fn connect_bridged(&self, tcp: TcpStream) -> io::Result<UnixStream> {
        let session = self.connector.connect(self.server_name.clone(), tcp).await?;
        bridge(session)
    }
}

/// Runs `session` on its own task, copying between it and one end of a socket pair;
/// returns the other end. A FIN on either side is passed on (TLS: close_notify).
pub fn bridge<S>(session: S) -> io::Result<UnixStream>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, mut theirs) = UnixStream::pair()?;
    tokio::spawn(async move {
        let mut session = session;
        if let Err(error) = tokio::io::copy_bidirectional(&mut session, &mut theirs).await {
            tracing::debug!(%error, "TLS bridge ended");
        }
    });
    Ok(ours)
}
