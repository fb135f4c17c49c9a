//! The Worker to upload, worked out from the inputs and an optional `wrangler.toml`: its name,
//! entry module, extra modules (with wrangler's module rules), compatibility settings and
//! bindings, in the shape the Cloudflare API documents and wrangler 4 sends.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde_json::{Map, Value, json};

/// How a module is uploaded: its part's content type (wrangler's `toMimeType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    /// An ES module (`.js`, `.mjs`).
    EsModule,
    /// A CommonJS module (`.cjs`).
    CommonJs,
    /// Compiled WebAssembly (`.wasm`).
    Wasm,
    /// Text, imported as a string (`.txt`, `.html`, `.sql`).
    Text,
    /// Data, imported as an `ArrayBuffer` (anything else).
    Data,
}

impl ModuleKind {
    /// The part's content type.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::EsModule => "application/javascript+module",
            Self::CommonJs => "application/javascript",
            Self::Wasm => "application/wasm",
            Self::Text => "text/plain",
            Self::Data => "application/octet-stream",
        }
    }

    /// A wrangler module rule's `type`.
    fn from_rule(t: &str) -> Option<Self> {
        Some(match t {
            "ESModule" => Self::EsModule,
            "CommonJS" => Self::CommonJs,
            "CompiledWasm" => Self::Wasm,
            "Text" => Self::Text,
            "Data" => Self::Data,
            _ => return None,
        })
    }

    /// The kind of a file named in `modules`, by its extension.
    pub fn from_name(name: &str) -> Self {
        match name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).as_deref() {
            Some("js" | "mjs") => Self::EsModule,
            Some("cjs") => Self::CommonJs,
            Some("wasm") => Self::Wasm,
            Some("txt" | "html" | "sql") => Self::Text,
            _ => Self::Data,
        }
    }
}

/// One module of the Worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Its name in the upload: the path relative to the entry module's folder (`base-dir`).
    pub name: String,
    /// How it is uploaded.
    pub kind: ModuleKind,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Everything a version upload carries.
#[derive(Debug, Clone)]
pub struct Worker {
    /// The entry module (`main_module`).
    pub main: Module,
    /// The entry's path in the workspace, for messages.
    pub main_path: String,
    /// The other modules, in the order wrangler finds them.
    pub modules: Vec<Module>,
    /// `compatibility_date`.
    pub compatibility_date: String,
    /// `compatibility_flags`.
    pub compatibility_flags: Vec<String>,
    /// The bindings, as the API takes them.
    pub bindings: Vec<Value>,
}

impl Worker {
    /// The `metadata` part of a version upload. `keep_bindings` keeps the secrets set on the
    /// Worker outside the pipeline (`wrangler secret put`), as `wrangler versions upload` does.
    pub fn metadata(&self, annotations: &BTreeMap<String, String>) -> Value {
        let mut m = Map::new();
        m.insert("main_module".into(), json!(self.main.name));
        m.insert("bindings".into(), Value::Array(self.bindings.clone()));
        m.insert("compatibility_date".into(), json!(self.compatibility_date));
        m.insert("compatibility_flags".into(), json!(self.compatibility_flags));
        m.insert("keep_bindings".into(), json!(["secret_text", "secret_key"]));
        if !annotations.is_empty() {
            m.insert("annotations".into(), json!(annotations));
        }
        Value::Object(m)
    }
}

/// A `wrangler.toml`, read.
#[derive(Debug, Clone, Default)]
pub struct ConfigFile {
    /// Its path in the workspace.
    pub path: String,
    /// Its folder in the workspace (`""` for the top): `main` and `base_dir` are relative to it.
    pub dir: String,
    /// Its content as JSON.
    pub json: Value,
    /// The keys of `[vars]` in the order written.
    pub vars_order: Vec<String>,
}

impl ConfigFile {
    /// Parses `text`, the content of the file at workspace path `path`.
    pub fn parse(path: &str, text: &str) -> Result<Self, String> {
        let table: toml::Table = text.parse().map_err(|e| format!("`{path}` is not valid TOML: {e}"))?;
        let vars_order = match table.get("vars") {
            Some(toml::Value::Table(t)) => t.keys().cloned().collect(),
            _ => Vec::new(),
        };
        let path = normalize(path).map_err(|e| format!("input `config`: {e}"))?;
        let dir = path.rsplit_once('/').map(|(d, _)| d.to_string()).unwrap_or_default();
        Ok(Self { path, dir, json: toml_to_json(toml::Value::Table(table)), vars_order })
    }

