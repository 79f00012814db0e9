//! Connection setup: name lookup, TCP, and TLS with the ALPN protocols the
//! caller configured. What runs over the stream is the caller's business.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use crate::engine::config::Dest;
use crate::engine::outcome::{FailReason, Failure};

/// A byte stream to a mirror: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

pub type Stream = Pin<Box<dyn Io>>;

/// The application protocol the TLS handshake settled on (ALPN), if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    None,
    Http1,
    H2,
}

fn failed(detail: String) -> Failure {
    Failure::new(FailReason::Connect, detail)
}

/// The address of a destination; names are looked up here, on the runtime (never on
/// the nginx thread), within the connect time limit.
async fn resolve(d: &Dest, limit: Duration) -> Result<SocketAddr, Failure> {
    if let Some(addr) = d.addr {
        return Ok(addr);
    }
    let host = d.url.host.as_str();
    match timeout(limit, tokio::net::lookup_host((host, d.url.port))).await {
        Ok(Ok(mut addrs)) => addrs.next().ok_or_else(|| failed(format!("host \"{host}\" not found"))),
        Ok(Err(e)) => Err(failed(format!("host \"{host}\" not found: {e}"))),
        Err(_) => Err(failed(format!("resolving \"{host}\" timed out"))),
    }
}

/// Resolves (unless `at` says where), connects and, for `https://`, completes the TLS
/// handshake, all within `limit` (`async_mirror_connect_timeout`).
///
/// # Errors
/// `failed{connect}` with a line for the error log.
pub async fn connect(
    d: &Dest,
    at: Option<SocketAddr>,
    tls: Option<&Arc<rustls::ClientConfig>>,
    limit: Duration,
) -> Result<(Stream, Alpn), Failure> {
    let started = Instant::now();
    let addr = match at {
        Some(addr) => addr,
        None => resolve(d, limit).await?,
    };
    let left = limit.saturating_sub(started.elapsed());
    let tcp = match timeout(left, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(failed(format!("connect() to {addr} failed: {e}"))),
        Err(_) => return Err(failed(format!("connect() to {addr} timed out after {limit:?}"))),
    };
    let _ = tcp.set_nodelay(true);
    let Some(config) = tls else { return Ok((Box::pin(tcp), Alpn::None)) };
    let name = ServerName::try_from(d.url.host.clone())
        .map_err(|e| failed(format!("invalid TLS server name: {e}")))?;
    let left = limit.saturating_sub(started.elapsed());
    match timeout(left, TlsConnector::from(config.clone()).connect(name, tcp)).await {
        Ok(Ok(stream)) => {
            let alpn = match stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => Alpn::H2,
                Some(b"http/1.1") => Alpn::Http1,
                _ => Alpn::None,
            };
            Ok((Box::pin(stream), alpn))
        }
        Ok(Err(e)) => Err(failed(format!("TLS handshake with {addr} failed: {e}"))),
        Err(_) => Err(failed(format!("TLS handshake with {addr} timed out"))),
    }
}

/// How a broken exchange is counted. A mirror that refuses our TLS handshake (a client
/// certificate required, not accepted) says so with an alert; over TLS 1.3 that alert
/// arrives only after the client considers the handshake done, in the first read of the
/// response, so it is found in the error's chain and counted as the connect failure it is.
pub fn exchange_failure(err: &(dyn std::error::Error + 'static)) -> Failure {
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cur) = e {
        // An io::Error's source() skips the error it wraps: look at that one too.
        let inner = cur
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn std::error::Error + 'static));
        let tls = [Some(cur), inner].into_iter().flatten().find_map(|x| x.downcast_ref::<rustls::Error>());
        if let Some(rustls::Error::AlertReceived(alert)) = tls {
            let hint = match alert {
                rustls::AlertDescription::CertificateRequired => {
                    " (the mirror requires a client certificate: async_mirror_ssl_certificate)"
                }
                rustls::AlertDescription::BadCertificate
                | rustls::AlertDescription::UnknownCA
                | rustls::AlertDescription::AccessDenied => {
                    " (the mirror did not accept the client certificate)"
                }
                _ => "",
            };
            return failed(format!("TLS handshake refused by the mirror: {alert:?}{hint}"));
        }
        e = cur.source();
    }
    Failure::new(FailReason::Reset, err.to_string())
}
