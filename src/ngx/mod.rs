//! The thin FFI layer: everything that touches nginx structs lives here.
//!
//! Every `extern "C"` entry point catches panics, and nothing here blocks the
//! nginx thread except the bounded drain when a worker exits.

mod body_filter;
mod conf;
mod directives;
mod handler;
mod module;
mod process;
mod status;
mod zone;
