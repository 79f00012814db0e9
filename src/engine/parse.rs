//! Directive argument parsing: URLs, sizes, times and counts in nginx's own syntax.
//!
//! Kept free of nginx types so every rule is unit-tested; the FFI layer only
//! turns the `Err` strings into `async_mirror: ...` config errors.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use super::url::{self, PathKind, Url, UrlError};

/// A mirror target as written in `async_mirror URL`, checked (and, without variables,
/// resolved) at config time.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    /// The URL exactly as configured; names the target in logs and counters.
    pub url: String,
    pub https: bool,
    /// Where every copy goes; `None` for a URL with variables, whose copies each carry
    /// their own [`Dest`].
    pub dest: Option<Dest>,
    /// Set for `https://` targets once the location's TLS settings are known.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// `async_mirror_http_version 2`: h2c, or ALPN h2 with HTTP/1.1 as the fallback.
    pub http2: bool,
    /// `resolve=TIME`: the host name is looked up again every TIME on the runtime.
    pub resolve: Option<std::time::Duration>,
}

/// Where one copy goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dest {
    pub url: Url,
    /// Whether `url.path` is a prefix to `$request_uri` or the whole request target.
    pub kind: PathKind,
    /// `Host` header value when the client sent none.
    pub authority: String,
    /// Known without a lookup: resolved at config time, or an IP literal.
    pub addr: Option<SocketAddr>,
}

impl Dest {
    fn new(url: Url, kind: PathKind, addr: Option<SocketAddr>) -> Dest {
        let addr = addr.or_else(|| url.host.parse::<IpAddr>().ok().map(|ip| (ip, url.port).into()));
        Dest { authority: url.authority(), url, kind, addr }
    }
}

/// Parses `http[s]://host[:port][/prefix]` and resolves the host once, like nginx
/// resolves `proxy_pass` hosts at config time.
///
/// # Errors
/// A message suitable after `async_mirror: ` naming what is wrong.
pub fn parse_target(written: &str) -> Result<TargetSpec, String> {
    parse_target_with(written, None)
}

/// As [`parse_target`]; with `resolve`, a host name is not looked up now but on the
/// runtime, every `resolve`, for as long as the worker runs.
///
/// # Errors
/// As [`parse_target`]; `resolve` with an IP address.
pub fn parse_target_with(written: &str, resolve: Option<std::time::Duration>) -> Result<TargetSpec, String> {
    let url = Url::parse(written, PathKind::Prefix).map_err(|e| match e {
        UrlError::Scheme(s) => {
            format!("unsupported scheme \"{s}\" in URL \"{written}\" (expected http or https)")
        }
        UrlError::TooLong => too_long(written),
        UrlError::Invalid(why) => format!("invalid URL \"{written}\": {why}"),
    })?;
    if resolve.is_some() {
        if url.host.parse::<IpAddr>().is_ok() {
            return Err(format!("resolve needs a host name, not an address, in URL \"{written}\""));
        }
        return Ok(TargetSpec {
            url: written.to_string(),
            https: url.https,
            dest: Some(Dest::new(url, PathKind::Prefix, None)),
            tls: None,
            http2: false,
            resolve,
        });
    }
    let addr = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| format!("host not found in URL \"{written}\": {e}"))?
        .next()
        .ok_or_else(|| format!("host not found in URL \"{written}\""))?;
    Ok(TargetSpec {
        url: written.to_string(),
        https: url.https,
        dest: Some(Dest::new(url, PathKind::Prefix, Some(addr))),
        tls: None,
        http2: false,
        resolve: None,
    })
}

fn too_long(url: &str) -> String {
    let start: String = url.chars().take(32).collect();
    format!("URL \"{start}...\" is longer than {} bytes", url::MAX_LEN)
}

/// A URL template with variables: checked at config time, evaluated per request.
///
/// # Errors
/// A template whose scheme is not a literal `http://` or `https://`.
pub fn parse_template(written: &str) -> Result<TargetSpec, String> {
    let lower = written.to_ascii_lowercase();
    let https = lower.starts_with("https://");
    if !https && !lower.starts_with("http://") {
        return Err(format!("URL \"{written}\" with variables must start with http:// or https://"));
    }
    if written.len() > url::MAX_LEN {
        return Err(too_long(written));
    }
    Ok(TargetSpec { url: written.to_string(), https, dest: None, tls: None, http2: false, resolve: None })
}

