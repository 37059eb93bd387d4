//! Build-script helper shared by every crate that links tch: it turns the libtorch library folder
//! that torch-sys exports (`DEP_TCH_LIBTORCH_LIB`, because torch-sys declares `links = "tch"`) into
//! an rpath, so binaries and test executables start from a plain shell without `LD_LIBRARY_PATH`.
//!
//! Cargo only hands `DEP_TCH_*` to *direct* dependents of torch-sys, so each crate calling this
//! must list `torch-sys` in its own `[dependencies]`. `rustc-link-arg` applies to the calling
//! package's binaries, tests, examples and benchmarks only, which is why every tch-linking crate
//! has its own two-line `build.rs`.

/// Emits the rpath for the calling package's link targets. Call from `build.rs` `main`.
///
/// On a machine where the library folder differs (the GPU check machine), `LD_LIBRARY_PATH`
/// still takes precedence over this `RUNPATH`, so the same binaries run there.
pub fn emit() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(dir) if !dir.is_empty() => {
            println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags,-rpath,{dir}");
            // libtorch registers CUDA only when libtorch_cuda.so is loaded, and nothing calls it
            // directly, so the linker would drop it: then `--device auto` silently runs on the
            // CPU of a GPU machine. Binaries keep it (about 0.25 s more per start); tests do not
            // need CUDA and skip without it.
            if std::path::Path::new(&dir).join("libtorch_cuda.so").exists()
                && package_has_binaries()
            {
                println!("cargo:rustc-link-arg-bins=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
            }
        }
        _ => println!(
            "cargo:warning=DEP_TCH_LIBTORCH_LIB is not set: add torch-sys to [dependencies]; \
             binaries will need LD_LIBRARY_PATH"
        ),
    }
}

/// Cargo refuses `rustc-link-arg-bins` from a package without binaries; ours follow Cargo's
/// layout (`src/main.rs`, `src/bin/`) or declare `[[bin]]`.
fn package_has_binaries() -> bool {
    let Ok(root) = std::env::var("CARGO_MANIFEST_DIR") else { return false };
    let root = std::path::Path::new(&root);
    root.join("src/main.rs").exists()
        || root.join("src/bin").is_dir()
        || std::fs::read_to_string(root.join("Cargo.toml")).is_ok_and(|t| t.contains("[[bin]]"))
}
