//! The JavaScript engine (boa) set up for one script: Skiff's API installed
//! (`prelude.js` over a handful of native functions that reach the [`Host`]),
//! the script run as an ES module (so top-level `await` works), and the job
//! queue driven until nothing is left to do.
//!
//! The event loop is ours and single-threaded: promise jobs run until the queue
//! is empty, then the API's `tick` runs one macrotask (a `$` command nobody
//! awaited yet, or a due timer; it sleeps until the next timer when that is all
//! there is), and so on until `tick` has nothing to do.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll, Waker};

use boa_engine::builtins::promise::{OperationType, PromiseState};
use boa_engine::context::HostHooks;
use boa_engine::job::{Job, JobExecutor};
use boa_engine::module::IdleModuleLoader;
use boa_engine::object::ObjectInitializer;
use boa_engine::object::builtins::{JsFunction, JsPromise};
use boa_engine::{
    Context, JsError, JsNativeError, JsObject, JsResult, JsString, JsValue, Module, NativeFunction, Source,
};
use serde_json::{Value, json};

use crate::argv::{self, Piece};
use crate::host::{Exec, Fetch, Host, Level};
use crate::paths;
use crate::position::{Origin, PRELUDE_PATH, SCRIPT_PATH};

/// Skiff's JavaScript API, written in JavaScript over the natives below.
const PRELUDE: &str = include_str!("prelude.js");

/// What one script run is given.
pub struct Config {
    /// The JavaScript source.
    pub script: String,
    /// Where it starts in the pipeline file.
    pub origin: Origin,
    /// The step's inputs (`core.getInput`).
    pub inputs: BTreeMap<String, String>,
    /// The step's environment (`process.env`).
    pub env: Vec<(String, String)>,
    /// The workspace as this process sees it (`/workspace` in the component).
    pub root: PathBuf,
}

/// Why a script failed: the text for the user, and whether a capability was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    pub denied: bool,
}

impl Failure {
    fn failed(message: impl Into<String>) -> Self {
        Self { message: message.into(), denied: false }
    }
}

/// What the natives reach: the host and the run's state, kept in the context.
struct State {
    host: Rc<dyn Host>,
    inputs: BTreeMap<String, String>,
    env: Vec<(String, String)>,
    root: PathBuf,
    outputs: RefCell<BTreeMap<String, String>>,
    /// `process.exit(code)` was called.
    exit: Cell<Option<i32>>,
    /// `core.setFailed(message)` was called.
    failed: RefCell<Option<String>>,
}

/// A FIFO of the engine's jobs (promise reactions, mostly).
#[derive(Default)]
struct Jobs {
    queue: RefCell<VecDeque<Job>>,
}

impl JobExecutor for Jobs {
    fn enqueue_job(self: Rc<Self>, job: Job, _context: &mut Context) {
        self.queue.borrow_mut().push_back(job);
    }

    fn run_jobs(self: Rc<Self>, context: &mut Context) -> JsResult<()> {
        loop {
            let job = self.queue.borrow_mut().pop_front();
            let Some(job) = job else { return Ok(()) };
            match job {
                Job::PromiseJob(job) => {
                    job.call(context)?;
                }
                Job::GenericJob(job) => {
                    job.call(context)?;
                }
                Job::TimeoutJob(job) => {
                    job.call(context)?;
                }
                Job::AsyncJob(job) | Job::FinalizationRegistryCleanupJob(job) => {
                    // Nothing of ours is asynchronous: such a job finishes when first polled.
                    let cell = RefCell::new(&mut *context);
                    let mut future = std::pin::pin!(job.call(&cell));
                    match future.as_mut().poll(&mut TaskContext::from_waker(Waker::noop())) {
                        Poll::Ready(result) => {
                            result?;
                        }
                        Poll::Pending => {
                            return Err(JsNativeError::error()
                                .with_message("an asynchronous engine job did not finish")
                                .into());
                        }
                    }
                }
                // Intervals and any later kinds are not produced without a runtime crate.
                _ => {}
            }
        }
    }
}

/// Tracks promises rejected with no handler (Node fails on those; so do we, at the end).
#[derive(Default)]
struct Hooks {
    unhandled: RefCell<Vec<JsObject>>,
}

