//! Compiles the built-in steps (`steps/*`) and the test guests to
//! `wasm32-wasip2` once, so nobody builds them by hand. The host embeds the
//! built-in steps; tests find the guests through `SKIFF_TEST_GUEST_*`.
//!
//! The nested cargo uses its own target directory (`target/wasm-steps`), shared
//! by `cargo build`, `cargo test` and `cargo clippy`, so the guests build once.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (package, artifact file stem, embedded as built-in step `name`)
const BUILTIN: &[(&str, &str, &str)] = &[
    ("skiff-step-diag", "skiff_step_diag", "diag"),
    ("skiff-step-shell", "skiff_step_shell", "shell"),
    ("skiff-step-notify", "skiff_step_notify", "notify"),
    ("skiff-step-checkout", "skiff_step_checkout", "checkout"),
    ("skiff-step-upload", "skiff_step_upload", "upload"),
    ("skiff-step-script", "skiff_step_script", "script"),
    ("skiff-step-cache", "skiff_step_cache", "cache"),
    ("skiff-step-download", "skiff_step_download", "download"),
    ("skiff-step-cloudflare-deploy", "skiff_step_cloudflare_deploy", "cloudflare-deploy"),
    ("skiff-step-spin-push", "skiff_step_spin_push", "spin-push"),
    ("skiff-step-spin-deploy", "skiff_step_spin_deploy", "spin-deploy"),
];
const TEST_GUESTS: &[(&str, &str, &str)] = &[("skiff-test-guest-hostile", "skiff_test_guest_hostile", "HOSTILE")];

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root =
        manifest_dir.ancestors().nth(2).expect("host/runtime/ sits two levels below the workspace root").to_path_buf();
    for watched in ["steps", "step-sdk", "wit", "host/test-guests", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = root.join("target").join("wasm-steps");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--target", "wasm32-wasip2", "--profile", "wasm-step", "--target-dir"])
        .arg(&target_dir);
    for (pkg, _, _) in BUILTIN.iter().chain(TEST_GUESTS) {
        cmd.args(["-p", pkg]);
    }
    // The outer build's flags and wrappers (clippy, coverage) are for the host, not the guests.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status()?;
    if !status.success() {
        anyhow::bail!(
            "building the step components failed ({status}); is the target installed? run `rustup target add wasm32-wasip2`"
        );
    }
    let out_dir = target_dir.join("wasm32-wasip2").join("wasm-step");
    let mut table = String::from(
        "/// Built-in steps embedded in the binary: (name, component bytes).\npub static BUILTIN_STEPS: &[(&str, &[u8])] = &[\n",
    );
    for (_, stem, name) in BUILTIN {
        let path = artifact(&out_dir, stem)?;
        table.push_str(&format!("    ({name:?}, include_bytes!({:?})),\n", path.display().to_string()));
    }
    table.push_str("];\n");
    std::fs::write(PathBuf::from(std::env::var("OUT_DIR")?).join("builtin_steps.rs"), table)?;
    for (_, stem, env) in TEST_GUESTS {
        println!("cargo:rustc-env=SKIFF_TEST_GUEST_{env}={}", artifact(&out_dir, stem)?.display());
    }
    Ok(())
}

fn artifact(dir: &Path, stem: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{stem}.wasm"));
    anyhow::ensure!(path.exists(), "the build did not produce {}", path.display());
    Ok(path)
}