/// Whether the path part of a template has variables: then the evaluated path is the
/// whole request target, as with `proxy_pass` and variables; otherwise it is a prefix.
pub fn template_path_kind(written: &str) -> PathKind {
    let rest = written.split_once("://").map_or(written, |(_, r)| r);
    match rest.find('/') {
        Some(i) if rest[i..].contains('$') => PathKind::Target,
        _ => PathKind::Prefix,
    }
}

/// Parses an evaluated template. Names are not looked up here: that happens on the runtime.
///
/// # Errors
/// Anything that is not a usable URL of the template's scheme.
pub fn parse_dest(evaluated: &str, https: bool, kind: PathKind) -> Result<Dest, String> {
    let url = Url::parse(evaluated, kind).map_err(|e| format!("{e:?}"))?;
    if url.https != https {
        return Err("scheme differs from the template's".into());
    }
    Ok(Dest::new(url, kind, None))
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
    fn targets() {
        let t = parse_target("http://127.0.0.1:8080").unwrap();
        let d = t.dest.unwrap();
        assert_eq!((d.url.host.as_str(), d.url.port, d.url.path.as_str()), ("127.0.0.1", 8080, ""));
        assert_eq!(d.addr, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(parse_target("HTTP://localhost:9").unwrap().dest.unwrap().addr.unwrap().port(), 9);
        assert!(parse_target("ftp://x").unwrap_err().starts_with("unsupported scheme \"ftp\""));
        assert!(parse_target("http://h/a?b").unwrap_err().starts_with("invalid URL \"http://h/a?b\": "));
        assert!(parse_target("http://no-such-host.invalid").unwrap_err().starts_with("host not found"));
        assert!(parse_target(&format!("http://h/{}", "a".repeat(600))).unwrap_err().contains("longer than"));
    }

    #[test]
    fn templates_and_dests() {
        assert!(parse_template("http://$mirror:8080").unwrap().dest.is_none());
        assert!(parse_template("$scheme://x").is_err());
        assert_eq!(template_path_kind("http://$host:1/fixed"), PathKind::Prefix);
        assert_eq!(template_path_kind("http://h:1/$uri"), PathKind::Target);
        let d = parse_dest("http://10.1.2.3:8080/shadow/", false, PathKind::Prefix).unwrap();
        assert_eq!((d.url.path.as_str(), d.authority.as_str()), ("/shadow", "10.1.2.3:8080"));
        assert_eq!(d.addr, Some("10.1.2.3:8080".parse().unwrap()));
        let d = parse_dest("https://mirror/a/b?c=1", true, PathKind::Target).unwrap();
        assert_eq!((d.url.port, d.url.path.as_str(), d.addr), (443, "/a/b?c=1", None));
        for bad in ["", "http://", "http://:80", "https://x", "ftp://x", "http://x:99999", "http://a b"] {
            assert!(parse_dest(bad, false, PathKind::Prefix).is_err(), "{bad} accepted");
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

    proptest::proptest! {
        #[test]
        fn scalars_never_panic(s in "\\PC{0,24}") {
            let _ = (parse_size(&s), parse_time(&s), parse_count(&s, 1000), parse_flag(&s));
            let _ = parse_header_name(&s);
        }

        #[test]
        fn sizes_round_trip(n in 0u64..(1 << 20), unit in 0usize..4) {
            let (suffix, mult) = [("", 1u64), ("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30)][unit];
            proptest::prop_assert_eq!(parse_size(&format!("{n}{suffix}")), Ok(n * mult));
        }

        #[test]
        fn times_round_trip(h in 0u64..100, m in 0u64..60, s in 0u64..60, ms in 0u64..1000) {
            let text = format!("{h}h{m}m{s}s{ms}ms");
            let want = Duration::from_millis(((h * 60 + m) * 60 + s) * 1000 + ms);
            proptest::prop_assert_eq!(parse_time(&text), Ok(want));
        }
    }
}