    fn str(&self, key: &str) -> Option<String> {
        self.json.get(key).and_then(Value::as_str).map(String::from)
    }

    fn table_list(&self, path: &[&str]) -> Vec<Map<String, Value>> {
        let mut v = &self.json;
        for k in path {
            match v.get(k) {
                Some(x) => v = x,
                None => return Vec::new(),
            }
        }
        v.as_array().map(|a| a.iter().filter_map(|x| x.as_object().cloned()).collect()).unwrap_or_default()
    }
}

fn toml_to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => json!(i),
        toml::Value::Float(f) => json!(f),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect()),
    }
}

/// A workspace path without `.` segments, refused when it is absolute or leaves the workspace.
pub fn normalize(path: &str) -> Result<String, String> {
    let p = path.trim().trim_start_matches("/workspace/");
    let p = Path::new(p);
    if p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir | Component::Prefix(_))) {
        return Err(format!("`{path}` must be a path inside the workspace (no `..`, not absolute)"));
    }
    let parts: Vec<String> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    Ok(parts.join("/"))
}

fn join(dir: &str, rel: &str) -> String {
    if dir.is_empty() { rel.to_string() } else { format!("{dir}/{rel}") }
}

/// The inputs that shape the Worker, with `wrangler.toml` underneath them.
pub struct Settings<'a> {
    inputs: &'a BTreeMap<String, String>,
    /// The `wrangler.toml`, if one was given or found.
    pub config: Option<ConfigFile>,
}

fn invalid(m: impl Into<String>) -> String {
    m.into()
}

/// `KEY=VALUE` entries, one per line (and per comma when `commas`).
fn pairs(input: &str, text: &str, commas: bool) -> Result<Vec<(String, String)>, String> {
    let seps: &[char] = if commas { &['\n', ','] } else { &['\n'] };
    text.split(seps)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| invalid(format!("input `{input}`: `{l}` is not `BINDING=VALUE` (one per line)")))?;
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() || v.is_empty() {
                return Err(invalid(format!("input `{input}`: `{l}` needs a binding name and a value")));
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// The order wrangler writes binding types in (`createWorkerUploadForm`).
fn rank(b: &Value) -> usize {
    const ORDER: &[&str] = &[
        "plain_text",
        "json",
        "secret_text",
        "kv_namespace",
        "durable_object_namespace",
        "r2_bucket",
        "d1",
        "service",
    ];
    let t = b.get("type").and_then(Value::as_str).unwrap_or("");
    ORDER.iter().position(|x| *x == t).unwrap_or(ORDER.len())
}

/// Adds `b`, replacing a binding of the same name (an input overrides `wrangler.toml`).
fn put(list: &mut Vec<Value>, b: Value) {
    let name = b.get("name").cloned();
    list.retain(|x| x.get("name") != name.as_ref());
    list.push(b);
}

fn field(t: &Map<String, Value>, k: &str) -> Option<String> {
    t.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from)
}

impl<'a> Settings<'a> {
    /// Settings from the inputs and an already read `wrangler.toml`.
    pub fn new(inputs: &'a BTreeMap<String, String>, config: Option<ConfigFile>) -> Self {
        Self { inputs, config }
    }

