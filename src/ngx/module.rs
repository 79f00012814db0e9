//! Registration, in one place: the `ngx_module_t` nginx loads, its http context,
//! the command table, and where the handlers and filters are hooked in. Every
//! other file of the glue is generic over [`Registered`] or takes what it needs
//! as arguments, so none of them names this module.

use std::ffi::{c_char, c_void};
use std::ptr::{addr_of, null_mut};

use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK, Status};
use ngx::ffi::{
    NGX_CONF_1MORE, NGX_CONF_NOARGS, NGX_CONF_TAKE1, NGX_CONF_TAKE2, NGX_CONF_TAKE12, NGX_HTTP_LOC_CONF,
    NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF, NGX_HTTP_MAIN_CONF_OFFSET, NGX_HTTP_MODULE,
    NGX_HTTP_SRV_CONF, NGX_HTTP_VAR_NOCACHEABLE, NGX_LOG_EMERG, ngx_array_push, ngx_command_t, ngx_conf_t,
    ngx_http_add_variable, ngx_http_handler_pt, ngx_http_module_t, ngx_http_phases_NGX_HTTP_PRECONTENT_PHASE,
    ngx_http_top_body_filter, ngx_http_top_header_filter, ngx_http_top_request_body_filter, ngx_int_t,
    ngx_module_t, ngx_str_t, ngx_uint_t,
};
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleMainConf, Merge, NgxHttpCoreModule};
use ngx::{ngx_conf_log_error, ngx_string};

use super::conf::{LocConf, MainConf, Registered};
use super::directives::*;
use super::{answer_conf, body_filter, handler, process, response_filter, variable};

pub struct Module;

impl HttpModule for Module {
    fn module() -> &'static ngx_module_t {
        // SAFETY: the module static is only written by nginx while loading configuration.
        unsafe { &*addr_of!(ngx_http_async_mirror_module) }
    }

    /// Registers `$async_mirror_outcome`.
    unsafe extern "C" fn preconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
        let mut name = ngx_string!("async_mirror_outcome");
        // SAFETY: nginx passes a valid cf; the name is static.
        let v = unsafe { ngx_http_add_variable(cf, &mut name, NGX_HTTP_VAR_NOCACHEABLE as ngx_uint_t) };
        // SAFETY: a non-null variable returned by nginx.
        match unsafe { v.as_mut() } {
            Some(v) => {
                v.get_handler = Some(variable::outcome_variable);
                Status::NGX_OK.into()
            }
            None => Status::NGX_ERROR.into(),
        }
    }

    /// Copies are decided in the PRECONTENT phase, as nginx's own `mirror` does:
    /// rewrites and access checks have run (denied requests are not copied) and
    /// the location is final, but no content handler has started, so the copy is
    /// queued before the upstream is even contacted. Handlers added later run
    /// first within a phase, so this one also runs before `try_files`.
    unsafe extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
        // SAFETY: nginx passes a valid cf.
        let cf = unsafe { &mut *cf };
        let Some(cmcf) = NgxHttpCoreModule::main_conf_mut(cf) else {
            return Status::NGX_ERROR.into();
        };
        let phase = &mut cmcf.phases[ngx_http_phases_NGX_HTTP_PRECONTENT_PHASE as usize].handlers;
        // SAFETY: the phase array holds ngx_http_handler_pt elements.
        let h = unsafe { ngx_array_push(phase) }.cast::<ngx_http_handler_pt>();
        if h.is_null() {
            return Status::NGX_ERROR.into();
        }
        // SAFETY: h points to a freshly pushed element.
        unsafe { *h = Some(handler::precontent_handler::<Module>) };
        // SAFETY: filters are chained once, while nginx loads the configuration.
        unsafe {
            body_filter::NEXT = ngx_http_top_request_body_filter;
            ngx_http_top_request_body_filter = Some(body_filter::body_filter);
            response_filter::NEXT_HEADER = ngx_http_top_header_filter;
            ngx_http_top_header_filter = Some(response_filter::header_filter);
            response_filter::NEXT_BODY = ngx_http_top_body_filter;
            ngx_http_top_body_filter = Some(response_filter::body_filter);
        }
        Status::NGX_OK.into()
    }
}

