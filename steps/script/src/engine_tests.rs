//! The JavaScript API on the build machine, against a fake host: what each call
//! asks of the host and what the script sees. The real capabilities are tested
//! through the runtime in `host/tests/all/script.rs`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::engine::{self, Config, Failure};
use crate::host::{Exec, ExecResult, Fetch, FetchResult, Host, HostError, Level};
use crate::position::Origin;

#[derive(Default)]
struct Fake {
    log: RefCell<Vec<(Level, String)>>,
    execs: RefCell<Vec<Exec>>,
    fetches: RefCell<Vec<Fetch>>,
    deny_exec: bool,
}

impl Host for Fake {
    fn log(&self, level: Level, text: &str) {
        self.log.borrow_mut().push((level, text.to_string()));
    }
    fn summary(&self, markdown: &str) {
        self.log.borrow_mut().push((Level::Debug, format!("summary: {markdown}")));
    }
    fn exec(&self, cmd: &Exec) -> Result<ExecResult, HostError> {
        self.execs.borrow_mut().push(cmd.clone());
        if self.deny_exec {
            return Err(HostError { error: "not granted: add `permissions: { process: true }`".into(), denied: true });
        }
        // `echo` prints its arguments; `fail` exits 3 with a message; anything else prints nothing.
        Ok(match cmd.program.as_str() {
            "echo" => ExecResult { code: Some(0), stdout: format!("{}\n", cmd.args.join(" ")), ..Default::default() },
            "fail" => ExecResult { code: Some(3), stderr: "it broke\n".into(), ..Default::default() },
            _ => ExecResult { code: Some(0), ..Default::default() },
        })
    }
    fn fetch(&self, req: &Fetch) -> Result<FetchResult, HostError> {
        self.fetches.borrow_mut().push(req.clone());
        if req.url.contains("denied.example") {
            return Err(HostError { error: "outbound HTTP to `denied.example` is not allowed".into(), denied: true });
        }
        if req.url.ends_with("/moved") {
            return Ok(FetchResult {
                status: 302,
                headers: vec![("location".into(), "/json".into())],
                body: String::new(),
            });
        }
        Ok(FetchResult {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: format!(
                r#"{{"method":"{}","url":"{}","body":{:?}}}"#,
                req.method,
                req.url,
                req.body.clone().unwrap_or_default()
            ),
        })
    }
    fn secret(&self, name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "s3cret".to_string())
    }
}

struct Run {
    result: Result<BTreeMap<String, String>, Failure>,
    host: Rc<Fake>,
    _dir: tempfile::TempDir,
}

impl Run {
    fn lines(&self) -> Vec<String> {
        self.host.log.borrow().iter().map(|(_, t)| t.clone()).collect()
    }
    fn ok(&self) -> &BTreeMap<String, String> {
        match &self.result {
            Ok(o) => o,
            Err(f) => panic!("script failed: {}\nlog: {:?}", f.message, self.lines()),
        }
    }
    fn err(&self) -> &Failure {
        match &self.result {
            Ok(_) => panic!("script succeeded; log: {:?}", self.lines()),
            Err(f) => f,
        }
    }
}

fn run_with(script: &str, host: Fake, setup: impl FnOnce(&std::path::Path)) -> Run {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let host = Rc::new(host);
    let config = Config {
        script: script.into(),
        origin: Origin::parse("ci.yaml:10:12").unwrap(),
        inputs: BTreeMap::from([("name".to_string(), "  world  ".to_string())]),
        env: vec![("SKIFF_EXPR_1".into(), "`; touch INJECTED` ${process.exit}".into()), ("CI".into(), "true".into())],
        root: dir.path().to_path_buf(),
    };
    let result = engine::run(config, host.clone());
    Run { result, host, _dir: dir }
}

fn run(script: &str) -> Run {
    run_with(script, Fake::default(), |_| {})
}

#[test]
fn console_and_top_level_await() {
    let r = run("const x = await Promise.resolve(41) + 1;\n\
         console.log('x =', x, {a: [1, 'two']}, null);\n\
         console.error('%s is %d', 'n', 7);");
    r.ok();
    assert_eq!(r.lines(), ["x = 42 { a: [ 1, \"two\" ] } null", "n is 7"]);
    assert_eq!(r.host.log.borrow()[1].0, Level::Error);
}

