//! Directive argument parsing: URLs, sizes, times and counts in nginx's own syntax.
//!
//! Kept free of nginx types so every rule is unit-tested; the FFI layer only
//! turns the `Err` strings into `async_mirror: ...` config errors.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// A mirror target as written in `async_mirror URL`, checked and resolved at config time.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    /// The URL exactly as configured; names the target in logs and counters.
    pub url: String,
    /// Host part as written (name or IP literal, IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path prefix prepended to `$request_uri`; empty when the URL has none or is "/".
    pub prefix: String,
    /// Resolved once, like nginx resolves `proxy_pass` hosts at config time.
    pub addr: SocketAddr,
    pub https: bool,
    /// Set for `https://` targets once the location's TLS settings are known.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// The URL has variables: each copy carries its own [`Dest`].
    pub dynamic: bool,
}

/// Where one copy goes when the target URL has variables, evaluated per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dest {
    pub host: String,
    pub port: u16,
    /// Path prefix to put before `$request_uri`, or the whole request target when `verbatim`.
    pub path: String,
    pub verbatim: bool,
    pub authority: String,
}

/// A URL template with variables: checked at config time, resolved per request.
///
/// # Errors
/// A template whose scheme is not a literal `http://` or `https://`.
pub fn parse_template(url: &str) -> Result<TargetSpec, String> {
    let lower = url.to_ascii_lowercase();
    let https = lower.starts_with("https://");
    if !https && !lower.starts_with("http://") {
        return Err(format!("URL \"{url}\" with variables must start with http:// or https://"));
    }
    if url.len() > 512 {
        return Err("URL template is longer than 512 bytes".into());
    }
    Ok(TargetSpec {
        url: url.to_string(),
        host: String::new(),
        port: 0,
        prefix: String::new(),
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        https,
        tls: None,
        dynamic: true,
    })
}

/// Whether the path part of a template has variables: then the evaluated path is the
/// whole request target, as with `proxy_pass` and variables; otherwise it is a prefix.
pub fn template_path_is_variable(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/').is_some_and(|i| rest[i..].contains('$'))
}

/// Parses an evaluated template. No name resolution here: that happens on the runtime.
///
/// # Errors
/// Anything that is not a usable `scheme://host[:port][/path]` of the template's scheme.
pub fn parse_dest(url: &str, https: bool, verbatim: bool) -> Result<Dest, String> {
    let (scheme, rest) = url.split_once("://").ok_or("no scheme")?;
    if scheme.eq_ignore_ascii_case("https") != https || !(scheme.eq_ignore_ascii_case("http") || https) {
        return Err(format!("scheme \"{scheme}\" differs from the template's"));
    }
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) || hostport.contains('@') {
        return Err("invalid characters".into());
    }
    let (host, port) = split_host_port(hostport, if https { 443 } else { 80 })?;
    let spec = TargetSpec {
        url: String::new(),
        host: host.clone(),
        port,
        prefix: String::new(),
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        https,
        tls: None,
        dynamic: true,
    };
    let path = if verbatim {
        if !path.starts_with('/') {
            return Err("no path".into());
        }
        path.to_string()
    } else if path == "/" {
        String::new()
    } else {
        path.trim_end_matches('/').to_string()
    };
    if !verbatim && path.contains(['?', '#']) {
        return Err("query in a path prefix".into());
    }
    Ok(Dest { authority: spec.authority(), host, port, path, verbatim })
}

impl TargetSpec {
    /// `Host` header value used when the client request carries none.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let default = if self.https { 443 } else { 80 };
        if self.port == default { host } else { format!("{host}:{}", self.port) }
    }
}

