//! The HTTP/1.1 exchange: one request in flight per connection.

use std::time::Instant;

use hyper::Request;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::time::timeout_at;

use super::connect::{Stream, exchange_failure};
use super::idle::Connection;
use super::response::{Keep, MirrorResponse};
use crate::engine::capture::CopyBody;
use crate::engine::outcome::{FailReason, Failure};

pub struct Conn(SendRequest<CopyBody>);

impl Connection for Conn {
    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    fn is_ready(&self) -> bool {
        self.0.is_ready()
    }
}

/// Starts an HTTP/1.1 client connection over `io`, its driver running on the runtime.
///
/// # Errors
/// hyper's handshake error.
pub async fn handshake(io: Stream) -> Result<Conn, hyper::Error> {
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Conn(sender))
}

/// How an exchange went wrong.
pub enum ExchangeError {
    /// The pooled connection was closed before the request went out; here it is back.
    Stale(Box<Request<CopyBody>>),
    Failed(Failure),
}

/// Sends `req` and reads the whole response by `deadline`, keeping `keep` body bytes.
/// `Ok` carries whether the connection can take another request.
///
/// # Errors
/// See [`ExchangeError`].
pub async fn exchange(
    conn: &mut Conn,
    req: Request<CopyBody>,
    deadline: Instant,
    keep: &Keep,
) -> Result<(MirrorResponse, bool), ExchangeError> {
    let work = async {
        let resp = conn.0.try_send_request(req).await.map_err(|mut e| {
            let back = e.take_message();
            let err = e.into_error();
            match back {
                Some(req) if err.is_canceled() => ExchangeError::Stale(Box::new(req)),
                _ => ExchangeError::Failed(exchange_failure(&err)),
            }
        })?;
        let resp = MirrorResponse::read(resp, keep)
            .await
            .map_err(|e| ExchangeError::Failed(exchange_failure(&e)))?;
        Ok((resp, conn.0.ready().await.is_ok()))
    };
    match timeout_at(deadline.into(), work).await {
        Ok(r) => r,
        Err(_) => Err(ExchangeError::Failed(Failure::new(FailReason::Timeout, "mirror timed out"))),
    }
}
