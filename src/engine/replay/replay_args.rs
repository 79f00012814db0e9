//! `async-mirror-replay`'s command line.

use std::time::Duration;

use crate::engine::compare::parse_json_path;
use crate::engine::config::{PPM, parse_count, parse_size, positive_time};

pub const USAGE: &str = "\
usage: async-mirror-replay --from PATH|kafka://HOST:PORT[,...]/TOPIC --to URL [options]

Sends the requests of capture records (GoReplay's format) to URL again.

  --from PATH|kafka://...   a capture file, or a Kafka topic (read as one member of --group)
  --to URL                  http[s]://host[:port][/prefix]: the prefix goes before each target
  --speed P%|max            pacing: 100% is the original pace, 200% twice as fast (default 100%)
  --repeat N                replay a file N times (default 1)
  --compare                 compare each answer with the recorded one and count verdicts
  --compare-headers NAME... headers compared (default Content-Type)
  --ignore-json PATH...     JSON paths not compared, as async_mirror_compare_ignore_json
  --compare-max-body SIZE   bodies compared up to this size (default 64k)
  --timeout TIME            limit on each exchange (default 5s)
  --connections N           connections to the target at most (default 128)
  --http2                   HTTP/2 to the target (h2c, or ALPN over https)
  --insecure                do not verify an https target's certificate
  --group NAME              Kafka consumer group (default async-mirror-replay)
  --idle TIME               Kafka: stop after this long without a record (default 5s)
";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayArgs {
    pub from: String,
    pub to: String,
    /// Pace as a multiple of the original, in parts per million; `None` is `max`.
    pub speed_ppm: Option<u64>,
    pub repeat: u64,
    pub compare: bool,
    pub compare_headers: Vec<String>,
    pub ignore_json: Vec<String>,
    pub compare_max_body: usize,
    pub timeout: Duration,
    pub connections: usize,
    pub http2: bool,
    pub insecure: bool,
    pub group: String,
    pub idle: Duration,
}

/// `200%`, `12.5%` or `max`.
fn parse_speed(s: &str) -> Result<Option<u64>, String> {
    if s == "max" {
        return Ok(None);
    }
    let err = || format!("invalid speed \"{s}\" (expected P% or max)");
    let num = s.strip_suffix('%').ok_or_else(err)?;
    let v: f64 = num.parse().map_err(|_| err())?;
    if !(0.01..=100_000.0).contains(&v) {
        return Err(err());
    }
    Ok(Some((v * f64::from(PPM) / 100.0).round() as u64))
}

/// Reads the arguments (without the program's name).
///
/// # Errors
/// A message for the user; `Err(USAGE)` for `--help`.
pub fn parse_args(args: &[String]) -> Result<ReplayArgs, String> {
    let mut a = ReplayArgs {
        from: String::new(),
        to: String::new(),
        speed_ppm: Some(u64::from(PPM)),
        repeat: 1,
        compare: false,
        compare_headers: vec!["content-type".into()],
        ignore_json: Vec::new(),
        compare_max_body: 64 << 10,
        timeout: Duration::from_secs(5),
        connections: 128,
        http2: false,
        insecure: false,
        group: "async-mirror-replay".into(),
        idle: Duration::from_secs(5),
    };
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        let value = |i: usize| args.get(i + 1).map(String::as_str).ok_or(format!("{flag} needs a value"));
        // The values of a list option: up to the next option.
        let list =
            |i: usize| args[i + 1..].iter().take_while(|v| !v.starts_with("--")).cloned().collect::<Vec<_>>();
        let mut used = 1;
        match flag {
            "--help" | "-h" => return Err(USAGE.into()),
            "--from" => (a.from, used) = (value(i)?.to_string(), 2),
            "--to" => (a.to, used) = (value(i)?.to_string(), 2),
            "--speed" => (a.speed_ppm, used) = (parse_speed(value(i)?)?, 2),
            "--repeat" => (a.repeat, used) = (parse_count(value(i)?, 1_000_000)?, 2),
            "--compare" => a.compare = true,
            "--http2" => a.http2 = true,
            "--insecure" => a.insecure = true,
            "--timeout" => (a.timeout, used) = (positive_time(value(i)?)?, 2),
            "--idle" => (a.idle, used) = (positive_time(value(i)?)?, 2),
            "--group" => (a.group, used) = (value(i)?.to_string(), 2),
            "--connections" => (a.connections, used) = (parse_count(value(i)?, 65_535)? as usize, 2),
            "--compare-max-body" => {
                a.compare_max_body = usize::try_from(parse_size(value(i)?)?).map_err(|_| "size too large")?;
                used = 2;
            }
            "--compare-headers" => {
                let names = list(i);
                used = 1 + names.len();
                a.compare_headers = names.iter().map(|n| n.to_ascii_lowercase()).collect();
            }
            "--ignore-json" => {
                let paths = list(i);
                used = 1 + paths.len();
                for p in &paths {
                    a.ignore_json.push(parse_json_path(p)?);
                }
            }
            other => return Err(format!("unknown option \"{other}\"\n\n{USAGE}")),
        }
        i += used;
    }
    if a.from.is_empty() || a.to.is_empty() {
        return Err(format!("--from and --to are needed\n\n{USAGE}"));
    }
    if a.repeat > 1 && a.from.starts_with("kafka://") {
        return Err("--repeat is for files (a topic is read once, as a consumer group member)".into());
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options() {
        let a = parse_args(&args(
            "--from c.gor --to http://127.0.0.1:1 --speed 200% --repeat 3 --compare --ignore-json $.a $.b[2] --http2",
        ))
        .unwrap();
        assert_eq!((a.speed_ppm, a.repeat, a.compare, a.http2), (Some(2_000_000), 3, true, true));
        assert_eq!(a.ignore_json, ["$.a", "$.b[*]"]);
        assert_eq!(parse_args(&args("--from c --to http://x --speed max")).unwrap().speed_ppm, None);
        for (bad, err) in [
            ("--from c", "--from and --to are needed"),
            ("--from c --to http://x --speed 2", "invalid speed"),
            ("--from c --to http://x --speed 0%", "invalid speed"),
            ("--from c --to http://x --bogus", "unknown option"),
            ("--from c --to http://x --repeat 0", "invalid number"),
            ("--from kafka://b:1/t --to http://x --repeat 2", "--repeat is for files"),
            ("--from c --to http://x --ignore-json a.b", "JSON path"),
            ("--from", "--from needs a value"),
        ] {
            let e = parse_args(&args(bad)).unwrap_err();
            assert!(e.contains(err), "{bad}: {e}");
        }
        assert!(parse_args(&args("--help")).unwrap_err().starts_with("usage:"));
    }
}
