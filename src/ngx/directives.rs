//! The directive setters; the command table that names them is in `module.rs`.
//!
//! Each setter is a plain function over already-converted arguments; the
//! `directive!` wrapper does the FFI: argument conversion, panic catching and
//! turning an error into `[emerg] async_mirror: ... in FILE:LINE`. Setters are
//! generic over the module ([`Registered`]) so that they need not name it.

use std::ffi::{c_char, c_void};

use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::{
    NGX_LOG_EMERG, NGX_OK, ngx_command_t, ngx_conf_open_file, ngx_conf_t, ngx_http_compile_complex_value,
    ngx_http_compile_complex_value_t, ngx_http_complex_value_t, ngx_open_file_t, ngx_pcalloc,
    ngx_shared_memory_add, ngx_str_t,
};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};
use ngx::ngx_conf_log_error;

use super::conf::{CompareLog, CopyLogRef, LocConf, MainConf, MirrorRef, Registered, SetHeader};
use super::{api_handler, shm, status_handler};
use crate::engine::client::{load_key, load_pem};
use crate::engine::compare::parse_json_path;
use crate::engine::config::{
    self as parse, defaults, parse_http_version, parse_mirror_line, parse_status_range, positive_time,
};
use crate::engine::zone::MIN_SIZE;

enum ConfError {
    /// nginx's own wording: `"NAME" directive is duplicate`.
    Duplicate,
    Msg(String),
}

impl From<String> for ConfError {
    fn from(s: String) -> Self {
        ConfError::Msg(s)
    }
}

type SetterFn<C> = fn(&mut ngx_conf_t, &mut C, &[&str]) -> Result<(), ConfError>;

/// Runs a setter for nginx; never lets a panic or an error escape unlogged.
fn run<C>(cf: *mut ngx_conf_t, conf: *mut c_void, setter: SetterFn<C>) -> *mut c_char {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: nginx calls setters with a valid cf whose args array holds ngx_str_t,
        // and conf points to this module's conf of the type the command table names.
        let (cfr, conf) = unsafe { (&mut *cf, &mut *conf.cast::<C>()) };
        let raw: &[ngx_str_t] = unsafe { (*cfr.args).as_slice() };
        let mut args = Vec::with_capacity(raw.len());
        for a in raw {
            let bytes = a.as_bytes();
            args.push(std::str::from_utf8(bytes).map_err(|_| {
                ConfError::Msg(format!("invalid UTF-8 in \"{}\"", String::from_utf8_lossy(bytes)))
            })?);
        }
        setter(cfr, conf, &args[1..])
    }));
    match result {
        Ok(Ok(())) => NGX_CONF_OK,
        Ok(Err(ConfError::Duplicate)) => c"is duplicate".as_ptr().cast_mut(),
        Ok(Err(ConfError::Msg(m))) => {
            ngx_conf_log_error!(NGX_LOG_EMERG, cf, "async_mirror: {m}");
            NGX_CONF_ERROR
        }
        Err(_) => {
            ngx_conf_log_error!(NGX_LOG_EMERG, cf, "async_mirror: internal error while parsing");
            NGX_CONF_ERROR
        }
    }
}

macro_rules! directive {
    ($name:ident, $conf:ty, $setter:expr) => {
        pub extern "C" fn $name<M: Registered>(
            cf: *mut ngx_conf_t,
            _cmd: *mut ngx_command_t,
            conf: *mut c_void,
        ) -> *mut c_char {
            run::<$conf>(cf, conf, $setter)
        }
    };
}

fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<(), ConfError> {
    if slot.is_some() {
        return Err(ConfError::Duplicate);
    }
    *slot = Some(value);
    Ok(())
}

