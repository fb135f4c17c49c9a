//! `shell`: the built-in step behind `run:`.
//!
//! It writes the script into the workspace under `.skiff/tmp/<step-id>/`, runs it
//! through the host's process sandbox (where the workspace is `/workspace`) with
//! the step's declared environment plus `SKIFF_OUTPUT`, `SKIFF_ENV`, `SKIFF_PATH`
//! and `SKIFF_WORKSPACE`, and turns what the script wrote into those files into
//! outputs, as GitHub Actions does with `$GITHUB_OUTPUT` and friends.
//!
//! Environment updates come back as outputs named `skiff.env.NAME`, `PATH`
//! additions as one output `skiff.path` (newline-separated); the executor takes
//! these reserved names out before anyone sees the outputs.

pub mod files;

use skiff_step_sdk::process::{Command, Error as ProcessError, Exit};
use skiff_step_sdk::{Context, Manifest, Outputs, Step, StepError};

/// Where the workspace is inside the process sandbox.
const SANDBOX_WORKSPACE: &str = "/workspace";
/// The most each file may hold. The host checks each value and the job's whole environment
/// (docs/pipeline.md, "Limits"); these only spare the step from reading what cannot pass.
const OUTPUT_FILE_MAX: u64 = 4 << 20;
const ENV_FILE_MAX: u64 = 1 << 20;
const PATH_FILE_MAX: u64 = 64 << 10;
/// Output names with this prefix are the executor's, never the script's.
const RESERVED_PREFIX: &str = "skiff.";

/// How to run a script: the program and its arguments, `{0}` standing for the script path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellCommand {
    pub program: String,
    pub args: Vec<String>,
    /// The script file's extension (some interpreters care).
    pub extension: &'static str,
}

/// The `shell:` value as a command, like GitHub's: `bash` (the default) is
/// `bash --noprofile --norc -eo pipefail {0}`, `sh` is `sh -e {0}`, `python` is
/// `python3 {0}`; anything else is a command line containing `{0}`.
pub fn shell_command(shell: &str) -> Result<ShellCommand, String> {
    let words = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let (line, extension) = match shell.trim() {
        "" | "bash" => ("bash --noprofile --norc -eo pipefail {0}", "sh"),
        "sh" => ("sh -e {0}", "sh"),
        "python" | "python3" => ("python3 {0}", "py"),
        "node" => ("node {0}", "js"),
        "pwsh" => ("pwsh -NoLogo -NoProfile -NonInteractive -File {0}", "ps1"),
        custom if custom.contains("{0}") => (custom, "sh"),
        other => {
            return Err(format!(
                "shell `{other}` is not known: use bash, sh, python, node, pwsh, or a command line with `{{0}}` for the script, \
                 like `perl {{0}}`"
            ));
        }
    };
    let mut all = words(line);
    let program = all.remove(0);
    if program == "{0}" {
        return Err("the shell command must start with a program, not `{0}`".into());
    }
    Ok(ShellCommand { program, args: all, extension })
}

/// A step id made safe as one path component.
fn safe_component(id: &str) -> String {
    let s: String =
        id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if s.is_empty() { "step".into() } else { s }
}

/// Turns what the script wrote into the step's outputs (reserved names included).
pub fn collect_outputs(output: &str, env: &str, path: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (k, v) in files::parse_key_values(output).map_err(|e| format!("SKIFF_OUTPUT {e}"))? {
        if k.starts_with(RESERVED_PREFIX) {
            return Err(format!("SKIFF_OUTPUT sets `{k}`: output names starting with `skiff.` are reserved"));
        }
        out.push((k, v));
    }
    for (k, v) in files::parse_key_values(env).map_err(|e| format!("SKIFF_ENV {e}"))? {
        if k.contains('\0') || k.contains(char::is_whitespace) {
            return Err(format!("SKIFF_ENV sets `{k}`, which is not a valid environment variable name"));
        }
        out.push((format!("{RESERVED_PREFIX}env.{k}"), v));
    }
    let dirs = files::parse_path(path);
    if !dirs.is_empty() {
        out.push((format!("{RESERVED_PREFIX}path"), dirs.join("\n")));
    }
    Ok(out)
}

struct Shell;

impl Step for Shell {
    fn describe() -> Manifest {
        Manifest::new("shell", "Runs a script (`run:`) in the host's process sandbox.")
            .input("script", "The script to run", true, None)
            .input(
                "shell",
                "bash (default), sh, python, node, pwsh, or a command line with {0} for the script",
                false,
                Some("bash"),
            )
            .input("working-directory", "Where the script runs, relative to the workspace", false, None)
            .process()
    }