impl HostHooks for Hooks {
    fn promise_rejection_tracker(
        &self,
        promise: &JsObject<boa_engine::builtins::promise::Promise>,
        operation: OperationType,
        _context: &mut Context,
    ) {
        let promise = promise.clone().upcast();
        let mut unhandled = self.unhandled.borrow_mut();
        match operation {
            OperationType::Reject => unhandled.push(promise),
            OperationType::Handle => unhandled.retain(|p| !JsObject::equals(p, &promise)),
        }
    }
}

/// Runs `config.script` to its end; returns the outputs it set.
pub fn run(config: Config, host: Rc<dyn Host>) -> Result<BTreeMap<String, String>, Failure> {
    let jobs = Rc::new(Jobs::default());
    let hooks = Rc::new(Hooks::default());
    let mut ctx = Context::builder()
        .job_executor(jobs.clone())
        .host_hooks(hooks.clone())
        // No `import`: a script is one file, and modules are not fetched from anywhere.
        .module_loader(Rc::new(IdleModuleLoader))
        .build()
        .map_err(|e| Failure::failed(format!("cannot start the JavaScript engine: {e}")))?;
    let state = Rc::new(State {
        host,
        inputs: config.inputs,
        env: config.env,
        root: config.root,
        outputs: RefCell::new(BTreeMap::new()),
        exit: Cell::new(None),
        failed: RefCell::new(None),
    });
    ctx.insert_data(state.clone());
    let origin = config.origin;

    let api = install(&mut ctx).map_err(|e| Failure::failed(format!("cannot set up the script API: {e}")))?;
    let get = |name: &str, ctx: &mut Context| -> Result<JsFunction, Failure> {
        api.get(JsString::from(name), ctx)
            .ok()
            .and_then(|v| v.as_function())
            .ok_or_else(|| Failure::failed(format!("the script API has no `{name}`")))
    };
    let tick = get("tick", &mut ctx)?;
    let describe = get("describe", &mut ctx)?;
    let explain = |value: JsValue, ctx: &mut Context| -> Failure {
        let described = describe
            .call(&JsValue::undefined(), std::slice::from_ref(&value), ctx)
            .ok()
            .and_then(|v| v.as_string())
            .and_then(|s| serde_json::from_str::<Value>(&s.to_std_string_escaped()).ok());
        match described {
            Some(d) => Failure {
                message: origin.rewrite(d["text"].as_str().unwrap_or("the script failed")),
                denied: d["denied"].as_bool().unwrap_or(false),
            },
            None => Failure::failed(origin.rewrite(&value.display().to_string())),
        }
    };
    let uncaught = |e: JsError, ctx: &mut Context| -> Failure {
        match e.clone().into_opaque(ctx) {
            Ok(value) => explain(value, ctx),
            Err(_) => Failure::failed(origin.rewrite(&e.to_string())),
        }
    };

    let source = Source::from_bytes(config.script.as_bytes()).with_path(Path::new(SCRIPT_PATH));
    let module = match Module::parse(source, None, &mut ctx) {
        Ok(m) => m,
        Err(e) => {
            // The native error's own position is where boa raised it, not in the script.
            let text = e.as_native().map_or_else(|| e.to_string(), |n| format!("{}: {}", n.kind(), n.message()));
            return Err(Failure::failed(origin.rewrite(&text)));
        }
    };
    let done = module.load_link_evaluate(&mut ctx);
    loop {
        if let Err(e) = jobs.clone().run_jobs(&mut ctx) {
            return Err(uncaught(e, &mut ctx));
        }
        if state.exit.get().is_some() || matches!(done.state(), PromiseState::Rejected(_)) {
            break;
        }
        let worked = match tick.call(&JsValue::undefined(), &[], &mut ctx) {
            Ok(v) => v.to_boolean(),
            Err(e) => return Err(uncaught(e, &mut ctx)),
        };
        if !worked || state.exit.get().is_some() {
            break;
        }
    }

    let outputs = state.outputs.borrow().clone();
    if let Some(code) = state.exit.get() {
        return if code == 0 {
            Ok(outputs)
        } else {
            Err(Failure::failed(format!("the script exited with code {code}")))
        };
    }
    match done.state() {
        PromiseState::Rejected(reason) => {
            let f = explain(reason, &mut ctx);
            if f.message.contains("module resolution is disabled") {
                return Err(Failure::failed(
                    "a script step cannot `import` modules: it is one file; put shared code in a `run:` step's \
                     program or inline it",
                ));
            }
            return Err(f);
        }
        PromiseState::Pending => {
            return Err(Failure::failed(
                "the script's top-level `await` waits for a promise that nothing will ever settle",
            ));
        }
        PromiseState::Fulfilled(_) => {}
    }
    let unhandled = hooks.unhandled.borrow().first().cloned();
    if let Some(promise) = unhandled
        && let Ok(promise) = JsPromise::from_object(promise)
        && let PromiseState::Rejected(reason) = promise.state()
    {
        let f = explain(reason, &mut ctx);
        return Err(Failure { message: format!("unhandled promise rejection: {}", f.message), ..f });
    }
    if let Some(message) = state.failed.borrow().clone() {
        return Err(Failure::failed(message));
    }
    Ok(outputs)
}

