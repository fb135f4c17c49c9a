//! The job graph: which job instances run (`--job` and what they need), each started once
//! its needs are done, with the `needs` context, its `if:`, fail-fast and `max-parallel`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::events::{Emit, JobReport, RunEvent, RunObserver, RunReport, Status, ms};
use super::job::{JobRun, eval_map};
use super::{GateRequest, JobTicket, Refusal, RunOptions};
use crate::executor::{LogLine, StepExecutor};
use crate::expr::{Scope, strings_to_cel};
use crate::mask::Masker;
use crate::plan::{Plan, PlanJob};

/// The result of one job instance, for its dependents.
#[derive(Debug, Clone)]
struct Done {
    status: Status,
    outputs: BTreeMap<String, String>,
}

/// Runs a plan to the end.
pub async fn run_pipeline(
    plan: &Plan,
    opts: RunOptions,
    executor: Arc<dyn StepExecutor>,
    observer: Arc<dyn RunObserver>,
) -> RunReport {
    let started = Instant::now();
    let plan = Arc::new(plan.clone());
    let emit = Emit { obs: observer, masker: run_masker(&opts) };

    // `--job`: that job and what it needs, transitively.
    let selected: Vec<usize> = match &opts.job {
        None => (0..plan.jobs.len()).collect(),
        Some(j) => {
            // One job, or several separated by commas (a rerun of failed jobs).
            let mut want: Vec<String> =
                j.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
            let mut i = 0;
            while i < want.len() {
                for pj in plan.instances(&want[i].clone()) {
                    for n in &pj.needs {
                        if !want.contains(n) {
                            want.push(n.clone());
                        }
                    }
                }
                i += 1;
            }
            (0..plan.jobs.len()).filter(|i| want.contains(&plan.jobs[*i].job)).collect()
        }
    };
    emit.emit(RunEvent::RunStarted {
        run_id: opts.run_id.clone(),
        pipeline: plan.name.clone().unwrap_or_else(|| plan.file.clone()),
        jobs: selected.iter().map(|i| plan.jobs[*i].key.clone()).collect(),
    });

    // The contexts every expression sees.
    let mut base = opts.scope();
    let mut reports: Vec<Option<JobReport>> = vec![None; plan.jobs.len()];
    let pipeline_env = match eval_map(&plan, &plan.env, &base) {
        Ok(e) => e,
        Err(err) => {
            // Nothing can run without the pipeline's env: every job fails with the reason.
            for i in &selected {
                let j = &plan.jobs[*i];
                emit.emit(RunEvent::JobSkipped {
                    job_id: j.key.clone(),
                    name: j.name.clone(),
                    status: Status::Failure,
                    reason: err.clone(),
                });
                reports[*i] = Some(JobReport {
                    key: j.key.clone(),
                    name: j.name.clone(),
                    status: Status::Failure,
                    duration: Duration::ZERO,
                    steps: Vec::new(),
                    outputs: BTreeMap::new(),
                });
            }
            return finish(&opts, &emit, started, reports);
        }
    };
    base.vars.insert("env", strings_to_cel(&pipeline_env));

    let single = selected.len() == 1;
    let secrets_all = Arc::new(opts.secrets.clone());
    let base = Arc::new(base);
    let pipeline_env = Arc::new(pipeline_env);
    let opts = Arc::new(opts);
    let mut done: HashMap<usize, Done> = HashMap::new();
    let mut started_set: Vec<bool> = vec![false; plan.jobs.len()];
    let mut running_per_job: HashMap<String, u32> = HashMap::new();
    let cancel_flags: HashMap<String, Arc<AtomicBool>> =
        plan.jobs.iter().map(|j| (j.job.clone(), Arc::new(AtomicBool::new(false)))).collect();
    let mut set: tokio::task::JoinSet<(usize, JobReport)> = tokio::task::JoinSet::new();

    loop {
        // Start every job whose needs are all done.
        for &i in &selected {
            if started_set[i] {
                continue;
            }
            let j = &plan.jobs[i];
            let need_idx: Vec<usize> =
                selected.iter().copied().filter(|k| j.needs.contains(&plan.jobs[*k].job)).collect();
            if !need_idx.iter().all(|k| done.contains_key(k)) {
                continue;
            }
            if let Some((status, outputs)) = opts.reuse.get(&j.key) {
                started_set[i] = true;
                emit.emit(RunEvent::JobStarted { job_id: j.key.clone(), name: j.name.clone() });
                emit.emit(RunEvent::JobFinished {
                    job_id: j.key.clone(),
                    name: j.name.clone(),
                    status: *status,
                    duration_ms: 0,
                    outputs: outputs.clone(),
                });
                let r = JobReport {
                    key: j.key.clone(),
                    name: j.name.clone(),
                    status: *status,
                    duration: Duration::ZERO,
                    steps: Vec::new(),
                    outputs: outputs.clone(),
                };
                done.insert(i, Done { status: *status, outputs: outputs.clone() });
                reports[i] = Some(r);
                continue;
            }
            let flag = cancel_flags[&j.job].clone();
            if flag.load(Ordering::SeqCst) {
                started_set[i] = true;
                let reason = "cancelled: another combination of the matrix failed (fail-fast)".to_string();
                let status = Status::Cancelled;
                emit.emit(RunEvent::JobSkipped { job_id: j.key.clone(), name: j.name.clone(), status, reason });
                let r = JobReport {
                    key: j.key.clone(),
                    name: j.name.clone(),
                    status,
                    duration: Duration::ZERO,
                    steps: Vec::new(),
                    outputs: BTreeMap::new(),
                };
                done.insert(i, Done { status: r.status, outputs: BTreeMap::new() });
                reports[i] = Some(r);
                continue;
            }
            if let Some(max) = j.max_parallel
                && running_per_job.get(&j.job).copied().unwrap_or(0) >= max
            {
                continue;
            }
            // needs context: outputs merged over the combinations, result the worst.
            let mut needs = serde_json::Map::new();
            let (mut failed, mut cancelled) = (false, false);
            for n in &j.needs {
                let inst: Vec<&Done> =
                    need_idx.iter().filter(|k| plan.jobs[**k].job == *n).filter_map(|k| done.get(k)).collect();
                let mut outputs = serde_json::Map::new();
                let mut result = Status::Success;
                for d in &inst {
                    for (k, v) in &d.outputs {
                        outputs.insert(k.clone(), serde_json::Value::String(v.clone()));
                    }
                    match d.status {
                        Status::Failure => result = Status::Failure,
                        Status::Cancelled if result != Status::Failure => result = Status::Cancelled,
                        Status::Skipped if result == Status::Success => result = Status::Skipped,
                        _ => {}
                    }
                }
                match result {
                    Status::Failure | Status::Skipped => failed = true,
                    Status::Cancelled => cancelled = true,
                    Status::Success => {}
                }
                needs.insert(n.clone(), serde_json::json!({"outputs": outputs, "result": result.as_str()}));
            }
            let ticket = JobTicket {
                key: j.key.clone(),
                job: j.job.clone(),
                name: j.name.clone(),
                environment: j.environment.as_ref().map(|e| e.name.clone()),
                needs: serde_json::Value::Object(needs),
                dir: if single { String::new() } else { j.key.clone() },
                labels: j.runs_on.clone(),
            };
            let mut scope = job_scope(&base, j, &ticket);
            let environment_secrets = job_secrets(&opts, j);
            scope.failed = failed;
            scope.cancelled = cancelled;
            started_set[i] = true;
            let run = match &j.if_ {
                None => Ok(!failed && !cancelled),
                Some(c) => c
                    .expr
                    .eval_bool(&scope)
                    .map(|b| b && (c.expr.has_status_call() || (!failed && !cancelled)))
                    .map_err(|e| format!("{}:{}:{}: {e}", plan.file, c.pos.line, c.pos.column)),
            };
            match run {
                Ok(true) => {}
                Ok(false) | Err(_) => {
                    let (status, reason) = match run {
                        Err(e) => (Status::Failure, e),
                        _ if failed || cancelled => (Status::Skipped, "a job it needs did not succeed".to_string()),
                        _ => (Status::Skipped, "its `if:` condition is false".to_string()),
                    };
                    emit.emit(RunEvent::JobSkipped { job_id: j.key.clone(), name: j.name.clone(), status, reason });
                    let r = JobReport {
                        key: j.key.clone(),
                        name: j.name.clone(),
                        status,
                        duration: Duration::ZERO,
                        steps: Vec::new(),
                        outputs: BTreeMap::new(),
                    };
                    done.insert(i, Done { status, outputs: BTreeMap::new() });
                    reports[i] = Some(r);
                    continue;
                }
            }
            *running_per_job.entry(j.job.clone()).or_default() += 1;
            let workspace = ticket.workspace(&opts.workspace);
            let dispatch = opts.dispatch.clone();
            let mut job = JobRun {
                plan: plan.clone(),
                index: i,
                opts: opts.clone(),
                scope,
                pipeline_env: pipeline_env.clone(),
                workspace,
                executor: executor.clone(),
                emit: emit.clone(),
                cancel: flag,
                secrets: secrets_all.clone(),
            };
            let gate = j.environment.as_ref().zip(opts.gate.clone()).map(|(e, g)| {
                let req = GateRequest {
                    job_key: j.key.clone(),
                    job: j.job.clone(),
                    name: j.name.clone(),
                    environment: e.name.clone(),
                };
                (g, req)
            });
            let emit = emit.clone();
            set.spawn(async move {
                // The environment's rules, before the job's first step (and before its timeout
                // starts): a wait for an approval is no part of the job's time.
                if let Some((gate, req)) = gate {
                    match (gate.0)(req.clone()).await {
                        Ok(None) => {}
                        Ok(Some(text)) => emit.emit(RunEvent::Log(LogLine {
                            job_id: req.job_key.clone(),
                            step_id: String::new(),
                            level: crate::executor::Level::Info,
                            text,
                        })),
                        Err(Refusal { status, reason }) => {
                            emit.emit(RunEvent::JobSkipped {
                                job_id: req.job_key.clone(),
                                name: req.name.clone(),
                                status,
                                reason,
                            });
                            let r = JobReport {
                                key: req.job_key,
                                name: req.name,
                                status,
                                duration: Duration::ZERO,
                                steps: Vec::new(),
                                outputs: BTreeMap::new(),
                            };
                            return (i, r);
                        }
                    }
                }
                if let Some(dispatch) = dispatch {
                    return (i, (dispatch.0)(ticket, job.cancel.clone()).await);
                }
                if let Some(all) = environment_secrets {
                    job.scope.vars.insert("secrets", strings_to_cel(all.as_ref()));
                    job.secrets = all;
                }
                (i, job.run().await)
            });
        }
        let Some(joined) = set.join_next().await else { break };
        let (i, report) = match joined {
            Ok(x) => x,
            Err(e) => {
                // A panic in a job task is a bug; the run fails rather than hangs.
                tracing_panic(&emit, &e.to_string());
                break;
            }
        };
        let j = &plan.jobs[i];
        if let Some(n) = running_per_job.get_mut(&j.job) {
            *n = n.saturating_sub(1);
        }
        if report.status == Status::Failure && j.fail_fast && !j.matrix.is_empty() {
            cancel_flags[&j.job].store(true, Ordering::SeqCst);
        }
        done.insert(i, Done { status: report.status, outputs: report.outputs.clone() });
        reports[i] = Some(report);
    }
    finish(&opts, &emit, started, reports)
}

