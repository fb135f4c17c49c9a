//! A Spin application manifest (`spin.toml`, version 2) turned into what `spin registry push`
//! publishes: the *locked app* (Spin's `spin.lock` JSON, every component's source and file
//! replaced by the digest of a layer) and the layers themselves.
//!
//! What Spin would resolve elsewhere (components from URLs or registries, component
//! dependencies) is refused with a sentence saying so, rather than pushed half-resolved.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use skiff_step_sdk::files::{check_inside, glob_match, walk};

/// Media type of the locked app layer.
pub const LOCKED_APP_MEDIA_TYPE: &str = "application/vnd.fermyon.spin.application.v1+config";
/// Media type of a component's Wasm layer.
pub const WASM_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// Media type of a static file's layer.
pub const DATA_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+data";
/// Files smaller than this are inlined into the locked app, as Spin does (some registries refuse
/// empty or one-byte blobs).
const INLINE_MAX: usize = 128;
/// Registries commonly refuse more layers than this in one image (ECR's limit).
const MAX_LAYERS: usize = 500;

#[derive(Debug, Deserialize)]
struct Raw {
    spin_manifest_version: u32,
    application: RawApplication,
    #[serde(default)]
    variables: BTreeMap<String, RawVariable>,
    #[serde(default)]
    trigger: BTreeMap<String, Vec<toml::Table>>,
    #[serde(default)]
    component: BTreeMap<String, RawComponent>,
}

