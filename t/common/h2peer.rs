//! An HTTP/2 peer (h2c, prior knowledge) built on h2's server: records every request,
//! counts connections and the most streams open at once, and can refuse streams or
//! send GOAWAY mid-burst.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::Recorded;

#[derive(Debug, Clone, Default)]
pub struct H2Options {
    /// SETTINGS_MAX_CONCURRENT_STREAMS announced (None: h2's default, unlimited).
    pub max_streams: Option<u32>,
    /// Each response waits this long.
    pub delay: Duration,
    /// Every n-th stream (1-based, counted over the peer) is reset with REFUSED_STREAM.
    pub refuse_every: Option<usize>,
    /// After this many streams on a connection, a graceful GOAWAY.
    pub goaway_after: Option<usize>,
    /// Response trailers (gRPC: `grpc-status`).
    pub trailers: Vec<(&'static str, &'static str)>,
}

pub struct H2Peer {
    pub port: u16,
    pub got: Arc<Mutex<Vec<Recorded>>>,
    conns: Arc<AtomicUsize>,
    max_open: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

impl H2Peer {
    pub fn start(opts: H2Options) -> H2Peer {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = super::local_listener();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let (conns, max_open, refused) = (Arc::default(), Arc::default(), Arc::default());
        let state = Shared {
            opts: Arc::new(opts),
            got: got.clone(),
            conns: Arc::clone(&conns),
            max_open: Arc::clone(&max_open),
            refused: Arc::clone(&refused),
            seen: Arc::default(),
        };
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let id = state.conns.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(tcp, id, state.clone()));
            }
        });
        H2Peer { port, got, conns, max_open, refused, _rt: rt }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.got.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    /// The most streams open at once on any one connection.
    pub fn max_open_streams(&self) -> usize {
        self.max_open.load(Ordering::SeqCst)
    }

    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct Shared {
    opts: Arc<H2Options>,
    got: Arc<Mutex<Vec<Recorded>>>,
    conns: Arc<AtomicUsize>,
    max_open: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    seen: Arc<AtomicUsize>,
}

async fn serve(tcp: tokio::net::TcpStream, id: usize, s: Shared) {
    let mut builder = h2::server::Builder::new();
    if let Some(n) = s.opts.max_streams {
        builder.max_concurrent_streams(n);
    }
    let Ok(mut conn) = builder.handshake::<_, Bytes>(tcp).await else { return };
    let open = Arc::new(AtomicUsize::new(0));
    let mut accepted = 0;
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        accepted += 1;
        let nth = s.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if s.opts.refuse_every.is_some_and(|n| nth % n == 0) {
            s.refused.fetch_add(1, Ordering::SeqCst);
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            continue;
        }
        let now = open.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_open.fetch_max(now, Ordering::SeqCst);
        let (s2, open2) = (s.clone(), open.clone());
        tokio::spawn(async move {
            let (parts, mut body) = req.into_parts();
            let mut data = Vec::new();
            while let Some(chunk) = body.data().await {
                let Ok(chunk) = chunk else { break };
                let _ = body.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
            }
            let headers = parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            s2.got.lock().unwrap().push(Recorded {
                method: parts.method.to_string(),
                uri: parts.uri.path_and_query().map_or("/".into(), |p| p.to_string()),
                headers,
                body: data,
                conn: id,
                at: std::time::Instant::now(),
            });
            if !s2.opts.delay.is_zero() {
                tokio::time::sleep(s2.opts.delay).await;
            }
            let resp = http::Response::builder().status(200).body(()).unwrap();
            if let Ok(mut send) = respond.send_response(resp, false) {
                let end = s2.opts.trailers.is_empty();
                let _ = send.send_data(Bytes::from_static(b"ok"), end);
                if !end {
                    let mut t = http::HeaderMap::new();
                    for (n, v) in &s2.opts.trailers {
                        t.insert(*n, v.parse().unwrap());
                    }
                    let _ = send.send_trailers(t);
                }
            }
            open2.fetch_sub(1, Ordering::SeqCst);
        });
        if s.opts.goaway_after == Some(accepted) {
            // As nginx does at http2_max_requests: GOAWAY, finish what was accepted, close.
            // Streams the client sent after the final GOAWAY's last stream id are not
            // processed.
            conn.graceful_shutdown();
        }
    }
}
