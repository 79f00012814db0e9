//! Directive values in nginx's own syntax: sizes, times, counts, flags, header names,
//! percentages, rates and status codes. Kept free of nginx types so every rule is
//! unit-tested; the FFI layer only turns the `Err` strings into `async_mirror: ...`
//! config errors.

use std::time::Duration;

/// Sampling resolution: fractions are kept in parts per million.
pub const PPM: u32 = 1_000_000;

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

/// Parses `sample=` values: `5%`, `0.01%`, `100%` (0.01 to 100, up to 4 decimals).
///
/// # Errors
/// Anything outside that range or syntax.
pub fn parse_percent(s: &str) -> Result<u32, String> {
    let err = || format!("invalid sample \"{s}\" (expected 0.01% to 100%)");
    let num = s.strip_suffix('%').ok_or_else(err)?;
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty()
        || int.len() > 3
        || frac.len() > 4
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return Err(err());
    }
    if num.ends_with('.') {
        return Err(err());
    }
    let int: u32 = int.parse().map_err(|_| err())?;
    let frac: u32 = format!("{frac:0<4}").parse().map_err(|_| err())?;
    // percent × 10_000 = ppm
    let ppm = int * 10_000 + frac;
    if !(100..=PPM).contains(&ppm) {
        return Err(err());
    }
    Ok(ppm)
}

/// Parses `rate=N/s` (1 to 1,000,000 copies per second).
///
/// # Errors
/// Anything else.
pub fn parse_rate(s: &str) -> Result<u32, String> {
    let err = || format!("invalid rate \"{s}\" (expected N/s, 1 to 1000000)");
    let n = s.strip_suffix("/s").ok_or_else(err)?;
    match n.parse::<u32>() {
        Ok(v) if (1..=1_000_000).contains(&v) && n.bytes().all(|b| b.is_ascii_digit()) => Ok(v),
        _ => Err(err()),
    }
}

/// `async_mirror_primary_status`: a code (`404`) or a class (`5xx`), as an inclusive range.
///
/// # Errors
/// Anything else.
pub fn parse_status_range(a: &str) -> Result<(u16, u16), String> {
    let b = a.as_bytes();
    match b {
        [c @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => {
            let lo = u16::from(c - b'0') * 100;
            Ok((lo, lo + 99))
        }
        _ => match a.parse::<u16>() {
            Ok(code @ 100..=599) if b.len() == 3 => Ok((code, code)),
            _ => Err(format!("invalid status \"{a}\" (expected a code 100..599 or 1xx..5xx)")),
        },
    }
}

/// `async_mirror_http_version`: HTTP/2, or HTTP/1.1 with its pipelining depth.
pub type HttpVersion = (bool, Option<usize>);

/// `async_mirror_http_version 1.1 [pipeline=N] | 2`: whether it asks for HTTP/2, and the
/// pipelining depth of HTTP/1.1.
///
/// # Errors
/// Anything but `1.1`, `2` or `2.0`; `pipeline=` out of 2..=128 or with HTTP/2.
pub fn parse_http_version(args: &[&str]) -> Result<HttpVersion, String> {
    let http2 = match args.first().copied().unwrap_or("") {
        "1.1" => false,
        "2" | "2.0" => true,
        v => return Err(format!("invalid HTTP version \"{v}\" (expected 1.1 or 2)")),
    };
    let pipeline = match args.get(1) {
        None => None,
        Some(p) if http2 => return Err(format!("\"{p}\" is for HTTP/1.1 (HTTP/2 multiplexes)")),
        Some(p) => match p.strip_prefix("pipeline=").map(|n| n.parse::<usize>()) {
            Some(Ok(n @ 2..=128)) => Some(n),
            _ => return Err(format!("invalid parameter \"{p}\" (expected pipeline=2..128)")),
        },
    };
    Ok((http2, pipeline))
}

/// A time that must not be zero (timeouts, intervals).
///
/// # Errors
/// As [`parse_time`], and zero.
pub fn positive_time(s: &str) -> Result<Duration, String> {
    match parse_time(s)? {
        Duration::ZERO => Err(format!("invalid time \"{s}\" (must be greater than 0)")),
        t => Ok(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn percents() {
        assert_eq!(parse_percent("5%"), Ok(50_000));
        assert_eq!(parse_percent("100%"), Ok(PPM));
        assert_eq!(parse_percent("0.01%"), Ok(100));
        assert_eq!(parse_percent("12.5%"), Ok(125_000));
        for bad in ["5", "0%", "0.001%", "100.01%", "101%", "-1%", "1.%", ".5%", "abc%", "1e2%", "5%%"] {
            assert!(parse_percent(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(parse_rate("100/s"), Ok(100));
        for bad in ["100", "0/s", "-1/s", "1.5/s", "100/m", "9999999/s"] {
            assert!(parse_rate(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn statuses_versions_positive_times() {
        assert_eq!(parse_status_range("404"), Ok((404, 404)));
        assert_eq!(parse_status_range("5xx"), Ok((500, 599)));
        assert_eq!(parse_status_range("2XX"), Ok((200, 299)));
        for bad in ["6xx", "99", "600", "0404", "x", "", "4x"] {
            assert!(parse_status_range(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(parse_http_version(&["2"]), Ok((true, None)));
        assert_eq!(parse_http_version(&["1.1"]), Ok((false, None)));
        assert_eq!(parse_http_version(&["1.1", "pipeline=8"]), Ok((false, Some(8))));
        assert!(parse_http_version(&["1.0"]).is_err());
        assert!(parse_http_version(&["2", "pipeline=8"]).is_err());
        assert!(parse_http_version(&["1.1", "pipeline=1"]).is_err());
        assert!(parse_http_version(&["1.1", "pipeline=x"]).is_err());
        assert!(positive_time("0").is_err());
        assert_eq!(positive_time("1s"), Ok(Duration::from_secs(1)));
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
