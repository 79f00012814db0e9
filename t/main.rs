//! Integration tests: the nginx built alongside the module, real sockets and real
//! misbehaving peers (t/common). One test binary, so that a helper no test uses is
//! reported as dead code.

mod common;

mod api;
mod body;
mod capacity;
mod capture;
mod compare;
mod conf_errors;
mod copylog;
mod faults;
mod hostile;
mod layout;
mod live;
mod mirror;
mod observability;
mod operators;
mod pipeline;
mod resolve;
mod sampling;
mod tls;
mod zone;
