//! A *locked app* (Spin's `spin.lock` JSON, as `spin registry push` stores it in a registry)
//! read into the same [`Manifest`] `spin.toml` gives, for `skiff edge up --from REF`. Component
//! sources are layer digests; the caller says where each pulled layer is on disk.
//!
//! What `skiff edge up` would not enforce (static files, SQLite, AI models, non-HTTP triggers,
//! component dependencies) is refused, as it is in a `spin.toml`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::manifest::{Component, Manifest, Route, Variable};

#[derive(Debug, Deserialize)]
struct Locked {
    #[serde(default)]
    must_understand: Vec<String>,
    #[serde(default)]
    metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    variables: BTreeMap<String, LockedVariable>,
    triggers: Vec<LockedTrigger>,
    components: Vec<LockedComponent>,
}

#[derive(Debug, Deserialize)]
struct LockedVariable {
    default: Option<String>,
    #[serde(default)]
    secret: bool,
}

#[derive(Debug, Deserialize)]
struct LockedTrigger {
    trigger_type: String,
    trigger_config: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct LockedComponent {
    id: String,
    #[serde(default)]
    metadata: ComponentMetadata,
    source: ContentRef,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    files: Vec<serde_json::Value>,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    dependencies: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
struct ComponentMetadata {
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    key_value_stores: Vec<String>,
    #[serde(default)]
    databases: Vec<String>,
    #[serde(default)]
    ai_models: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ContentRef {
    digest: Option<String>,
}

/// The layer digests a locked app's components are read from, in order.
pub fn component_digests(json: &[u8]) -> anyhow::Result<Vec<String>> {
    let locked: Locked = serde_json::from_slice(json).context("the locked app is not Spin's spin.lock JSON")?;
    locked
        .components
        .iter()
        .map(|c| c.source.digest.clone().with_context(|| format!("component `{}` names no source digest", c.id)))
        .collect()
}

/// Reads a locked app; `source` gives the file a component's layer (by digest) was pulled to.
pub fn manifest(json: &[u8], source: &dyn Fn(&str) -> Option<PathBuf>) -> anyhow::Result<Manifest> {
    let locked: Locked = serde_json::from_slice(json).context("the locked app is not Spin's spin.lock JSON")?;
    if let Some(m) = locked.must_understand.first() {
        bail!("the application requires `{m}`, which `skiff edge up` does not provide");
    }
    let name = locked.metadata.get("name").and_then(|n| n.as_str()).unwrap_or("spin-app").to_string();
    let mut routes = Vec::new();
    for t in &locked.triggers {
        if t.trigger_type != "http" {
            bail!("the application has a `{}` trigger; `skiff edge up` serves HTTP triggers only", t.trigger_type);
        }
        let route = t.trigger_config["route"].as_str().with_context(|| {
            format!("an HTTP trigger has no string `route` (private routes are not served): {}", t.trigger_config)
        })?;
        let component = t.trigger_config["component"].as_str().context("an HTTP trigger names no component")?;
        routes.push(Route { route: route.to_string(), component: component.to_string() });
    }
    let mut components = BTreeMap::new();
    for c in locked.components {
        let refuse = |what: &str| format!("component `{}` uses {what}, which `skiff edge up` does not serve", c.id);
        if !c.files.is_empty() {
            bail!(refuse("static files"));
        }
        if !c.metadata.databases.is_empty() {
            bail!(refuse("SQLite databases"));
        }
        if !c.metadata.ai_models.is_empty() {
            bail!(refuse("AI models"));
        }
        if !c.dependencies.is_empty() {
            bail!(refuse("component dependencies"));
        }
        let digest =
            c.source.digest.as_deref().with_context(|| format!("component `{}` names no source digest", c.id))?;
        let path = source(digest).with_context(|| format!("component `{}`: layer {digest} was not pulled", c.id))?;
        let component = Component {
            id: c.id.clone(),
            source: path,
            allowed_outbound_hosts: c.metadata.allowed_outbound_hosts,
            key_value_stores: c.metadata.key_value_stores,
            environment: c.env,
            variables: c.config,
        };
        if components.insert(c.id.clone(), component).is_some() {
            bail!("component `{}` is defined twice", c.id);
        }
    }
    let variables = locked
        .variables
        .into_iter()
        .map(|(k, v)| {
            // A locked variable without a default is required.
            let required = v.default.is_none();
            (k, Variable { default: v.default, required, secret: v.secret })
        })
        .collect();
    Manifest::checked(name, variables, routes, components)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCKED: &str = r#"{
      "spin_lock_version": 0,
      "metadata": { "name": "edge", "authors": [] },
      "variables": { "host_url": {}, "key": { "secret": true }, "greeting": { "default": "hi" } },
      "triggers": [ { "id": "t", "trigger_type": "http", "trigger_config": { "route": "/...", "component": "c" } } ],
      "components": [ {
        "id": "c",
        "metadata": { "allowed_outbound_hosts": ["{{ host_url }}"], "key_value_stores": ["default"] },
        "source": { "content_type": "application/wasm", "digest": "sha256:aa" },
        "config": { "host_url": "{{ host_url }}" }
      } ]
    }"#;

    fn pulled(d: &str) -> Option<PathBuf> {
        (d == "sha256:aa").then(|| PathBuf::from("/cache/aa.wasm"))
    }

    #[test]
    fn a_locked_app_reads_as_its_manifest_would() {
        let m = manifest(LOCKED.as_bytes(), &pulled).unwrap();
        assert_eq!(m.name, "edge");
        assert_eq!(m.components["c"].source, PathBuf::from("/cache/aa.wasm"));
        assert!(m.variables["host_url"].required && m.variables["key"].secret && !m.variables["greeting"].required);
        assert!(m.route("/hooks/web").is_some());
        assert_eq!(component_digests(LOCKED.as_bytes()).unwrap(), ["sha256:aa"]);
    }

    #[test]
    fn what_edge_up_would_not_enforce_is_refused() {
        let files = LOCKED.replace(r#""config""#, r#""files": [{"inline": "aGk=", "path": "/a"}], "config""#);
        assert!(format!("{:#}", manifest(files.as_bytes(), &pulled).unwrap_err()).contains("static files"));
        let redis = LOCKED.replace(r#""trigger_type": "http""#, r#""trigger_type": "redis""#);
        assert!(format!("{:#}", manifest(redis.as_bytes(), &pulled).unwrap_err()).contains("HTTP triggers only"));
        let undeclared = LOCKED.replace(r#""{{ host_url }}" }"#, r#""{{ other }}" }"#);
        assert!(format!("{:#}", manifest(undeclared.as_bytes(), &pulled).unwrap_err()).contains("`other`"));
        let missing = LOCKED.replace("sha256:aa", "sha256:bb");
        assert!(format!("{:#}", manifest(missing.as_bytes(), &pulled).unwrap_err()).contains("was not pulled"));
        assert!(manifest(b"{}", &pulled).is_err());
    }
}
