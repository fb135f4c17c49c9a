//! Serverless-cd compatibility: its npm plugins mapped to Skiff's built-in steps, and the
//! compatibility mode that keeps its network default.

use std::path::Path;

use crate::model::CompatDef;

/// A compatibility mode: what a pipeline written for another CI is given that a Skiff
/// pipeline is not. Shown at the top of the plan, and beside every grant it implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compat {
    /// Serverless-cd: `run:` steps without `permissions:` have the network.
    ServerlessCd,
}

impl Compat {
    /// The mode of a pipeline: its `compat:`, else `serverless-cd` for a file named
    /// `serverless-pipeline.yaml` (or `.yml`).
    pub fn of(file: &str, written: Option<CompatDef>) -> Option<Compat> {
        match written {
            Some(CompatDef::ServerlessCd) => Some(Compat::ServerlessCd),
            Some(CompatDef::None) => None,
            None => Path::new(file)
                .file_name()
                .is_some_and(|n| n == "serverless-pipeline.yaml" || n == "serverless-pipeline.yml")
                .then_some(Compat::ServerlessCd),
        }
    }

    /// Its name, as `compat:` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Compat::ServerlessCd => "serverless-cd",
        }
    }

    /// What the mode grants, in a sentence.
    pub fn network_default(self) -> &'static str {
        match self {
            Compat::ServerlessCd => {
                "Serverless-cd compatibility runs `run:` steps without `permissions:` with the network"
            }
        }
    }
}

/// The built-in step names, and what `uses:` may name without a path.
pub const BUILTINS: &[&str] = &[
    "diag",
    "shell",
    "checkout",
    "notify",
    "upload",
    "script",
    "cache",
    "download",
    "cloudflare-deploy",
    "spin-push",
    "spin-deploy",
];

/// A Serverless-cd plugin resolved to a built-in step and inputs it implies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The built-in step.
    pub builtin: &'static str,
    /// Inputs added unless the step sets them (`provider: dingtalk`).
    pub inputs: &'static [(&'static str, &'static str)],
    /// Hosts granted because the pipeline names them in an input (`${inputs.webhook}`):
    /// Serverless-cd pipelines have no `permissions`, and the webhook the user wrote
    /// is the only place such a plugin talks to.
    pub hosts: &'static [&'static str],
}

/// Maps a `plugin:` name (with or without a `@version`) to its built-in step.
pub fn map_plugin(plugin: &str) -> Result<Mapped, String> {
    let name = strip_version(plugin.trim());
    let m = |builtin, inputs| Ok(Mapped { builtin, inputs, hosts: &[] });
    let notify = |inputs| Ok(Mapped { builtin: "notify", inputs, hosts: &["${inputs.webhook}"] });
    match name {
        // Its pipelines grant nothing: the forges' archive hosts (GitHub redirects its API to
        // codeload) and a self-hosted forge the step is pointed at are what a checkout needs.
        "@serverless-cd/checkout" => Ok(Mapped {
            builtin: "checkout",
            inputs: &[],
            hosts: &[
                "api.github.com",
                "codeload.github.com",
                "gitlab.com",
                "gitee.com",
                "codeup.aliyun.com",
                "${inputs.api-url}",
                "${inputs.server}",
            ],
        }),
        "@serverless-cd/ding-talk" | "@serverless-cd/dingtalk" | "@serverless-cd/dingding" => {
            notify(&[("provider", "dingtalk")])
        }
        "@serverless-cd/wechat" | "@serverless-cd/wecom" | "@serverless-cd/wechat-work" => {
            notify(&[("provider", "wecom")])
        }
        "@serverless-cd/oss" | "@serverless-cd/oss-upload" => m("upload", &[("provider", "oss")]),
        "@serverless-cd/s-setup" | "@serverless-cd/s-deploy" => Err(format!(
            "plugin `{plugin}` has no Skiff equivalent: use a `run:` step with `s` installed (for example `run: s deploy -y`) and grant it `permissions: {{ process: true, network: true }}`"
        )),
        "@serverless-cd/setup-runtime" | "@serverless-cd/setup-node" => Err(format!(
            "plugin `{plugin}` has no Skiff equivalent: use a `run:` step with the runtime installed on the host"
        )),
        // Its `key` and `path` (one folder) are the built-in step's; entries are kept by the host
        // per app and branch instead of in an OSS bucket, and saved at the end of a job that
        // succeeded without an exact hit (the plugin pushed after every run).
        "@serverless-cd/cache" => m("cache", &[]),
        _ => Err(format!(
            "unknown plugin `{plugin}`; Skiff maps @serverless-cd/checkout, @serverless-cd/ding-talk, @serverless-cd/wechat, @serverless-cd/wecom, @serverless-cd/oss, @serverless-cd/oss-upload and @serverless-cd/cache; for anything else use `uses:` with a component or a `run:` step"
        )),
    }
}

fn strip_version(name: &str) -> &str {
    // `@scope/name@1.2.3`: the version is after the second `@`.
    match name.char_indices().skip(1).find(|(_, c)| *c == '@') {
        Some((i, _)) => &name[..i],
        None => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_known_plugins_and_explains_the_rest() {
        let checkout = map_plugin("@serverless-cd/checkout@0.0.10").unwrap();
        assert_eq!(checkout.builtin, "checkout");
        assert!(checkout.hosts.contains(&"api.github.com") && checkout.hosts.contains(&"codeload.github.com"));
        assert_eq!(map_plugin("@serverless-cd/ding-talk").unwrap().inputs, &[("provider", "dingtalk")]);
        assert_eq!(map_plugin("@serverless-cd/oss-upload").unwrap().builtin, "upload");
        let cache = map_plugin("@serverless-cd/cache@0.0.9").unwrap();
        assert_eq!((cache.builtin, cache.inputs, cache.hosts), ("cache", &[][..], &[][..]));
        assert!(map_plugin("@serverless-cd/s-setup").unwrap_err().contains("use a `run:` step with `s` installed"));
        assert!(map_plugin("left-pad").unwrap_err().starts_with("unknown plugin"));
    }
}