    fn run(ctx: Context) -> Result<Outputs, StepError> {
        let script = ctx.required("script")?;
        let shell = shell_command(ctx.input_or("shell", "bash")).map_err(StepError::InvalidInput)?;

        let dir_rel = format!(".skiff/tmp/{}", safe_component(&ctx.step_id));
        std::fs::create_dir_all(&dir_rel).map_err(|e| StepError::failed(format!("cannot create `{dir_rel}`: {e}")))?;
        let write = |name: &str, content: &str| {
            let path = format!("{dir_rel}/{name}");
            std::fs::write(&path, content).map_err(|e| StepError::failed(format!("cannot write `{path}`: {e}")))
        };
        let script_name = format!("script.{}", shell.extension);
        write(&script_name, script)?;
        for name in ["output", "env", "path"] {
            write(name, "")?;
        }

        let dir_abs = format!("{SANDBOX_WORKSPACE}/{dir_rel}");
        let script_abs = format!("{dir_abs}/{script_name}");
        let mut cmd = Command::new(&shell.program).args(shell.args.iter().map(|a| a.replace("{0}", &script_abs)));
        for (k, v) in std::env::vars() {
            cmd = cmd.env(k, v);
        }
        cmd = cmd
            .env("SKIFF_WORKSPACE", SANDBOX_WORKSPACE)
            .env("SKIFF_OUTPUT", format!("{dir_abs}/output"))
            .env("SKIFF_ENV", format!("{dir_abs}/env"))
            .env("SKIFF_PATH", format!("{dir_abs}/path"));
        if let Some(wd) = ctx.input("working-directory").filter(|w| !w.is_empty()) {
            cmd = cmd.cwd(wd);
        }

        let outcome = cmd.run().map_err(|e| match e {
            ProcessError::Denied(m) => StepError::Denied(m),
            ProcessError::Invalid(m) => StepError::InvalidInput(m),
            ProcessError::Unavailable(m) | ProcessError::SpawnFailed(m) => StepError::Failed(m),
        })?;
        let read = |name: &str, var: &str, cap: u64| -> Result<String, String> {
            let path = format!("{dir_rel}/{name}");
            // The script may have removed or replaced the file: nothing written is nothing read.
            let Ok(meta) = std::fs::symlink_metadata(&path) else { return Ok(String::new()) };
            if !meta.is_file() {
                return Err(format!("${var} is no longer a regular file; write to it, do not replace it"));
            }
            if meta.len() > cap {
                return Err(format!(
                    "${var} holds {} bytes, over the limit of {cap} bytes; put large data in a file in the \
                     workspace and pass its path",
                    meta.len()
                ));
            }
            let bytes = std::fs::read(&path).map_err(|e| format!("cannot read ${var}: {e}"))?;
            String::from_utf8(bytes).map_err(|_| format!("${var} is not UTF-8 text"))
        };
        let files = (|| {
            Ok::<_, String>((
                read("output", "SKIFF_OUTPUT", OUTPUT_FILE_MAX)?,
                read("env", "SKIFF_ENV", ENV_FILE_MAX)?,
                read("path", "SKIFF_PATH", PATH_FILE_MAX)?,
            ))
        })();
        // The script and its files are ours, not the workspace's: later steps should not see them.
        let _ = std::fs::remove_dir_all(&dir_rel);
        match outcome.exit {
            Exit::Code(0) => {}
            Exit::Code(n) => return Err(StepError::Failed(format!("`run` script exited with code {n}"))),
            Exit::Signal(s) => return Err(StepError::Failed(format!("`run` script was killed by signal {s}"))),
            Exit::TimedOut => return Err(StepError::Failed("`run` script timed out and was stopped".into())),
        }

        let (output, env, path) = files.map_err(StepError::Failed)?;
        let pairs = collect_outputs(&output, &env, &path).map_err(StepError::Failed)?;
        let mut outputs = Outputs::new();
        for (k, v) in pairs {
            outputs.insert(k, v);
        }
        Ok(outputs)
    }
}

skiff_step_sdk::export!(Shell);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shells() {
        let bash = shell_command("bash").unwrap();
        assert_eq!(bash.program, "bash");
        assert_eq!(bash.args, ["--noprofile", "--norc", "-eo", "pipefail", "{0}"]);
        assert_eq!(shell_command("").unwrap(), bash);
        assert_eq!(shell_command("sh").unwrap().args, ["-e", "{0}"]);
        assert_eq!(shell_command("python").unwrap().program, "python3");
        assert_eq!(shell_command("perl -w {0}").unwrap().args, ["-w", "{0}"]);
        assert!(shell_command("zsh").is_err());
        assert!(shell_command("{0}").is_err());
    }

    #[test]
    fn outputs_env_and_path() {
        let out = collect_outputs("a=1\nm<<E\nx\ny\nE\n", "FOO=bar\n", "/opt/bin\n/x\n").unwrap();
        assert_eq!(
            out,
            [
                ("a".to_string(), "1".to_string()),
                ("m".into(), "x\ny".into()),
                ("skiff.env.FOO".into(), "bar".into()),
                ("skiff.path".into(), "/opt/bin\n/x".into()),
            ]
        );
        assert!(collect_outputs("", "", "").unwrap().is_empty());
    }

    #[test]
    fn scripts_cannot_forge_reserved_outputs() {
        let e = collect_outputs("skiff.env.PATH=/evil\n", "", "").unwrap_err();
        assert!(e.contains("reserved"), "{e}");
        assert!(collect_outputs("", "bad=1\n", "").is_ok());
        assert!(collect_outputs("", "x<<E\nv\n", "").unwrap_err().starts_with("SKIFF_ENV line 1"));
    }

    #[test]
    fn step_ids_become_one_path_component() {
        assert_eq!(safe_component("build/../x"), "build____x");
        assert_eq!(safe_component(""), "step");
    }
}
