//! Pipeline benchmarks: parse + validate + plan of a generated 200-step
//! pipeline, CEL evaluation per expression (against a plain Rust baseline of
//! the same check), and the engine's overhead per step with a scripted executor whose
//! steps only set an output (against calling the executor directly).

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};

// The tests' scripted executor; the benchmarks use only part of it.
#[allow(dead_code)]
#[path = "../tests/all/support/executor.rs"]
mod executor;
use skiff_pipeline::engine::NoObserver;
use skiff_pipeline::expr::{Scope, compile, parse_template};
use skiff_pipeline::{LogLine, RunOptions, StepExecutor, StepRequest, load_str, run_pipeline};

/// 10 jobs in a chain of needs, 20 steps each, with expressions in most values.
fn generated(jobs: usize, steps: usize) -> String {
    let mut y = String::from("name: generated\nenv:\n  APP: bench\njobs:\n");
    for j in 0..jobs {
        y.push_str(&format!("  job{j}:\n"));
        if j > 0 {
            y.push_str(&format!("    needs: [job{}]\n", j - 1));
        }
        y.push_str("    outputs:\n      v: ${{ steps.s0.outputs.v }}\n    steps:\n");
        for s in 0..steps {
            y.push_str(&format!("      - id: s{s}\n"));
            if s % 2 == 0 {
                y.push_str(&format!("        run: echo \"v=${{{{ env.APP }}}}-{s}\" >> \"$SKIFF_OUTPUT\"\n"));
            } else {
                y.push_str(&format!(
                    "        uses: diag\n        if: steps.s{}.outputs.v != '' && startsWith(event.ref, 'refs/heads/')\n        with:\n          message: ${{{{ steps.s{}.outputs.v }}}} on ${{{{ event.ref }}}}\n",
                    s - 1,
                    s - 1
                ));
            }
        }
    }
    y
}

fn plan(c: &mut Criterion) {
    let y = generated(10, 20);
    c.bench_function("plan/parse+validate+plan 200 steps", |b| {
        b.iter(|| load_str(black_box(&y), "bench.yaml", Path::new(".")).unwrap())
    });
    c.bench_function("plan/baseline serde_norway::from_str to Value only", |b| {
        b.iter(|| serde_norway::from_str::<serde_norway::Value>(black_box(&y)).unwrap())
    });
}

fn expressions(c: &mut Criterion) {
    let mut scope = Scope::default();
    scope.set_json("steps", &serde_json::json!({"build": {"outputs": {"version": "1.2.3"}, "outcome": "success"}}));
    scope.set_json("event", &serde_json::json!({"ref": "refs/heads/main", "name": "push"}));
    let e = compile("steps.build.outputs.version == '1.2.3' && startsWith(event.ref, 'refs/heads/')").unwrap();
    assert!(e.eval_bool(&scope).unwrap());
    c.bench_function("expr/cel eval condition", |b| b.iter(|| e.eval_bool(black_box(&scope)).unwrap()));
    c.bench_function("expr/compile condition", |b| {
        b.iter(|| compile(black_box("steps.build.outputs.version == '1.2.3' && startsWith(event.ref, 'refs/heads/')")))
    });
    // The same check by hand over nested HashMaps.
    let mut outputs = HashMap::new();
    outputs.insert("version".to_string(), "1.2.3".to_string());
    let mut steps = HashMap::new();
    steps.insert("build".to_string(), outputs);
    let mut event = HashMap::new();
    event.insert("ref".to_string(), "refs/heads/main".to_string());
    c.bench_function("expr/baseline hashmap lookup + compare", |b| {
        b.iter(|| {
            let s = black_box(&steps);
            let ev = black_box(&event);
            s.get("build").and_then(|o| o.get("version")).is_some_and(|v| v == "1.2.3")
                && ev.get("ref").is_some_and(|r| r.to_lowercase().starts_with("refs/heads/"))
        })
    });
    let t = parse_template("v${{ steps.build.outputs.version }} on ${{ event.ref }}").unwrap();
    c.bench_function("expr/template render (2 expressions)", |b| b.iter(|| t.render(black_box(&scope)).unwrap()));
    c.bench_function("expr/baseline format! of the same", |b| {
        b.iter(|| {
            let s = black_box(&steps);
            format!("v{} on {}", s["build"]["version"], black_box(&event)["ref"])
        })
    });
}

fn engine(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let y = generated(1, 200);
    let plan = load_str(&y, "bench.yaml", Path::new(".")).unwrap();
    let ws = std::env::temp_dir().join("skiff-bench-ws");
    let opts = RunOptions {
        run_id: "bench".into(),
        event: serde_json::json!({"ref": "refs/heads/main"}),
        workspace: ws.clone(),
        ..Default::default()
    };
    // Every step only sets the output that the next one's `if:` reads, so that none is skipped.
    let exec: Arc<dyn StepExecutor> = Arc::new(executor::Scripted::new().every("out v=bench").without_recording());
    c.bench_function("engine/run 200 steps, no-op executor", |b| {
        b.iter(|| {
            rt.block_on(run_pipeline(&plan, opts.clone(), exec.clone(), Arc::new(NoObserver)));
        })
    });
    c.bench_function("engine/baseline 200 direct executor calls", |b| {
        b.iter(|| {
            rt.block_on(async {
                let log = |_: LogLine| {};
                for i in 0..200 {
                    let req = StepRequest {
                        run_id: "bench".into(),
                        job_id: "job0".into(),
                        step_id: format!("s{i}"),
                        step_name: String::new(),
                        uses: skiff_pipeline::StepRef::Builtin("diag".into()),
                        inputs: Default::default(),
                        env: Default::default(),
                        secrets: Default::default(),
                        grants: Default::default(),
                        workspace: ws.clone(),
                        working_directory: None,
                        timeout: None,
                        memory: None,
                        image: None,
                        event_json: String::new(),
                        ca_bundle: None,
                        needs: Vec::new(),
                    };
                    black_box(exec.run_step(req, &log).await);
                }
            })
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = plan, expressions, engine
}
criterion_main!(benches);
