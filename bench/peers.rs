//! Benchmark peers in one process: a counting mirror sink, a slow mirror, a mirror
//! that is a real service (answers after a fixed service time, HTTP/1.1 and h2c on one
//! port), and a black hole (a listener whose accept queue is full, so connects hang).
//!
//! Usage: peers sink PORT | slow PORT DELAY_MS | delay PORT DELAY_MS | blackhole PORT
//! `GET /__peer_stats` on a sink, slow or delay peer returns
//! `requests=N connections=M h1_requests=.. h2_requests=.. h1_connections=.. h2_connections=..`
//! (not counted itself). With `PEER_BODY=FILE` in the environment, answers carry that
//! file as an `application/json` body instead of `ok` (the comparison benchmark).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    connections: AtomicU64,
    h2_requests: AtomicU64,
    h2_connections: AtomicU64,
}

impl Stats {
    fn line(&self) -> String {
        let (r, c) = (self.requests.load(Ordering::Relaxed), self.connections.load(Ordering::Relaxed));
        let (r2, c2) =
            (self.h2_requests.load(Ordering::Relaxed), self.h2_connections.load(Ordering::Relaxed));
        format!(
            "requests={r} connections={c} h1_requests={} h2_requests={r2} h1_connections={} h2_connections={c2}\n",
            r - r2,
            c.saturating_sub(c2)
        )
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: peers sink PORT | slow PORT DELAY_MS | delay PORT DELAY_MS | blackhole PORT";
    let (mode, port) = match (args.get(1), args.get(2).and_then(|p| p.parse::<u16>().ok())) {
        (Some(m), Some(p)) => (m.clone(), p),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let delay_ms = args.get(3).and_then(|d| d.parse().ok()).unwrap_or(200);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async move {
        match mode.as_str() {
            // HTTP/1.1 and h2c on one port, so HTTP/2 cells have a mirror that speaks it.
            "sink" => serve_auto(addr, Duration::ZERO).await,
            "slow" => serve_auto(addr, Duration::from_millis(delay_ms)).await,
            "delay" => serve_auto(addr, Duration::from_millis(delay_ms)).await,
            "blackhole" => blackhole(addr).await,
            _ => {
                eprintln!("{usage}");
                std::process::exit(2);
            }
        }
    });
}

/// A real service: HTTP/1.1 or h2c (prior knowledge) on one port, each answer after
/// `delay`; requests and connections counted per protocol.
async fn serve_auto(addr: SocketAddr, delay: Duration) {
    let listener = TcpListener::bind(addr).await.expect("bind");
    let stats = Arc::new(Stats::default());
    let body = std::env::var_os("PEER_BODY").map(|p| Bytes::from(std::fs::read(p).expect("PEER_BODY file")));
    println!("ready");
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (stats, body) = (stats.clone(), body.clone());
        tokio::spawn(async move {
            // A connection is counted at its first copy: stats requests are not copies.
            let counted = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (stats, counted, body) = (stats.clone(), counted.clone(), body.clone());
                async move {
                    if req.uri().path() == "/__peer_stats" {
                        return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(stats.line()))));
                    }
                    let h2 = req.version() == hyper::Version::HTTP_2;
                    if !counted.swap(true, Ordering::Relaxed) {
                        stats.connections.fetch_add(1, Ordering::Relaxed);
                        if h2 {
                            stats.h2_connections.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let _ = req.into_body().collect().await;
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    stats.requests.fetch_add(1, Ordering::Relaxed);
                    if h2 {
                        stats.h2_requests.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(match body {
                        Some(b) => Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(b))
                            .expect("static response"),
                        None => Response::new(Full::new(Bytes::from_static(b"ok"))),
                    })
                }
            });
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            // nginx's default, so a copy sees what a real server would say.
            builder.http2().max_concurrent_streams(128);
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

async fn blackhole(addr: SocketAddr) {
    let listener = std::net::TcpListener::bind(addr).expect("bind");
    // SAFETY: re-listening on our own socket only shrinks its backlog.
    unsafe { libc::listen(listener.as_raw_fd(), 0) };
    let mut fillers = Vec::new();
    while fillers.len() < 64 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
    }
    println!("ready");
    // Never accept; keep the queue full until killed.
    std::future::pending::<()>().await;
}
