//! The directive setters; the command table that names them is in `module.rs`.
//!
//! Each setter is a plain function over already-converted arguments, wrapped by
//! `directive!` (in `setter.rs`). Setters are generic over the module ([`Registered`])
//! so that they need not name it; pure parsing lives in `engine::config`.

use ngx::ffi::{ngx_shared_memory_add, ngx_str_t};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};

use super::conf::{CompareLog, CopyLogRef, LocConf, MainConf, MirrorRef, SetHeader};
use super::setter::{ConfError, complex_value, conf_path, directive, log_line, open_log, set_once};
use super::{answer_conf, api_handler, shm, status_handler};
use crate::engine::client::{load_key, load_pem};
use crate::engine::compare::parse_json_path;
use crate::engine::config::{
    self as parse, defaults, parse_http_version, parse_mirror_line, parse_status_range, positive_time,
};
use crate::engine::zone::MIN_SIZE;

directive!(cmd_async_mirror, LocConf, |cf, lc, args| {
    if args[0] == "off" {
        if let Some(extra) = args.get(1) {
            return Err(format!("unexpected parameter \"{extra}\" after \"off\"").into());
        }
        return set_once(&mut lc.mirrors, Vec::new());
    }
    if matches!(&lc.mirrors, Some(v) if v.is_empty()) {
        return Err(ConfError::Duplicate);
    }
    let line = parse_mirror_line(args)?;
    let sink = match &line.sink {
        Some(s) => Some(answer_conf::sink_entry(cf, line.url, s)?),
        None => None,
    };
    let url = if line.dynamic() { std::ptr::NonNull::new(complex_value(cf, line.url)?) } else { None };
    let spec = line.spec()?;
    let key = match line.key {
        Some(k) => std::ptr::NonNull::new(complex_value(cf, k)?),
        None => None,
    };
    let Some(mc) = M::main_conf_mut(&*cf) else {
        return Err(ConfError::Msg("no http main configuration".into()));
    };
    if let Some(entry) = sink {
        answer_conf::register(mc, entry)?;
    }
    let spec = mc.add_spec(spec)?;
    let rate = line.rate.map(|r| mc.rates.push(r));
    let list = lc.mirrors.get_or_insert_with(Vec::new);
    if list.iter().any(|m| m.spec == spec) {
        return Err(format!("duplicate target \"{}\"", line.url).into());
    }
    if line.baseline && list.iter().any(|m| m.baseline) {
        return Err(format!("second baseline \"{}\" (one baseline per level)", line.url).into());
    }
    let written = (line.url.to_string(), line.sample_ppm);
    if !mc.samples.contains(&written) {
        mc.samples.push(written);
    }
    list.push(MirrorRef {
        spec,
        target: None,
        sample_ppm: line.sample_ppm,
        key,
        rate,
        url,
        path: line.path_kind(),
        baseline: line.baseline,
    });
    Ok(())
});

directive!(cmd_set_header, LocConf, |cf, lc, args| {
    let name = parse::parse_header_name(args[0])?;
    let value = complex_value(cf, args[1])?;
    lc.set_headers.get_or_insert_with(Vec::new).push(SetHeader { name, value });
    Ok(())
});

directive!(cmd_if, LocConf, |cf, lc, args| {
    let mut values = Vec::with_capacity(args.len());
    for a in args {
        values.push(complex_value(cf, a)?);
    }
    lc.conditions.get_or_insert_with(Vec::new).extend(values);
    Ok(())
});

directive!(cmd_mark_header, LocConf, |_cf, lc, args| {
    let v = if args[0] == "off" { None } else { Some(parse::parse_header_name(args[0])?) };
    set_once(&mut lc.mark_header, v)
});

directive!(cmd_connect_timeout, LocConf, |_cf, lc, args| {
    set_once(&mut lc.connect_timeout, positive_time(args[0])?)
});

directive!(cmd_timeout, LocConf, |_cf, lc, args| set_once(&mut lc.timeout, positive_time(args[0])?));

directive!(cmd_zone, MainConf, |cf, mc, args| {
    if mc.zone.is_some() {
        return Err(ConfError::Duplicate);
    }
    let name = args[0];
    if name.is_empty() || name.contains('$') {
        return Err(format!("invalid zone name \"{name}\"").into());
    }
    let size = parse::parse_size(args[1])?;
    if size < MIN_SIZE as u64 || size > 1 << 32 {
        return Err(format!("zone \"{name}\" size \"{}\" must be between 32k and 4g", args[1]).into());
    }
    let mut ngx_name = ngx_str_t { len: name.len(), data: name.as_ptr().cast_mut() };
    // SAFETY: called while parsing configuration; the tag identifies our zones.
    let shm = unsafe {
        ngx_shared_memory_add(
            cf,
            &mut ngx_name,
            size as usize,
            std::ptr::from_ref(M::module()).cast_mut().cast(),
        )
    };
    // SAFETY: a non-null zone returned by nginx.
    let Some(shm_ref) = (unsafe { shm.as_mut() }) else {
        return Err(ConfError::Msg(format!("cannot create zone \"{name}\"")));
    };
    if !shm_ref.data.is_null() {
        return Err(format!("zone \"{name}\" is already used").into());
    }
    shm_ref.init = Some(shm::init_zone);
    shm_ref.data = std::ptr::from_mut(mc).cast();
    mc.zone = std::ptr::NonNull::new(shm);
    Ok(())
});