/// Installs the API: the natives as one object handed to `prelude.js`, which defines
/// the globals and returns its hooks for the event loop (`tick`, `describe`).
fn install(ctx: &mut Context) -> JsResult<JsObject> {
    type Native = fn(&JsValue, &[JsValue], &mut Context) -> JsResult<JsValue>;
    let natives: [(&str, Native, usize); 13] = [
        ("log", native_log, 2),
        ("summary", native_summary, 1),
        ("argv", native_argv, 1),
        ("exec", native_exec, 1),
        ("fetch", native_fetch, 1),
        ("secret", native_secret, 1),
        ("input", native_input, 1),
        ("setOutput", native_set_output, 2),
        ("env", native_env, 0),
        ("fs", native_fs, 2),
        ("sleep", native_sleep, 1),
        ("exit", native_exit, 1),
        ("fail", native_fail, 1),
    ];
    let mut init = ObjectInitializer::new(ctx);
    for (name, f, length) in natives {
        init.function(NativeFunction::from_fn_ptr(f), JsString::from(name), length);
    }
    let host = init.build();
    let prelude = ctx.eval(Source::from_bytes(PRELUDE).with_path(Path::new(PRELUDE_PATH)))?;
    let prelude =
        prelude.as_function().ok_or_else(|| JsNativeError::typ().with_message("prelude is not a function"))?;
    let api = prelude.call(&JsValue::undefined(), &[host.into()], ctx)?;
    api.as_object().ok_or_else(|| JsNativeError::typ().with_message("prelude returned no hooks").into())
}

fn state(ctx: &Context) -> Rc<State> {
    ctx.get_data::<Rc<State>>().cloned().expect("the state is installed before any script runs")
}

fn arg(args: &[JsValue], i: usize, ctx: &mut Context) -> JsResult<String> {
    Ok(args.get(i).cloned().unwrap_or_default().to_string(ctx)?.to_std_string_escaped())
}

fn string(s: impl AsRef<str>) -> JsValue {
    JsValue::from(JsString::from(s.as_ref()))
}

fn json_arg(args: &[JsValue], i: usize, ctx: &mut Context) -> JsResult<Value> {
    serde_json::from_str(&arg(args, i, ctx)?)
        .map_err(|e| JsNativeError::typ().with_message(format!("bad request from the script API: {e}")).into())
}

fn native_log(_: &JsValue, args: &[JsValue], ctx: &mut Context) -> JsResult<JsValue> {
    let level = Level::parse(&arg(args, 0, ctx)?);
    let text = arg(args, 1, ctx)?;
    state(ctx).host.log(level, &text);
    Ok(JsValue::undefined())
}

fn native_summary(_: &JsValue, args: &[JsValue], ctx: &mut Context) -> JsResult<JsValue> {
    let text = arg(args, 0, ctx)?;
    state(ctx).host.summary(&text);
    Ok(JsValue::undefined())
}

