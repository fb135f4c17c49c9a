//! CEL trigger filters.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cel_limits;
use crate::event::Event;
use crate::headers::Headers;

/// A CEL expression that must be true for a trigger to fire, compiled once when the trigger is
/// loaded.
///
/// It sees three variables:
///
/// - `body`: the payload as sent (for CloudEvents in binary mode, the attributes plus `data`);
/// - `headers`: a map of lower-case header names to values;
/// - `event`: the normalized [`Event`] without its body (`event.kind.type`, `event.branch`,
///   `event.repository.full_name`, …).
///
/// Serverless-cd's filters work as written, e.g. `body.ref in ["refs/heads/master"]`.
///
/// A filter that cannot be evaluated (a missing key is an error in CEL, e.g. `body.release.tag_name`
/// on a push; or a result that is not a boolean) counts as **not matched**, and the reason
/// records the error. Guard optional fields with `has(body.release)` where an absent field is
/// expected.
///
/// Cost: only the variables a filter mentions are converted to CEL values, once per event for
/// all apps, and of `body` only the fields the filters select (`body.ref` converts one string).
/// A filter that uses `body` otherwise (`body["ref"]`, `size(body)`) converts the whole payload,
/// about 0.3–0.6 ms for a 24 KB push here.
///
/// ```
/// use skiff_edge_core::Filter;
///
/// let filter = Filter::new(r#"body.ref in ["refs/heads/master"]"#).unwrap();
/// assert_eq!(filter.source(), r#"body.ref in ["refs/heads/master"]"#);
///
/// let err = Filter::new("body.ref in [").unwrap_err();
/// assert!(err.to_string().starts_with("the filter `body.ref in [` is not valid CEL"));
/// ```
#[derive(Clone)]
pub struct Filter {
    source: String,
    program: Arc<cel::Program>,
    /// Which of `body`, `headers`, `event` the expression mentions: only those are converted
    /// to CEL values (the body is most of the cost of a filter).
    uses: Uses,
    /// The parts of `body` the expression reads (`body.ref` → `["ref"]`), or `None` if it may
    /// read any part. Only those parts are converted.
    body_paths: Option<Arc<Vec<Vec<String>>>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Uses {
    body: bool,
    headers: bool,
    event: bool,
}

/// A filter that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the filter `{source_text}` is not valid CEL: {message}")]
pub struct FilterError {
    /// The expression as written.
    pub source_text: String,
    /// The parser's message, with a caret under the column.
    pub message: String,
}

impl Filter {
    /// Compiles `source`.
    pub fn new(source: impl Into<String>) -> Result<Self, FilterError> {
        let source = source.into();
        if let Some(message) = cel_limits::too_long(&source) {
            return Err(FilterError { source_text: source, message });
        }
        let program = cel::Program::compile(&source)
            .map_err(|e| FilterError { source_text: source.clone(), message: e.to_string() })?;
        if let Some(why) = cel_limits::too_costly(program.expression()) {
            let message = format!("{why}; split it into smaller filters");
            return Err(FilterError { source_text: source, message });
        }
        let refs = program.references();
        let uses = Uses {
            body: refs.has_variable("body"),
            headers: refs.has_variable("headers"),
            event: refs.has_variable("event"),
        };
        let body_paths = body_paths(program.expression()).map(Arc::new);
        Ok(Filter { source, program: Arc::new(program), uses, body_paths })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the filter; `Err` carries a sentence explaining why it could not be.
    pub(crate) fn eval(&self, vars: &mut FilterVars<'_>) -> Result<bool, String> {
        vars.provide(self.uses)?;
        match self.program.execute(&vars.context) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("it gave {other:?}, not true or false")),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Filter({:?})", self.source)
    }
}

impl PartialEq for Filter {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for Filter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Filter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        Filter::new(source).map_err(serde::de::Error::custom)
    }
}

/// The variables filters see, converted at most once per event (and only those some filter
/// mentions), shared by every app's filters.
pub(crate) struct FilterVars<'a> {
    event: &'a Event,
    headers: &'a Headers,
    /// What of the body every filter that may run reads; `None` for all of it.
    body_paths: Option<Vec<Vec<String>>>,
    provided: Uses,
    context: cel::Context<'static, 'static>,
}

