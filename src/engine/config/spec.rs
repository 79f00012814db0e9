//! Mirror targets as written in `async_mirror URL`: checked (and resolved) at config
//! time, or templates with variables evaluated per request into a [`Dest`].

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

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
    /// `async_mirror_http_version 1.1 pipeline=N`: copies pipelined N deep per connection.
    pub pipeline: Option<usize>,
    /// `resolve=TIME`: the host name is looked up again every TIME on the runtime.
    pub resolve: Option<std::time::Duration>,
    /// `hosts=`: for a URL with variables in its host or port, the only `(host, port)`
    /// pairs its copies may go to (lowercase host).
    pub allowed: Vec<(String, u16)>,
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
#[cfg(test)]
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
            pipeline: None,
            resolve,
            allowed: Vec::new(),
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
        pipeline: None,
        resolve: None,
        allowed: Vec::new(),
    })
}

/// A capture target (`file:`, `kafka://`): named by its URL, sent nowhere over HTTP.
pub fn sink_target(written: &str) -> TargetSpec {
    TargetSpec {
        url: written.to_string(),
        https: false,
        dest: None,
        tls: None,
        http2: false,
        pipeline: None,
        resolve: None,
        allowed: Vec::new(),
    }
}

fn too_long(url: &str) -> String {
    let start: String = url.chars().take(32).collect();
    format!("URL \"{start}...\" is longer than {} bytes", url::MAX_LEN)
}

/// A URL template with variables: checked at config time, evaluated per request. When
/// the variables are in its host or port, `hosts` lists where copies may go: a client
/// must not choose where its request is sent (server-side request forgery).
///
/// # Errors
/// A template whose scheme is not a literal `http://` or `https://`; variables in the
/// host or port without `hosts=`; `hosts=` without such variables, or a malformed host.
pub fn parse_template(written: &str, hosts: Option<&[&str]>) -> Result<TargetSpec, String> {
    let lower = written.to_ascii_lowercase();
    let https = lower.starts_with("https://");
    if !https && !lower.starts_with("http://") {
        return Err(format!("URL \"{written}\" with variables must start with http:// or https://"));
    }
    if written.len() > url::MAX_LEN {
        return Err(too_long(written));
    }
    let rest = written.split_once("://").map_or(written, |(_, r)| r);
    let authority_vars = rest.split('/').next().unwrap_or("").contains('$');
    let allowed = match (authority_vars, hosts) {
        (true, None) => {
            return Err(format!(
                "variables in the host or port of \"{written}\" need hosts=HOST[:PORT],... \
                 (the only places a client's copy may be sent)"
            ));
        }
        (false, Some(_)) => {
            return Err(format!("hosts= is for URLs with variables in the host or port, not \"{written}\""));
        }
        (_, hosts) => hosts
            .unwrap_or(&[])
            .iter()
            .map(|h| url::parse_authority(h, https))
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(TargetSpec {
        url: written.to_string(),
        https,
        dest: None,
        tls: None,
        http2: false,
        pipeline: None,
        resolve: None,
        allowed,
    })
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

/// Parses an evaluated template of `spec`. A path made of variables is percent-encoded
/// where a request target cannot hold what they decoded to. Names are not looked up
/// here: that happens on the runtime.
///
/// # Errors
/// Anything that is not a usable URL of the template's scheme, or a place `hosts=` does
/// not allow.
pub fn parse_dest(evaluated: &[u8], spec: &TargetSpec, kind: PathKind) -> Result<Dest, String> {
    let text = match kind {
        PathKind::Target => url::encode_target(evaluated),
        PathKind::Prefix => std::str::from_utf8(evaluated).map_err(|_| "not UTF-8")?.to_string(),
    };
    let url = Url::parse(&text, kind).map_err(|e| format!("{e:?}"))?;
    if url.https != spec.https {
        return Err("scheme differs from the template's".into());
    }
    if !spec.allowed.is_empty()
        && !spec.allowed.iter().any(|(h, p)| url.host.eq_ignore_ascii_case(h) && url.port == *p)
    {
        return Err(format!("{} is not among hosts=", url.authority()));
    }
    if kind == PathKind::Target && http::uri::PathAndQuery::try_from(url.path.as_str()).is_err() {
        return Err("not a request target".into());
    }
    Ok(Dest::new(url, kind, None))
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
        let plain = parse_template("http://mirror:8080/v$uri", None).unwrap();
        let https = parse_template("https://mirror/$uri", None).unwrap();
        assert!(plain.dest.is_none() && plain.allowed.is_empty());
        assert!(parse_template("$scheme://x", None).is_err());
        let err = parse_template("http://$mirror:8080", None).unwrap_err();
        assert!(
            err.starts_with("variables in the host or port of \"http://$mirror:8080\" need hosts="),
            "{err}"
        );
        assert!(parse_template("http://10.0.0.1:$arg_p", None).is_err(), "a client-chosen port too");
        assert!(parse_template("http://m:1/$uri", Some(&["m:1"])).unwrap_err().starts_with("hosts= is for"));
        let chosen =
            parse_template("http://$arg_h:8080/p", Some(&["a.internal:8080", "B.internal:8080"])).unwrap();
        assert_eq!(chosen.allowed, [("a.internal".to_string(), 8080), ("b.internal".to_string(), 8080)]);
        assert_eq!(template_path_kind("http://$host:1/fixed"), PathKind::Prefix);
        assert_eq!(template_path_kind("http://h:1/$uri"), PathKind::Target);
        let d = parse_dest(b"http://10.1.2.3:8080/shadow/", &plain, PathKind::Prefix).unwrap();
        assert_eq!((d.url.path.as_str(), d.authority.as_str()), ("/shadow", "10.1.2.3:8080"));
        assert_eq!(d.addr, Some("10.1.2.3:8080".parse().unwrap()));
        let d = parse_dest(b"https://mirror/a/b?c=1", &https, PathKind::Target).unwrap();
        assert_eq!((d.url.port, d.url.path.as_str(), d.addr), (443, "/a/b?c=1", None));
        let d = parse_dest(b"http://m/shadow/a<b>#c d", &plain, PathKind::Target).unwrap();
        assert_eq!(d.url.path, "/shadow/a%3Cb%3E%23c%20d", "decoded variables are encoded again, never cut");
        for bad in
            [&b""[..], b"http://", b"http://:80", b"https://x", b"ftp://x", b"http://x:99999", b"http://a b"]
        {
            assert!(parse_dest(bad, &plain, PathKind::Prefix).is_err(), "{bad:?} accepted");
        }
        assert!(parse_dest(b"http://B.Internal:8080/p", &chosen, PathKind::Prefix).is_ok());
        assert!(parse_dest(b"http://evil.example:8080/p", &chosen, PathKind::Prefix).is_err());
        assert!(
            parse_dest(b"http://a.internal:9090/p", &chosen, PathKind::Prefix).is_err(),
            "the port counts"
        );
    }
}