/// `{parts: [string], values: [[string]]}` (parts interleave with values) → argv as JSON.
fn native_argv(_: &JsValue, args: &[JsValue], ctx: &mut Context) -> JsResult<JsValue> {
    let req = json_arg(args, 0, ctx)?;
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().map(|s| s.as_str().unwrap_or_default().to_string()).collect()).unwrap_or_default()
    };
    let parts = strings(&req["parts"]);
    let values: Vec<Vec<String>> =
        req["values"].as_array().map(|a| a.iter().map(strings).collect()).unwrap_or_default();
    let mut pieces = Vec::with_capacity(parts.len() + values.len());
    for (i, part) in parts.into_iter().enumerate() {
        pieces.push(Piece::Literal(part));
        if let Some(v) = values.get(i) {
            pieces.push(Piece::Value(v.clone()));
        }
    }
    let argv = argv::build(&pieces).map_err(|e| JsNativeError::error().with_message(e))?;
    Ok(string(json!({ "argv": argv, "display": argv::display(&argv) }).to_string()))
}

fn native_exec(_: &JsValue, args: &[JsValue], ctx: &mut Context) -> JsResult<JsValue> {
    let req: Exec = serde_json::from_value(json_arg(args, 0, ctx)?)
        .map_err(|e| JsNativeError::typ().with_message(format!("bad command from the script API: {e}")))?;
    let out = match state(ctx).host.exec(&req) {
        Ok(r) => serde_json::to_string(&r),
        Err(e) => serde_json::to_string(&e),
    };
    Ok(string(out.unwrap_or_default()))
}

fn native_fetch(_: &JsValue, args: &[JsValue], ctx: &mut Context) -> JsResult<JsValue> {
    let req: Fetch = serde_json::from_value(json_arg(args, 0, ctx)?)
        .map_err(|e| JsNativeError::typ().with_message(format!("bad request from the script API: {e}")))?;
    let out = match state(ctx).host.fetch(&req) {
        Ok(r) => serde_json::to_string(&r),
        Err(e) => serde_json::to_string(&e),
    };
    Ok(string(out.unwrap_or_default()))
}

fn native_secret(_: &JsValue, args: &[JsValue], ctx: &mut Context) -> JsResult<JsValue> {
    let name = arg(args, 0, ctx)?;
    Ok(state(ctx).host.secret(&name).map_or(JsValue::undefined(), string))
}

fn native_input(_: &JsValue, args: &[JsValue], ctx: &mut Context) -> JsResult<JsValue> {
    let name = arg(args, 0, ctx)?;
    Ok(state(ctx).inputs.get(&name).map_or(JsValue::undefined(), string))
}

fn native_set_output(_: &JsValue, args: &[JsValue], ctx: &mut Context) -> JsResult<JsValue> {
    let name = arg(args, 0, ctx)?;
    let value = arg(args, 1, ctx)?;
    state(ctx).outputs.borrow_mut().insert(name, value);
    Ok(JsValue::undefined())
}

fn native_env(_: &JsValue, _: &[JsValue], ctx: &mut Context) -> JsResult<JsValue> {
    let map: serde_json::Map<String, Value> =
        state(ctx).env.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    Ok(string(Value::Object(map).to_string()))
}

fn native_sleep(_: &JsValue, args: &[JsValue], ctx: &mut Context) -> JsResult<JsValue> {
    let ms = args.first().cloned().unwrap_or_default().to_number(ctx)?;
    if ms.is_finite() && ms > 0.0 {
        std::thread::sleep(std::time::Duration::from_millis(ms as u64));
    }
    Ok(JsValue::undefined())
}

fn native_exit(_: &JsValue, args: &[JsValue], ctx: &mut Context) -> JsResult<JsValue> {
    let code = args.first().cloned().unwrap_or_default();
    let code = if code.is_undefined() { 0 } else { code.to_i32(ctx)? };
    state(ctx).exit.set(Some(code));
    // Unwinds the current job; the event loop stops before running anything else.
    Err(JsNativeError::error().with_message(format!("process.exit({code})")).into())
}

fn native_fail(_: &JsValue, args: &[JsValue], ctx: &mut Context) -> JsResult<JsValue> {
    let message = arg(args, 0, ctx)?;
    *state(ctx).failed.borrow_mut() = Some(message);
    Ok(JsValue::undefined())
}