/// The event as filters see it: everything but the body, which is its own variable.
#[derive(Serialize)]
struct EventView<'a> {
    provider: &'a crate::verify::Provider,
    kind: &'a crate::event::EventKind,
    name: &'a str,
    delivery_id: &'a str,
    repository: &'a Option<crate::event::Repository>,
    #[serde(rename = "ref")]
    git_ref: &'a Option<String>,
    branch: &'a Option<String>,
    tag: &'a Option<String>,
    before: &'a Option<String>,
    after: &'a Option<String>,
    deleted: bool,
    pull_request: &'a Option<crate::event::PullRequest>,
    changed_paths: &'a Option<Vec<String>>,
    sender: &'a Option<String>,
}

impl<'a> FilterVars<'a> {
    /// Variables for `filters`, the filters that may be evaluated for this event.
    pub(crate) fn new<'f>(
        event: &'a Event,
        headers: &'a Headers,
        filters: impl IntoIterator<Item = &'f Filter>,
    ) -> Self {
        let mut body_paths = Some(Vec::new());
        for filter in filters.into_iter().filter(|f| f.uses.body) {
            match (&mut body_paths, &filter.body_paths) {
                (Some(all), Some(paths)) => all.extend(paths.iter().cloned()),
                _ => body_paths = None,
            }
        }
        // Building the standard environment registers every built-in overload, which costs
        // more than evaluating a filter: do it once per process.
        static STDLIB: OnceLock<Arc<cel::Env>> = OnceLock::new();
        let env = STDLIB.get_or_init(|| Arc::new(cel::Env::stdlib()));
        FilterVars {
            event,
            headers,
            body_paths,
            provided: Uses::default(),
            context: cel::Context::with_env(Arc::clone(env)),
        }
    }

    /// Adds the variables in `uses` that are not there yet.
    fn provide(&mut self, uses: Uses) -> Result<(), String> {
        let event = self.event;
        if uses.body && !self.provided.body {
            let body = match &self.body_paths {
                Some(paths) => json_to_cel(&prune(&event.body, paths)),
                None => json_to_cel(&event.body),
            };
            self.context.add_variable_from_value("body", body);
            self.provided.body = true;
        }
        if uses.headers && !self.provided.headers {
            // Headers that carry credentials are not shown to filters.
            let map: BTreeMap<String, String> =
                self.headers.to_map().into_iter().filter(|(name, _)| !crate::headers::is_sensitive(name)).collect();
            self.context
                .add_variable("headers", map)
                .map_err(|e| format!("the headers cannot be given to CEL: {e}"))?;
            self.provided.headers = true;
        }
        if uses.event && !self.provided.event {
            let view = EventView {
                provider: &event.provider,
                kind: &event.kind,
                name: &event.name,
                delivery_id: &event.delivery_id,
                repository: &event.repository,
                git_ref: &event.git_ref,
                branch: &event.branch,
                tag: &event.tag,
                before: &event.before,
                after: &event.after,
                deleted: event.deleted,
                pull_request: &event.pull_request,
                changed_paths: &event.changed_paths,
                sender: &event.sender,
            };
            self.context.add_variable("event", view).map_err(|e| format!("the event cannot be given to CEL: {e}"))?;
            self.provided.event = true;
        }
        Ok(())
    }
}

/// The paths under `body` that `expr` reads, or `None` when it may read anything (it uses
/// `body` other than through field selections, e.g. `body["ref"]` or `body` alone, or rebinds
/// the name). `has(body.a.b)` reads `body.a`; `body.commits.exists(...)` reads `body.commits`.
fn body_paths(expr: &cel::IdedExpr) -> Option<Vec<Vec<String>>> {
    let mut paths = Vec::new();
    collect_body_paths(&expr.expr, &mut paths).then_some(paths)
}