directive!(cmd_status, LocConf, |cf, lc, _args| {
    lc.operator = true;
    let Some(clcf) = NgxHttpCoreModule::location_conf_mut(&*cf) else {
        return Err(ConfError::Msg("no location configuration".into()));
    };
    clcf.handler = Some(status_handler::status_handler);
    Ok(())
});

directive!(cmd_api, LocConf, |cf, lc, args| {
    let write = match args.first().copied() {
        None | Some("write=off") => false,
        Some("write=on") => true,
        Some(other) => return Err(format!("invalid parameter \"{other}\" (expected write=on)").into()),
    };
    set_once(&mut lc.api_write, write)?;
    lc.operator = true;
    let Some(clcf) = NgxHttpCoreModule::location_conf_mut(&*cf) else {
        return Err(ConfError::Msg("no location configuration".into()));
    };
    clcf.handler = Some(api_handler::api_handler::<M>);
    Ok(())
});

directive!(cmd_scrub_header, LocConf, |_cf, lc, args| {
    if lc.scrub_headers.is_some() {
        return Err(ConfError::Duplicate);
    }
    if args[0] == "off" {
        if let Some(extra) = args.get(1) {
            return Err(format!("unexpected parameter \"{extra}\" after \"off\"").into());
        }
        lc.scrub_headers = Some(Vec::new());
        return Ok(());
    }
    let names = args.iter().map(|a| parse::parse_header_name(a)).collect::<Result<Vec<_>, _>>()?;
    lc.scrub_headers = Some(names);
    Ok(())
});

directive!(cmd_body, LocConf, |_cf, lc, args| set_once(&mut lc.body, parse::parse_flag(args[0])?));

directive!(cmd_body_buffer_size, LocConf, |_cf, lc, args| {
    set_once(&mut lc.body_buffer_size, parse::parse_size(args[0])?)
});

directive!(cmd_body_max_size, LocConf, |_cf, lc, args| {
    set_once(&mut lc.body_max_size, parse::parse_size(args[0])?)
});

directive!(cmd_ssl_verify, LocConf, |_cf, lc, args| {
    set_once(&mut lc.ssl_verify, parse::parse_flag(args[0])?)
});

directive!(cmd_ssl_trusted_certificate, LocConf, |cf, lc, args| {
    let path = conf_path(cf, args[0]);
    load_pem(&path)?;
    set_once(&mut lc.ssl_trusted_certificate, path)
});

directive!(cmd_ssl_certificate, LocConf, |cf, lc, args| {
    let path = conf_path(cf, args[0]);
    load_pem(&path)?;
    set_once(&mut lc.ssl_certificate, path)
});

directive!(cmd_ssl_certificate_key, LocConf, |cf, lc, args| {
    let path = conf_path(cf, args[0]);
    load_key(&path)?;
    set_once(&mut lc.ssl_certificate_key, path)
});

directive!(cmd_http_version, LocConf, |_cf, lc, args| {
    set_once(&mut lc.http_version, parse_http_version(args)?)
});

directive!(cmd_max_fails, LocConf, |_cf, lc, args| {
    // 0 disables the breaker, as max_fails=0 does for an upstream server.
    let n = if args[0] == "0" { 0 } else { parse::parse_count(args[0], 1_000_000)? as u32 };
    set_once(&mut lc.max_fails, n)
});

directive!(cmd_fail_timeout, LocConf, |_cf, lc, args| {
    set_once(&mut lc.fail_timeout, positive_time(args[0])?)
});

directive!(cmd_max_connections, MainConf, |_cf, mc, args| {
    set_once(&mut mc.max_connections, parse::parse_count(args[0], 65_535)? as usize)
});

directive!(cmd_keepalive_timeout, MainConf, |_cf, mc, args| {
    set_once(&mut mc.keepalive_timeout, positive_time(args[0])?)
});

directive!(cmd_queue_size, MainConf, |_cf, mc, args| {
    set_once(&mut mc.queue_size, parse::parse_count(args[0], 1 << 24)? as usize)
});