/// Parses `http://host[:port][/prefix]`.
///
/// # Errors
/// A message suitable after `async_mirror: ` naming what is wrong.
pub fn parse_url(url: &str) -> Result<TargetSpec, String> {
    let (scheme, rest) = match url.split_once("://") {
        Some(parts) => parts,
        None => return Err(format!("invalid URL \"{url}\": expected http://host[:port][/prefix]")),
    };
    let https = scheme.eq_ignore_ascii_case("https");
    if !https && !scheme.eq_ignore_ascii_case("http") {
        return Err(format!("unsupported scheme \"{scheme}\" in URL \"{url}\" (expected http or https)"));
    }
    if url.len() > 512 {
        let start: String = url.chars().take(32).collect();
        return Err(format!("URL \"{start}...\" is longer than 512 bytes"));
    }
    let (hostport, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if prefix.contains(['?', '#']) {
        return Err(format!("invalid URL \"{url}\": query and fragment are not allowed"));
    }
    if prefix.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!("invalid URL \"{url}\": whitespace or control character in path"));
    }
    if hostport.contains('@') {
        return Err(format!("invalid URL \"{url}\": user info is not supported"));
    }
    let (host, port) = split_host_port(hostport, if https { 443 } else { 80 })
        .map_err(|e| format!("invalid URL \"{url}\": {e}"))?;
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("host not found in URL \"{url}\": {e}"))?
        .next()
        .ok_or_else(|| format!("host not found in URL \"{url}\""))?;
    let prefix = if prefix == "/" { String::new() } else { prefix.trim_end_matches('/').to_string() };
    Ok(TargetSpec { url: url.to_string(), host, port, prefix, addr, https, tls: None, dynamic: false })
}

fn split_host_port(hostport: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("unterminated IPv6 address")?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or("garbage after IPv6 address")?)),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    if !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b)) {
        return Err(format!("invalid host \"{host}\""));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("invalid port \"{p}\"")),
        },
    };
    Ok((host.to_string(), port))
}

/// nginx size syntax: `1024`, `8k`, `1m`, `1g` (case-insensitive).
///
/// # Errors
/// On anything else, or on overflow.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let err = || format!("invalid size \"{s}\"");
    let (digits, mult) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    digits.parse::<u64>().ok().and_then(|n| n.checked_mul(mult)).ok_or_else(err)
}

/// nginx time syntax: `500ms`, `5s`, `1m30s`, `2h`; a bare number means seconds.
///
/// # Errors
/// On anything else, or on overflow.
pub fn parse_time(s: &str) -> Result<Duration, String> {
    let err = || format!("invalid time \"{s}\"");
    if s.is_empty() {
        return Err(err());
    }
    let b = s.as_bytes();
    let mut i = 0;
    let mut total_ms: u64 = 0;
    let mut last_scale = u64::MAX;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(err());
        }
        let n: u64 = s[start..i].parse().map_err(|_| err())?;
        let scale: u64 = if s[i..].starts_with("ms") {
            i += 2;
            1
        } else if i == b.len() {
            1000
        } else {
            let unit = b[i];
            i += 1;
            match unit {
                b'y' => 365 * 86_400_000,
                b'M' => 30 * 86_400_000,
                b'w' => 7 * 86_400_000,
                b'd' => 86_400_000,
                b'h' => 3_600_000,
                b'm' => 60_000,
                b's' => 1000,
                _ => return Err(err()),
            }
        };
        // Units must strictly decrease, as in "1h30m"; "30m1h" or "1s1s" is a typo.
        if scale >= last_scale {
            return Err(err());
        }
        last_scale = scale;
        total_ms = n.checked_mul(scale).and_then(|v| total_ms.checked_add(v)).ok_or_else(err)?;
    }
    // nginx keeps times in a 32-bit millisecond type on some platforms.
    if total_ms > i32::MAX as u64 {
        return Err(err());
    }
    Ok(Duration::from_millis(total_ms))
}

/// A positive count bounded by `max`.
///
/// # Errors
/// Zero, non-digits or anything above `max`.
pub fn parse_count(s: &str, max: u64) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n >= 1 && n <= max && s.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(format!("invalid number \"{s}\" (expected 1..{max})")),
    }
}

