//! Target URLs: `http[s]://host[:port][/path]`. One parser serves both the URLs
//! written in the configuration and the ones evaluated per request from a
//! template with variables.

/// The longest URL accepted (it is also a label value and a zone key).
pub const MAX_LEN: usize = 512;

/// What the path part of a URL is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// A prefix put before `$request_uri`: no query or fragment, a trailing `/` dropped.
    Prefix,
    /// The whole request target (a template whose path has variables): must start with `/`.
    Target,
}

/// Why a URL was refused; `Invalid` says what is wrong, without repeating the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlError {
    Scheme(String),
    TooLong,
    Invalid(String),
}

/// A parsed URL; the host is as written (a name or an IP literal, IPv6 without brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Url {
    /// Parses `url`.
    ///
    /// # Errors
    /// Anything that is not a usable URL of that shape.
    pub fn parse(url: &str, kind: PathKind) -> Result<Url, UrlError> {
        let (scheme, rest) =
            url.split_once("://").ok_or(UrlError::Invalid("expected http://host[:port][/prefix]".into()))?;
        let https = scheme.eq_ignore_ascii_case("https");
        if !https && !scheme.eq_ignore_ascii_case("http") {
            return Err(UrlError::Scheme(scheme.to_string()));
        }
        if url.len() > MAX_LEN {
            return Err(UrlError::TooLong);
        }
        Self::parse_rest(https, rest, kind).map_err(UrlError::Invalid)
    }

    fn parse_rest(https: bool, rest: &str, kind: PathKind) -> Result<Url, String> {
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err("whitespace or control character in path".into());
        }
        if hostport.contains('@') {
            return Err("user info is not supported".into());
        }
        let (host, port) = split_host_port(hostport, if https { 443 } else { 80 })?;
        let path = match kind {
            PathKind::Prefix if path.contains(['?', '#']) => {
                return Err("query and fragment are not allowed".into());
            }
            PathKind::Prefix if !path.is_empty() && http::uri::PathAndQuery::try_from(path).is_err() => {
                return Err("the path is not a valid request target".into());
            }
            PathKind::Prefix if path == "/" => String::new(),
            PathKind::Prefix => path.trim_end_matches('/').to_string(),
            PathKind::Target if !path.starts_with('/') => return Err("no path".into()),
            PathKind::Target => path.to_string(),
        };
        Ok(Url { https, host, port, path })
    }

    /// `host[:port]` as a `Host` header value (brackets for IPv6, default port left out).
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let default = if self.https { 443 } else { 80 };
        if self.port == default { host } else { format!("{host}:{}", self.port) }
    }
}

/// Percent-encodes what a request target cannot hold (RFC 9112 §3.2, RFC 3986): controls,
/// space, `"`, `#`, `<`, `>`, `\`, `^`, `` ` ``, `{`, `|`, `}`, DEL and bytes above 0x7f.
/// A template's path made of decoded variables (`$uri`) then reaches the mirror as the
/// path it means; `?` keeps separating the query, as with `proxy_pass` and variables.
pub fn encode_target(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    for &b in raw {
        if b <= b' ' || b >= 0x7f || b"\"#<>\\^`{|}".contains(&b) {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(char::from(b));
        }
    }
    out
}

/// `host[:port]` of a URL, the port defaulted by the scheme.
///
/// # Errors
/// As for the host and port of a URL.
pub fn parse_authority(hostport: &str, https: bool) -> Result<(String, u16), String> {
    let (host, port) = split_host_port(hostport, if https { 443 } else { 80 })?;
    Ok((host.to_ascii_lowercase(), port))
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn targets_are_encoded_not_cut() {
        assert_eq!(encode_target(b"/a<b> c#d?q=\"1\"&e=\xff"), "/a%3Cb%3E%20c%23d?q=%221%22&e=%FF");
        assert_eq!(encode_target(b"/plain/path?x=1"), "/plain/path?x=1");
        let u = Url::parse(&format!("http://m{}", encode_target(b"/shadow/a<b>")), PathKind::Target).unwrap();
        assert_eq!(u.path, "/shadow/a%3Cb%3E");
        assert_eq!(parse_authority("Mirror.Internal", false), Ok(("mirror.internal".into(), 80)));
        assert_eq!(parse_authority("m:8443", true), Ok(("m".into(), 8443)));
    }

    #[test]
    fn prefixes_and_targets() {
        let u = Url::parse("http://127.0.0.1/shadow/", PathKind::Prefix).unwrap();
        assert_eq!((u.port, u.path.as_str(), u.authority().as_str()), (80, "/shadow", "127.0.0.1"));
        let u = Url::parse("HTTPS://[::1]:8443/", PathKind::Prefix).unwrap();
        assert_eq!((u.https, u.host.as_str(), u.authority().as_str()), (true, "::1", "[::1]:8443"));
        let u = Url::parse("https://mirror/a/b?c=1", PathKind::Target).unwrap();
        assert_eq!((u.port, u.path.as_str()), (443, "/a/b?c=1"));
        assert!(Url::parse("https://mirror", PathKind::Target).is_err());
        for bad in [
            "",
            "127.0.0.1:8080",
            "ftp://x",
            "http://",
            "http://:80",
            "http://h:0",
            "http://h:65536",
            "http://h:8x",
            "http://h:+80",
            "http://h/a?b",
            "http://h/a#b",
            "http://u@h",
            "http://[::1",
            "http://[::1]x",
            "http://ex ample",
            "http://h/a b",
            "http://h/a<b",
        ] {
            assert!(Url::parse(bad, PathKind::Prefix).is_err(), "{bad} accepted");
        }
    }

    fn host() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z][a-z0-9-]{0,20}(\\.[a-z][a-z0-9-]{0,10}){0,3}",
            any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
            any::<[u16; 8]>().prop_map(|s| std::net::Ipv6Addr::from(s).to_string()),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(s in "\\PC{0,80}", raw in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = Url::parse(&s, PathKind::Prefix);
            let _ = Url::parse(&s, PathKind::Target);
            let lossy = String::from_utf8_lossy(&raw);
            let _ = Url::parse(&format!("http://{lossy}"), PathKind::Prefix);
        }

        #[test]
        fn written_urls_round_trip(https in any::<bool>(), host in host(), port in 1u16.., path in "(/[a-zA-Z0-9._~-]{1,8}){0,4}") {
            let scheme = if https { "https" } else { "http" };
            let written = Url { https, host, port, path };
            let text = format!("{scheme}://{}{}", written.authority(), written.path);
            prop_assert_eq!(Url::parse(&text, PathKind::Prefix).unwrap(), written.clone());
            // The authority it prints parses back to the same host and port.
            let again = Url::parse(&format!("{scheme}://{}", written.authority()), PathKind::Prefix).unwrap();
            prop_assert_eq!((again.host, again.port), (written.host, written.port));
        }
    }
}
