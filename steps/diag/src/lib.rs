//! `diag`: the smallest useful step. It writes a file into the workspace,
//! reports its inputs, granted secret names and environment, and can fetch a
//! URL, so that every capability of the runtime is exercised end to end.

use skiff_step_sdk::http::Request;
use skiff_step_sdk::{Context, Manifest, Outputs, Step, StepError, info, log};

struct Diag;

impl Step for Diag {
    fn describe() -> Manifest {
        Manifest::new("diag", "Writes a file into the workspace and reports what the step was given.")
            .input("message", "Text written to the file", false, Some("hello from skiff"))
            .input("file", "Workspace path of the file to write", false, Some("skiff-diag.txt"))
            .input("fetch", "A URL to GET; its status becomes an output", false, None)
            .input("fail", "When `true`, the step fails on purpose", false, Some("false"))
            .output("message", "The message written")
            .output("file", "The path written")
            .output("bytes", "How many bytes were written")
            .output("inputs", "The input names, comma-separated")
            .output("env", "The environment variable names the step sees, comma-separated")
            .output("secrets", "The granted secret names, comma-separated")
            .output("status", "The HTTP status of `fetch`")
            .host("${inputs.fetch}")
    }

    fn run(ctx: Context) -> Result<Outputs, StepError> {
        let file = ctx.input_or("file", "skiff-diag.txt").to_string();
        let message = ctx.input_or("message", "hello from skiff");
        let text = format!("{message}\nrun={} step={}\n", ctx.run_id, ctx.step_id);
        std::fs::write(&file, &text).map_err(|e| StepError::failed(format!("cannot write `{file}`: {e}")))?;
        info!("wrote {} bytes to {file}", text.len());

        let inputs: Vec<&str> = ctx.inputs.keys().map(String::as_str).collect();
        let mut env: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
        env.sort();
        let secrets = skiff_step_sdk::secret_names();
        let mut out = Outputs::new()
            .set("message", message)
            .set("file", &file)
            .set("bytes", text.len().to_string())
            .set("inputs", inputs.join(","))
            .set("env", env.join(","))
            .set("secrets", secrets.join(","));

        if let Some(url) = ctx.input("fetch").filter(|u| !u.is_empty()) {
            let resp = Request::get(url).send()?;
            info!("GET {url} -> {}", resp.status);
            out.insert("status", resp.status.to_string());
        }
        log::summary(&format!("**diag** wrote `{file}` ({} bytes)", text.len()));
        if ctx.input("fail") == Some("true") {
            return Err(StepError::Failed("failing on purpose because input `fail` is `true`".into()));
        }
        Ok(out)
    }
}

skiff_step_sdk::export!(Diag);