/// `on`/`off`, as nginx's flag directives accept them.
///
/// # Errors
/// Anything else.
pub fn parse_flag(s: &str) -> Result<bool, String> {
    if s.eq_ignore_ascii_case("on") {
        Ok(true)
    } else if s.eq_ignore_ascii_case("off") {
        Ok(false)
    } else {
        Err(format!("invalid value \"{s}\", it must be \"on\" or \"off\""))
    }
}

/// Header names as RFC 9110 tokens; nginx would otherwise send whatever was typed.
///
/// # Errors
/// Empty names or names with characters outside the token set.
pub fn parse_header_name(s: &str) -> Result<String, String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if s.is_empty() || !s.bytes().all(tchar) {
        return Err(format!("invalid header name \"{s}\""));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:8080").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.prefix.as_str()), ("127.0.0.1", 8080, ""));
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        let t = parse_url("http://127.0.0.1/shadow/").unwrap();
        assert_eq!((t.port, t.prefix.as_str(), t.authority().as_str()), (80, "/shadow", "127.0.0.1"));
        let t = parse_url("http://[::1]:81/").unwrap();
        assert_eq!((t.host.as_str(), t.authority().as_str()), ("::1", "[::1]:81"));
        assert_eq!(parse_url("HTTP://localhost:9").unwrap().addr.port(), 9);
        let t = parse_url("https://127.0.0.1").unwrap();
        assert_eq!((t.https, t.port, t.authority().as_str()), (true, 443, "127.0.0.1"));
        for bad in [
            "127.0.0.1:8080",
            "ftp://x",
            "http://",
            "http://:80",
            "http://127.0.0.1:0",
            "http://127.0.0.1:65536",
            "http://127.0.0.1:8x",
            "http://127.0.0.1:+80",
            "http://127.0.0.1/a?b",
            "http://127.0.0.1/a#b",
            "http://u@127.0.0.1",
            "http://[::1",
            "http://ex ample",
            "http://no-such-host.invalid",
        ] {
            assert!(parse_url(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn templates_and_dests() {
        assert!(parse_template("http://$mirror:8080").unwrap().dynamic);
        assert!(parse_template("$scheme://x").is_err());
        assert!(!template_path_is_variable("http://$host:1/fixed"));
        assert!(template_path_is_variable("http://h:1/$uri"));
        let d = parse_dest("http://10.1.2.3:8080/shadow/", false, false).unwrap();
        assert_eq!(
            (d.host.as_str(), d.port, d.path.as_str(), d.authority.as_str()),
            ("10.1.2.3", 8080, "/shadow", "10.1.2.3:8080")
        );
        let d = parse_dest("https://mirror/a/b?c=1", true, true).unwrap();
        assert_eq!((d.port, d.path.as_str(), d.verbatim), (443, "/a/b?c=1", true));
        for bad in ["", "http://", "http://:80", "https://x", "ftp://x", "http://x:99999", "http://a b"] {
            assert!(parse_dest(bad, false, false).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("8k"), Ok(8192));
        assert_eq!(parse_size("32M"), Ok(32 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        for bad in ["", "k", "-1", "1x", "1.5m", "99999999999999999999", "18014398509481984k"] {
            assert!(parse_size(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_time("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_time("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_time("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_time("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_time("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "5x", "-1s", "1s1s", "30s1m", "1.5s", "99999999999d", "ms"] {
            assert!(parse_time(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn counts_flags_names() {
        assert_eq!(parse_count("32", 100), Ok(32));
        for bad in ["0", "-1", "101", "+5", "x", ""] {
            assert!(parse_count(bad, 100).is_err(), "{bad} accepted");
        }
        assert_eq!(parse_flag("On"), Ok(true));
        assert_eq!(parse_flag("off"), Ok(false));
        assert!(parse_flag("yes").is_err());
        assert!(parse_header_name("X-Shadow").is_ok());
        assert!(parse_header_name("X Shadow").is_err());
        assert!(parse_header_name("").is_err());
    }
}