    fn input(&self, k: &str) -> Option<&'a str> {
        self.inputs.get(k).map(|s| s.trim()).filter(|s| !s.is_empty())
    }

    /// Where else `key` may be set, for error messages.
    fn whence(&self, key: &str) -> String {
        match &self.config {
            Some(c) => format!(" (or `{key}` in `{}`)", c.path),
            None => " (or in a `wrangler.toml`, input `config`)".into(),
        }
    }

    /// The Worker's name: input `name`, else `name` in `wrangler.toml`.
    pub fn name(&self) -> Result<String, String> {
        let name = self
            .input("name")
            .map(String::from)
            .or_else(|| self.config.as_ref().and_then(|c| c.str("name")))
            .ok_or_else(|| {
                invalid(format!("input `name` is required{}: the Worker's (script's) name", self.whence("name")))
            })?;
        if name.len() > 63
            || name.starts_with('-')
            || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(invalid(format!(
                "the Worker's name `{name}` may hold only lowercase letters, digits, `-` and `_` (at most 63)"
            )));
        }
        Ok(name)
    }

    /// Reads the Worker's modules under `root` (the workspace) and works out its metadata;
    /// `secret` reads a granted secret for a `secret_text` binding.
    pub fn worker(&self, root: &Path, secret: &dyn Fn(&str) -> Option<String>) -> Result<Worker, String> {
        let cfg_dir = self.config.as_ref().map(|c| c.dir.clone()).unwrap_or_default();
        let main = match self.input("main") {
            Some(m) => normalize(m).map_err(|e| format!("input `main`: {e}"))?,
            None => match self.config.as_ref().and_then(|c| c.str("main")) {
                Some(m) => normalize(&join(&cfg_dir, &m)).map_err(|e| format!("`main` in the config: {e}"))?,
                None => {
                    return Err(invalid(format!(
                        "input `main` is required{}: the Worker's entry module, like `src/index.js`",
                        self.whence("main")
                    )));
                }
            },
        };
        let base = match self.input("base-dir") {
            Some(b) => normalize(b).map_err(|e| format!("input `base-dir`: {e}"))?,
            None => match self.config.as_ref().and_then(|c| c.str("base_dir")) {
                Some(b) => normalize(&join(&cfg_dir, &b)).map_err(|e| format!("`base_dir` in the config: {e}"))?,
                None => main.rsplit_once('/').map(|(d, _)| d.to_string()).unwrap_or_default(),
            },
        };
        let rel_to_base = |path: &str| -> Option<String> {
            if base.is_empty() {
                Some(path.to_string())
            } else {
                path.strip_prefix(&base).and_then(|r| r.strip_prefix('/')).map(String::from)
            }
        };
        let main_name = rel_to_base(&main)
            .ok_or_else(|| invalid(format!("`main` (`{main}`) must be inside `base-dir` (`{base}`)")))?;
        let main_kind = ModuleKind::from_name(&main);
        if !matches!(main_kind, ModuleKind::EsModule) {
            return Err(invalid(format!(
                "`main` (`{main}`) must be an ES module (`.js` or `.mjs`): service-worker syntax is not supported"
            )));
        }
        let main_bytes = std::fs::read(root.join(&main))
            .map_err(|e| format!("reading `main` (`{main}`): {e}; is the path relative to the workspace?"))?;
        let main_module = Module { name: main_name.clone(), kind: main_kind, bytes: main_bytes };

        let mut modules = Vec::new();
        let mut push = |name: String, kind: ModuleKind, path: &str| -> Result<(), String> {
            if name == main_name || modules.iter().any(|m: &Module| m.name == name) {
                return Ok(());
            }
            check_part_name(&name)?;
            let bytes = std::fs::read(root.join(path)).map_err(|e| format!("reading module `{path}`: {e}"))?;
            modules.push(Module { name, kind, bytes });
            Ok(())
        };
        if let Some(list) = self.input("modules") {
            for entry in list.split(['\n', ',']).map(str::trim).filter(|s| !s.is_empty()) {
                let pat = normalize(entry).map_err(|e| format!("input `modules`: {e}"))?;
                let mut found = Vec::new();
                if pat.contains(['*', '?']) {
                    walk(root, &base, &mut |rel| {
                        if glob_match(&pat, rel) {
                            found.push(rel.to_string());
                        }
                    })?;
                } else {
                    if !root.join(&pat).is_file() {
                        return Err(format!("input `modules`: `{entry}` is not a file in the workspace"));
                    }
                    found.push(pat.clone());
                }
                if found.is_empty() {
                    return Err(format!("input `modules`: `{entry}` matched no files under `{base}`"));
                }
                for path in found {
                    let name = rel_to_base(&path).ok_or_else(|| {
                        format!("input `modules`: `{path}` is outside `base-dir` (`{base}`), where module names start")
                    })?;
                    push(name, ModuleKind::from_name(&path), &path)?;
                }
            }
        } else if let Some(c) = &self.config {
            // wrangler with `no_bundle` (or `find_additional_modules`) uploads every file under
            // the base folder that a module rule matches: the config's rules, then its defaults.
            let find = c.json.get("find_additional_modules").and_then(Value::as_bool);
            let no_bundle = c.json.get("no_bundle").and_then(Value::as_bool).unwrap_or(false);
            if find.unwrap_or(no_bundle) {
                let rules = rules(c)?;
                let mut found = Vec::new();
                walk(root, &base, &mut |rel| {
                    if rel == c.path {
                        return;
                    }
                    let Some(name) = rel_to_base(rel) else { return };
                    if let Some((kind, _)) = rules.iter().find(|(_, globs)| globs.iter().any(|g| glob_match(g, &name)))
                    {
                        found.push((name, *kind, rel.to_string()));
                    }
                })?;
                for (name, kind, path) in found {
                    push(name, kind, &path)?;
                }
            }
        }

        let compatibility_date = self
            .input("compatibility-date")
            .map(String::from)
            .or_else(|| self.config.as_ref().and_then(|c| c.str("compatibility_date")))
            .ok_or_else(|| {
                invalid(format!(
                    "input `compatibility-date` is required{}: like `2024-09-23`",
                    self.whence("compatibility_date")
                ))
            })?;
        let date_ok = compatibility_date.len() == 10
            && compatibility_date
                .bytes()
                .enumerate()
                .all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
        if !date_ok {
            return Err(invalid(format!("`compatibility-date` is `{compatibility_date}`; write it as YYYY-MM-DD")));
        }
        let compatibility_flags = match self.input("compatibility-flags") {
            Some(f) => f.split([',', '\n', ' ']).map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
            None => self
                .config
                .as_ref()
                .and_then(|c| c.json.get("compatibility_flags"))
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect())
                .unwrap_or_default(),
        };
        let bindings = self.bindings(secret)?;
        Ok(Worker { main: main_module, main_path: main, modules, compatibility_date, compatibility_flags, bindings })
    }

    /// The bindings: `wrangler.toml`'s, then the inputs' (which replace those of the same name),
    /// in wrangler's order of types.
    pub fn bindings(&self, secret: &dyn Fn(&str) -> Option<String>) -> Result<Vec<Value>, String> {
        let mut list = Vec::new();
        if let Some(c) = &self.config {
            let vars = c.json.get("vars").and_then(Value::as_object);
            for k in &c.vars_order {
                if let Some(v) = vars.and_then(|m| m.get(k)) {
                    put(&mut list, var(k, v.clone()));
                }
            }
            for t in c.table_list(&["kv_namespaces"]) {
                let name = field(&t, "binding").ok_or("a `kv_namespaces` entry has no `binding`")?;
                let id = field(&t, "id").ok_or_else(|| {
                    format!("`kv_namespaces` binding `{name}` has no `id`: create the namespace and write its id")
                })?;
                put(&mut list, json!({"name": name, "type": "kv_namespace", "namespace_id": id}));
            }
            for t in c.table_list(&["durable_objects", "bindings"]) {
                let name = field(&t, "name").ok_or("a `durable_objects.bindings` entry has no `name`")?;
                let class = field(&t, "class_name")
                    .ok_or_else(|| format!("durable object binding `{name}` has no `class_name`"))?;
                let mut b = json!({"name": name, "type": "durable_object_namespace", "class_name": class});
                for k in ["script_name", "environment"] {
                    if let Some(v) = field(&t, k) {
                        b[k] = json!(v);
                    }
                }
                put(&mut list, b);
            }
            for t in c.table_list(&["r2_buckets"]) {
                let name = field(&t, "binding").ok_or("an `r2_buckets` entry has no `binding`")?;
                let bucket =
                    field(&t, "bucket_name").ok_or_else(|| format!("R2 binding `{name}` has no `bucket_name`"))?;
                let mut b = json!({"name": name, "type": "r2_bucket", "bucket_name": bucket});
                if let Some(j) = field(&t, "jurisdiction") {
                    b["jurisdiction"] = json!(j);
                }
                put(&mut list, b);
            }
            for t in c.table_list(&["d1_databases"]) {
                let name = field(&t, "binding").ok_or("a `d1_databases` entry has no `binding`")?;
                let id = field(&t, "database_id").ok_or_else(|| format!("D1 binding `{name}` has no `database_id`"))?;
                put(&mut list, json!({"name": name, "type": "d1", "id": id}));
            }
            for t in c.table_list(&["services"]) {
                let name = field(&t, "binding").ok_or("a `services` entry has no `binding`")?;
                let service =
                    field(&t, "service").ok_or_else(|| format!("service binding `{name}` has no `service`"))?;
                let mut b = json!({"name": name, "type": "service", "service": service});
                for k in ["environment", "entrypoint"] {
                    if let Some(v) = field(&t, k) {
                        b[k] = json!(v);
                    }
                }
                put(&mut list, b);
            }
        }
        if let Some(v) = self.input("vars") {
            if v.starts_with('{') {
                let m: Map<String, Value> = serde_json::from_str(v)
                    .map_err(|e| format!("input `vars` is neither a JSON object nor `NAME=value` lines: {e}"))?;
                for (k, v) in m {
                    put(&mut list, var(&k, v));
                }
            } else {
                for (k, v) in pairs("vars", v, false)? {
                    put(&mut list, json!({"name": k, "type": "plain_text", "text": v}));
                }
            }
        }
        if let Some(s) = self.input("secrets") {
            for (binding, secret_name) in pairs("secrets", s, true)? {
                let value = secret(&secret_name).ok_or_else(|| {
                    format!(
                        "secret `{secret_name}` (input `secrets`, binding `{binding}`) was not granted: add it to `permissions.secrets`"
                    )
                })?;
                put(&mut list, json!({"name": binding, "type": "secret_text", "text": value}));
            }
        }
        for (k, v) in pairs("kv-namespaces", self.input("kv-namespaces").unwrap_or(""), true)? {
            put(&mut list, json!({"name": k, "type": "kv_namespace", "namespace_id": v}));
        }
        for (k, v) in pairs("durable-objects", self.input("durable-objects").unwrap_or(""), true)? {
            let mut b = json!({"name": k, "type": "durable_object_namespace"});
            match v.split_once('@') {
                Some((class, script)) => {
                    b["class_name"] = json!(class);
                    b["script_name"] = json!(script);
                }
                None => b["class_name"] = json!(v),
            }
            put(&mut list, b);
        }
        for (k, v) in pairs("r2-buckets", self.input("r2-buckets").unwrap_or(""), true)? {
            put(&mut list, json!({"name": k, "type": "r2_bucket", "bucket_name": v}));
        }
        for (k, v) in pairs("d1-databases", self.input("d1-databases").unwrap_or(""), true)? {
            put(&mut list, json!({"name": k, "type": "d1", "id": v}));
        }
        for (k, v) in pairs("services", self.input("services").unwrap_or(""), true)? {
            let mut b = json!({"name": k, "type": "service"});
            match v.split_once('@') {
                Some((service, env)) => {
                    b["service"] = json!(service);
                    b["environment"] = json!(env);
                }
                None => b["service"] = json!(v),
            }
            put(&mut list, b);
        }
        list.sort_by_key(rank);
        Ok(list)
    }
}

