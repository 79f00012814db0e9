//! TLS for `https://` targets, with rustls (nginx's OpenSSL is not linked twice
//! into the worker). Configurations are built while nginx loads its
//! configuration, so a bad certificate file fails `nginx -t`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// `async_mirror_ssl_verify`, `async_mirror_ssl_trusted_certificate` and the client
/// certificate as they apply to a target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TlsSettings {
    pub verify: bool,
    /// PEM bundle of trusted CAs; `None` means the system's roots.
    pub trusted: Option<PathBuf>,
    /// `async_mirror_ssl_certificate` and `async_mirror_ssl_certificate_key` (PEM), for
    /// mirrors that require a client certificate (mutual TLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file.
///
/// # Errors
/// An unreadable file, or one without a certificate.
pub fn load_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from \"{}\": {e}", path.display()))?
        .collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(c),
        Ok(_) => Err(format!("no certificate found in \"{}\"", path.display())),
        Err(e) => Err(format!("invalid certificate in \"{}\": {e}", path.display())),
    }
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
/// An unreadable file, or one without a key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a private key from \"{}\": {e}", path.display()))
}

/// ALPN offer of an HTTP/1.1 client.
pub const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];
/// ALPN offer of an HTTP/2 client that falls back to HTTP/1.1.
pub const ALPN_H2: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The client configuration for one set of settings, offering `alpn` in the handshake.
///
/// # Errors
/// Certificates that cannot be loaded, or no trusted root at all while verifying.
pub fn client_config(s: &TlsSettings, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let builder = if s.verify {
        let mut roots = RootCertStore::empty();
        let certs = match &s.trusted {
            Some(path) => load_pem(path)?,
            None => rustls_native_certs::load_native_certs().certs,
        };
        let (added, _ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(match &s.trusted {
                Some(p) => format!("no usable CA certificate in \"{}\"", p.display()),
                None => "no system CA certificates found; set async_mirror_ssl_trusted_certificate".into(),
            });
        }
        builder.with_root_certificates(roots)
    } else {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
    };
    let mut config = match &s.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = load_pem(cert)?;
            // rustls checks that the key belongs to the certificate.
            builder.with_client_auth_cert(chain, load_key(key)?).map_err(|e| {
                format!(
                    "client certificate \"{}\" and key \"{}\" do not go together: {e}",
                    cert.display(),
                    key.display()
                )
            })?
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// `async_mirror_ssl_verify off`: like `proxy_ssl_verify off`, any certificate is accepted.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certificate_pairs_are_checked() {
        let dir = std::env::temp_dir().join(format!("am-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = rcgen::generate_simple_self_signed(vec!["a".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b".into()]).unwrap();
        let write = |name: &str, pem: String| {
            let p = dir.join(name);
            std::fs::write(&p, pem).unwrap();
            p
        };
        let (cert_a, key_a, key_b) = (
            write("a.pem", a.cert.pem()),
            write("a.key", a.key_pair.serialize_pem()),
            write("b.key", b.key_pair.serialize_pem()),
        );
        let with = |cert: &PathBuf, key: &PathBuf| TlsSettings {
            verify: false,
            trusted: None,
            client_cert: Some((cert.clone(), key.clone())),
        };
        assert!(
            client_config(&with(&cert_a, &key_a), ALPN_HTTP1).unwrap().client_auth_cert_resolver.has_certs()
        );
        let err = client_config(&with(&cert_a, &key_b), ALPN_HTTP1).unwrap_err();
        assert!(err.contains("do not go together"), "{err}");
        let err = client_config(&with(&cert_a, &cert_a), ALPN_HTTP1).unwrap_err();
        assert!(err.contains("cannot read a private key"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn configs() {
        let off = client_config(&TlsSettings::default(), ALPN_HTTP1).unwrap();
        assert_eq!(off.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let missing =
            TlsSettings { verify: true, trusted: Some("/nonexistent/ca.pem".into()), client_cert: None };
        assert!(client_config(&missing, ALPN_HTTP1).unwrap_err().contains("/nonexistent/ca.pem"));
    }
}
