//! The `skiff` command line, run as a user runs it.

use std::process::Command;

const HOSTILE: &str = env!("SKIFF_TEST_GUEST_HOSTILE");

fn skiff(args: &[&str]) -> (i32, String) {
    // Shared by every test process: entries are written atomically, keyed by content.
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("skiff-cache");
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(args)
        .env("SKIFF_CACHE_DIR", cache)
        .output()
        .expect("running skiff");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn step_run_prints_the_log_then_the_outputs_and_exits_zero() {
    let ws = tempfile::tempdir().unwrap();
    let dir = ws.path().to_str().unwrap();
    let (code, out) = skiff(&["step", "run", "diag", "--with", "message=ahoy", "--dir", dir]);
    assert_eq!(code, 0, "{out}");
    let log_at = out.find("bytes to skiff-diag.txt").expect(&out);
    let outputs_at = out.find("── outputs ──").expect(&out);
    assert!(log_at < outputs_at, "{out}");
    assert!(out.contains("file=skiff-diag.txt"), "{out}");
    assert!(out.contains("── succeeded"), "{out}");
}

#[test]
fn step_run_exits_non_zero_with_the_reason() {
    let ws = tempfile::tempdir().unwrap();
    let dir = ws.path().to_str().unwrap();
    let (code, out) = skiff(&["step", "run", HOSTILE, "--with", "attack=loop", "--timeout", "1s", "--dir", dir]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("timed out after 1s"), "{out}");
    let (code, out) = skiff(&["step", "run", HOSTILE, "--with", "attack=alloc", "--memory", "32MiB", "--dir", dir]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("memory limit 32 MiB exceeded"), "{out}");
    let (code, out) = skiff(&["step", "run", HOSTILE, "--with", "attack=flood", "--log-limit", "64KiB", "--dir", dir]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("log limit 64 KiB reached"), "{out}");
}

#[test]
fn step_run_masks_secrets_in_log_and_outputs() {
    let ws = tempfile::tempdir().unwrap();
    let dir = ws.path().to_str().unwrap();
    let args = [
        "step",
        "run",
        HOSTILE,
        "--with",
        "attack=print-secret",
        "--with",
        "arg=K",
        "--secret",
        "K=pa55w0rd!x",
        "--dir",
        dir,
    ];
    let (code, out) = skiff(&args);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("pa55w0rd"), "{out}");
    assert!(out.contains("echo=out:***"), "{out}");
}

#[test]
fn step_inspect_prints_the_declaration() {
    let (code, out) = skiff(&["step", "inspect", "diag"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("diag 0.1.0"), "{out}");
    assert!(out.contains("hosts:   ${inputs.fetch}"), "{out}");
    let (code, out) = skiff(&["step", "inspect", "nope"]);
    assert_eq!(code, 2);
    assert!(out.contains("neither a built-in step"), "{out}");
}

#[test]
fn bad_arguments_say_what_to_fix() {
    let (code, out) = skiff(&["step", "run", "diag", "--with", "novalue"]);
    assert_eq!(code, 2);
    assert!(out.contains("--with `novalue` must be written KEY=VALUE"), "{out}");
    let (code, out) = skiff(&["step", "run", "diag", "--memory", "lots"]);
    assert_eq!(code, 2);
    assert!(out.contains("not a size"), "{out}");
}