/// Adds the body paths `expr` reads to `paths`; `false` if it may read the whole body.
fn collect_body_paths(expr: &cel::common::ast::Expr, paths: &mut Vec<Vec<String>>) -> bool {
    use cel::common::ast::{EntryExpr, Expr};
    match expr {
        Expr::Ident(name) => name != "body",
        Expr::Select(select) => match body_chain(&select.operand.expr) {
            Some(mut path) => {
                if !select.test {
                    path.push(select.field.clone());
                }
                paths.push(path);
                true
            }
            None => collect_body_paths(&select.operand.expr, paths),
        },
        Expr::Call(call) => {
            call.target.iter().all(|t| collect_body_paths(&t.expr, paths))
                && call.args.iter().all(|a| collect_body_paths(&a.expr, paths))
        }
        Expr::List(list) => list.elements.iter().all(|e| collect_body_paths(&e.expr, paths)),
        Expr::Map(map) => map.entries.iter().all(|e| match &e.expr {
            EntryExpr::MapEntry(m) => {
                collect_body_paths(&m.key.expr, paths) && collect_body_paths(&m.value.expr, paths)
            }
            EntryExpr::StructField(f) => collect_body_paths(&f.value.expr, paths),
        }),
        Expr::Struct(st) => st.entries.iter().all(|e| match &e.expr {
            EntryExpr::MapEntry(m) => {
                collect_body_paths(&m.key.expr, paths) && collect_body_paths(&m.value.expr, paths)
            }
            EntryExpr::StructField(f) => collect_body_paths(&f.value.expr, paths),
        }),
        Expr::Comprehension(c) => {
            let rebinds = c.iter_var == "body" || c.accu_var == "body" || c.iter_var2.as_deref() == Some("body");
            !rebinds
                && [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result]
                    .into_iter()
                    .all(|e| collect_body_paths(&e.expr, paths))
        }
        Expr::Literal(_) | Expr::Unspecified => true,
    }
}

/// `body.a.b` → `["a", "b"]`, `body` → `[]`, anything else → `None`.
fn body_chain(expr: &cel::common::ast::Expr) -> Option<Vec<String>> {
    use cel::common::ast::Expr;
    match expr {
        Expr::Ident(name) if name == "body" => Some(Vec::new()),
        Expr::Select(select) if !select.test => {
            let mut path = body_chain(&select.operand.expr)?;
            path.push(select.field.clone());
            Some(path)
        }
        _ => None,
    }
}

/// The parts of `body` at `paths`, in place, everything else left out. A path that runs into a
/// missing key or a non-object stops there, with what is there copied, so a filter fails on the
/// pruned body exactly where it would fail on the whole one.
fn prune(body: &serde_json::Value, paths: &[Vec<String>]) -> serde_json::Value {
    use serde_json::{Map, Value};
    if !body.is_object() || paths.iter().any(Vec::is_empty) {
        return body.clone();
    }
    let mut sorted: Vec<&Vec<String>> = paths.iter().collect();
    sorted.sort_by_key(|p| p.len());
    let mut kept: Vec<&Vec<String>> = Vec::new();
    for path in sorted {
        // A shorter path already copies everything under it.
        if !kept.iter().any(|k| path.starts_with(k)) {
            kept.push(path);
        }
    }
    let mut out = Map::new();
    for path in kept {
        let (mut src, mut dst) = (body, &mut out);
        for (i, key) in path.iter().enumerate() {
            let Some(value) = src.get(key) else { break };
            if i + 1 == path.len() || !value.is_object() {
                dst.insert(key.clone(), value.clone());
                break;
            }
            let entry = dst.entry(key.clone()).or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(next) = entry else { break };
            dst = next;
            src = value;
        }
    }
    Value::Object(out)
}

