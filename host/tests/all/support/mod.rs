//! What the host's tests share: the scripted step executor ([`Scripted`]) and the snapshot
//! settings, with every filter defined here, once.
//!
//! # Snapshots
//!
//! [`snapshot!`] and [`json_snapshot!`] compare CLI output and API bodies with files under
//! `tests/all/snapshots/`, after [`filters`] replaced what changes from run to run (times,
//! durations, run ids, temporary and repository paths). A mismatch, or a snapshot that does
//! not exist yet, fails the test. Locally insta also writes the new value beside the old one
//! as `*.snap.new`; under `CI=true` (as `.ci/run` runs) it writes nothing, as with
//! `INSTA_UPDATE=no`.
//!
//! To update them after a deliberate change, rerun the tests that failed with
//! `INSTA_UPDATE=always` (it rewrites the `.snap` files in place), then read the diff before
//! committing it:
//!
//! ```text
//! INSTA_UPDATE=always cargo nextest run -p skiff -E 'test(/snapshot/)'
//! git diff host/tests/all/snapshots/
//! ```
//!
//! (`cargo insta review` does the same interactively where cargo-insta is installed.)

use std::path::Path;
use std::process::Command;

mod executor;
pub mod wasm;

pub use executor::Scripted;

/// The filters every snapshot goes through, in order: a regex and what replaces each match.
pub fn filters() -> Vec<(String, String)> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut f = vec![(escape(&repo.display().to_string()), "[REPO]".to_string())];
    // A temporary folder's name is random: the folder and its name become `[TEMP]`.
    let tmp = std::env::temp_dir();
    let mut tmps = vec![tmp.clone()];
    tmps.extend(tmp.canonicalize().ok().filter(|c| *c != tmp));
    for t in tmps {
        let t = t.display().to_string();
        f.push((format!(r"{}/[^\s/:\x22']+", escape(t.trim_end_matches('/'))), "[TEMP]".into()));
    }
    for (re, with) in [
        // RFC 3339 times, as logs and JSON write them.
        (r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})?", "[TIME]"),
        // Times and durations in JSON: `started_at` and a log line's `ts` (unix time), `duration_ms`,
        // `wall_ms`, `cpu_ms`.
        (r#""(ts|\w+_at)": \d+"#, r#""$1": "[TIME]""#),
        (r#""(\w+_ms)": \d+"#, r#""$1": "[DURATION]""#),
        // Durations as people read them: `173ms`, `1.2s`.
        (r"\b\d+(\.\d+)?(ms|s)\b", "[DURATION]"),
        // A local run's id is its start time and the process id.
        (r"\blocal-\d+-\d+\b", "local-[ID]"),
        // Sizes of what holds a run id (`diag` writes it into its file), whose length varies.
        (r"\b\d+ bytes\b", "[SIZE] bytes"),
    ] {
        f.push((re.into(), with.into()));
    }
    f
}

/// `s` as a regex that matches it literally.
fn escape(s: &str) -> String {
    s.chars().fold(String::new(), |mut out, c| {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

/// insta's settings with [`filters`]; the snapshots stay beside the test file, in `snapshots/`.
pub fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    for (re, with) in filters() {
        s.add_filter(&re, with);
    }
    s.set_omit_expression(true);
    s
}

/// What a command did, as a snapshot shows it: whether it succeeded, its exit code, then its
/// standard output and standard error, each whole.
pub fn output_of(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running the command");
    format!(
        "success: {}\nexit_code: {}\n----- stdout -----\n{}\n----- stderr -----\n{}",
        out.status.success(),
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    )
}

/// `insta::assert_snapshot!(name, text)` with [`settings`].
macro_rules! snapshot {
    ($name:expr, $value:expr $(,)?) => {
        $crate::support::settings().bind(|| insta::assert_snapshot!($name, $value))
    };
}

/// `insta::assert_json_snapshot!(name, value)` with [`settings`].
macro_rules! json_snapshot {
    ($name:expr, $value:expr $(,)?) => {
        $crate::support::settings().bind(|| insta::assert_json_snapshot!($name, $value))
    };
}

pub(crate) use {json_snapshot, snapshot};

/// Starts a manual run of `app` through a server's API and waits (up to 30 s) until it ends;
/// returns the run as the API shows it.
pub async fn manual_run(http: &reqwest::Client, base: &str, token: &str, app: &str) -> serde_json::Value {
    let started: serde_json::Value = http
        .post(format!("{base}/v1/apps/{app}/runs"))
        .bearer_auth(token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = started["id"].as_i64().unwrap_or_else(|| panic!("{started}"));
    finished(http, base, token, id).await
}

/// Waits (up to 30 s) until run `id` ends; returns it as the API shows it.
pub async fn finished(http: &reqwest::Client, base: &str, token: &str, id: i64) -> serde_json::Value {
    for _ in 0..600 {
        let run: serde_json::Value =
            http.get(format!("{base}/v1/runs/{id}")).bearer_auth(token).send().await.unwrap().json().await.unwrap();
        if matches!(run["status"].as_str(), Some("success" | "failure" | "cancelled" | "skipped")) {
            return run;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("run {id} did not finish");
}

/// A browser-less session of the web console: signed in with a token through the sign-in form
/// (its cookie and CSRF field), as a browser does.
pub struct Console {
    http: reqwest::Client,
    base: String,
    session: String,
}

impl Console {
    pub async fn sign_in(base: &str, token: &str) -> Self {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let cookie = |resp: &reqwest::Response, name: &str| {
            resp.headers()
                .get_all("set-cookie")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|v| v.strip_prefix(&format!("{name}=")).map(|v| v.split(';').next().unwrap().to_string()))
                .unwrap_or_else(|| panic!("no {name} cookie"))
        };
        let form = http.get(format!("{base}/sign-in")).send().await.unwrap();
        let pre = cookie(&form, "skiff_signin");
        let signed = http
            .post(format!("{base}/sign-in"))
            .header("cookie", format!("skiff_signin={pre}"))
            .form(&[("csrf", pre.as_str()), ("next", "/"), ("token", token)])
            .send()
            .await
            .unwrap();
        let session = format!("skiff_session={}", cookie(&signed, "skiff_session"));
        Console { http, base: base.to_string(), session }
    }

    /// A page's HTML.
    pub async fn get(&self, path: &str) -> String {
        let resp = self.http.get(format!("{}{path}", self.base)).header("cookie", &self.session).send().await.unwrap();
        resp.text().await.unwrap()
    }

    /// Posts a form of `page` (its CSRF field added) to `path`; the status.
    pub async fn post(&self, page: &str, path: &str, fields: &[(&str, &str)]) -> u16 {
        const FIELD: &str = "name=\"csrf\" value=\"";
        let at = page.find(FIELD).expect("a form with its CSRF field") + FIELD.len();
        let csrf = &page[at..at + 64];
        let mut form = vec![("csrf", csrf)];
        form.extend_from_slice(fields);
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.session)
            .form(&form)
            .send()
            .await
            .unwrap();
        resp.status().as_u16()
    }
}