#[test]
fn dollar_runs_argv_without_a_shell() {
    let r = run("const out = await $`echo hello ${process.env.SKIFF_EXPR_1} ${['a b', 'c']}`;\nconsole.log(out);");
    r.ok();
    let execs = r.host.execs.borrow();
    assert_eq!(execs[0].program, "echo");
    assert_eq!(execs[0].args, ["hello", "`; touch INJECTED` ${process.exit}", "a b", "c"]);
    assert!(execs[0].env.contains(&("CI".into(), "true".into())));
    assert_eq!(execs[0].cwd, "");
    assert!(!execs[0].quiet);
    assert_eq!(r.lines(), ["hello `; touch INJECTED` ${process.exit} a b c"]);
}

#[test]
fn dollar_failures_reject_unless_nothrow() {
    let r = run("const o = await $`fail`.nothrow().quiet();\nconsole.log(o.exitCode, o.stderr.trim(), o.ok);");
    r.ok();
    assert_eq!(r.lines(), ["3 it broke false"]);
    assert!(r.host.execs.borrow()[0].quiet);

    let r = run("try { await $`fail x` } catch (e) { console.log(e.exitCode, e instanceof ProcessOutput, e.message) }");
    r.ok();
    assert_eq!(r.lines(), ["3 true `fail x` exited with code 3:\nit broke"]);

    let r = run("await $`fail now`;");
    let e = r.err();
    assert!(e.message.contains("ProcessOutput: `fail now` exited with code 3"), "{}", e.message);
    assert!(e.message.contains("it broke"), "{}", e.message);
}

#[test]
fn commands_run_in_order_and_unawaited_ones_still_run() {
    let r = run("$`echo one`; const two = $`echo two`; await $`echo three`; $`echo four`;");
    r.ok();
    let order: Vec<String> = r.host.execs.borrow().iter().map(|e| e.args.join(" ")).collect();
    assert_eq!(order, ["one", "two", "three", "four"]);

    // A failing command nobody awaited fails the step at the end.
    let r = run("$`fail quietly`; console.log('after');");
    assert!(r.err().message.starts_with("unhandled promise rejection: ProcessOutput"), "{}", r.err().message);
    assert_eq!(r.lines(), ["after"]);
}

#[test]
fn denied_process_fails_as_denied() {
    let host = Fake { deny_exec: true, ..Fake::default() };
    let r = run_with("await $`ls -la`", host, |_| {});
    let e = r.err();
    assert!(e.denied);
    assert!(e.message.contains("permissions: { process: true }"), "{}", e.message);
}

#[test]
fn shell_syntax_in_a_command_is_an_error_in_the_script() {
    let r = run("try { $`ls | wc -l` } catch (e) { console.log(e.message) }");
    r.ok();
    assert!(r.lines()[0].contains("bash -c"), "{:?}", r.lines());
    let r = run("$`echo ${undefined}`");
    assert!(r.err().message.contains("value #1"), "{}", r.err().message);
}

#[test]
fn cd_within_and_fs_stay_in_the_workspace() {
    let r = run_with(
        "fs.mkdirSync('a/b', {recursive: true});\n\
         await fs.writeFile('a/b/f.txt', 'hi');\n\
         cd('a');\n\
         console.log(process.cwd(), fs.readFileSync('b/f.txt'), fs.existsSync('b/nope'), fs.readdirSync('b'));\n\
         await within(async () => { cd('b'); console.log(process.cwd()); await $`true`; });\n\
         console.log(process.cwd());\n\
         for (const p of ['../../x', '/etc/passwd', '/ln/passwd']) {\n\
           try { fs.readFileSync(p); console.log('read', p) } catch (e) { console.log(e.code) }\n\
         }",
        Fake::default(),
        |root| {
            #[cfg(unix)]
            std::os::unix::fs::symlink("/etc", root.join("ln")).unwrap();
        },
    );
    r.ok();
    let lines = r.lines();
    assert_eq!(lines[0], "/workspace/a hi false [ \"f.txt\" ]");
    assert_eq!(lines[1], "/workspace/a/b");
    assert_eq!(lines[2], "/workspace/a");
    assert_eq!(&lines[3..5], ["SKIFF_OUTSIDE_WORKSPACE", "SKIFF_OUTSIDE_WORKSPACE"]);
    #[cfg(unix)]
    assert_eq!(lines[5], "SKIFF_OUTSIDE_WORKSPACE");
    assert_eq!(r.host.execs.borrow()[0].cwd, "a/b");
}

