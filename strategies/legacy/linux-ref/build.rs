//! Generates the C reference from the Linux source (`src/gen.rs`) and compiles it into a
//! static library, setting `cfg(linux_ref)`; without the source (or a C compiler) the
//! crate builds without it and `bounce_linux_ref::available()` says why.

use std::path::{Path, PathBuf};

#[path = "src/gen.rs"]
#[allow(dead_code)]
mod gen;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(linux_ref)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src/gen.rs");
    println!("cargo::rerun-if-env-changed={}", gen::SRC_ENV);
    match build() {
        Ok(root) => {
            println!("cargo::rustc-cfg=linux_ref");
            println!("cargo::rustc-env=BOUNCE_LINUX_REF_SOURCE={}", root.display());
            println!("cargo::rustc-env=BOUNCE_LINUX_REF_MISSING=");
        }
        Err(why) => {
            println!("cargo::rustc-env=BOUNCE_LINUX_REF_SOURCE=");
            println!("cargo::rustc-env=BOUNCE_LINUX_REF_MISSING={}", why.replace(['\n', '\r'], " "));
        }
    }
}

/// Finds the source, generates the C file and compiles it; returns the source tree.
fn build() -> Result<PathBuf, String> {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR unset")?);
    // strategies/legacy/linux-ref -> the workspace root.
    let workspace = manifest.ancestors().nth(3).unwrap_or(&manifest).to_path_buf();
    let env = std::env::var_os(gen::SRC_ENV).filter(|v| !v.is_empty()).map(PathBuf::from);
    let from_env = env.is_some();
    // Watch the files only once they exist: cargo reruns a build script on every build
    // while a watched path is missing. A tree extracted later is picked up through
    // BOUNCE_LINUX_SRC.
    let root = gen::find_source(&gen::candidates(env, &workspace), from_env)?;
    for f in gen::File::ALL {
        println!("cargo::rerun-if-changed={}", root.join(f.path()).display());
    }
    let c = gen::generate_from(&root).map_err(|e| format!("cannot cut the reference out of the Linux source: {e}"))?;
    compile(&c).map_err(|e| {
        let why = format!("the Linux reference did not compile: {e}");
        println!("cargo::warning={}", why.replace(['\n', '\r'], " "));
        why
    })?;
    Ok(root)
}

fn compile(c: &str) -> Result<(), String> {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR unset")?);
    let file: &Path = &out.join("swiotlb_ref.c");
    std::fs::write(file, c).map_err(|e| format!("{}: {e}", file.display()))?;
    cc::Build::new()
        .file(file)
        .std("gnu11")
        // As the kernel is built.
        .flag_if_supported("-fno-strict-aliasing")
        .warnings(false)
        .try_compile("swiotlb_ref")
        .map_err(|e| e.to_string())
}
