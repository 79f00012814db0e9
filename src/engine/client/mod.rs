//! Sending copies to a mirror: one [`Target`] per mirror and worker with its breaker,
//! connection limits and pools, connection setup (TCP, TLS, name lookup) and the
//! HTTP/1.1 and HTTP/2 exchanges.

mod breaker;
mod connect;
mod http1;
mod http2;
mod idle;
mod limits;
mod pipeline;
mod preface;
mod resolve;
mod response;
mod send;
mod target;
mod tls;
mod wire;

pub use breaker::{Breaker, BreakerSettings, Clock, Gate};
pub use pipeline::{Landing, Piped, Pipeline};
pub use response::{Keep, MirrorResponse};
pub use target::{ClientSettings, CopyOptions, Outgoing, Target};
pub use tls::{ALPN_H2, ALPN_HTTP1, TlsSettings, client_config, load_key, load_pem};