#[test]
fn fetch_follows_redirects_and_rejects_with_the_host_message() {
    let r =
        run("const res = await fetch('http://api.test/moved', {method: 'POST', body: 'x', headers: {'X-A': '1'}});\n\
         const j = await res.json();\n\
         console.log(res.status, res.ok, res.headers.get('Content-Type'), j.method, j.url, res.redirected);\n\
         await fetch('https://denied.example/x').catch(e => console.log(e.code, e.message));");
    r.ok();
    assert_eq!(
        r.lines(),
        [
            "200 true application/json GET http://api.test/json true",
            "SKIFF_DENIED outbound HTTP to `denied.example` is not allowed"
        ]
    );
    let fetches = r.host.fetches.borrow();
    assert_eq!(fetches[0].headers, [("x-a".to_string(), "1".to_string())]);
    assert_eq!(fetches[0].body.as_deref(), Some("x"));
    assert_eq!(fetches[1].body, None);
}

#[test]
fn core_inputs_outputs_secrets() {
    let r = run("core.setOutput('v', '42'); core.setOutput('obj', {a: 1}); core.setOutput('n', 7);\n\
         console.log(`[${core.getInput('name')}]`, `[${core.getInput('missing')}]`, core.getSecret('TOKEN'));\n\
         try { core.getSecret('OTHER') } catch (e) { console.log(e.message) }\n\
         try { core.setOutput('skiff.env.X', '1') } catch (e) { console.log('reserved') }");
    let out = r.ok();
    assert_eq!(out.get("v").map(String::as_str), Some("42"));
    assert_eq!(out.get("obj").map(String::as_str), Some(r#"{"a":1}"#));
    assert_eq!(out.get("n").map(String::as_str), Some("7"));
    assert_eq!(r.lines()[0], "[world] [] s3cret");
    assert!(r.lines()[1].contains("permissions: { secrets: [OTHER] }"), "{}", r.lines()[1]);
    assert_eq!(r.lines()[2], "reserved");
    assert!(!out.contains_key("skiff.env.X"));
}

#[test]
fn syntax_errors_point_into_the_pipeline_file() {
    let e = run("let x = ;").err().clone();
    assert!(e.message.contains("ci.yaml:10:"), "{}", e.message);
    assert!(e.message.contains("SyntaxError"), "{}", e.message);
    // Line 2 of the script is line 11 of the file, columns unshifted.
    let e = run("console.log(1);\nlet = = 2;").err().clone();
    assert!(e.message.contains("ci.yaml:11:"), "{}", e.message);
}

#[test]
fn uncaught_errors_carry_message_and_stack() {
    let e = run("function f() { throw new Error('boom') }\nf();").err().clone();
    assert!(e.message.starts_with("Error: boom"), "{}", e.message);
    assert!(e.message.contains("at f (ci.yaml:10:"), "{}", e.message);
    assert!(!e.message.contains("<skiff>"), "{}", e.message);
    let e = run("await null; throw 'plain'").err().clone();
    assert_eq!(e.message, "Uncaught \"plain\"");
}

#[test]
fn timers_sleep_retry_and_exit() {
    let r = run("const t0 = Date.now(); setTimeout(() => console.log('timer'), 5); await sleep('20ms');\n\
         console.log('slept', Date.now() - t0 >= 20);\n\
         let n = 0; const v = await retry(3, async () => { if (++n < 3) throw new Error('again'); return n });\n\
         console.log('retry', v);\n\
         echo`done ${v}`;");
    r.ok();
    let lines = r.lines();
    assert_eq!(lines[0], "timer");
    assert_eq!(lines[1], "slept true");
    assert!(lines[2].contains("attempt 1 of 3 failed: again"));
    assert_eq!(lines.last().unwrap(), "done 3");

    run("console.log('a'); process.exit(0); console.log('b')").ok();
    let r = run("setTimeout(() => console.log('never'), 1); process.exit(2)");
    assert_eq!(r.err().message, "the script exited with code 2");
    assert!(r.lines().is_empty());
    let r = run("core.setFailed('nope'); console.log('goes on')");
    assert_eq!(r.err().message, "nope");
}

#[test]
fn imports_are_refused() {
    let e = run("import x from './x.mjs';").err().clone();
    assert!(e.message.contains("cannot `import`"), "{}", e.message);
}
