//! `async_mirror URL resolve[=TIME]`: a target's host name looked up again and again on
//! the runtime (never on the nginx thread), so copies follow a shadow whose addresses
//! change (a cloud load balancer, a headless service).
//!
//! Lookups go through the system resolver (getaddrinfo: `/etc/hosts`, nsswitch, DNS)
//! every TIME; answers' TTLs are not visible through it. Every address of the name is
//! used, round-robin. A failed lookup keeps the last good set (and says so once per
//! failure streak); a name that never resolved fails its copies with `failed{connect}`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::limits::DestKey;
use crate::engine::error_log::ErrorLog;
use crate::engine::ids::TargetId;

/// A lookup that takes longer than this fails (and the last good set stays).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Resolver {
    pub host: String,
    port: u16,
    every: Duration,
    /// Test builds: a hosts file consulted instead of the system resolver.
    hosts_file: Option<PathBuf>,
    set: Mutex<Arc<Vec<SocketAddr>>>,
    next: AtomicUsize,
    failing: AtomicBool,
}

impl Resolver {
    pub fn new(host: &str, port: u16, every: Duration, hosts_file: Option<PathBuf>) -> Resolver {
        Resolver {
            host: host.to_string(),
            port,
            every,
            hosts_file,
            set: Mutex::new(Arc::new(Vec::new())),
            next: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
        }
    }

    /// The next address, round-robin; `None` until the name first resolved.
    pub fn pick(&self) -> Option<SocketAddr> {
        let set = self.current();
        if set.is_empty() {
            return None;
        }
        Some(set[self.next.fetch_add(1, Ordering::Relaxed) % set.len()])
    }

    pub fn current(&self) -> Arc<Vec<SocketAddr>> {
        self.set.lock().map_or_else(|_| Arc::new(Vec::new()), |s| s.clone())
    }

    async fn lookup(&self) -> Result<Vec<SocketAddr>, String> {
        if let Some(path) = &self.hosts_file {
            return hosts_lookup(path, &self.host, self.port);
        }
        match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((self.host.as_str(), self.port)))
            .await
        {
            Ok(Ok(addrs)) => {
                let mut v: Vec<SocketAddr> = addrs.collect();
                v.sort();
                v.dedup();
                if v.is_empty() { Err("no addresses".into()) } else { Ok(v) }
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {LOOKUP_TIMEOUT:?}")),
        }
    }

    /// One lookup; returns whether the set changed.
    pub async fn refresh(&self, target: TargetId, log: &ErrorLog) -> bool {
        match self.lookup().await {
            Ok(addrs) => {
                self.failing.store(false, Ordering::Relaxed);
                let Ok(mut set) = self.set.lock() else { return false };
                if **set == addrs {
                    return false;
                }
                let (before, host) = (show(&set), &self.host);
                let now = show(&addrs);
                *set = Arc::new(addrs);
                if !before.is_empty() {
                    log.push(target, || format!("\"{host}\" now resolves to {now} (was {before})"));
                }
                true
            }
            Err(e) => {
                let kept = self.current().len();
                if !self.failing.swap(true, Ordering::Relaxed) {
                    let host = &self.host;
                    log.push(target, || match kept {
                        0 => format!("lookup of \"{host}\" failed: {e}"),
                        n => format!(
                            "lookup of \"{host}\" failed: {e}; copies go on to the last {n} address(es)"
                        ),
                    });
                }
                false
            }
        }
    }

    /// Looks the name up every TIME for as long as the runtime runs; `changed` runs
    /// after a lookup that changed the set.
    pub async fn run(self: Arc<Self>, target: TargetId, log: Arc<ErrorLog>, changed: impl Fn()) {
        loop {
            if self.refresh(target, &log).await {
                changed();
            }
            tokio::time::sleep(self.every).await;
        }
    }

    /// Whether a connection keyed `key` still goes to an address of the set.
    pub fn keeps(&self, key: &DestKey) -> bool {
        let Some((ip, port)) = key else { return true };
        self.current().iter().any(|a| a.port() == *port && a.ip().to_string() == *ip)
    }
}

fn show(addrs: &[SocketAddr]) -> String {
    addrs.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(", ")
}

/// `host` in a hosts-format file (`IP NAME...` per line, `#` comments), every address.
///
/// # Errors
/// An unreadable file, or no line naming `host`.
pub fn hosts_lookup(path: &Path, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out: Vec<SocketAddr> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let ip: std::net::IpAddr = words.next()?.parse().ok()?;
            words.any(|w| w.eq_ignore_ascii_case(host)).then_some(SocketAddr::new(ip, port))
        })
        .collect();
    out.sort();
    out.dedup();
    if out.is_empty() {
        return Err(format!("\"{host}\" not found in {}", path.display()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ids::Id;

    #[tokio::test]
    async fn follows_changes_and_keeps_the_last_good_set() {
        let path = std::env::temp_dir().join(format!("am-hosts-{}", std::process::id()));
        std::fs::write(&path, "127.0.0.2 shadow.test other\n# 127.0.0.9 shadow.test\n").unwrap();
        let r = Resolver::new("shadow.test", 8080, Duration::from_secs(1), Some(path.clone()));
        let log = ErrorLog::new(1);
        let id = TargetId::from_index(0);
        assert_eq!(r.pick(), None, "nothing before the first lookup");
        assert!(r.refresh(id, &log).await);
        assert_eq!(r.pick(), Some("127.0.0.2:8080".parse().unwrap()));
        std::fs::write(&path, "127.0.0.3 shadow.test\n127.0.0.2 SHADOW.test\n").unwrap();
        assert!(r.refresh(id, &log).await);
        let picks: Vec<_> = (0..4).map(|_| r.pick().unwrap().ip().to_string()).collect();
        assert_eq!(picks.iter().filter(|p| *p == "127.0.0.2").count(), 2, "round-robin: {picks:?}");
        assert!(!r.refresh(id, &log).await, "same set: no change");
        assert!(r.keeps(&Some(("127.0.0.3".into(), 8080))) && !r.keeps(&Some(("127.0.0.4".into(), 8080))));
        std::fs::write(&path, "127.0.0.5 elsewhere\n").unwrap();
        assert!(!r.refresh(id, &log).await);
        assert!(!r.refresh(id, &log).await);
        assert_eq!(r.current().len(), 2, "a failed lookup keeps the last good set");
        let reports = log.take();
        assert_eq!(reports.len(), 1);
        assert!(reports[0].message.contains("now resolves to 127.0.0.2, 127.0.0.3"), "{reports:?}");
        // The failure is reported once per streak (the second report waits for the next take).
        assert_eq!(reports[0].suppressed, 1);
        let _ = std::fs::remove_file(&path);
    }
}