// SAFETY: the confs created for this module are of exactly these types.
unsafe impl HttpModuleMainConf for Module {
    type MainConf = MainConf;
}

// SAFETY: as above.
unsafe impl HttpModuleLocationConf for Module {
    type LocationConf = LocConf;
}

impl Registered for Module {}

/// Merges a location's configuration into its parent's, then resolves its targets:
/// only now are the location's TLS settings final.
unsafe extern "C" fn merge_loc_conf(
    cf: *mut ngx_conf_t,
    prev: *mut c_void,
    conf: *mut c_void,
) -> *mut c_char {
    let result = std::panic::catch_unwind(|| {
        // SAFETY: nginx passes the parent's and this level's confs, both of our type.
        let (prev, conf) = unsafe { (&*prev.cast::<LocConf>(), &mut *conf.cast::<LocConf>()) };
        let _ = conf.merge(prev);
        answer_conf::merged(conf);
        // SAFETY: nginx passes a valid cf during configuration.
        let Some(mc) = Module::main_conf_mut(unsafe { &*cf }) else {
            return Err(String::from("no main configuration"));
        };
        conf.resolve_targets(mc)?;
        answer_conf::resolved(conf, mc);
        Ok(())
    });
    match result {
        Ok(Ok(())) => NGX_CONF_OK,
        Ok(Err(msg)) => {
            ngx_conf_log_error!(NGX_LOG_EMERG, cf, "async_mirror: {msg}");
            NGX_CONF_ERROR
        }
        Err(_) => {
            ngx_conf_log_error!(NGX_LOG_EMERG, cf, "async_mirror: internal error while merging");
            NGX_CONF_ERROR
        }
    }
}

static MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: Some(Module::preconfiguration),
    postconfiguration: Some(Module::postconfiguration),
    create_main_conf: Some(Module::create_main_conf),
    init_main_conf: None,
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: Some(Module::create_loc_conf),
    merge_loc_conf: Some(merge_loc_conf),
};

/// Contexts: http, server and location (`HSL`), or http only (`MAIN`).
const HSL: u32 = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;
const MAIN: u32 = NGX_HTTP_MAIN_CONF;
type SetFn = extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char;

const fn command(name: ngx_str_t, type_: u32, set: SetFn) -> ngx_command_t {
    let main = type_ & NGX_HTTP_SRV_CONF == 0 && type_ & NGX_HTTP_MAIN_CONF != 0;
    ngx_command_t {
        name,
        type_: type_ as ngx_uint_t,
        set: Some(set),
        conf: if main { NGX_HTTP_MAIN_CONF_OFFSET } else { NGX_HTTP_LOC_CONF_OFFSET },
        offset: 0,
        post: null_mut(),
    }
}

type M = Module;

