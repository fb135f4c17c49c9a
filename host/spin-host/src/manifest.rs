//! The part of a Spin application manifest (`spin.toml`, version 2) that
//! `skiff edge up` honours: one HTTP component per route, its variables,
//! outbound hosts and key-value stores. Keys that would grant something we do
//! not enforce (files, SQLite, …) are refused rather than silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    spin_manifest_version: u32,
    application: RawApplication,
    #[serde(default)]
    variables: BTreeMap<String, RawVariable>,
    #[serde(default)]
    trigger: RawTriggers,
    #[serde(default)]
    component: BTreeMap<String, RawComponent>,
}

#[derive(Debug, Deserialize)]
struct RawApplication {
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariable {
    default: Option<String>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    secret: bool,
    #[allow(dead_code)]
    description: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawTriggers {
    #[serde(default)]
    http: Vec<RawHttpTrigger>,
}

#[derive(Debug, Deserialize)]
struct RawHttpTrigger {
    route: String,
    component: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    source: String,
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    key_value_stores: Vec<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    /// How to build the component; `skiff edge up` runs what is built.
    #[allow(dead_code)]
    build: Option<toml::Value>,
}

/// An application variable: a value given at start, else its default.
#[derive(Debug, Clone)]
pub struct Variable {
    pub default: Option<String>,
    pub required: bool,
    pub secret: bool,
}

/// The HTTP component a route leads to.
#[derive(Debug, Clone)]
pub struct Component {
    pub id: String,
    pub source: PathBuf,
    /// Templates such as `{{ host_url }}`, expanded once variables are known.
    pub allowed_outbound_hosts: Vec<String>,
    pub key_value_stores: Vec<String>,
    pub environment: BTreeMap<String, String>,
    /// Component variable → template over application variables.
    pub variables: BTreeMap<String, String>,
}

/// A route: `/hooks/...` matches the prefix, anything else matches exactly.
#[derive(Debug, Clone)]
pub struct Route {
    pub route: String,
    pub component: String,
}

impl Route {
    pub fn matches(&self, path: &str) -> bool {
        match self.route.strip_suffix("/...") {
            Some(prefix) => path == prefix || path.starts_with(&format!("{prefix}/")) || prefix.is_empty(),
            None => path == self.route,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Manifest {
    pub name: String,
    pub variables: BTreeMap<String, Variable>,
    pub routes: Vec<Route>,
    pub components: BTreeMap<String, Component>,
}

impl Manifest {
    /// Reads `spin.toml`; component sources are resolved against its folder.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text, path.parent().unwrap_or(Path::new(".")))
            .with_context(|| format!("{} is not a manifest `skiff edge up` can run", path.display()))
    }

    pub fn parse(text: &str, base: &Path) -> anyhow::Result<Self> {
        let raw: RawManifest = toml::from_str(text)?;
        if raw.spin_manifest_version != 2 {
            bail!("spin_manifest_version is {}; only version 2 is supported", raw.spin_manifest_version);
        }
        let components = raw
            .component
            .into_iter()
            .map(|(id, c)| {
                let component = Component {
                    id: id.clone(),
                    source: base.join(&c.source),
                    allowed_outbound_hosts: c.allowed_outbound_hosts,
                    key_value_stores: c.key_value_stores,
                    environment: c.environment,
                    variables: c.variables,
                };
                (id, component)
            })
            .collect();
        let routes = raw.trigger.http.into_iter().map(|t| Route { route: t.route, component: t.component }).collect();
        let variables = raw
            .variables
            .into_iter()
            .map(|(k, v)| (k, Variable { default: v.default, required: v.required, secret: v.secret }))
            .collect();
        Self::checked(raw.application.name, variables, routes, components)
    }

    /// An application from its parts, checked as a `spin.toml` is (from a manifest or a locked
    /// app pulled from a registry): variable names, the templates' variables, routes.
    pub fn checked(
        name: String,
        variables: BTreeMap<String, Variable>,
        routes: Vec<Route>,
        components: BTreeMap<String, Component>,
    ) -> anyhow::Result<Self> {
        for (k, v) in &variables {
            check_variable_name(k)?;
            if v.required && v.default.is_some() {
                bail!("variable `{k}` is required and has a default: keep one of the two");
            }
        }
        for (id, c) in &components {
            for name in c.variables.keys() {
                check_variable_name(name)?;
            }
            for template in c.variables.values().chain(&c.allowed_outbound_hosts) {
                for name in template_names(template)? {
                    if !variables.contains_key(&name) {
                        bail!("component `{id}` uses `{{{{ {name} }}}}`, but [variables] does not declare `{name}`");
                    }
                }
            }
        }
        if routes.is_empty() {
            bail!("there is no [[trigger.http]]: add one with a `route` and a `component`");
        }
        for r in &routes {
            if !components.contains_key(&r.component) {
                bail!("[[trigger.http]] route `{}` names component `{}`, which is not defined", r.route, r.component);
            }
            if !r.route.starts_with('/') {
                bail!("route `{}` must start with `/`", r.route);
            }
        }
        Ok(Self { name, variables, routes, components })
    }

    /// The component for a request path: the first matching route.
    pub fn route(&self, path: &str) -> Option<&Component> {
        self.routes.iter().find(|r| r.matches(path)).and_then(|r| self.components.get(&r.component))
    }

    /// Application variable values: `given` (from the command line or `SPIN_VARIABLE_<NAME>`),
    /// else the defaults. Every required variable must be given.
    pub fn resolve_variables(&self, given: &BTreeMap<String, String>) -> anyhow::Result<BTreeMap<String, String>> {
        for k in given.keys() {
            if !self.variables.contains_key(k) {
                bail!("variable `{k}` is not declared in the manifest's [variables]");
            }
        }
        let mut out = BTreeMap::new();
        let mut missing = Vec::new();
        for (k, v) in &self.variables {
            match given.get(k).or(v.default.as_ref()) {
                Some(value) => {
                    out.insert(k.clone(), value.clone());
                }
                None if v.required => missing.push(k.clone()),
                None => {}
            }
        }
        if !missing.is_empty() {
            let hint: Vec<String> =
                missing.iter().map(|m| format!("--variable {m}=… or SPIN_VARIABLE_{}", m.to_uppercase())).collect();
            bail!("required variables are not set: {} (give {})", missing.join(", "), hint.join("; "));
        }
        Ok(out)
    }
}

/// Spin's rule for variable names: lower-case letters, digits and `_`, starting with a letter.
pub fn check_variable_name(name: &str) -> anyhow::Result<()> {
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        bail!("`{name}` is not a valid variable name: use lower-case letters, digits and `_`, starting with a letter");
    }
    Ok(())
}

/// The variable names a `{{ name }}` template uses.
fn template_names(template: &str) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after.find("}}").with_context(|| format!("`{template}` opens `{{{{` without closing it"))?;
        names.push(after[..end].trim().to_string());
        rest = &after[end + 2..];
    }
    Ok(names)
}

/// Expands `{{ name }}` from resolved application variables.
pub fn expand(template: &str, values: &BTreeMap<String, String>) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").with_context(|| format!("`{template}` opens `{{{{` without closing it"))?;
        let name = after[..end].trim();
        let value = values.get(name).with_context(|| format!("variable `{name}` has no value"))?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
spin_manifest_version = 2
[application]
name = "m"
[variables]
host_url = { required = true }
key = { required = true, secret = true }
greeting = { default = "hi" }
[[trigger.http]]
route = "/hooks/..."
component = "c"
[[trigger.http]]
route = "/healthz"
component = "c"
[component.c]
source = "c.wasm"
allowed_outbound_hosts = ["{{ host_url }}"]
key_value_stores = ["default"]
[component.c.variables]
host_url = "{{ host_url }}"
key = "k-{{key}}"
[component.c.build]
command = "cargo build"
"#;

