//! A fault-injecting TCP proxy between the module and a peer: this kernel has no netem and
//! Debian no toxiproxy, so the faults are made here. Modes switch while traffic flows.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

/// What the proxy does to traffic now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// Forward both ways as they come.
    Pass = 0,
    /// Hold each chunk from the peer for a delay with jitter (30 ms ± 10 ms).
    Delay = 1,
    /// Reset every connection once the request has started (RST, not FIN).
    Reset = 2,
    /// Accept and read, forward nothing: reads hang.
    Stall = 3,
    /// Accept nothing new (connects hang once the small backlog is full) and forward
    /// nothing on open connections.
    Partition = 4,
}

impl Fault {
    fn from_u8(v: u8) -> Fault {
        match v {
            1 => Fault::Delay,
            2 => Fault::Reset,
            3 => Fault::Stall,
            4 => Fault::Partition,
            _ => Fault::Pass,
        }
    }
}

pub struct FaultProxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicU64>,
}

impl FaultProxy {
    /// A proxy on a free port of 127.0.0.1 to `upstream` on 127.0.0.1.
    pub fn start(upstream: u16) -> FaultProxy {
        let listener = super::local_listener();
        // A short accept queue: while partitioned, connects beyond it hang.
        // SAFETY: re-listening on our own socket only changes its backlog.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 1) }, 0);
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(Fault::Pass as u8));
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (m, s, a) = (mode.clone(), stop.clone(), accepted.clone());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if Fault::from_u8(m.load(Ordering::Relaxed)) == Fault::Partition {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                }
                match listener.accept() {
                    Ok((client, _)) => {
                        a.fetch_add(1, Ordering::Relaxed);
                        let (m, s) = (m.clone(), s.clone());
                        thread::spawn(move || serve(client, upstream, m, s));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        FaultProxy { port, mode, stop, accepted }
    }

    pub fn set(&self, fault: Fault) {
        self.mode.store(fault as u8, Ordering::Relaxed);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Resets the connection: SO_LINGER 0, then close.
fn reset(s: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setting a socket option on our own socket with a valid struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = s.shutdown(Shutdown::Both);
}

fn serve(client: TcpStream, upstream: u16, mode: Arc<AtomicU8>, stop: Arc<AtomicBool>) {
    let Ok(peer) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
    let _ = client.set_nonblocking(false);
    let pump = |mut from: TcpStream,
                mut to: TcpStream,
                from_peer: bool,
                mode: Arc<AtomicU8>,
                stop: Arc<AtomicBool>| {
        let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
        let mut buf = [0u8; 16 << 10];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(from_peer);
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let fault = Fault::from_u8(mode.load(Ordering::Relaxed));
            if matches!(fault, Fault::Stall | Fault::Partition) && from_peer {
                // Nothing goes back to the module; what the module sends is read and dropped.
                thread::sleep(Duration::from_millis(5));
                continue;
            }
            let n = match from.read(&mut buf) {
                Ok(0) => {
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                }
                Ok(n) => n,
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    continue;
                }
                Err(_) => {
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
            };
            match Fault::from_u8(mode.load(Ordering::Relaxed)) {
                Fault::Reset if !from_peer => {
                    reset(&from);
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
                Fault::Stall | Fault::Partition => continue,
                Fault::Delay if from_peer => {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    thread::sleep(Duration::from_millis(20 + seed % 21));
                }
                _ => {}
            }
            if to.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    };
    let (c2, p2) = (client.try_clone().unwrap(), peer.try_clone().unwrap());
    let (m2, s2) = (mode.clone(), stop.clone());
    let up = thread::spawn(move || pump(c2, p2, false, m2, s2));
    pump(peer, client, true, mode, stop);
    let _ = up.join();
}