pub static mut COMMANDS: [ngx_command_t; 35] = [
    command(ngx_string!("async_mirror"), HSL | NGX_CONF_1MORE, cmd_async_mirror::<M>),
    command(ngx_string!("async_mirror_set_header"), HSL | NGX_CONF_TAKE2, cmd_set_header::<M>),
    command(ngx_string!("async_mirror_scrub_header"), HSL | NGX_CONF_1MORE, cmd_scrub_header::<M>),
    command(ngx_string!("async_mirror_if"), HSL | NGX_CONF_1MORE, cmd_if::<M>),
    command(ngx_string!("async_mirror_mark_header"), HSL | NGX_CONF_TAKE1, cmd_mark_header::<M>),
    command(ngx_string!("async_mirror_connect_timeout"), HSL | NGX_CONF_TAKE1, cmd_connect_timeout::<M>),
    command(ngx_string!("async_mirror_timeout"), HSL | NGX_CONF_TAKE1, cmd_timeout::<M>),
    command(ngx_string!("async_mirror_body"), HSL | NGX_CONF_TAKE1, cmd_body::<M>),
    command(ngx_string!("async_mirror_ssl_verify"), HSL | NGX_CONF_TAKE1, cmd_ssl_verify::<M>),
    command(
        ngx_string!("async_mirror_ssl_trusted_certificate"),
        HSL | NGX_CONF_TAKE1,
        cmd_ssl_trusted_certificate::<M>,
    ),
    command(ngx_string!("async_mirror_ssl_certificate"), HSL | NGX_CONF_TAKE1, cmd_ssl_certificate::<M>),
    command(
        ngx_string!("async_mirror_ssl_certificate_key"),
        HSL | NGX_CONF_TAKE1,
        cmd_ssl_certificate_key::<M>,
    ),
    command(ngx_string!("async_mirror_body_max_size"), HSL | NGX_CONF_TAKE1, cmd_body_max_size::<M>),
    command(ngx_string!("async_mirror_body_buffer_size"), HSL | NGX_CONF_TAKE1, cmd_body_buffer_size::<M>),
    command(ngx_string!("async_mirror_http_version"), HSL | NGX_CONF_TAKE12, cmd_http_version::<M>),
    command(ngx_string!("async_mirror_max_fails"), HSL | NGX_CONF_TAKE1, cmd_max_fails::<M>),
    command(ngx_string!("async_mirror_fail_timeout"), HSL | NGX_CONF_TAKE1, cmd_fail_timeout::<M>),
    command(ngx_string!("async_mirror_max_connections"), MAIN | NGX_CONF_TAKE1, cmd_max_connections::<M>),
    command(ngx_string!("async_mirror_keepalive_timeout"), MAIN | NGX_CONF_TAKE1, cmd_keepalive_timeout::<M>),
    command(ngx_string!("async_mirror_queue_size"), MAIN | NGX_CONF_TAKE1, cmd_queue_size::<M>),
    command(ngx_string!("async_mirror_queue_bytes"), MAIN | NGX_CONF_TAKE1, cmd_queue_bytes::<M>),
    command(ngx_string!("async_mirror_threads"), MAIN | NGX_CONF_TAKE1, cmd_threads::<M>),
    command(ngx_string!("async_mirror_drain_timeout"), MAIN | NGX_CONF_TAKE1, cmd_drain_timeout::<M>),
    command(ngx_string!("async_mirror_zone"), MAIN | NGX_CONF_TAKE2, cmd_zone::<M>),
    command(ngx_string!("async_mirror_status"), NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS, cmd_status::<M>),
    command(
        ngx_string!("async_mirror_api"),
        NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS | NGX_CONF_TAKE1,
        cmd_api::<M>,
    ),
    command(ngx_string!("async_mirror_log"), HSL | NGX_CONF_TAKE12, cmd_log::<M>),
    command(ngx_string!("async_mirror_compare"), HSL | NGX_CONF_TAKE1, cmd_compare::<M>),
    command(ngx_string!("async_mirror_compare_headers"), HSL | NGX_CONF_1MORE, cmd_compare_headers::<M>),
    command(
        ngx_string!("async_mirror_compare_ignore_json"),
        HSL | NGX_CONF_1MORE,
        cmd_compare_ignore_json::<M>,
    ),
    command(ngx_string!("async_mirror_compare_max_body"), HSL | NGX_CONF_TAKE1, cmd_compare_max_body::<M>),
    command(ngx_string!("async_mirror_compare_key"), HSL | NGX_CONF_TAKE1, cmd_compare_key::<M>),
    command(ngx_string!("async_mirror_compare_log"), HSL | NGX_CONF_TAKE12, cmd_compare_log::<M>),
    command(ngx_string!("async_mirror_primary_status"), HSL | NGX_CONF_1MORE, cmd_primary_status::<M>),
    ngx_command_t::empty(),
];

#[cfg(feature = "export-modules")]
ngx::ngx_modules!(ngx_http_async_mirror_module);

// Not #[used]: what references it (nginx's module table, or `ngx_modules` in a loadable
// module) keeps it, and the replayer's binary, which links this crate too, must not.
#[allow(non_upper_case_globals)]
#[cfg_attr(not(feature = "export-modules"), unsafe(no_mangle))]
pub static mut ngx_http_async_mirror_module: ngx_module_t = ngx_module_t {
    ctx: addr_of!(MODULE_CTX) as _,
    commands: (&raw mut COMMANDS).cast(),
    type_: NGX_HTTP_MODULE as _,
    init_process: Some(process::init_process::<Module>),
    exit_process: Some(process::exit_process),
    ..ngx_module_t::default()
};
