//! A complete step: greets someone, optionally posts the greeting to a webhook.
//!
//! ```sh
//! cargo build -p skiff-step-sdk --example hello --target wasm32-wasip2 --release
//! skiff step run target/wasm32-wasip2/release/examples/hello.wasm --with who=Ada
//! ```

use skiff_step_sdk::http::Request;
use skiff_step_sdk::{Context, Manifest, Outputs, Step, StepError, info, log};

struct Hello;

impl Step for Hello {
    fn describe() -> Manifest {
        Manifest::new("hello", "Greets someone, and posts the greeting to a webhook if given one.")
            .input("who", "Whom to greet", false, Some("world"))
            .input("webhook", "A URL to POST the greeting to", false, None)
            .output("greeting", "The greeting")
            .host("${inputs.webhook}")
    }

    fn run(ctx: Context) -> Result<Outputs, StepError> {
        let who = ctx.input_or("who", "world");
        let greeting = format!("hello, {who}");
        info!("{greeting}");
        if let Some(url) = ctx.input("webhook").filter(|u| !u.is_empty()) {
            let body = format!("{{\"text\":{greeting:?}}}");
            let resp = Request::post(url).header("content-type", "application/json").body(body.into_bytes()).send()?;
            if resp.status >= 400 {
                return Err(StepError::Failed(format!("the webhook answered {}: {}", resp.status, resp.text())));
            }
        }
        log::summary(&format!("Greeted **{who}**."));
        Ok(Outputs::new().set("greeting", greeting))
    }
}

skiff_step_sdk::export!(Hello);
