//! `on:`, checked as the edge master will read it.

use super::Cx;
use crate::source::{Seg, YPath};

/// `on:`, read as the edge master reads an app's triggers: unknown keys, bad globs and bad CEL
/// are reported where they are.
pub(super) fn triggers(cx: &mut Cx, on: &serde_json::Value) -> Option<skiff_edge_core::Triggers> {
    // Each event on its own first, so every mistake is reported, not only the first.
    if let Some(map) = on.as_object().filter(|m| m.len() > 1) {
        let mut ok = true;
        for (k, v) in map {
            let one = serde_json::Value::Object([(k.clone(), v.clone())].into_iter().collect());
            ok &= trigger(cx, &one).is_some();
        }
        if !ok {
            return None;
        }
    }
    trigger(cx, on)
}

fn trigger(cx: &mut Cx, on: &serde_json::Value) -> Option<skiff_edge_core::Triggers> {
    match serde_path_to_error::deserialize::<_, skiff_edge_core::Triggers>(on) {
        Ok(t) => Some(t),
        Err(e) => {
            let mut path: YPath = vec![Seg::Key("on".into())];
            for seg in e.path().iter() {
                match seg {
                    serde_path_to_error::Segment::Map { key } => path.push(Seg::Key(key.clone())),
                    serde_path_to_error::Segment::Seq { index } => path.push(Seg::Index(*index)),
                    _ => {}
                }
            }
            let message = e.inner().to_string();
            // An unknown key is reported where it is written.
            let unknown = message.strip_prefix("unknown field `").and_then(|r| r.split('`').next());
            match unknown {
                Some(k) => {
                    path.push(Seg::Key(k.to_string()));
                    cx.at_key(&path, format!("`on:`: {message}"));
                }
                None => cx.at_value(&path, format!("`on:`: {message}")),
            }
            None
        }
    }
}
