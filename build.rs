// Re-exports where nginx-sys built (or found) nginx, so the integration tests
// can start the exact nginx binary this module was compiled against.
fn main() {
    for var in ["DEP_NGINX_BUILD_DIR", "DEP_NGINX_VERSION"] {
        println!("cargo::rerun-if-env-changed={var}");
        if let Ok(value) = std::env::var(var) {
            println!("cargo::rustc-env={var}={value}");
        }
    }
}
