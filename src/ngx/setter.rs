//! What every directive setter shares: the `directive!` wrapper that does the FFI
//! (argument conversion, panic catching, turning an error into
//! `[emerg] async_mirror: ... in FILE:LINE`), and the nginx services setters use
//! (compiled values with variables, files relative to the prefix, log files nginx opens
//! and reopens).

use std::ffi::{c_char, c_void};

use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::{
    NGX_LOG_EMERG, NGX_OK, ngx_conf_open_file, ngx_conf_t, ngx_http_compile_complex_value,
    ngx_http_compile_complex_value_t, ngx_http_complex_value_t, ngx_open_file_t, ngx_pcalloc, ngx_str_t,
};
use ngx::ngx_conf_log_error;

pub enum ConfError {
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
pub fn run<C>(cf: *mut ngx_conf_t, conf: *mut c_void, setter: SetterFn<C>) -> *mut c_char {
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
        pub extern "C" fn $name<M: $crate::ngx::conf::Registered>(
            cf: *mut ::ngx::ffi::ngx_conf_t,
            _cmd: *mut ::ngx::ffi::ngx_command_t,
            conf: *mut ::std::ffi::c_void,
        ) -> *mut ::std::ffi::c_char {
            $crate::ngx::setter::run::<$conf>(cf, conf, $setter)
        }
    };
}
pub(super) use directive;

pub fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<(), ConfError> {
    if slot.is_some() {
        return Err(ConfError::Duplicate);
    }
    *slot = Some(value);
    Ok(())
}

/// Compiles an argument that may contain variables.
pub fn complex_value(cf: &mut ngx_conf_t, arg: &str) -> Result<*mut ngx_http_complex_value_t, ConfError> {
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

/// A file named in the configuration: relative paths are relative to the configuration
/// prefix, as for nginx's own directives.
pub fn conf_path(cf: &ngx_conf_t, arg: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(arg);
    if path.is_absolute() {
        return path.to_path_buf();
    }
    // SAFETY: cf->cycle is the cycle being configured.
    let prefix = unsafe { (*cf.cycle).conf_prefix };
    let prefix = std::str::from_utf8(prefix.as_bytes()).unwrap_or("");
    std::path::Path::new(prefix).join(path)
}

/// Opens a log file the nginx way: relative to the prefix, with the cycle's other files,
/// reopened on `nginx -s reopen`.
pub fn open_log(cf: &mut ngx_conf_t, path: &str) -> Result<std::ptr::NonNull<ngx_open_file_t>, ConfError> {
    if path.is_empty() || path.contains('$') {
        return Err(format!("invalid log file \"{path}\" (variables are not supported)").into());
    }
    let mut name = ngx_str_t { len: path.len(), data: path.as_ptr().cast_mut() };
    // SAFETY: while parsing configuration; the name lives in the configuration pool.
    std::ptr::NonNull::new(unsafe { ngx_conf_open_file(cf.cycle, &mut name) })
        .ok_or_else(|| ConfError::Msg(format!("cannot open log \"{path}\"")))
}

/// `FILE [params]` or `off` of a log directive set at most once per level: `None` for `off`.
pub fn log_line<'a, T>(slot: &Option<T>, args: &'a [&'a str]) -> Result<Option<&'a [&'a str]>, ConfError> {
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
