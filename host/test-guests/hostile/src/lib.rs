//! A hostile step: each `attack` input tries one way out of the sandbox.
//! The host's tests run every attack and check that it is contained.

use skiff_step_sdk::http::Request;
use skiff_step_sdk::{Context, Manifest, Outputs, Step, StepError, info};

struct Hostile;

fn read(path: &str) -> Result<Outputs, StepError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Outputs::new().set("leaked", text)),
        Err(e) => Err(StepError::Failed(format!("cannot read `{path}`: {e}"))),
    }
}

/// Recursion whose frames live on wasm's own stack.
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    std::hint::black_box(recurse(std::hint::black_box(depth + 1))) + 1
}

/// Recursion whose frames live in linear memory (the shadow stack).
#[allow(unconditional_recursion)]
fn recurse_shadow(depth: u64, pad: [u64; 16]) -> u64 {
    let mut next = pad;
    next[(depth % 16) as usize] = depth;
    recurse_shadow(depth + 1, std::hint::black_box(next)) + next[0]
}

impl Step for Hostile {
    fn describe() -> Manifest {
        Manifest::new("hostile", "Attacks its sandbox.").input("attack", "Which attack", true, None)
    }

    fn run(ctx: Context) -> Result<Outputs, StepError> {
        let attack = ctx.required("attack")?.to_string();
        let arg = ctx.input_or("arg", "").to_string();
        match attack.as_str() {
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 8 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recurse" => Ok(Outputs::new().set("n", recurse(0).to_string())),
            "recurse-shadow" => Ok(Outputs::new().set("n", recurse_shadow(0, [0; 16]).to_string())),
            "read" => read(&arg),
            "symlink" => {
                // Plant a link to the host's files, then follow it.
                let _ = std::fs::remove_file("escape");
                let preopens = wasip2::filesystem::preopens::get_directories();
                let (dir, _) = preopens.iter().find(|(_, p)| p == ".").ok_or(StepError::failed("no workspace"))?;
                if let Err(e) = dir.symlink_at(&arg, "escape") {
                    return Err(StepError::Failed(format!("cannot create symlink to `{arg}`: {e:?}")));
                }
                read("escape")
            }
            "write" => std::fs::write(&arg, "owned")
                .map(|()| Outputs::new().set("wrote", &arg))
                .map_err(|e| StepError::Failed(format!("cannot write `{arg}`: {e}"))),
            "list" => match std::fs::read_dir(&arg) {
                Ok(dir) => Ok(Outputs::new().set(
                    "entries",
                    dir.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(","),
                )),
                Err(e) => Err(StepError::Failed(format!("cannot list `{arg}`: {e}"))),
            },
            "http" => {
                let resp = Request::get(&arg).send()?;
                Ok(Outputs::new().set("status", resp.status.to_string()).set("body", resp.text()))
            }
            "env" => Ok(Outputs::new()
                .set("env", std::env::vars().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("\n"))),
            "flood" => {
                let line = "x".repeat(1023);
                loop {
                    info!("{line}");
                }
            }
            "flood-stdout" => {
                let line = "y".repeat(1023);
                loop {
                    println!("{line}");
                }
            }
            "print-secret" => {
                let value = skiff_step_sdk::secret(&arg).unwrap_or_default();
                info!("the secret is {value} (log)");
                println!("stdout sees {value}!");
                eprintln!("stderr sees:{value}");
                Ok(Outputs::new().set("echo", format!("out:{value}")))
            }
            "secret-not-granted" => match skiff_step_sdk::secret(&arg) {
                Some(v) => Ok(Outputs::new().set("leaked", v)),
                None => Err(StepError::Denied(format!("secret `{arg}` was not granted"))),
            },
            "process" => skiff_step_sdk::process::Command::new("/bin/true")
                .run()
                .map(|o| Outputs::new().set("exit", format!("{:?}", o.exit)))
                .map_err(|e| StepError::Denied(e.to_string())),
            "panic" => panic!("hostile guest panics on purpose"),
            // Steers later steps without the process grant: a cleanup script and `BASH_ENV`.
            "steer" => Ok(Outputs::new()
                .set("skiff.post", "touch /workspace/PWNED")
                .set("skiff.env.BASH_ENV", "/workspace/evil.sh")),
            // An output of `arg` mebibytes.
            "big-output" => Ok(Outputs::new().set("big", "x".repeat(arg.parse::<usize>().unwrap_or(2) << 20))),
            // Not attacks: a trivial step and an idle one, for benchmarks.
            "noop" => Ok(Outputs::new()),
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(arg.parse().unwrap_or(1000)));
                Ok(Outputs::new())
            }
            other => Err(StepError::InvalidInput(format!("unknown attack `{other}`"))),
        }
    }
}

skiff_step_sdk::export!(Hostile);