/// Every secret any job of the run could see, masked everywhere, environments' included.
fn run_masker(opts: &RunOptions) -> Arc<Masker> {
    Arc::new(Masker::new(opts.secrets.values().chain(opts.environment_secrets.values().flat_map(|m| m.values()))))
}

/// The contexts a job instance's expressions see: the run's (`base`, with the pipeline's
/// `env`), its `needs` and its `matrix`.
fn job_scope(base: &Scope, j: &PlanJob, ticket: &JobTicket) -> Scope {
    let mut scope = base.clone();
    scope.set_json("needs", &ticket.needs);
    scope.set_json("matrix", &serde_json::to_value(&j.matrix).unwrap_or_default());
    scope
}

/// The secrets of a job in an environment: the run's and that environment's (which win). No
/// other job sees them, and this one only once the environment's rules let it start: its `if:`
/// is decided with the run's secrets alone, or a false condition would tell a job that may not
/// deploy a bit of the environment's secrets.
fn job_secrets(opts: &RunOptions, j: &PlanJob) -> Option<Arc<BTreeMap<String, String>>> {
    j.environment.as_ref().and_then(|e| opts.environment_secrets.get(&e.name)).map(|more| {
        let mut all = opts.secrets.clone();
        all.extend(more.iter().map(|(k, v)| (k.clone(), v.clone())));
        Arc::new(all)
    })
}