/// A `[vars]` value: text as `plain_text`, anything else as `json`.
fn var(name: &str, v: Value) -> Value {
    match v {
        Value::String(s) => json!({"name": name, "type": "plain_text", "text": s}),
        other => json!({"name": name, "type": "json", "json": other}),
    }
}

/// wrangler's `parseRules`: the config's rules, then the defaults; a type whose rule does not
/// fall through takes no later rule of that type.
fn rules(c: &ConfigFile) -> Result<Vec<(ModuleKind, Vec<String>)>, String> {
    let mut raw = Vec::new();
    for r in c.table_list(&["rules"]) {
        let t = field(&r, "type").ok_or("a module rule in the config has no `type`")?;
        let kind = ModuleKind::from_rule(&t).ok_or_else(|| {
            format!("module rule type `{t}` is not supported: use ESModule, CommonJS, CompiledWasm, Text or Data")
        })?;
        let globs = r
            .get("globs")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect())
            .unwrap_or_default();
        let fallthrough = r.get("fallthrough").and_then(Value::as_bool) == Some(true);
        raw.push((kind, globs, fallthrough));
    }
    for (kind, globs) in [
        (ModuleKind::Text, &["**/*.txt", "**/*.html", "**/*.sql"][..]),
        (ModuleKind::Data, &["**/*.bin"][..]),
        (ModuleKind::Wasm, &["**/*.wasm", "**/*.wasm?module"][..]),
    ] {
        raw.push((kind, globs.iter().map(|g| g.to_string()).collect(), false));
    }
    let mut done = Vec::new();
    let mut out = Vec::new();
    for (kind, globs, fallthrough) in raw {
        if done.contains(&kind) {
            continue;
        }
        if !fallthrough {
            done.push(kind);
        }
        out.push((kind, globs));
    }
    Ok(out)
}