/// Compiles an argument that may contain variables.
fn complex_value(cf: &mut ngx_conf_t, arg: &str) -> Result<*mut ngx_http_complex_value_t, ConfError> {
    // The argument lives in cf->pool for the life of the configuration, as the
    // compiled value requires.
    let mut value = ngx_str_t { len: arg.len(), data: arg.as_ptr().cast_mut() };
    // SAFETY: cf->pool is the configuration pool; zeroed is the documented initial state.
    let cv = unsafe { ngx_pcalloc(cf.pool, size_of::<ngx_http_complex_value_t>()) }
        .cast::<ngx_http_complex_value_t>();
    if cv.is_null() {
        return Err(ConfError::Msg("out of memory".into()));
    }
    let mut ccv: ngx_http_compile_complex_value_t = unsafe { std::mem::zeroed() };
    ccv.cf = cf;
    ccv.value = &mut value;
    ccv.complex_value = cv;
    // SAFETY: ccv is fully initialised as nginx's own modules do it.
    if unsafe { ngx_http_compile_complex_value(&mut ccv) } != NGX_OK as isize {
        return Err(ConfError::Msg(format!("invalid value \"{arg}\"")));
    }
    Ok(cv)
}

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
    let spec = line.spec()?;
    let key = match line.key {
        Some(k) => std::ptr::NonNull::new(complex_value(cf, k)?),
        None => None,
    };
    let url = if line.dynamic() { std::ptr::NonNull::new(complex_value(cf, line.url)?) } else { None };
    let Some(mc) = M::main_conf_mut(&*cf) else {
        return Err(ConfError::Msg("no http main configuration".into()));
    };
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

directive!(cmd_status, LocConf, |cf, _lc, _args| {
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
    let Some(clcf) = NgxHttpCoreModule::location_conf_mut(&*cf) else {
        return Err(ConfError::Msg("no location configuration".into()));
    };
    clcf.handler = Some(api_handler::api_handler::<M>);
    Ok(())
});

directive!(cmd_body, LocConf, |_cf, lc, args| set_once(&mut lc.body, parse::parse_flag(args[0])?));

directive!(cmd_body_max_size, LocConf, |_cf, lc, args| {
    set_once(&mut lc.body_max_size, parse::parse_size(args[0])?)
});

directive!(cmd_ssl_verify, LocConf, |_cf, lc, args| {
    set_once(&mut lc.ssl_verify, parse::parse_flag(args[0])?)
});

/// A file named in the configuration: relative paths are relative to the configuration
/// prefix, as for nginx's own directives.
fn conf_path(cf: &ngx_conf_t, arg: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(arg);
    if path.is_absolute() {
        return path.to_path_buf();
    }
    // SAFETY: cf->cycle is the cycle being configured.
    let prefix = unsafe { (*cf.cycle).conf_prefix };
    let prefix = std::str::from_utf8(prefix.as_bytes()).unwrap_or("");
    std::path::Path::new(prefix).join(path)
}

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
    set_once(&mut lc.http2, parse_http_version(args[0])?)
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

/// Opens a log file the nginx way: relative to the prefix, with the cycle's other files,
/// reopened on `nginx -s reopen`.
fn open_log(cf: &mut ngx_conf_t, path: &str) -> Result<std::ptr::NonNull<ngx_open_file_t>, ConfError> {
    if path.is_empty() || path.contains('$') {
        return Err(format!("invalid log file \"{path}\" (variables are not supported)").into());
    }
    let mut name = ngx_str_t { len: path.len(), data: path.as_ptr().cast_mut() };
    // SAFETY: while parsing configuration; the name lives in the configuration pool.
    std::ptr::NonNull::new(unsafe { ngx_conf_open_file(cf.cycle, &mut name) })
        .ok_or_else(|| ConfError::Msg(format!("cannot open log \"{path}\"")))
}

/// `FILE [params]` or `off` of a log directive set at most once per level: `None` for `off`.
fn log_line<'a, T>(slot: &Option<T>, args: &'a [&'a str]) -> Result<Option<&'a [&'a str]>, ConfError> {
    if slot.is_some() {
        return Err(ConfError::Duplicate);
    }
    if args[0] != "off" {
        return Ok(Some(&args[1..]));
    }
    match args.get(1) {
        Some(extra) => Err(format!("unexpected parameter \"{extra}\" after \"off\"").into()),
        None => Ok(None),
    }
}

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