#[derive(Debug, Deserialize)]
struct RawApplication {
    name: String,
    version: Option<String>,
    description: Option<String>,
    #[serde(default)]
    authors: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariable {
    default: Option<String>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    secret: bool,
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    source: toml::Value,
    description: Option<String>,
    #[serde(default)]
    files: Vec<toml::Value>,
    #[serde(default)]
    exclude_files: Vec<String>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    key_value_stores: Vec<String>,
    #[serde(default)]
    sqlite_databases: Vec<String>,
    #[serde(default)]
    ai_models: Vec<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    dependencies: toml::Table,
    #[allow(dead_code)]
    build: Option<toml::Value>,
    #[allow(dead_code)]
    tool: Option<toml::Value>,
    #[allow(dead_code)]
    dependencies_inherit_configuration: Option<bool>,
}

/// One blob of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub media_type: &'static str,
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Layer {
    pub fn new(media_type: &'static str, bytes: Vec<u8>) -> Self {
        Self { media_type, digest: sha256(&bytes), bytes }
    }
}

/// An application ready to push.
#[derive(Debug)]
pub struct Assembled {
    pub name: String,
    pub version: Option<String>,
    /// Component and file layers (deduplicated), then the locked app last, as Spin orders them.
    pub layers: Vec<Layer>,
    pub components: usize,
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Reads `manifest` (a workspace path) and the files it names.
pub fn assemble(manifest: &str) -> Result<Assembled, String> {
    check_inside(manifest)?;
    let text = std::fs::read_to_string(manifest)
        .map_err(|e| format!("cannot read the Spin manifest `{manifest}`: {e} (set input `manifest`)"))?;
    let base = match manifest.rsplit_once('/') {
        Some((dir, _)) => dir.to_string(),
        None => ".".to_string(),
    };
    assemble_text(&text, &base, &mut |path| std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}")))
}

/// [`assemble`] over the manifest's text; `read` reads a workspace file.
pub fn assemble_text(
    text: &str,
    base: &str,
    read: &mut dyn FnMut(&str) -> Result<Vec<u8>, String>,
) -> Result<Assembled, String> {
    let raw: Raw = toml::from_str(text).map_err(|e| format!("the Spin manifest is not valid: {e}"))?;
    if raw.spin_manifest_version != 2 {
        return Err(format!(
            "spin_manifest_version is {}; only version 2 is pushed (`spin doctor` upgrades older manifests)",
            raw.spin_manifest_version
        ));
    }
    let mut layers: Vec<Layer> = Vec::new();
    let mut add = |layer: Layer| -> Value {
        let digest = layer.digest.clone();
        if !layers.iter().any(|l| l.digest == layer.digest) {
            layers.push(layer);
        }
        Value::String(digest)
    };

    let mut components = Vec::new();
    for (id, c) in &raw.component {
        let source = match &c.source {
            toml::Value::String(path) => path.clone(),
            other => {
                return Err(format!(
                    "component `{id}`: source `{other}` is not a file; build the component into the workspace and \
                     name its .wasm file (sources from URLs or registries are not pushed)"
                ));
            }
        };
        if !c.dependencies.is_empty() {
            return Err(format!(
                "component `{id}` has [dependencies]; compose them first (`spin build` with `wac`), then push the \
                 composed component"
            ));
        }
        let path = join(base, &source);
        check_inside(&path).map_err(|e| format!("component `{id}`: source {e}"))?;
        let wasm = read(&path).map_err(|e| format!("component `{id}`: {e}; build it before this step"))?;
        if !wasm.starts_with(b"\0asm") {
            return Err(format!("component `{id}`: `{path}` is not a WebAssembly file"));
        }
        let digest = add(Layer::new(WASM_MEDIA_TYPE, wasm));
        let files = collect_files(id, c, base, read, &mut add)?;

        let mut metadata = serde_json::Map::new();
        if let Some(d) = &c.description {
            metadata.insert("description".into(), json!(d));
        }
        metadata.insert("allowed_outbound_hosts".into(), json!(c.allowed_outbound_hosts));
        for (key, list) in
            [("key_value_stores", &c.key_value_stores), ("databases", &c.sqlite_databases), ("ai_models", &c.ai_models)]
        {
            if !list.is_empty() {
                metadata.insert(key.into(), json!(list));
            }
        }
        let mut component = json!({
            "id": id,
            "metadata": metadata,
            "source": { "content_type": "application/wasm", "digest": digest },
        });
        let obj = component.as_object_mut().expect("an object");
        if !c.environment.is_empty() {
            obj.insert("env".into(), json!(c.environment));
        }
        if !files.is_empty() {
            obj.insert("files".into(), Value::Array(files));
        }
        if !c.variables.is_empty() {
            obj.insert("config".into(), json!(c.variables));
        }
        components.push(component);
    }

    let mut triggers = Vec::new();
    let mut counters: BTreeMap<&str, usize> = BTreeMap::new();
    for (kind, list) in &raw.trigger {
        for t in list {
            let component = match t.get("component") {
                Some(toml::Value::String(c)) => c.clone(),
                Some(_) => {
                    return Err(format!(
                        "a [[trigger.{kind}]] defines its component inline; give it an id under [component.<id>]"
                    ));
                }
                None => return Err(format!("a [[trigger.{kind}]] names no `component`")),
            };
            if !raw.component.contains_key(&component) {
                return Err(format!("a [[trigger.{kind}]] names component `{component}`, which is not defined"));
            }
            let n = counters.entry(kind).or_default();
            *n += 1;
            let id = match t.get("id") {
                Some(toml::Value::String(id)) => id.clone(),
                _ => format!("{component}-{kind}-trigger{}", if *n > 1 { n.to_string() } else { String::new() }),
            };
            let mut config = serde_json::to_value(t).map_err(|e| e.to_string())?;
            if let Some(o) = config.as_object_mut() {
                o.remove("id");
            }
            triggers.push(json!({ "id": id, "trigger_type": kind, "trigger_config": config }));
        }
    }
    if triggers.is_empty() {
        return Err("the manifest has no trigger: add a [[trigger.http]] with a `route` and a `component`".into());
    }

    let mut variables = serde_json::Map::new();
    for (name, v) in &raw.variables {
        if v.required && v.default.is_some() {
            return Err(format!("variable `{name}` is required and has a default: keep one of the two"));
        }
        let mut var = serde_json::Map::new();
        if let Some(d) = &v.description {
            var.insert("description".into(), json!(d));
        }
        if let Some(d) = &v.default {
            var.insert("default".into(), json!(d));
        }
        if v.secret {
            var.insert("secret".into(), json!(true));
        }
        variables.insert(name.clone(), Value::Object(var));
    }

    let a = &raw.application;
    let mut metadata = json!({ "name": a.name, "authors": a.authors });
    let m = metadata.as_object_mut().expect("an object");
    if let Some(v) = &a.version {
        m.insert("version".into(), json!(v));
    }
    if let Some(d) = &a.description {
        m.insert("description".into(), json!(d));
    }
    if raw.trigger.len() == 1 {
        let kind = raw.trigger.keys().next().expect("one");
        m.insert("trigger".into(), json!({ "type": kind }));
    }
    let mut locked =
        json!({ "spin_lock_version": 0, "metadata": metadata, "triggers": triggers, "components": components });
    if !variables.is_empty() {
        locked.as_object_mut().expect("an object").insert("variables".into(), Value::Object(variables));
    }
    let count = components_count(&locked);
    let locked = serde_json::to_vec(&locked).map_err(|e| e.to_string())?;
    add(Layer::new(LOCKED_APP_MEDIA_TYPE, locked));
    if layers.len() > MAX_LAYERS {
        return Err(format!(
            "the application needs {} layers, more than the {MAX_LAYERS} registries accept: put static files in \
             fewer, larger files",
            layers.len()
        ));
    }
    Ok(Assembled { name: a.name.clone(), version: a.version.clone(), layers, components: count })
}

fn components_count(locked: &Value) -> usize {
    locked["components"].as_array().map_or(0, Vec::len)
}

fn join(base: &str, path: &str) -> String {
    let path = path.trim_start_matches("./");
    if base == "." || base.is_empty() { path.to_string() } else { format!("{base}/{path}") }
}

/// A component's `files`: globs (mounted at the same relative path) or `{ source, destination }`
/// folders, as content paths pointing at data layers (or inlined when tiny).
fn collect_files(
    id: &str,
    c: &RawComponent,
    base: &str,
    read: &mut dyn FnMut(&str) -> Result<Vec<u8>, String>,
    add: &mut dyn FnMut(Layer) -> Value,
) -> Result<Vec<Value>, String> {
    // (workspace path, path inside the component)
    let mut mounts: Vec<(String, String)> = Vec::new();
    for f in &c.files {
        match f {
            toml::Value::String(pattern) => {
                check_inside(pattern).map_err(|e| format!("component `{id}`: file {e}"))?;
                let before = mounts.len();
                let root = if base.is_empty() { "." } else { base };
                walk(root, &mut |rel| {
                    let inside = rel.strip_prefix(&format!("{root}/")).unwrap_or(rel);
                    if glob_match(pattern, inside) {
                        mounts.push((rel.to_string(), format!("/{inside}")));
                    }
                })
                .map_err(|e| format!("component `{id}`: listing files: {e}"))?;
                if mounts.len() == before {
                    return Err(format!("component `{id}`: files pattern `{pattern}` matched no file"));
                }
            }
            toml::Value::Table(t) => {
                let (Some(toml::Value::String(src)), Some(toml::Value::String(dest))) =
                    (t.get("source"), t.get("destination"))
                else {
                    return Err(format!(
                        "component `{id}`: a files entry must be a glob or {{ source = \"dir\", destination = \"/\" }}"
                    ));
                };
                check_inside(src).map_err(|e| format!("component `{id}`: file {e}"))?;
                if !dest.starts_with('/') {
                    return Err(format!("component `{id}`: destination `{dest}` must be absolute (start with `/`)"));
                }
                let dir = join(base, src);
                let before = mounts.len();
                walk(&dir, &mut |rel| {
                    let inside = rel.strip_prefix(&format!("{dir}/")).unwrap_or(rel);
                    mounts.push((rel.to_string(), format!("{}/{inside}", dest.trim_end_matches('/'))));
                })
                .map_err(|e| format!("component `{id}`: files source `{src}`: {e}"))?;
                if mounts.len() == before {
                    return Err(format!("component `{id}`: files source `{src}` holds no file"));
                }
            }
            other => return Err(format!("component `{id}`: files entry `{other}` is neither a glob nor a table")),
        }
    }
    let root = if base == "." { String::new() } else { format!("{base}/") };
    mounts.retain(|(rel, _)| {
        let inside = rel.strip_prefix(&root).unwrap_or(rel);
        !c.exclude_files.iter().any(|x| glob_match(x, inside))
    });
    let mut out = Vec::new();
    for (rel, path) in mounts {
        let bytes = read(&rel)?;
        let content = if bytes.len() < INLINE_MAX {
            use base64::Engine as _;
            json!({ "inline": base64::engine::general_purpose::STANDARD.encode(&bytes), "path": path })
        } else {
            json!({ "digest": add(Layer::new(DATA_MEDIA_TYPE, bytes)), "path": path })
        };
        out.push(content);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
spin_manifest_version = 2
[application]
name = "edge"
version = "1.2.0"
[variables]
host_url = { required = true }
key = { required = true, secret = true }
[[trigger.http]]
route = "/..."
component = "api"
[[trigger.http]]
route = "/health"
component = "api"
[component.api]
source = "target/api.wasm"
allowed_outbound_hosts = ["{{ host_url }}"]
key_value_stores = ["default"]
[component.api.variables]
host_url = "{{ host_url }}"
[component.api.build]
command = "cargo build"
"#;

    fn files(path: &str) -> Result<Vec<u8>, String> {
        match path {
            "app/target/api.wasm" => Ok(b"\0asm\x01\0\0\0".to_vec()),
            other => Err(format!("no {other}")),
        }
    }

    #[test]
    fn a_manifest_becomes_a_locked_app_with_its_component_by_digest() {
        let a = assemble_text(MANIFEST, "app", &mut files).unwrap();
        assert_eq!((a.name.as_str(), a.version.as_deref(), a.components), ("edge", Some("1.2.0"), 1));
        assert_eq!(a.layers.len(), 2);
        assert_eq!(a.layers[0].media_type, WASM_MEDIA_TYPE);
        let locked: Value = serde_json::from_slice(&a.layers[1].bytes).unwrap();
        assert_eq!(a.layers[1].media_type, LOCKED_APP_MEDIA_TYPE);
        assert_eq!(locked["components"][0]["source"]["digest"], a.layers[0].digest);
        assert_eq!(locked["components"][0]["metadata"]["key_value_stores"][0], "default");
        assert_eq!(locked["components"][0]["config"]["host_url"], "{{ host_url }}");
        assert_eq!(locked["triggers"][0]["trigger_config"]["route"], "/...");
        assert_ne!(locked["triggers"][0]["id"], locked["triggers"][1]["id"]);
        assert_eq!(locked["variables"]["key"]["secret"], true);
        // The same app pushes to the same bytes: no timestamps.
        let again = assemble_text(MANIFEST, "app", &mut files).unwrap();
        assert_eq!(a.layers, again.layers);
    }

    #[test]
    fn what_would_push_half_an_app_is_refused_with_the_fix() {
        let url = MANIFEST
            .replace("source = \"target/api.wasm\"", "source = { url = \"https://x/a.wasm\", digest = \"sha256:00\" }");
        assert!(assemble_text(&url, "app", &mut files).unwrap_err().contains("not a file"));
        let out = MANIFEST.replace("target/api.wasm", "../../etc/passwd");
        assert!(assemble_text(&out, "app", &mut files).unwrap_err().contains("inside the workspace"));
        let missing = MANIFEST.replace("target/api.wasm", "target/nope.wasm");
        assert!(assemble_text(&missing, "app", &mut files).unwrap_err().contains("build it before this step"));
        let v1 = MANIFEST.replace("spin_manifest_version = 2", "spin_manifest_version = 1");
        assert!(assemble_text(&v1, "app", &mut files).unwrap_err().contains("only version 2"));
        let no_trigger = MANIFEST
            .replace("[[trigger.http]]\nroute = \"/...\"\ncomponent = \"api\"\n", "")
            .replace("[[trigger.http]]\nroute = \"/health\"\ncomponent = \"api\"\n", "");
        assert!(assemble_text(&no_trigger, "app", &mut files).unwrap_err().contains("no trigger"));
        let dangling = MANIFEST.replace("component = \"api\"\n[component", "component = \"web\"\n[component");
        assert!(assemble_text(&dangling, "app", &mut files).unwrap_err().contains("`web`"));
    }
}