/// A module's name goes into a `Content-Disposition` header.
fn check_part_name(name: &str) -> Result<(), String> {
    if name.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
        return Err(format!("module `{name}`: a module's name may not hold quotes, backslashes or control characters"));
    }
    Ok(())
}

/// Files under workspace folder `dir` (`""`: the top), by workspace path, each folder's entries
/// in name order as wrangler (libuv's scandir) lists them; wrangler's own `.wrangler` folder is
/// skipped.
fn walk(root: &Path, dir: &str, f: &mut dyn FnMut(&str)) -> Result<(), String> {
    skiff_step_sdk::files::walk_in(root, dir, &|name| name == ".wrangler", f)
        .map_err(|e| format!("listing `{}`: {e}", if dir.is_empty() { "." } else { dir }))
}

pub use skiff_step_sdk::files::glob_match;

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn no_secret(_: &str) -> Option<String> {
        None
    }

    const TOML: &str = r#"
name = "hello-worker"
main = "src/index.js"
compatibility_date = "2024-09-23"
compatibility_flags = ["nodejs_compat"]
no_bundle = true

[vars]
GREETING = "world"
CONFIG = { level = 3, tags = ["a"] }

[[kv_namespaces]]
binding = "CACHE"
id = "0f2ac74b498b48028cb68387c421e279"

