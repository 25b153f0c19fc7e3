//! TLS on the client-facing ports (rustls with the `ring` provider): the server side.
//! The client side, and the socket-pair bridge both use, are in
//! `ledgerbus_client::tls`.
//!
//! The HTTP API runs hyper straight on the TLS stream. The TCP API and its client
//! read and write their sockets without blocking from several tasks under a lock
//! (`ledgerbus_client::wire`), which a TLS session cannot share; there, the session runs on a
//! task of its own that copies between the network and one end of a socket pair, and
//! the API works on the other end, unchanged ([`Stream::Bridged`]). The bridge costs
//! one local hop per direction, paid only when TLS is on.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use ledgerbus_client::wire::Stream;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

/// A server configuration from a PEM certificate chain and a PEM private key.
pub fn acceptor(cert: &Path, key: &Path) -> io::Result<TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| invalid(format!("{}: {e}", cert.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(invalid(format!("{}: no certificate in it", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| invalid(format!("{}: {e}", key.display())))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid(format!("certificate and key: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Completes the server side of a TLS handshake within `timeout` and bridges it.
pub async fn accept_bridged(acceptor: &TlsAcceptor, tcp: TcpStream, timeout: Duration) -> io::Result<Stream> {
    let session = tokio::time::timeout(timeout, acceptor.accept(tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    ledgerbus_client::tls::bridge(session).map(Stream::Bridged)
}
