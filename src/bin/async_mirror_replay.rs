//! `async-mirror-replay`: sends the requests of capture records (GoReplay's format, from a
//! file or a Kafka topic) to a URL again; see docs/capture.md.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    let code = ngx_http_async_mirror_module::replay_main(std::env::args().skip(1).collect());
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}