[[r2_buckets]]
binding = "BUCKET"
bucket_name = "assets"

[[d1_databases]]
binding = "DB"
database_name = "main"
database_id = "4e1c28a9-90e4-41da-8b4b-6cf36e5abb29"

[[durable_objects.bindings]]
name = "COUNTER"
class_name = "Counter"
script_name = "counter-worker"

[[services]]
binding = "AUTH"
service = "auth-worker"
environment = "production"

[[rules]]
type = "ESModule"
globs = ["**/*.js"]
"#;

    fn project() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("src/sub")).unwrap();
        for (p, c) in [
            ("src/index.js", "import './lib.js'"),
            ("src/lib.js", "export {}"),
            ("src/add.wasm", "\0asm"),
            ("src/note.txt", "hi"),
            ("src/blob.bin", "\x01"),
            ("src/sub/deep.js", "export {}"),
            ("src/other.dat", "x"),
            ("wrangler.toml", TOML),
        ] {
            std::fs::write(d.path().join(p), c).unwrap();
        }
        d
    }

    #[test]
    fn wrangler_toml_gives_the_bindings_wrangler_sends_in_its_order() {
        let c = ConfigFile::parse("wrangler.toml", TOML).unwrap();
        let i = inputs(&[]);
        let s = Settings::new(&i, Some(c));
        assert_eq!(s.name().unwrap(), "hello-worker");
        // Exactly what wrangler 4.86.0 put in `metadata.bindings` for this file.
        let expected: Value = serde_json::from_str(
            r#"[{"name":"GREETING","type":"plain_text","text":"world"},{"name":"CONFIG","type":"json","json":{"level":3,"tags":["a"]}},{"name":"CACHE","type":"kv_namespace","namespace_id":"0f2ac74b498b48028cb68387c421e279"},{"name":"COUNTER","type":"durable_object_namespace","class_name":"Counter","script_name":"counter-worker"},{"name":"BUCKET","type":"r2_bucket","bucket_name":"assets"},{"name":"DB","type":"d1","id":"4e1c28a9-90e4-41da-8b4b-6cf36e5abb29"},{"name":"AUTH","type":"service","service":"auth-worker","environment":"production"}]"#,
        )
        .unwrap();
        assert_eq!(Value::Array(s.bindings(&no_secret).unwrap()), expected);
    }

    #[test]
    fn modules_follow_wrangler_s_rules_relative_to_the_entry_s_folder() {
        let d = project();
        let c = ConfigFile::parse("wrangler.toml", TOML).unwrap();
        let i = inputs(&[]);
        let w = Settings::new(&i, Some(c)).worker(d.path(), &no_secret).unwrap();
        assert_eq!(w.main.name, "index.js");
        let got: Vec<_> = w.modules.iter().map(|m| (m.name.as_str(), m.kind.content_type())).collect();
        assert_eq!(
            got,
            [
                ("add.wasm", "application/wasm"),
                ("blob.bin", "application/octet-stream"),
                ("lib.js", "application/javascript+module"),
                ("note.txt", "text/plain"),
                ("sub/deep.js", "application/javascript+module"),
            ]
        );
        assert_eq!(w.compatibility_flags, ["nodejs_compat"]);
    }

    #[test]
    fn inputs_override_the_config_and_name_their_own_modules() {
        let d = project();
        let c = ConfigFile::parse("wrangler.toml", TOML).unwrap();
        let i = inputs(&[
            ("modules", "src/lib.js\nsrc/*.wasm, src/other.dat"),
            ("vars", "GREETING=hello, you"),
            ("kv-namespaces", "CACHE=abc"),
            ("secrets", "API_KEY=MY_SECRET"),
            ("compatibility-flags", ""),
            ("compatibility-date", "2025-01-01"),
        ]);
        let secret = |n: &str| (n == "MY_SECRET").then(|| "s3cr3t".to_string());
        let w = Settings::new(&i, Some(c)).worker(d.path(), &secret).unwrap();
        let names: Vec<_> = w.modules.iter().map(|m| (m.name.as_str(), m.kind)).collect();
        assert_eq!(
            names,
            [("lib.js", ModuleKind::EsModule), ("add.wasm", ModuleKind::Wasm), ("other.dat", ModuleKind::Data)]
        );
        assert_eq!(w.compatibility_date, "2025-01-01");
        let b = &w.bindings;
        // wrangler's order: plain text, then JSON, then secrets, then KV…
        assert_eq!(b[0], json!({"name": "GREETING", "type": "plain_text", "text": "hello, you"}));
        assert_eq!(b[1], json!({"name": "CONFIG", "type": "json", "json": {"level": 3, "tags": ["a"]}}));
        assert_eq!(b[2], json!({"name": "API_KEY", "type": "secret_text", "text": "s3cr3t"}));
        assert_eq!(b[3], json!({"name": "CACHE", "type": "kv_namespace", "namespace_id": "abc"}));
    }

    #[test]
    fn bad_inputs_say_what_to_fix() {
        let d = project();
        let i = inputs(&[]);
        let e = Settings::new(&i, None).name().unwrap_err();
        assert!(e.contains("input `name` is required"), "{e}");
        let i = inputs(&[("name", "Hello World")]);
        assert!(Settings::new(&i, None).name().unwrap_err().contains("lowercase"));
        let i = inputs(&[("compatibility-date", "2024-09-23")]);
        let e = Settings::new(&i, None).worker(d.path(), &no_secret).unwrap_err();
        assert!(e.contains("input `main` is required"), "{e}");
        let i = inputs(&[("main", "src/index.js"), ("compatibility-date", "2024-09-23"), ("modules", "../etc/passwd")]);
        let e = Settings::new(&i, None).worker(d.path(), &no_secret).unwrap_err();
        assert!(e.contains("inside the workspace"), "{e}");
        let i = inputs(&[("main", "/etc/passwd"), ("compatibility-date", "2024-09-23")]);
        assert!(Settings::new(&i, None).worker(d.path(), &no_secret).unwrap_err().contains("inside the workspace"));
        let i = inputs(&[("main", "src/index.js"), ("compatibility-date", "2024-09-23"), ("modules", "other/*.js")]);
        assert!(Settings::new(&i, None).worker(d.path(), &no_secret).unwrap_err().contains("matched no files"));
        let i = inputs(&[("main", "src/index.js"), ("compatibility-date", "2024-09-23"), ("modules", "wrangler.toml")]);
        assert!(Settings::new(&i, None).worker(d.path(), &no_secret).unwrap_err().contains("outside `base-dir`"));
        let i = inputs(&[("main", "src/index.js")]);
        assert!(Settings::new(&i, None).worker(d.path(), &no_secret).unwrap_err().contains("compatibility-date"));
        let i = inputs(&[("main", "src/index.js"), ("compatibility-date", "24-9-23")]);
        assert!(Settings::new(&i, None).worker(d.path(), &no_secret).unwrap_err().contains("YYYY-MM-DD"));
        let i = inputs(&[("main", "src/index.js"), ("compatibility-date", "2024-09-23"), ("secrets", "K=NOPE")]);
        let e = Settings::new(&i, None).worker(d.path(), &no_secret).unwrap_err();
        assert!(e.contains("`NOPE`") && e.contains("permissions.secrets"), "{e}");
        let i = inputs(&[("main", "src/index.js"), ("compatibility-date", "2024-09-23"), ("kv-namespaces", "CACHE")]);
        assert!(Settings::new(&i, None).worker(d.path(), &no_secret).unwrap_err().contains("BINDING=VALUE"));
    }
}
