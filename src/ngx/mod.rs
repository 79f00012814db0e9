//! The thin FFI layer: everything that touches nginx structs lives here.
//!
//! Every `extern "C"` entry point catches panics, and nothing here blocks the
//! nginx thread except the bounded drain when a worker exits. `module.rs`
//! registers everything; the files below it never name the module.

mod answer_conf;
mod api_handler;
mod body_filter;
mod conf;
mod ctx;
mod directives;
mod handler;
mod log;
mod module;
mod process;
mod response_filter;
mod setter;
mod shm;
mod status_handler;
mod strings;
mod variable;
