//! The JSON Schema of the pipeline format, generated from [`super::model`].
//! Checked in at `docs/pipeline.schema.json`; a test keeps it current.

use super::model::PipelineDef;

/// The schema as JSON.
pub fn schema() -> serde_json::Value {
    let s = schemars::schema_for!(PipelineDef);
    s.as_value().clone()
}

/// The schema as the text checked in (pretty JSON with a final newline).
pub fn schema_text() -> String {
    let mut s = serde_json::to_string_pretty(&schema()).expect("a schema is JSON");
    s.push('\n');
    s
}
