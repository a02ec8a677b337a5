//! TLS to PostgreSQL as libpq does it, so that an operator's `sslmode` and `sslrootcert` mean
//! here what they mean to `psql`: [`SslMode`], [`TlsSettings`], and [`connect`], which every
//! lifeline connection to PostgreSQL goes through (backups, checks, status, failover).
//!
//! rustls on ring, as the S3 client: no OpenSSL, and the same crypto in every process.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::Host;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`: how hard a connection insists on TLS and what it checks of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it (libpq tries plain text first; here TLS is tried first,
    /// which only matters to a server that refuses TLS to some clients).
    Allow,
    /// TLS when the server offers it, without checking its certificate (libpq's default).
    #[default]
    Prefer,
    /// TLS or nothing; the certificate is checked against the root certificate when one is
    /// configured or `~/.postgresql/root.crt` exists, as libpq does.
    Require,
    /// TLS, and a certificate signed by the root certificate.
    VerifyCa,
    /// TLS, a certificate signed by the root certificate, for the host connected to.
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = TlsError;

    fn from_str(text: &str) -> Result<SslMode, TlsError> {
        Ok(match text.trim() {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(TlsError::UnknownMode(other.to_string())),
        })
    }
}

/// How lifeline speaks TLS to PostgreSQL (`db-sslmode`, `db-sslrootcert`; libpq's `PGSSLMODE`,
/// `PGSSLROOTCERT`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// A PEM file of trusted certificates, or `system` for the system's roots; `None`:
    /// `~/.postgresql/root.crt` when it exists.
    pub root_cert: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("unknown sslmode {0:?}: use disable, allow, prefer, require, verify-ca or verify-full")]
    UnknownMode(String),
    #[error(
        "sslmode {mode} checks the server's certificate, but there is no root certificate: set \
         db-sslrootcert or PGSSLROOTCERT to the PEM file of the CA that signed it (or \"system\"), \
         or put it at ~/.postgresql/root.crt"
    )]
    NoRootCert { mode: SslMode },
    #[error(
        "the root certificate {path} is not usable ({reason}): point db-sslrootcert or \
         PGSSLROOTCERT at a PEM file of the CA that signed the server's certificate"
    )]
    RootCert { path: PathBuf, reason: String },
    #[error(
        "sslmode {mode} may not be used with the system's roots (db-sslrootcert = \"system\"): \
         any publicly trusted certificate would pass for the server; use verify-full"
    )]
    WeakWithSystemRoots { mode: SslMode },
    #[error("TLS cannot be set up: {0}")]
    Setup(String),
}

/// Why [`connect`] failed: the TLS settings, or the connection itself (the driver's error, with
/// the server's SQLSTATE when it answered).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
}

/// Connects as `config` says, with TLS as `tls` says, and drives the connection in the
/// background until the client is dropped. Unix sockets never use TLS (nor does libpq).
pub async fn connect(
    config: &tokio_postgres::Config,
    tls: &TlsSettings,
) -> Result<tokio_postgres::Client, ConnectError> {
    let mut config = config.clone();
    let socket_only = config
        .get_hosts()
        .iter()
        .all(|host| matches!(host, Host::Unix(_)));
    let mode = if socket_only {
        SslMode::Disable
    } else {
        tls.mode
    };
    config.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    let connector = MakeRustlsConnect::new(client_config(mode, tls.root_cert.as_deref())?);
    let (client, connection) = match config.connect(connector).await {
        Ok(connected) => connected,
        // libpq's prefer and allow fall back to plain text when the handshake fails (an old
        // server's TLS that rustls refuses), not only when the server offers no TLS.
        Err(e) if matches!(mode, SslMode::Allow | SslMode::Prefer) && handshake_failed(&e) => {
            tracing::warn!("TLS handshake failed ({e}); sslmode {mode} connects without TLS");
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            let plain = MakeRustlsConnect::new(client_config(SslMode::Disable, None)?);
            config.connect(plain).await?
        }
        Err(e) => return Err(e.into()),
    };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("PostgreSQL connection closed: {e}");
        }
    });
    Ok(client)
}