/// Converts JSON straight into CEL values: the one conversion webhook filters and pipeline
/// expressions share, so a payload reads the same in both.
///
/// Whole numbers become `int` where they fit, so `body.number == 128` holds as written; whole
/// numbers above `int`'s range become `uint` (`body.id == 18446744073709551615u`); anything
/// else, fractions and whole numbers beyond `uint` or below `int`, is a `double`, as JSON
/// parsing already made it. Going through `serde` instead (`cel::to_value`) would make every
/// positive number a `uint`.
///
/// ```
/// use skiff_edge_core::json_to_cel;
///
/// let body = serde_json::json!({"number": 128, "id": u64::MAX, "ratio": 0.5, "gone": null});
/// let cel::Value::Map(map) = json_to_cel(&body) else { panic!("an object is a map") };
/// let field = |name: &str| format!("{:?}", map.map[&cel::objects::Key::from(name)]);
/// assert_eq!(field("number"), "Int(128)");
/// assert_eq!(field("id"), "UInt(18446744073709551615)");
/// assert_eq!(field("ratio"), "Float(0.5)");
/// assert_eq!(field("gone"), "Null");
/// ```
pub fn json_to_cel(value: &serde_json::Value) -> cel::Value {
    use serde_json::Value as J;
    match value {
        J::Null => cel::Value::Null,
        J::Bool(b) => cel::Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            // `as_f64` fails only with serde_json's `arbitrary_precision` (which nothing here
            // enables) for a number beyond `double`; NaN then equals nothing, where 0.0 would
            // pass for a value the payload never held.
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => cel::Value::String(Arc::new(s.clone())),
        J::Array(items) => cel::Value::List(Arc::new(items.iter().map(json_to_cel).collect())),
        J::Object(map) => {
            let map: std::collections::HashMap<cel::objects::Key, cel::Value> =
                map.iter().map(|(k, v)| (cel::objects::Key::String(Arc::new(k.clone())), json_to_cel(v))).collect();
            cel::Value::Map(cel::objects::Map { map: Arc::new(map) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Provider;

    fn event(body: serde_json::Value) -> Event {
        Event {
            provider: Provider::Github,
            kind: crate::event::EventKind::Push,
            name: "push".into(),
            delivery_id: "d".into(),
            repository: None,
            git_ref: Some("refs/heads/master".into()),
            branch: Some("master".into()),
            tag: None,
            before: None,
            after: None,
            deleted: false,
            pull_request: None,
            changed_paths: None,
            sender: None,
            body,
        }
    }

    fn eval(src: &str, event: &Event) -> Result<bool, String> {
        let headers = Headers::from_pairs([("X-GitHub-Event", "push"), ("Authorization", "Bearer t")]);
        let filter = Filter::new(src).unwrap();
        filter.eval(&mut FilterVars::new(event, &headers, [&filter]))
    }

    #[test]
    fn serverless_cd_filter_works_as_written() {
        let e = event(serde_json::json!({"ref": "refs/heads/master", "number": 128, "commits": [{"id": "1"}]}));
        assert_eq!(eval(r#"body.ref in ["refs/heads/master"]"#, &e), Ok(true));
        assert_eq!(eval(r#"body.ref in ["refs/heads/dev"]"#, &e), Ok(false));
        assert_eq!(eval(r#"headers["x-github-event"] == "push""#, &e), Ok(true));
        assert_eq!(eval(r#"event.kind.type == "push" && event.branch.startsWith("mas")"#, &e), Ok(true));
        assert_eq!(eval("size(body.commits) > 0", &e), Ok(true));
        assert_eq!(eval("body.number == 128 && body.number > 100", &e), Ok(true));
        assert_eq!(eval("has(body.release)", &e), Ok(false));
    }

    #[test]
    fn errors_non_booleans_and_credentials() {
        let e = event(serde_json::json!({"ref": "refs/heads/master"}));
        let err = eval("body.release.tag_name == 'v1'", &e).unwrap_err();
        assert!(err.contains("No such key: release"), "{err}");
        let err = eval("body.ref", &e).unwrap_err();
        assert!(err.contains("not true or false"), "{err}");
        assert_eq!(eval(r#""authorization" in headers"#, &e), Ok(false));
    }

    /// The one JSON → CEL conversion, pipeline expressions' too: each number becomes the CEL
    /// number that holds it, and filters compare them as written.
    #[test]
    fn json_numbers_become_the_cel_number_that_holds_them() {
        let cel = |json: &str| format!("{:?}", json_to_cel(&serde_json::from_str(json).unwrap()));
        assert_eq!(cel("128"), "Int(128)");
        assert_eq!(cel("-9223372036854775808"), "Int(-9223372036854775808)");
        assert_eq!(cel("9223372036854775807"), "Int(9223372036854775807)");
        assert_eq!(cel("9223372036854775808"), "UInt(9223372036854775808)");
        assert_eq!(cel("18446744073709551615"), "UInt(18446744073709551615)");
        assert_eq!(cel("18446744073709551616"), "Float(1.8446744073709552e19)");
        assert_eq!(cel("-9223372036854775809"), "Float(-9.223372036854776e18)");
        assert_eq!(cel("1.0"), "Float(1.0)");
        assert_eq!(cel("-0.5"), "Float(-0.5)");
        assert_eq!(cel("null"), "Null");
        assert_eq!(cel(r#"[1, "1"]"#), format!("{:?}", cel::Value::List(Arc::new(vec![1.into(), "1".into()]))));

        let body = r#"{"n": 128, "id": 18446744073709551615, "big": 18446744073709551616, "ratio": 0.5, "gone": null}"#;
        let e = event(serde_json::from_str(body).unwrap());
        for src in [
            "body.n == 128 && body.n > 100 && body.n == 128u && body.n == 128.0",
            "body.id == 18446744073709551615u && body.id > 9223372036854775807u",
            "body.big > 1.8e19 && body.big < 1.9e19",
            "body.ratio > 0.25 && body.ratio < 1.0",
            "body.gone == null",
        ] {
            assert_eq!(eval(src, &e), Ok(true), "{src}");
        }
    }

    #[test]
    fn only_mentioned_variables_are_converted() {
        let f = Filter::new("event.branch == 'main' || body.x == 1").unwrap();
        assert_eq!(f.uses, Uses { body: true, headers: false, event: true });
    }

    #[test]
    fn body_paths_are_found_conservatively() {
        let paths = |src: &str| Filter::new(src).unwrap().body_paths.map(|p| p.as_ref().clone());
        let v = |p: &[&[&str]]| Some(p.iter().map(|x| x.iter().map(|s| s.to_string()).collect()).collect::<Vec<_>>());
        assert_eq!(paths(r#"body.ref in ["refs/heads/master"]"#), v(&[&["ref"]]));
        assert_eq!(
            paths("has(body.release.tag_name) && body.repository.full_name == 'a'"),
            v(&[&["release"], &["repository", "full_name"]])
        );
        assert_eq!(paths("body.commits.exists(c, c.id == '1')"), v(&[&["commits"]]));
        assert_eq!(paths("event.branch == 'main'"), v(&[]));
        assert_eq!(paths(r#"body["ref"] == "x""#), None);
        assert_eq!(paths("size(body) > 1"), None);
        assert_eq!(paths("[1].exists(body, body == 1)"), None);
    }

    #[test]
    fn pruning_keeps_what_filters_read_and_fails_where_they_would() {
        let body = serde_json::json!({"ref": "r", "a": {"b": 1, "c": 2}, "s": "text", "big": [1, 2, 3]});
        let p = |paths: &[&[&str]]| {
            let paths: Vec<Vec<String>> = paths.iter().map(|x| x.iter().map(|s| s.to_string()).collect()).collect();
            prune(&body, &paths)
        };
        assert_eq!(p(&[&["ref"], &["a", "b"]]), serde_json::json!({"ref": "r", "a": {"b": 1}}));
        assert_eq!(p(&[&["a", "b"], &["a"]]), serde_json::json!({"a": {"b": 1, "c": 2}}));
        assert_eq!(p(&[&["s", "x"], &["missing", "x"]]), serde_json::json!({"s": "text"}));
        assert_eq!(p(&[&[]]), body);
        // Same answers and same errors as on the whole body.
        let e = event(body.clone());
        let no_headers = Headers::new();
        for src in [
            "body.a.b == 1",
            "body.s.x == 1",
            "body.missing.x == 1",
            "has(body.a.z)",
            "body.ref == 'r' && size(body.big) == 3",
        ] {
            let filter = Filter::new(src).unwrap();
            let pruned = filter.eval(&mut FilterVars::new(&e, &no_headers, [&filter]));
            let whole = Filter::new(format!("{src} || body == null")).unwrap();
            let mut whole_vars = FilterVars::new(&e, &no_headers, [&whole]);
            assert!(whole_vars.body_paths.is_none());
            let unpruned = Filter::new(src).unwrap().eval(&mut whole_vars);
            assert_eq!(pruned, unpruned, "{src}");
        }
    }

    /// Found by fuzzing (fuzz/seeds/trigger/operator-chain): `1 + 1 + … + 1 > 0` passes the
    /// parser's own depth limit, but the parser and the evaluator recurse once per link,
    /// overflow the stack and abort the process.
    #[test]
    fn chains_too_long_or_deep_to_evaluate_are_refused() {
        let chain = |n: usize| format!("1{} > 0", " + 1".repeat(n));
        let e = event(serde_json::json!({}));
        assert_eq!(eval(&chain(cel_limits::MAX_DEPTH - 2), &e), Ok(true));
        let err = Filter::new(chain(500)).unwrap_err();
        assert!(err.message.contains("nests more than 100 levels"), "{err}");
        let nested = "[1].all(a, [1].all(b, [1].all(c, true)))";
        assert!(Filter::new(nested).unwrap_err().message.contains("comprehensions"));
        let err = Filter::new(chain(6000)).unwrap_err();
        assert!(err.message.contains("24005 bytes long, more than 4096"), "{err}");
    }

    #[test]
    fn filters_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Filter>();
    }
}