/// Runs one job instance of a run whose graph runs elsewhere (a host that leased the job from
/// a pool): the same contexts, workspace and events as if [`run_pipeline`] had started it here.
/// `opts` is the run's, as the host running its graph has it; `cancel` stops the job.
pub async fn run_job(
    plan: &Plan,
    opts: RunOptions,
    ticket: JobTicket,
    executor: Arc<dyn StepExecutor>,
    observer: Arc<dyn RunObserver>,
    cancel: Arc<AtomicBool>,
) -> JobReport {
    let emit = Emit { obs: observer, masker: run_masker(&opts) };
    let failed = |name: String, reason: String| {
        emit.emit(RunEvent::JobSkipped {
            job_id: ticket.key.clone(),
            name: name.clone(),
            status: Status::Failure,
            reason,
        });
        JobReport {
            key: ticket.key.clone(),
            name,
            status: Status::Failure,
            duration: Duration::ZERO,
            steps: Vec::new(),
            outputs: BTreeMap::new(),
        }
    };
    let Some(index) = plan.jobs.iter().position(|j| j.key == ticket.key) else {
        let why = format!("the pipeline read on this host has no job `{}`", ticket.key);
        return failed(ticket.key.clone(), why);
    };
    let plan = Arc::new(plan.clone());
    let j = &plan.jobs[index];
    let mut base = opts.scope();
    let pipeline_env = match eval_map(&plan, &plan.env, &base) {
        Ok(e) => e,
        Err(e) => return failed(j.name.clone(), e),
    };
    base.vars.insert("env", strings_to_cel(&pipeline_env));
    let mut scope = job_scope(&base, j, &ticket);
    let secrets = match job_secrets(&opts, j) {
        Some(all) => {
            scope.vars.insert("secrets", strings_to_cel(all.as_ref()));
            all
        }
        None => Arc::new(opts.secrets.clone()),
    };
    let job = JobRun {
        plan: plan.clone(),
        index,
        workspace: ticket.workspace(&opts.workspace),
        opts: Arc::new(opts),
        scope,
        pipeline_env: Arc::new(pipeline_env),
        executor,
        emit,
        cancel,
        secrets,
    };
    job.run().await
}

fn tracing_panic(emit: &Emit, msg: &str) {
    emit.emit(RunEvent::Log(LogLine {
        job_id: String::new(),
        step_id: String::new(),
        level: crate::executor::Level::Error,
        text: format!("internal error: a job task panicked: {msg}"),
    }));
}

fn finish(opts: &RunOptions, emit: &Emit, started: Instant, reports: Vec<Option<JobReport>>) -> RunReport {
    let jobs: Vec<JobReport> = reports.into_iter().flatten().collect();
    let status = if jobs.iter().any(|j| j.status == Status::Failure) {
        Status::Failure
    } else if jobs.iter().any(|j| j.status == Status::Cancelled) {
        Status::Cancelled
    } else {
        Status::Success
    };
    let duration = started.elapsed();
    emit.emit(RunEvent::RunFinished { run_id: opts.run_id.clone(), status, duration_ms: ms(duration) });
    RunReport { run_id: opts.run_id.clone(), status, duration, jobs }
}
