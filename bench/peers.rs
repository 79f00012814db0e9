//! Benchmark peers in one process: a counting mirror sink, a slow mirror, and a
//! black hole (a listener whose accept queue is full, so connects hang).
//!
//! Usage: peers sink PORT | slow PORT DELAY_MS | blackhole PORT
//! `GET /__peer_stats` on a sink or slow peer returns `requests=N connections=M`
//! (not counted itself).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    connections: AtomicU64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: peers sink PORT | slow PORT DELAY_MS | blackhole PORT";
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
            "sink" => serve(addr, Duration::ZERO).await,
            "slow" => serve(addr, Duration::from_millis(delay_ms)).await,
            "blackhole" => blackhole(addr).await,
            _ => {
                eprintln!("{usage}");
                std::process::exit(2);
            }
        }
    });
}

async fn serve(addr: SocketAddr, delay: Duration) {
    let listener = TcpListener::bind(addr).await.expect("bind");
    let stats = Arc::new(Stats::default());
    println!("ready");
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let stats = stats.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let stats = stats.clone();
                async move {
                    if req.uri().path() == "/__peer_stats" {
                        let s = format!(
                            "requests={} connections={}\n",
                            stats.requests.load(Ordering::Relaxed),
                            stats.connections.load(Ordering::Relaxed) - 1
                        );
                        return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(s))));
                    }
                    let _ = req.into_body().collect().await;
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    stats.requests.fetch_add(1, Ordering::Relaxed);
                    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
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
