//! Converting between JSON and CEL values, and reading CEL values as GitHub Actions does
//! (text, truthiness).

use std::sync::Arc;

use cel::Value;
use cel::objects::{Key, Map};

/// A JSON value as a CEL value. It is the edge master's conversion, so a payload reads the same
/// in a webhook filter and in a pipeline (`body.number == 128` holds in both).
pub use skiff_edge_core::json_to_cel;

/// A map of strings as a CEL map.
pub fn strings_to_cel<'a>(m: impl IntoIterator<Item = (&'a String, &'a String)>) -> Value {
    let map: std::collections::HashMap<Key, Value> =
        m.into_iter().map(|(k, v)| (Key::String(Arc::new(k.clone())), Value::String(Arc::new(v.clone())))).collect();
    Value::Map(Map { map: Arc::new(map) })
}

/// A CEL value as JSON (for `toJSON` and outputs that are not strings).
pub fn cel_to_json(v: &Value) -> serde_json::Value {
    v.json().unwrap_or(serde_json::Value::Null)
}

/// The text GitHub Actions would substitute for a value: strings as they are,
/// null as empty, lists and maps as JSON.
pub fn to_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_string(),
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        other => cel_to_json(other).to_string(),
    }
}

/// GitHub truthiness: `false`, `0`, `''` and null are false.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Int(i) => *i != 0,
        Value::UInt(u) => *u != 0,
        Value::Float(f) => *f != 0.0,
        _ => true,
    }
}

/// A CEL string.
pub(super) fn s(v: impl Into<String>) -> Value {
    Value::String(Arc::new(v.into()))
}