directive!(cmd_queue_bytes, MainConf, |_cf, mc, args| {
    let n = parse::parse_size(args[0])?;
    if n == 0 || n > 1 << 40 {
        return Err(format!("invalid size \"{}\" (expected 1..1024g)", args[0]).into());
    }
    set_once(&mut mc.queue_bytes, n as usize)
});

directive!(cmd_threads, MainConf, |_cf, mc, args| {
    set_once(&mut mc.threads, parse::parse_count(args[0], 64)? as usize)
});

directive!(cmd_drain_timeout, MainConf, |_cf, mc, args| {
    // 0 is allowed: drop whatever is queued at once on reload/quit.
    set_once(&mut mc.drain_timeout, parse::parse_time(args[0])?)
});

directive!(cmd_compare, LocConf, |_cf, lc, args| set_once(&mut lc.compare, parse::parse_flag(args[0])?));

directive!(cmd_compare_headers, LocConf, |_cf, lc, args| {
    if lc.compare_headers.is_some() {
        return Err(ConfError::Duplicate);
    }
    let mut names = Vec::with_capacity(args.len());
    for a in args {
        let name = parse::parse_header_name(a)?.to_ascii_lowercase();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    lc.compare_headers = Some(names);
    Ok(())
});

directive!(cmd_compare_ignore_json, LocConf, |_cf, lc, args| {
    if lc.compare_ignore_json.is_some() {
        return Err(ConfError::Duplicate);
    }
    let paths = args.iter().map(|a| parse_json_path(a)).collect::<Result<Vec<_>, _>>()?;
    lc.compare_ignore_json = Some(paths);
    Ok(())
});

directive!(cmd_compare_max_body, LocConf, |_cf, lc, args| {
    let n = parse::parse_size(args[0])?;
    if n > 64 << 20 {
        return Err(format!("invalid size \"{}\" (at most 64m)", args[0]).into());
    }
    set_once(&mut lc.compare_max_body, n)
});

directive!(cmd_compare_key, LocConf, |cf, lc, args| {
    if args[0].is_empty() {
        return Err(ConfError::Msg("empty compare key".into()));
    }
    let cv = std::ptr::NonNull::new(complex_value(cf, args[0])?);
    set_once(&mut lc.compare_key, cv.ok_or_else(|| ConfError::Msg("out of memory".into()))?)
});

directive!(cmd_log, LocConf, |cf, lc, args| {
    let Some(params) = log_line(&lc.copy_log, args)? else {
        lc.copy_log = Some(None);
        return Ok(());
    };
    let mut cond = None;
    for param in params {
        match param.split_once('=') {
            Some(("if", v)) if cond.is_none() && !v.is_empty() => {
                cond = std::ptr::NonNull::new(complex_value(cf, v)?)
            }
            _ => return Err(format!("invalid parameter \"{param}\"").into()),
        }
    }
    let file = open_log(cf, args[0])?;
    let Some(mc) = M::main_conf_mut(&*cf) else {
        return Err(ConfError::Msg("no http main configuration".into()));
    };
    let index = match mc.copy_logs.iter().position(|f| *f == file) {
        Some(i) => i,
        None => {
            mc.copy_logs.push(file);
            mc.copy_logs.len() - 1
        }
    };
    lc.copy_log = Some(Some(CopyLogRef { index, cond }));
    Ok(())
});

directive!(cmd_compare_log, LocConf, |cf, lc, args| {
    let Some(params) = log_line(&lc.compare_log, args)? else {
        lc.compare_log = Some(None);
        return Ok(());
    };
    let mut rate = None;
    for param in params {
        match param.split_once('=') {
            Some(("rate", v)) if rate.is_none() => rate = Some(parse::parse_rate(v)?),
            _ => return Err(format!("invalid parameter \"{param}\"").into()),
        }
    }
    let file = open_log(cf, args[0])?;
    let Some(mc) = M::main_conf_mut(&*cf) else {
        return Err(ConfError::Msg("no http main configuration".into()));
    };
    let rate = rate.unwrap_or(defaults::COMPARE_LOG_RATE);
    let index = match mc.compare_logs.iter().position(|l| l.file == file) {
        Some(i) if mc.compare_logs[i].rate == rate => i,
        Some(_) => return Err(format!("log \"{}\" is used with another rate", args[0]).into()),
        None => {
            mc.compare_logs.push(CompareLog { file, rate });
            mc.compare_logs.len() - 1
        }
    };
    lc.compare_log = Some(Some(index));
    Ok(())
});

directive!(cmd_primary_status, LocConf, |_cf, lc, args| {
    if lc.primary_status.is_some() {
        return Err(ConfError::Duplicate);
    }
    let ranges = args.iter().map(|a| parse_status_range(a)).collect::<Result<Vec<_>, _>>()?;
    lc.primary_status = Some(ranges);
    Ok(())
});
