//! The `{{name}}` step: greets someone and, given a webhook, posts the greeting to it.
//!
//! Build: `cargo build --target wasm32-wasip2 --release`
//! (the component is `target/wasm32-wasip2/release/{{crate}}.wasm`).

use skiff_step_sdk::http::Request;
use skiff_step_sdk::{Context, Manifest, Outputs, Step, StepError, info, log};

struct Greeter;

impl Step for Greeter {
    /// What the step takes, returns and asks for: `skiff step inspect` shows it, and a pipeline
    /// must grant the host and the secret before the step starts.
    fn describe() -> Manifest {
        Manifest::new(
            "{{name}}",
            "Greets someone, and posts the greeting to a webhook if given one.",
        )
        .version(env!("CARGO_PKG_VERSION"))
        .input("who", "Whom to greet", false, Some("world"))
        .input(
            "webhook",
            "A URL to POST the greeting to (its host must be granted)",
            false,
            None,
        )
        .output("greeting", "The greeting")
        .output(
            "status",
            "The webhook's HTTP status (empty without a webhook)",
        )
        .host("${inputs.webhook}")
        .secret("TOKEN")
    }

    fn run(ctx: Context) -> Result<Outputs, StepError> {
        let who = ctx.input_or("who", "world");
        let greeting = format!("hello, {who}");
        info!("{greeting}");
        let mut outputs = Outputs::new()
            .set("greeting", greeting.as_str())
            .set("status", "");
        if let Some(webhook) = ctx.input("webhook").filter(|w| !w.is_empty()) {
            let body = serde_json::json!({ "text": greeting, "from": "{{name}}" }).to_string();
            let mut request = Request::post(webhook).header("content-type", "application/json");
            // A secret is only ever handed to the step that was granted it; the host masks it
            // in every log line.
            if let Some(token) = skiff_step_sdk::secret("TOKEN") {
                request = request.header("authorization", &format!("Bearer {token}"));
            }
            let response = request.body(body.into_bytes()).send()?;
            info!(
                "the webhook answered {}: {}",
                response.status,
                response.text()
            );
            if response.status >= 400 {
                return Err(StepError::Failed(format!(
                    "the webhook answered {}",
                    response.status
                )));
            }
            outputs.insert("status", response.status.to_string());
        }
        log::summary(&format!("Greeted **{who}**."));
        Ok(outputs)
    }
}

skiff_step_sdk::export!(Greeter);
