//! Compiles the web UI in (`src/web.rs`): recompiles when `web/dist` changes, and says so
//! when it is missing, because the binary then serves a page that only explains how to build
//! the UI.

fn main() {
    let dist = std::path::Path::new("../../web/dist");
    if dist.join("index.html").is_file() {
        println!("cargo::rerun-if-changed=../../web/dist");
    } else {
        // Watching the folder web.sh writes into: its dist appearing reruns this.
        println!("cargo::rerun-if-changed=../../web");
        println!(
            "cargo::warning=web/dist is not built: this binary's / will only say how to build the web UI. Run scripts/web.sh (it installs the wasm32 target and wasm-bindgen), then build again."
        );
    }
}