/// The driver reports a failed handshake (not a refusal by the server) in these words.
fn handshake_failed(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_none() && e.to_string().contains("TLS handshake")
}

/// What a connection trusts: nothing checked below `require`, the chain for `verify-ca` (and
/// `require` with a root certificate), the chain and the host name for `verify-full`.
fn client_config(mode: SslMode, root_cert: Option<&Path>) -> Result<ClientConfig, TlsError> {
    if root_cert.is_some_and(|p| p.as_os_str() == "system") && mode != SslMode::VerifyFull {
        return Err(TlsError::WeakWithSystemRoots { mode });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable | SslMode::Allow | SslMode::Prefer => {
            Arc::new(AnyCertificate(provider.clone()))
        }
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            match root_store(root_cert, mode)? {
                None => Arc::new(AnyCertificate(provider.clone())),
                Some(roots) => {
                    let chain = WebPkiServerVerifier::builder_with_provider(
                        Arc::new(roots),
                        provider.clone(),
                    )
                    .build()
                    .map_err(|e| TlsError::Setup(e.to_string()))?;
                    if mode == SslMode::VerifyFull {
                        chain
                    } else {
                        Arc::new(ChainOnly(chain))
                    }
                }
            }
        }
    };
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The trusted roots, as libpq finds them: the configured file (or `system`), else
/// `~/.postgresql/root.crt` when it exists. `None`: nothing to check against, which only
/// `require` accepts.
fn root_store(root_cert: Option<&Path>, mode: SslMode) -> Result<Option<RootCertStore>, TlsError> {
    let path = match root_cert {
        Some(path) => path.to_path_buf(),
        None => match default_root_cert().filter(|path| path.exists()) {
            Some(path) => path,
            None if mode.verifies() => return Err(TlsError::NoRootCert { mode }),
            None => return Ok(None),
        },
    };
    let mut roots = RootCertStore::empty();
    if path.as_os_str() == "system" {
        let found = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(found.certs);
    } else {
        let unusable = |reason: String| TlsError::RootCert {
            path: path.clone(),
            reason,
        };
        let pem = std::fs::read(&path).map_err(|e| unusable(e.to_string()))?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| unusable(format!("not PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| unusable(format!("not a CA certificate: {e}")))?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::RootCert {
            path,
            reason: "it holds no certificate".into(),
        });
    }
    Ok(Some(roots))
}

fn default_root_cert() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".postgresql/root.crt"))
}

/// `prefer`, and `require` without a root certificate: encrypted, but whoever answers is
/// trusted (the handshake's signatures are still checked).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name in the certificate is not
/// compared with the host.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_as_libpq_spells_them() {
        for mode in [
            SslMode::Disable,
            SslMode::Allow,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            assert_eq!(mode.as_str().parse::<SslMode>().ok(), Some(mode));
        }
        let err = "verify_full".parse::<SslMode>().expect_err("not a mode");
        assert!(err.to_string().contains("verify-full"), "{err}");
    }

    #[test]
    fn verifying_modes_need_a_root_certificate() {
        let missing = Path::new("/nonexistent/root.crt");
        for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            let err = client_config(mode, Some(missing)).expect_err("unreadable root");
            assert!(err.to_string().contains("/nonexistent/root.crt"), "{err}");
        }
        // The lower modes never read it.
        for mode in [SslMode::Disable, SslMode::Allow, SslMode::Prefer] {
            assert!(client_config(mode, Some(missing)).is_ok());
        }
    }

    #[test]
    fn the_system_roots_need_verify_full() {
        let system = Path::new("system");
        for mode in [SslMode::Prefer, SslMode::Require, SslMode::VerifyCa] {
            let err = client_config(mode, Some(system)).expect_err("weak mode with system roots");
            assert!(err.to_string().contains("use verify-full"), "{err}");
        }
    }

    #[test]
    fn a_root_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("root.crt");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let err = client_config(SslMode::VerifyFull, Some(&path)).expect_err("no certificate");
        assert!(err.to_string().contains("holds no certificate"), "{err}");
    }
}