/// `fs(op, {cwd, path, ...})` → `{"ok": value}` or `{"error": message, "code": code}`.
fn native_fs(_: &JsValue, args: &[JsValue], ctx: &mut Context) -> JsResult<JsValue> {
    let op = arg(args, 0, ctx)?;
    let req = json_arg(args, 1, ctx)?;
    let out = match fs_op(&state(ctx).root, &op, &req) {
        Ok(v) => json!({ "ok": v }),
        Err((code, message)) => json!({ "error": message, "code": code }),
    };
    Ok(string(out.to_string()))
}

type FsError = (&'static str, String);

fn fs_op(root: &Path, op: &str, req: &Value) -> Result<Value, FsError> {
    let cwd = req["cwd"].as_str().unwrap_or_default();
    let shown = req["path"].as_str().unwrap_or_default();
    let outside = |m: String| ("SKIFF_OUTSIDE_WORKSPACE", m);
    let rel = paths::resolve(cwd, shown).map_err(outside)?;
    paths::check_links(root, &rel, shown).map_err(outside)?;
    let full = if rel.is_empty() { root.to_path_buf() } else { root.join(&rel) };
    let io = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| {
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => "ENOENT",
                std::io::ErrorKind::AlreadyExists => "EEXIST",
                std::io::ErrorKind::PermissionDenied => "EACCES",
                std::io::ErrorKind::NotADirectory => "ENOTDIR",
                std::io::ErrorKind::IsADirectory => "EISDIR",
                std::io::ErrorKind::DirectoryNotEmpty => "ENOTEMPTY",
                _ => "EIO",
            };
            (code, format!("cannot {what} `{shown}`: {e}"))
        }
    };
    let flag = |name: &str| req[name].as_bool().unwrap_or(false);
    let data = || req["data"].as_str().unwrap_or_default();
    match op {
        "cd" => {
            let meta = std::fs::metadata(&full).map_err(io("enter"))?;
            if !meta.is_dir() {
                return Err(("ENOTDIR", format!("cannot enter `{shown}`: it is not a directory")));
            }
            Ok(Value::String(rel))
        }
        "read" => {
            let bytes = std::fs::read(&full).map_err(io("read"))?;
            String::from_utf8(bytes)
                .map(Value::String)
                .map_err(|_| ("EINVAL", format!("cannot read `{shown}`: it is not UTF-8 text")))
        }
        "write" => std::fs::write(&full, data()).map(|()| Value::Null).map_err(io("write")),
        "append" => {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&full)
                .and_then(|mut f| f.write_all(data().as_bytes()))
                .map(|()| Value::Null)
                .map_err(io("append to"))
        }
        "readdir" => {
            let mut names: Vec<String> = std::fs::read_dir(&full)
                .map_err(io("list"))?
                .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect();
            names.sort();
            Ok(json!(names))
        }
        "exists" => Ok(Value::Bool(std::fs::symlink_metadata(&full).is_ok())),
        "mkdir" => {
            let made = if flag("recursive") { std::fs::create_dir_all(&full) } else { std::fs::create_dir(&full) };
            made.map(|()| Value::Null).map_err(io("create directory"))
        }
        "rm" => {
            let meta = match std::fs::symlink_metadata(&full) {
                Ok(m) => m,
                Err(_) if flag("force") => return Ok(Value::Null),
                Err(e) => return Err(io("remove")(e)),
            };
            if rel.is_empty() {
                return Err(("EPERM", "refusing to remove the workspace itself".into()));
            }
            let removed = if meta.is_dir() {
                if flag("recursive") { std::fs::remove_dir_all(&full) } else { std::fs::remove_dir(&full) }
            } else {
                std::fs::remove_file(&full)
            };
            removed.map(|()| Value::Null).map_err(io("remove"))
        }
        "stat" => {
            let meta = std::fs::metadata(&full).map_err(io("stat"))?;
            Ok(json!({ "file": meta.is_file(), "dir": meta.is_dir(), "size": meta.len() }))
        }
        other => Err(("EINVAL", format!("unknown file operation `{other}`"))),
    }
}