    #[test]
    fn routes_variables_and_templates() {
        let m = Manifest::parse(MANIFEST, Path::new("/apps")).unwrap();
        assert_eq!(m.components["c"].source, Path::new("/apps/c.wasm"));
        assert!(m.route("/hooks/web").is_some());
        assert!(m.route("/hooks").is_some());
        assert!(m.route("/healthz").is_some());
        assert!(m.route("/healthz/x").is_none());
        assert!(m.route("/hooksx").is_none());
        let err = m.resolve_variables(&BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("host_url") && err.contains("SPIN_VARIABLE_HOST_URL"), "{err}");
        let given: BTreeMap<_, _> =
            [("host_url".to_string(), "http://127.0.0.1:1".to_string()), ("key".into(), "s".into())].into();
        let values = m.resolve_variables(&given).unwrap();
        assert_eq!(values["greeting"], "hi");
        assert_eq!(expand("k-{{key}}", &values).unwrap(), "k-s");
        assert_eq!(expand("{{ host_url }}/x", &values).unwrap(), "http://127.0.0.1:1/x");
    }

    #[test]
    fn mistakes_are_explained() {
        let undeclared = MANIFEST.replace("greeting = { default = \"hi\" }", "").replace("k-{{key}}", "{{ greeting }}");
        let err = format!("{:#}", Manifest::parse(&undeclared, Path::new("/")).unwrap_err());
        assert!(err.contains("does not declare `greeting`"), "{err}");
        let files = MANIFEST.replace("key_value_stores", "files = [\"x\"]\nkey_value_stores");
        let err = format!("{:#}", Manifest::parse(&files, Path::new("/")).unwrap_err());
        assert!(err.contains("files"), "{err}");
        let bad_route = MANIFEST.replace("component = \"c\"\n[component", "component = \"d\"\n[component");
        assert!(format!("{:#}", Manifest::parse(&bad_route, Path::new("/")).unwrap_err()).contains("`d`"));
        assert!(check_variable_name("Host").is_err());
        assert!(check_variable_name("host_url2").is_ok());
    }
}
