//! One `async_mirror URL [sample=P%] [key=V] [rate=N/s] [resolve[=T]] [baseline]` line,
//! read apart from nginx (the `key=` value is compiled by the nginx layer).

use std::time::Duration;

use super::defaults;
use super::sink_line::{SinkSpec, is_sink_url, parse_sink};
use super::spec::{TargetSpec, parse_target_with, parse_template, sink_target, template_path_kind};
use super::url::PathKind;
use super::values::{PPM, parse_percent, parse_rate, positive_time};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorLine<'a> {
    pub url: &'a str,
    /// Parts per million of requests copied.
    pub sample_ppm: u32,
    /// `key=`: the value (with variables) sampling is consistent on.
    pub key: Option<&'a str>,
    /// `rate=N/s`.
    pub rate: Option<u32>,
    pub resolve: Option<Duration>,
    pub baseline: bool,
    /// `hosts=`: where a URL with variables in its host or port may send copies.
    pub hosts: Option<Vec<&'a str>>,
    /// A capture target (`file:`, `kafka://`): what it records, and where.
    pub sink: Option<SinkSpec>,
}

impl MirrorLine<'_> {
    /// Whether the URL holds variables (evaluated for each request).
    pub fn dynamic(&self) -> bool {
        self.sink.is_none() && self.url.contains('$')
    }

    /// Whether the evaluated URL's path is a prefix to `$request_uri` or the whole target.
    pub fn path_kind(&self) -> PathKind {
        if self.dynamic() { template_path_kind(self.url) } else { PathKind::Prefix }
    }

    /// The target as written: checked (and resolved, unless `resolve`) now.
    ///
    /// # Errors
    /// A message suitable after `async_mirror: `.
    pub fn spec(&self) -> Result<TargetSpec, String> {
        if self.sink.is_some() {
            return Ok(sink_target(self.url));
        }
        match self.dynamic() {
            true => parse_template(self.url, self.hosts.as_deref()),
            false if self.hosts.is_some() => {
                Err(format!("hosts= is for URLs with variables in the host or port, not \"{}\"", self.url))
            }
            false => parse_target_with(self.url, self.resolve),
        }
    }
}

/// Reads the arguments of one `async_mirror` line (not `off`).
///
/// # Errors
/// A message suitable after `async_mirror: `.
pub fn parse_mirror_line<'a>(args: &[&'a str]) -> Result<MirrorLine<'a>, String> {
    let Some((&url, params)) = args.split_first() else { return Err("no URL".into()) };
    let (mut sample, mut key, mut rate, mut resolve, mut hosts) = (None, None, None, None, None);
    let mut baseline = false;
    let sink = is_sink_url(url);
    let mut sink_params = Vec::new();
    for &param in params {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        let has_value = param.contains('=');
        match name {
            "response" | "rotate" if sink => sink_params.push(param),
            "resolve" | "baseline" | "hosts" if sink => {
                return Err(format!("\"{name}\" is not for capture targets such as \"{url}\""));
            }
            "resolve" if resolve.is_none() => {
                resolve = Some(if has_value { positive_time(value)? } else { defaults::RESOLVE });
            }
            "baseline" if !has_value && !baseline => baseline = true,
            "baseline" => return Err(format!("invalid parameter \"{param}\"")),
            "sample" if sample.is_none() => sample = Some(parse_percent(value)?),
            "key" if key.is_none() => {
                if value.is_empty() {
                    return Err("empty key=".into());
                }
                key = Some(value);
            }
            "rate" if rate.is_none() => rate = Some(parse_rate(value)?),
            "hosts" if hosts.is_none() => {
                let list: Vec<&str> = value.split(',').collect();
                if list.iter().any(|h| h.is_empty()) {
                    return Err(format!("invalid parameter \"{param}\" (expected hosts=HOST[:PORT],...)"));
                }
                hosts = Some(list);
            }
            "sample" | "key" | "rate" | "resolve" | "hosts" => {
                return Err(format!("duplicate parameter \"{param}\""));
            }
            _ => return Err(format!("unknown parameter \"{param}\"")),
        }
    }
    // A capture target's key= is also its Kafka message key, so it stands without sample=.
    if key.is_some() && sample.is_none() && !sink {
        return Err("key= needs sample=".into());
    }
    let sink = if sink { Some(parse_sink(url, &sink_params)?) } else { None };
    let line =
        MirrorLine { url, sample_ppm: sample.unwrap_or(PPM), key, rate, resolve, baseline, hosts, sink };
    if line.dynamic() && resolve.is_some() {
        return Err(format!(
            "resolve with variables in \"{url}\" (such URLs are resolved for every connection)"
        ));
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let l = parse_mirror_line(&["http://127.0.0.1:9", "sample=5%", "key=$arg_u", "rate=10/s"]).unwrap();
        assert_eq!(
            (l.sample_ppm, l.key, l.rate, l.resolve, l.baseline),
            (50_000, Some("$arg_u"), Some(10), None, false)
        );
        assert!(!l.dynamic() && l.spec().is_ok());
        let l = parse_mirror_line(&["http://mirror.test:9", "resolve", "baseline"]).unwrap();
        assert_eq!((l.resolve, l.baseline, l.sample_ppm), (Some(defaults::RESOLVE), true, PPM));
        assert_eq!(
            parse_mirror_line(&["http://m:9", "resolve=5s"]).unwrap().resolve,
            Some(Duration::from_secs(5))
        );
        let l = parse_mirror_line(&["http://$host:9/x$uri", "hosts=a:9,b:9"]).unwrap();
        assert!(l.dynamic() && l.spec().is_ok());
        assert_eq!(l.hosts, Some(vec!["a:9", "b:9"]));
        assert!(
            parse_mirror_line(&["http://$host:9/x$uri"]).unwrap().spec().is_err(),
            "no list, no client-chosen host"
        );
        assert!(parse_mirror_line(&["http://m:9", "hosts=m:9"]).unwrap().spec().is_err());
        assert_eq!(l.path_kind(), PathKind::Target);
        for (args, err) in [
            (&["http://m:9", "sample=5%", "sample=6%"][..], "duplicate parameter \"sample=6%\""),
            (&["http://m:9", "key=$a"][..], "key= needs sample="),
            (&["http://m:9", "sample=5%", "key="][..], "empty key="),
            (&["http://m:9", "baseline=1"][..], "invalid parameter \"baseline=1\""),
            (&["http://m:9", "weight=2"][..], "unknown parameter \"weight=2\""),
            (&["http://m:9", "resolve", "resolve=1s"][..], "duplicate parameter \"resolve=1s\""),
            (&["http://m:9", "resolve=0"][..], "invalid time \"0\" (must be greater than 0)"),
            (
                &["http://$h:9", "hosts=a,,b"][..],
                "invalid parameter \"hosts=a,,b\" (expected hosts=HOST[:PORT],...)",
            ),
        ] {
            assert_eq!(parse_mirror_line(args).unwrap_err(), err);
        }
        assert!(
            parse_mirror_line(&["http://$h:9", "resolve"]).unwrap_err().starts_with("resolve with variables")
        );
        let l = parse_mirror_line(&["file:logs/c.gor", "sample=5%", "key=$arg_u", "rotate=1m"]).unwrap();
        assert!(l.sink.is_some() && !l.dynamic() && l.spec().unwrap().url == "file:logs/c.gor");
        assert!(
            parse_mirror_line(&["http://m:9", "response=off"]).unwrap_err().starts_with("unknown parameter")
        );
        assert!(parse_mirror_line(&["kafka://b:1/t", "baseline"]).unwrap_err().contains("not for capture"));
    }
}
