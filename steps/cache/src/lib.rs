//! `cache`: workspace paths kept between runs under a key, as `actions/cache` keeps them. The
//! step restores the entry of `key` (else the newest matching a `restore-keys` prefix) and, on
//! anything but an exact hit, asks to run again at the end of the job (`phase: save`), which
//! saves the paths under `key` if the job succeeded. The host archives and restores the files
//! (the `cache` interface); the step only says which.

use skiff_step_sdk::{Context, Manifest, Outputs, Step, StepError, cache, warn};

struct Cache;

/// One item per line, blank lines dropped.
fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
}

impl Step for Cache {
    fn describe() -> Manifest {
        Manifest::new(
            "cache",
            "Restores workspace paths from the app's cache by key; saves them at the end of the job.",
        )
        .input("key", "The key to restore and save under, e.g. `npm-${{ hashFiles('package-lock.json') }}`", true, None)
        .input("path", "Workspace paths to cache, one per line", true, None)
        .input(
            "restore-keys",
            "Key prefixes to restore from when `key` has no entry, one per line, in order",
            false,
            None,
        )
        .input("phase", "`restore` (then save at the end of the job), or `save` alone", false, Some("restore"))
        .output("cache-hit", "`true` when an entry of exactly `key` was restored")
        .output("cache-matched-key", "The key of the entry restored, empty on a miss")
        .output("cache-primary-key", "The key saved under")
        .output("saved", "`save` phase: `true` when an entry was saved")
    }

    fn run(ctx: Context) -> Result<Outputs, StepError> {
        let key = ctx.required("key")?.trim().to_string();
        let paths = lines(ctx.required("path")?);
        if paths.is_empty() {
            return Err(StepError::InvalidInput("input `path` names no path: give one workspace path per line".into()));
        }
        match ctx.input_or("phase", "restore") {
            "restore" => restore(&ctx, key, paths),
            // A cache is an optimisation: a save that cannot happen warns and never fails the job.
            "save" => Ok(match cache::save(&key, &paths) {
                Ok(0) => Outputs::new().set("saved", "false"),
                Ok(_) => Outputs::new().set("saved", "true"),
                Err(e) => {
                    warn!("the cache was not saved: {e}");
                    Outputs::new().set("saved", "false")
                }
            }),
            other => Err(StepError::InvalidInput(format!("input `phase` is `{other}`; use `restore` or `save`"))),
        }
    }
}

fn restore(ctx: &Context, key: String, paths: Vec<String>) -> Result<Outputs, StepError> {
    let restore_keys = lines(ctx.input_or("restore-keys", ""));
    let matched = cache::restore(&key, &restore_keys, &paths).map_err(StepError::Failed)?;
    let hit = matched.as_deref() == Some(key.as_str());
    let mut out = Outputs::new()
        .set("cache-hit", hit.to_string())
        .set("cache-matched-key", matched.clone().unwrap_or_default())
        .set("cache-primary-key", key.clone());
    if !hit {
        // Saved at the end of the job, only if it succeeded: a failed build's files are not kept.
        let post = serde_json::json!({"with": {"phase": "save", "key": key}, "if": "success"});
        out.insert("skiff.post-step", post.to_string());
    }
    Ok(out)
}

skiff_step_sdk::export!(Cache);
