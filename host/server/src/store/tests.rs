//! The stores' behaviour: one suite, run against both [`SqliteStore`] (in memory) and
//! [`PostgresStore`] (a database of its own in a throwaway cluster, see
//! [`crate::testing::postgres`]), so that the two
//! cannot drift apart. Then what only a store that several hosts share must stand: hosts racing
//! for the same runs, numbers and dispatch ids.
//!
//! Without PostgreSQL's `initdb` the PostgreSQL tests fail under `CI=true` and say `SKIPPED:`
//! otherwise.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::queue::{JobOffer, JobQueue, JobState, RunQueue};

/// The traits, as one object.
trait Store: RunStore + RunQueue + JobQueue {}
impl<T: RunStore + RunQueue + JobQueue> Store for T {}

/// Where a behaviour differs by design, which store it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One host.
    Sqlite,
    /// Shared by several hosts.
    Postgres,
}

/// A test per behaviour and store: `store::tests::sqlite::NAME` and `store::tests::postgres::NAME`.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    let store = crate::store::SqliteStore::in_memory().unwrap();
                    super::$name(&store, super::Kind::Sqlite);
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    let Some(db) = crate::testing::postgres::database() else { return };
                    super::$name(&db.store(), super::Kind::Postgres);
                }
            )*
        }
    };
}

suite!(
    an_expired_lease_is_taken_by_a_second_owner_and_a_completed_one_is_not,
    completing_closes_the_open_jobs_and_steps_and_recovery_drops_lapsed_leases,
    a_live_lease_is_recovered_by_a_single_host_and_left_to_its_owner_when_shared,
    recovery_fails_a_run_interrupted_twice_or_when_told_to,
    a_run_that_only_waits_is_resumed_as_it_was_and_the_first_decision_stands,
    run_numbers_count_per_app_and_a_rerun_keeps_its_number,
    a_dispatch_id_stores_one_run_even_twice_in_one_batch,
    runs_are_listed_newest_first_filtered_and_paged,
    a_run_keeps_what_it_was_given_and_what_is_set_later,
    jobs_and_steps_come_back_in_order_with_their_usage,
    finishing_a_run_closes_it_once_and_cron_times_are_kept,
    pruning_removes_finished_runs_of_one_app_with_their_jobs_only,
    a_lease_is_admitted_only_within_the_group_and_the_app_s_limit,
    console_sessions_expire_end_and_keep_within_their_cap,
    jobs_are_leased_by_labels_renewed_moved_once_and_called_off,
);

const MINUTE: Duration = Duration::from_secs(60);

fn console_sessions_expire_end_and_keep_within_their_cap(store: &dyn Store, _: Kind) {
    store.session_save("a", r#"{"who":"a"}"#, 2_000, 1_000, 3).unwrap();
    store.session_save("b", r#"{"who":"b"}"#, 3_000, 1_000, 3).unwrap();
    assert_eq!(store.session("a", 1_500).unwrap().as_deref(), Some(r#"{"who":"a"}"#));
    assert_eq!(store.session("a", 2_000).unwrap(), None, "expired at its time");
    assert_eq!(store.session("nobody", 1_000).unwrap(), None);
    // Saving sweeps the expired: `a` is gone for good, even read with an older clock.
    store.session_save("c", "{}", 4_000, 2_500, 3).unwrap();
    assert_eq!(store.session("a", 1_500).unwrap(), None);
    // At the cap, the one closest to expiring makes room.
    store.session_save("d", "{}", 5_000, 2_500, 3).unwrap();
    store.session_save("e", "{}", 6_000, 2_500, 3).unwrap();
    assert_eq!(store.session("b", 2_600).unwrap(), None, "b expired first, so it went first");
    for id in ["c", "d", "e"] {
        assert!(store.session(id, 2_600).unwrap().is_some(), "{id}");
    }
    store.session_end("d").unwrap();
    assert_eq!(store.session("d", 2_600).unwrap(), None);
    store.session_end("d").unwrap();
}

fn offer(run: i64, attempt: i64, key: &str, labels: &[&str]) -> JobOffer {
    let labels = labels.iter().map(|l| l.to_string()).collect();
    JobOffer { run, attempt, key: key.into(), labels, ticket: format!("{{\"key\":\"{key}\"}}") }
}

fn jobs_are_leased_by_labels_renewed_moved_once_and_called_off(store: &dyn Store, _: Kind) {
    let linux: Vec<String> = vec!["linux".into(), "x64".into()];
    let gpu: Vec<String> = vec!["gpu".into(), "linux".into()];
    let lease = |owner: &str, labels: &[String], ttl| store.lease_job(owner, labels, ttl, None).unwrap();
    let a = queued(store, "web");
    store.lease(a, "graph-host", MINUTE).unwrap().unwrap();
    store.offer_job(&offer(a, 1, "build", &[])).unwrap();
    store.offer_job(&offer(a, 1, "train", &["gpu"])).unwrap();
    assert_eq!(store.job_state(a, 1, "build").unwrap(), Some(JobState::Queued));
    assert_eq!(store.job_state(a, 1, "nope").unwrap(), None);

    // The oldest job the host's labels cover; a job needing a label it lacks stays for another.
    let one = lease("host-1", &linux, MINUTE).unwrap();
    assert_eq!((one.run, one.attempt, one.key.as_str(), one.tries), (a, 1, "build", 1));
    assert_eq!(one.ticket, r#"{"key":"build"}"#);
    assert!(lease("host-1", &linux, MINUTE).is_none(), "train needs gpu");
    let two = lease("host-2", &gpu, Duration::ZERO).unwrap();
    assert_eq!(two.key, "train");
    assert_eq!(store.job_state(a, 1, "build").unwrap(), Some(JobState::Running { owner: "host-1".into(), tries: 1 }));
    assert!(store.extend_job(&one, "host-1", MINUTE).unwrap());
    assert!(!store.extend_job(&one, "host-2", MINUTE).unwrap(), "not host-2's");

    // host-2's lease lapsed: another host with the labels takes the job again, as its second
    // try; host-2 can neither renew nor complete it any more, not even with its own token.
    let moved = lease("host-3", &gpu, Duration::ZERO).unwrap();
    assert_eq!((moved.key.as_str(), moved.tries), ("train", 2));
    assert!(!store.extend_job(&two, "host-2", MINUTE).unwrap());
    assert!(!store.complete_job(&two, "host-2", "{}").unwrap());
    // A host whose own try lapsed and that takes the job again holds a new token: the old
    // try's end is refused.
    let again = lease("host-3", &gpu, MINUTE);
    assert!(again.is_none(), "its second try lapsed too: not taken a third time");
    assert_eq!(store.job_state(a, 1, "train").unwrap(), Some(JobState::Abandoned));
    assert!(!store.complete_job(&moved, "host-3", "{}").unwrap());

    // Completed by its owner, with the report its graph reads back; only once.
    assert!(store.complete_job(&one, "host-1", r#"{"status":"success"}"#).unwrap());
    assert_eq!(store.job_state(a, 1, "build").unwrap(), Some(JobState::Done(r#"{"status":"success"}"#.into())));
    assert!(!store.complete_job(&one, "host-1", "{}").unwrap());
    assert!(!store.extend_job(&one, "host-1", MINUTE).unwrap());

    // Jobs are called off one by one (fail-fast) or all of an attempt; a running job's host
    // finds its lease gone. Another attempt's jobs are left alone.
    store.offer_job(&offer(a, 1, "deploy", &[])).unwrap();
    store.offer_job(&offer(a, 1, "notify", &[])).unwrap();
    store.offer_job(&offer(a, 1, "lint", &[])).unwrap();
    store.cancel_jobs(a, 1, Some("deploy")).unwrap();
    assert_eq!(store.job_state(a, 1, "deploy").unwrap(), Some(JobState::Cancelled));
    let notify = lease("host-1", &linux, MINUTE).unwrap();
    assert_eq!(notify.key, "notify");
    store.offer_job(&offer(a, 7, "other-attempt", &[])).unwrap();
    store.cancel_jobs(a, 1, None).unwrap();
    assert!(!store.extend_job(&notify, "host-1", MINUTE).unwrap());
    assert!(!store.complete_job(&notify, "host-1", "{}").unwrap());
    assert_eq!(store.job_state(a, 1, "lint").unwrap(), Some(JobState::Cancelled));
    assert_eq!(store.job_state(a, 7, "other-attempt").unwrap(), Some(JobState::Queued));
    assert!(lease("host-1", &linux, MINUTE).is_none(), "attempt 7 is not the run's");
    assert_eq!(store.job_state(a, 7, "other-attempt").unwrap(), Some(JobState::Cancelled));

    // A job of a run that ended is never taken; a job's lease does not outlive its run.
    store.offer_job(&offer(a, 1, "late", &[])).unwrap();
    let late = lease("host-1", &linux, MINUTE).unwrap();
    assert_eq!(late.key, "late");
    assert!(store.complete(a, "graph-host", RunStatus::Success, None).unwrap());
    assert!(!store.extend_job(&late, "host-1", MINUTE).unwrap(), "the run is over");
    store.offer_job(&offer(a, 1, "after", &[])).unwrap();
    assert!(lease("host-1", &linux, MINUTE).is_none());
    assert_eq!(store.job_state(a, 1, "after").unwrap(), Some(JobState::Cancelled));
    store.forget_jobs(a, 1).unwrap();
    assert_eq!(store.job_state(a, 1, "after").unwrap(), None);
    assert_eq!(store.job_state(a, 7, "other-attempt").unwrap(), Some(JobState::Cancelled));

    // A queued job's record says what it waits for; once started it stays started; the run's
    // end closes it.
    let b = queued(store, "web");
    store.lease(b, "graph-host", MINUTE).unwrap().unwrap();
    store.job_queued(b, "train", "train", "Train", "waiting for a host with the labels gpu").unwrap();
    let jobs = store.jobs(b).unwrap();
    assert_eq!(
        (jobs[0].status, jobs[0].reason.as_deref()),
        (RunStatus::Queued, Some("waiting for a host with the labels gpu"))
    );
    store.job_started(b, "build", "build", "Build").unwrap();
    store.job_queued(b, "build", "build", "Build", "waiting for a host").unwrap();
    let build = store.jobs(b).unwrap().into_iter().find(|j| j.key == "build").unwrap();
    assert_eq!((build.status, build.reason), (RunStatus::Running, None), "a late `queued` is ignored");
    assert!(store.complete(b, "graph-host", RunStatus::Cancelled, Some("cancelled")).unwrap());
    assert!(store.jobs(b).unwrap().iter().all(|j| j.status == RunStatus::Cancelled));

    // Only the runs asked for (a draining host takes jobs of its own runs only), and the
    // labels filter sees past many jobs this host cannot take.
    let c = queued(store, "web");
    let d = queued(store, "web");
    store.lease(c, "graph-host", MINUTE).unwrap().unwrap();
    store.lease(d, "graph-host", MINUTE).unwrap().unwrap();
    for i in 0..70 {
        store.offer_job(&offer(c, 1, &format!("gpu-{i}"), &["gpu"])).unwrap();
    }
    store.offer_job(&offer(c, 1, "plain", &[])).unwrap();
    store.offer_job(&offer(d, 1, "mine", &[])).unwrap();
    let mine = store.lease_job("host-1", &linux, MINUTE, Some(&[d])).unwrap().unwrap();
    assert_eq!((mine.run, mine.key.as_str()), (d, "mine"));
    let plain = lease("host-1", &linux, MINUTE).unwrap();
    assert_eq!(plain.key, "plain", "found behind 70 jobs for gpu");

    // A run taken over (its graph's host died) runs a job of its new attempt only once no host
    // may still run that job for the attempt before: never twice at once.
    let e = queued(store, "web");
    store.lease(e, "graph-1", Duration::from_millis(300)).unwrap().unwrap();
    store.offer_job(&offer(e, 1, "build", &[])).unwrap();
    let old = lease("host-1", &linux, Duration::from_millis(800)).unwrap();
    std::thread::sleep(Duration::from_millis(350));
    assert!(lease("host-2", &linux, MINUTE).is_none(), "the graph is gone: the job waits for the run's new attempt");
    assert!(store.lease(e, "graph-2", MINUTE).unwrap().unwrap().taken_over);
    store.offer_job(&offer(e, 2, "build", &[])).unwrap();
    assert!(lease("host-2", &linux, MINUTE).is_none(), "attempt 1's build may still run");
    assert!(!store.extend_job(&old, "host-1", MINUTE).unwrap(), "host-1 finds it is no longer its");
    std::thread::sleep(Duration::from_millis(500));
    let again = lease("host-2", &linux, MINUTE).unwrap();
    assert_eq!((again.attempt, again.key.as_str(), again.tries), (2, "build", 1));
    assert!(store.clock_ms().unwrap() > 1_700_000_000_000);
}

fn queued(store: &dyn Store, app: &str) -> i64 {
    let run = NewRun { app: app.into(), trigger: "manual".into(), ..NewRun::default() };
    store.insert_run(&run).unwrap().id
}

fn an_expired_lease_is_taken_by_a_second_owner_and_a_completed_one_is_not(store: &dyn Store, _: Kind) {
    let (a, b) = (queued(store, "web"), queued(store, "web"));
    assert_eq!(store.available(10).unwrap().iter().map(|r| r.id).collect::<Vec<_>>(), vec![a, b]);

    // A lease of no length has expired at once, as a host that died right after taking it.
    let first = store.lease(a, "host-1", Duration::ZERO).unwrap().unwrap();
    assert!(!first.taken_over);
    store.job_started(a, "build", "build", "build").unwrap();
    let run = store.run(a).unwrap().unwrap();
    assert_eq!((run.status, run.attempt), (RunStatus::Running, 1));
    // Held by nobody alive: available again, and a second owner takes it as a new attempt.
    assert!(store.available(10).unwrap().iter().any(|r| r.id == a));
    let second = store.lease(a, "host-2", MINUTE).unwrap().unwrap();
    assert!(second.taken_over);
    let run = store.run(a).unwrap().unwrap();
    assert_eq!((run.status, run.attempt, run.interruptions), (RunStatus::Running, 2, 1));
    assert!(store.jobs(a).unwrap().is_empty(), "the new attempt starts with no jobs");
    // The first owner has lost it: it can neither renew nor complete it.
    assert!(!store.extend(a, "host-1", MINUTE).unwrap());
    assert!(!store.complete(a, "host-1", RunStatus::Failure, Some("late")).unwrap());
    assert_eq!(store.run(a).unwrap().unwrap().status, RunStatus::Running);
    // A live lease is not available, nor taken.
    assert!(!store.available(10).unwrap().iter().any(|r| r.id == a));
    assert!(store.lease(a, "host-3", MINUTE).unwrap().is_none());
    assert!(store.extend(a, "host-2", MINUTE).unwrap());

    // Completed: over, and nobody takes it again, even once its lease would have expired.
    assert!(store.complete(a, "host-2", RunStatus::Success, None).unwrap());
    let run = store.run(a).unwrap().unwrap();
    assert_eq!((run.status, run.error), (RunStatus::Success, None));
    assert!(store.lease(a, "host-3", MINUTE).unwrap().is_none());
    assert!(!store.extend(a, "host-2", MINUTE).unwrap());
    assert!(!store.complete(a, "host-2", RunStatus::Failure, None).unwrap());
    let short = store.lease(b, "host-2", Duration::ZERO).unwrap().unwrap();
    assert!(store.complete(b, &short.owner, RunStatus::Failure, Some("failed")).unwrap());
    assert!(store.lease(b, "host-3", MINUTE).unwrap().is_none());
    assert!(store.available(10).unwrap().is_empty());
    assert!(store.lease(i64::MAX, "host-3", MINUTE).unwrap().is_none(), "no such run");
}

fn completing_closes_the_open_jobs_and_steps_and_recovery_drops_lapsed_leases(store: &dyn Store, _: Kind) {
    let a = queued(store, "web");
    store.lease(a, "host-1", MINUTE).unwrap().unwrap();
    store.job_started(a, "build", "build", "build").unwrap();
    store.step_started(a, "build", "compile", "compile").unwrap();
    assert!(store.complete(a, "host-1", RunStatus::Success, None).unwrap());
    let jobs = store.jobs(a).unwrap();
    assert_eq!((jobs[0].status, jobs[0].steps[0].status), (RunStatus::Cancelled, RunStatus::Cancelled));

    // A host that stops leaves its run running, its lease lapsing; its next start queues it
    // again, unleased.
    let b = queued(store, "web");
    store.lease(b, "host-1", Duration::ZERO).unwrap().unwrap();
    store.job_started(b, "build", "build", "build").unwrap();
    assert_eq!(store.recover(true).unwrap().retried, vec![b]);
    let run = store.run(b).unwrap().unwrap();
    assert_eq!((run.status, run.attempt, run.interruptions), (RunStatus::Queued, 2, 1));
    assert!(store.jobs(b).unwrap().is_empty());
    assert!(!store.extend(b, "host-1", MINUTE).unwrap());
    let again = store.lease(b, "host-2", MINUTE).unwrap().unwrap();
    assert!(!again.taken_over, "queued again by recovery, not taken over");
}

fn a_live_lease_is_recovered_by_a_single_host_and_left_to_its_owner_when_shared(store: &dyn Store, kind: Kind) {
    let a = queued(store, "web");
    store.lease(a, "host-1", MINUTE).unwrap().unwrap();
    store.job_started(a, "build", "build", "build").unwrap();
    let recovered = store.recover(true).unwrap();
    match kind {
        // The only host started again: whatever ran was its own, and is gone.
        Kind::Sqlite => assert_eq!(recovered.retried, vec![a]),
        // Another host may be running it right now: it goes on, and is taken over only if
        // its lease lapses.
        Kind::Postgres => {
            assert_eq!(recovered, Recovered::default());
            assert!(store.extend(a, "host-1", MINUTE).unwrap());
            assert_eq!(store.jobs(a).unwrap().len(), 1);
        }
    }
}

fn recovery_fails_a_run_interrupted_twice_or_when_told_to(store: &dyn Store, _: Kind) {
    let a = queued(store, "web");
    store.lease(a, "host-1", Duration::ZERO).unwrap().unwrap();
    assert_eq!(store.recover(true).unwrap().retried, vec![a]);
    store.lease(a, "host-1", Duration::ZERO).unwrap().unwrap();
    store.job_started(a, "build", "build", "build").unwrap();
    store.step_started(a, "build", "compile", "compile").unwrap();
    assert_eq!(store.recover(true).unwrap().failed, vec![a], "interrupted twice");
    let run = store.run(a).unwrap().unwrap();
    assert_eq!((run.status, run.interruptions), (RunStatus::Failure, 2));
    assert!(run.error.unwrap().contains("second time"));
    let jobs = store.jobs(a).unwrap();
    assert_eq!((jobs[0].status, jobs[0].steps[0].status), (RunStatus::Failure, RunStatus::Failure));

    let b = queued(store, "web");
    store.lease(b, "host-1", Duration::ZERO).unwrap().unwrap();
    assert_eq!(store.recover(false).unwrap().failed, vec![b]);
    assert!(store.run(b).unwrap().unwrap().error.unwrap().contains("recovery = \"fail\""));
    assert_eq!(store.recover(true).unwrap(), Recovered::default());
}

fn a_run_that_only_waits_is_resumed_as_it_was_and_the_first_decision_stands(store: &dyn Store, _: Kind) {
    let a = queued(store, "web");
    store.lease(a, "host-1", Duration::ZERO).unwrap().unwrap();
    store.job_started(a, "build", "build", "build").unwrap();
    store.job_finished(a, "build", "build", "build", RunStatus::Success, None, Some(5), None).unwrap();
    store.job_waiting(a, "deploy", "deploy", "deploy", "production", "waiting for approval").unwrap();
    // Another run was in the middle of a job: retried as before.
    let b = queued(store, "web");
    store.lease(b, "host-1", Duration::ZERO).unwrap().unwrap();
    store.job_started(b, "build", "build", "build").unwrap();
    store.job_waiting(b, "deploy", "deploy", "deploy", "production", "waiting for approval").unwrap();
    let r = store.recover(true).unwrap();
    assert_eq!((r.resumed, r.retried), (vec![a], vec![b]));
    let run = store.run(a).unwrap().unwrap();
    assert_eq!((run.status, run.attempt, run.interruptions), (RunStatus::Queued, 1, 0));
    let jobs = store.jobs(a).unwrap();
    assert_eq!(
        jobs.iter().map(|j| (j.key.as_str(), j.status)).collect::<Vec<_>>(),
        [("build", RunStatus::Success), ("deploy", RunStatus::Waiting)]
    );
    assert_eq!(jobs[1].environment.as_deref(), Some("production"));
    assert_eq!(jobs[1].reason.as_deref(), Some("waiting for approval"));

    let d = Decision {
        run: a,
        attempt: 1,
        job_key: "deploy".into(),
        environment: "production".into(),
        approved: true,
        by: "release".into(),
        at: 1,
    };
    assert!(store.decide(&d).unwrap());
    assert!(!store.decide(&Decision { approved: false, by: "other".into(), ..d.clone() }).unwrap());
    assert_eq!(store.decision(a, 1, "deploy").unwrap(), Some(d.clone()));
    assert_eq!(store.decision(a, 2, "deploy").unwrap(), None, "a new attempt asks again");
    let later = Decision { attempt: 2, approved: false, at: 1, ..d.clone() };
    assert!(store.decide(&later).unwrap());
    assert_eq!(store.decisions(a).unwrap(), vec![d, later], "same time: in the order decided");
    // Ending the run ends the wait.
    store.lease(a, "host-2", MINUTE).unwrap().unwrap();
    assert!(store.complete(a, "host-2", RunStatus::Cancelled, Some("cancelled")).unwrap());
    assert_eq!(store.jobs(a).unwrap()[1].status, RunStatus::Cancelled);
}

fn run_numbers_count_per_app_and_a_rerun_keeps_its_number(store: &dyn Store, _: Kind) {
    let number =
        |app: &str| store.insert_run(&NewRun { app: app.into(), trigger: "push".into(), ..NewRun::default() }).unwrap();
    assert_eq!((number("web").number, number("web").number, number("api").number), (1, 2, 1));
    let first = number("new");
    assert_eq!(first.number, 1);
    // A rerun keeps its number and does not move the counter.
    let rerun =
        NewRun { app: "new".into(), trigger: "rerun".into(), parent: Some((first.id, 1, 1)), ..NewRun::default() };
    let again = store.insert_run(&rerun).unwrap();
    assert_eq!(again.number, 1);
    let run = store.run(again.id).unwrap().unwrap();
    assert_eq!((run.attempt, run.parent_id), (2, Some(first.id)));
    assert_eq!(store.max_attempt("new", 1).unwrap(), 2);
    assert_eq!(store.max_attempt("new", 9).unwrap(), 1, "no such run: the first attempt");
    assert_eq!(number("new").number, 2);
    assert_eq!(store.count_runs().unwrap(), 6);
}

fn a_dispatch_id_stores_one_run_even_twice_in_one_batch(store: &dyn Store, _: Kind) {
    let with = |app: &str, d: &str| NewRun {
        app: app.into(),
        trigger: "push".into(),
        dispatch_id: Some(d.into()),
        ..NewRun::default()
    };
    let first = store.insert_run(&with("web", "d-1")).unwrap();
    assert!(!first.duplicate);
    let batch =
        store.insert_runs(&[with("web", "d-2"), with("web", "d-1"), with("api", "d-3"), with("web", "d-2")]).unwrap();
    let batch: Vec<Inserted> = batch.into_iter().map(Result::unwrap).collect();
    assert_eq!(batch[1], Inserted { duplicate: true, ..first });
    assert!(!batch[0].duplicate && !batch[2].duplicate);
    assert_eq!(batch[3], Inserted { duplicate: true, ..batch[0] });
    assert_eq!((batch[0].number, batch[2].number), (2, 1), "a duplicate takes no number");
    // Another app's run with the same dispatch id is the same delivery: the run stored first.
    assert_eq!(store.insert_run(&with("api", "d-1")).unwrap(), Inserted { duplicate: true, ..first });
    assert_eq!(store.count_runs().unwrap(), 3);
    assert_eq!(store.run(first.id).unwrap().unwrap().dispatch_id.as_deref(), Some("d-1"));
    assert_eq!(store.insert_run(&with("web", "d-4")).unwrap().number, 3);
}

fn runs_are_listed_newest_first_filtered_and_paged(store: &dyn Store, _: Kind) {
    let mut ids = Vec::new();
    for (app, git_ref, trigger) in [
        ("web", "refs/heads/main", "push"),
        ("api", "refs/heads/main", "push"),
        ("web", "refs/heads/dev", "manual"),
        ("web", "refs/heads/main", "push"),
        ("docs", "", "schedule"),
    ] {
        let run = NewRun {
            app: app.into(),
            trigger: trigger.into(),
            git_ref: (!git_ref.is_empty()).then(|| git_ref.into()),
            ..NewRun::default()
        };
        ids.push(store.insert_run(&run).unwrap().id);
    }
    let list = |f: RunFilter| store.list_runs(&f).unwrap().iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(list(RunFilter::default()), ids.iter().rev().copied().collect::<Vec<_>>());
    assert_eq!(list(RunFilter { app: Some("web".into()), ..RunFilter::default() }), [ids[3], ids[2], ids[0]]);
    assert_eq!(
        list(RunFilter { apps: Some(vec!["api".into(), "docs".into()]), ..RunFilter::default() }),
        [ids[4], ids[1]]
    );
    assert!(list(RunFilter { apps: Some(Vec::new()), ..RunFilter::default() }).is_empty());
    assert_eq!(list(RunFilter { limit: Some(2), ..RunFilter::default() }), [ids[4], ids[3]]);
    assert_eq!(list(RunFilter { before: Some(ids[3]), limit: Some(2), ..RunFilter::default() }), [ids[2], ids[1]]);
    store.lease(ids[1], "host-1", MINUTE).unwrap().unwrap();
    assert_eq!(list(RunFilter { status: Some(RunStatus::Running), ..RunFilter::default() }), [ids[1]]);

    let search =
        |f: RunFilter, more: RunSearch| store.search_runs(&f, &more).unwrap().iter().map(|r| r.id).collect::<Vec<_>>();
    let main = RunSearch { git_ref: Some("refs/heads/main".into()), ..RunSearch::default() };
    assert_eq!(search(RunFilter::default(), main.clone()), [ids[3], ids[1], ids[0]]);
    assert_eq!(search(RunFilter { app: Some("web".into()), ..RunFilter::default() }, main), [ids[3], ids[0]]);
    assert_eq!(
        search(RunFilter::default(), RunSearch { trigger: Some("manual".into()), ..RunSearch::default() }),
        [ids[2]]
    );

    let latest = store.latest_per_ref("web").unwrap();
    assert_eq!(latest.iter().map(|r| r.id).collect::<Vec<_>>(), [ids[3], ids[2]]);
    assert_eq!(store.latest_per_ref("docs").unwrap()[0].git_ref, None);
    assert!(store.latest_per_ref("nope").unwrap().is_empty());
}

fn a_run_keeps_what_it_was_given_and_what_is_set_later(store: &dyn Store, _: Kind) {
    let run = NewRun {
        app: "web".into(),
        trigger: "manual".into(),
        reason: "asked for".into(),
        git_ref: Some("refs/heads/main".into()),
        inputs: BTreeMap::from([("level".to_string(), "3".to_string())]),
        event: serde_json::json!({ "ref": "refs/heads/main", "sha": null, "n": [1, 2] }),
        body: serde_json::json!({ "hook": "ü ✓ \u{1F680}" }),
        job: Some("build".into()),
        requested_by: Some("admin".into()),
        pipeline: Some(".skiff/pipelines/a.yaml".into()),
        ..NewRun::default()
    };
    let id = store.insert_run(&run).unwrap().id;
    let got = store.run(id).unwrap().unwrap();
    assert_eq!((got.app.as_str(), got.number, got.attempt, got.status), ("web", 1, 1, RunStatus::Queued));
    assert_eq!((got.trigger.as_str(), got.reason.as_str()), ("manual", "asked for"));
    assert_eq!((got.git_ref, got.sha, got.dispatch_id), (run.git_ref.clone(), None, None));
    assert_eq!((got.inputs, got.event, got.body), (run.inputs.clone(), run.event.clone(), run.body.clone()));
    assert_eq!((got.job, got.requested_by, got.pipeline), (run.job.clone(), run.requested_by.clone(), run.pipeline));
    assert!(!got.prepared && !got.cancel_in_progress && got.concurrency_group.is_none());
    assert!(got.created_at > 0 && got.started_at.is_none() && got.duration_ms.is_none());

    store.set_sha(id, "abc123").unwrap();
    store.set_pipeline(id, ".skiff/pipelines/b.yaml").unwrap();
    let inputs = BTreeMap::from([("level".to_string(), "4".to_string()), ("x".to_string(), "y".to_string())]);
    store.set_inputs(id, &inputs).unwrap();
    store.set_prepared(id, Some("deploy-main"), true).unwrap();
    assert!(store.run(id).unwrap().unwrap().labels.is_empty());
    store.set_labels(id, &["gpu".to_string(), "linux".to_string()]).unwrap();
    let got = store.run(id).unwrap().unwrap();
    assert_eq!(got.labels, ["gpu", "linux"]);
    assert_eq!(got.sha.as_deref(), Some("abc123"));
    assert_eq!(got.event, serde_json::json!({ "ref": "refs/heads/main", "sha": "abc123", "n": [1, 2] }));
    assert_eq!((got.pipeline.as_deref(), got.inputs), (Some(".skiff/pipelines/b.yaml"), inputs));
    assert_eq!(
        (got.prepared, got.cancel_in_progress, got.concurrency_group.as_deref()),
        (true, true, Some("deploy-main"))
    );
    assert!(store.run(id + 1000).unwrap().is_none());

    let later = queued(store, "web");
    store.set_prepared(later, Some("deploy-main"), false).unwrap();
    let last = queued(store, "web");
    store.set_prepared(last, Some("deploy-main"), false).unwrap();
    assert_eq!(store.queued_in_group_before("deploy-main", last).unwrap(), [id, later]);
    store.lease(id, "host-1", MINUTE).unwrap().unwrap();
    let leased = store.run(id).unwrap().unwrap();
    assert!(leased.started_at.is_some() && leased.duration_ms.is_some());
    assert_eq!(store.queued_in_group_before("deploy-main", last).unwrap(), [later]);
    assert!(store.queued_in_group_before("other", last).unwrap().is_empty());
}

fn jobs_and_steps_come_back_in_order_with_their_usage(store: &dyn Store, _: Kind) {
    let a = queued(store, "web");
    store.lease(a, "host-1", MINUTE).unwrap().unwrap();
    store.job_started(a, "build", "build", "Build").unwrap();
    store.step_started(a, "build", "fetch", "fetch").unwrap();
    let usage = Usage {
        wall_ms: Some(10),
        cpu_ms: Some(4),
        peak_memory_bytes: Some(1 << 20),
        egress_bytes: None,
        log_bytes: 12,
    };
    store.step_finished(a, "build", "fetch", "fetch", RunStatus::Success, None, &usage).unwrap();
    store.step_started(a, "build", "compile", "compile").unwrap();
    store
        .step_finished(a, "build", "compile", "compile", RunStatus::Failure, Some("exit 1"), &Usage::default())
        .unwrap();
    store.step_finished(a, "build", "upload", "upload", RunStatus::Skipped, None, &Usage::default()).unwrap();
    let outputs = BTreeMap::from([("version".to_string(), "1.2".to_string())]);
    store
        .job_finished(a, "build", "build", "Build", RunStatus::Failure, Some("a step failed"), Some(30), Some(&outputs))
        .unwrap();
    // A job skipped without starting sits where it ended.
    store.job_finished(a, "docs", "docs", "Docs", RunStatus::Skipped, Some("if: false"), None, None).unwrap();
    store.job_started(a, "deploy", "deploy", "Deploy").unwrap();
    store.job_environment(a, "deploy", "production", None).unwrap();
    store.job_environment(a, "deploy", "production", Some("https://example.com")).unwrap();
    store.job_environment(a, "deploy", "production", None).unwrap();

    let jobs = store.jobs(a).unwrap();
    assert_eq!(jobs.iter().map(|j| j.key.as_str()).collect::<Vec<_>>(), ["build", "docs", "deploy"]);
    let build = &jobs[0];
    assert_eq!((build.job.as_str(), build.name.as_str(), build.status), ("build", "Build", RunStatus::Failure));
    assert_eq!(
        (build.reason.as_deref(), build.duration_ms, &build.outputs),
        (Some("a step failed"), Some(30), &outputs)
    );
    assert!(build.started_at.is_some() && build.finished_at.is_some());
    let steps: Vec<_> = build.steps.iter().map(|s| (s.id.as_str(), s.status, s.error.as_deref())).collect();
    assert_eq!(
        steps,
        [
            ("fetch", RunStatus::Success, None),
            ("compile", RunStatus::Failure, Some("exit 1")),
            ("upload", RunStatus::Skipped, None)
        ]
    );
    let fetch = &build.steps[0];
    assert_eq!(
        (
            fetch.usage.wall_ms,
            fetch.usage.cpu_ms,
            fetch.usage.peak_memory_bytes,
            fetch.usage.egress_bytes,
            fetch.usage.log_bytes
        ),
        (Some(10), Some(4), Some(1 << 20), None, 12)
    );
    assert!(fetch.started_at.is_some() && fetch.finished_at.is_some());
    assert!(build.steps[2].started_at.is_none());
    let deploy = &jobs[2];
    assert_eq!((deploy.status, deploy.environment.as_deref()), (RunStatus::Running, Some("production")));
    assert_eq!(deploy.environment_url.as_deref(), Some("https://example.com"), "kept when no URL is given");
    assert_eq!(
        (jobs[1].status, jobs[1].reason.as_deref(), jobs[1].started_at),
        (RunStatus::Skipped, Some("if: false"), None)
    );

    // A step started again (a retry) starts afresh, last in its job.
    store.step_started(a, "build", "fetch", "fetch").unwrap();
    let build = &store.jobs(a).unwrap()[0];
    let again: Vec<_> = build.steps.iter().map(|s| (s.id.as_str(), s.status, s.usage.log_bytes)).collect();
    assert_eq!(
        again,
        [("compile", RunStatus::Failure, 0), ("upload", RunStatus::Skipped, 0), ("fetch", RunStatus::Running, 0)]
    );
    assert!(store.jobs(a + 1000).unwrap().is_empty());
}

fn finishing_a_run_closes_it_once_and_cron_times_are_kept(store: &dyn Store, _: Kind) {
    let a = queued(store, "web");
    store.lease(a, "host-1", MINUTE).unwrap().unwrap();
    store.job_started(a, "build", "build", "build").unwrap();
    store.step_started(a, "build", "compile", "compile").unwrap();
    store.job_waiting(a, "deploy", "deploy", "deploy", "production", "waiting").unwrap();
    // Whoever holds it: a cancel from the API.
    assert!(store.finish_run(a, RunStatus::Cancelled, Some("cancelled by admin")).unwrap());
    assert!(!store.finish_run(a, RunStatus::Failure, None).unwrap(), "already over");
    let run = store.run(a).unwrap().unwrap();
    assert_eq!((run.status, run.error.as_deref()), (RunStatus::Cancelled, Some("cancelled by admin")));
    assert!(run.finished_at.is_some());
    let jobs = store.jobs(a).unwrap();
    assert_eq!(
        (jobs[0].status, jobs[0].steps[0].status, jobs[1].status),
        (RunStatus::Cancelled, RunStatus::Cancelled, RunStatus::Cancelled)
    );
    assert!(!store.complete(a, "host-1", RunStatus::Success, None).unwrap(), "its lease went with it");
    let b = queued(store, "web");
    assert!(store.finish_run(b, RunStatus::Skipped, Some("on: does not take it")).unwrap());
    assert!(store.lease(b, "host-1", MINUTE).unwrap().is_none());

    assert_eq!(store.cron_last_fired("web", "0 * * * *").unwrap(), None);
    store.set_cron_last_fired("web", "0 * * * *", 100).unwrap();
    store.set_cron_last_fired("web", "0 * * * *", 160).unwrap();
    store.set_cron_last_fired("api", "0 * * * *", 7).unwrap();
    assert_eq!(store.cron_last_fired("web", "0 * * * *").unwrap(), Some(160));
    assert_eq!(store.cron_last_fired("api", "0 * * * *").unwrap(), Some(7));
    assert_eq!(store.cron_last_fired("web", "*/5 * * * *").unwrap(), None);
}

#[test]
fn a_store_setting_never_shows_its_password() {
    let url = "postgres://skiff:hunter2-secret@127.0.0.1:1/runs";
    let location = crate::config::StoreLocation::open(url, None).unwrap();
    let shown = format!("{location:?}");
    assert!(shown.contains("skiff@127.0.0.1:1/runs") && !shown.contains("hunter2"), "{shown}");
    // Nothing listens on port 1: the error names the database, not the password.
    let err = format!("{:#}", PostgresStore::connect(url).unwrap_err());
    assert!(err.contains("postgres://skiff@127.0.0.1:1/runs") && !err.contains("hunter2"), "{err}");
    assert!(crate::config::StoreLocation::open("mysql://x", None).is_err());
    assert_eq!(crate::config::StoreLocation::open("sqlite", None).unwrap(), crate::config::StoreLocation::Sqlite);
    let mode = format!("{:#}", PostgresStore::connect("postgres://skiff@127.0.0.1:1/runs?sslmode=allow").unwrap_err());
    assert!(mode.contains("`sslmode=allow`") && mode.contains("verify-full"), "{mode}");
    let orphan =
        format!("{:#}", PostgresStore::connect("postgres://skiff@127.0.0.1:1/runs?sslrootcert=/x").unwrap_err());
    assert!(orphan.contains("add `sslmode=verify-full`"), "{orphan}");
    let missing = crate::config::StoreLocation::open(
        "postgres://skiff@127.0.0.1:1/runs?sslmode=verify-full&sslrootcert=/nowhere/ca.pem",
        None,
    )
    .unwrap_err();
    assert!(format!("{missing:#}").contains("/nowhere/ca.pem"), "{missing:#}");
}

#[test]
fn the_store_url_tls_options_are_read_as_libpq_writes_them() {
    use super::pg_tls::read;
    let a = read("postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x").unwrap();
    assert_eq!(a.url, "postgres://u@h/db?application_name=x&sslmode=require");
    assert!(a.tls && a.rootcert.as_deref() == Some(std::path::Path::new("/etc/ca.pem")));
    let a = read("postgres://u@h/db?sslmode=require").unwrap();
    assert!(a.tls && a.rootcert.is_none());
    assert!(read("postgres://u@h/db?sslmode=verify-ca").unwrap().tls);
    let a = read("postgres://u@h/db?sslmode=disable").unwrap();
    assert!(!a.tls && a.url.ends_with("?sslmode=disable"));
    let a = read("postgres://u@h/db").unwrap();
    assert!(!a.tls && a.url == "postgres://u@h/db");
    assert!(read("host=h user=u sslmode=require").unwrap().tls);
    assert!(!read("host=h user=u").unwrap().tls);
}

/// A cluster that takes TLS only, with a certificate its own authority signed for 127.0.0.1.
#[test]
fn a_store_over_tls_checks_the_servers_certificate_and_is_refused_in_plain_text() {
    let Some(db) = crate::testing::postgres::tls_database() else { return };
    let ca = db.ca.clone().unwrap();
    let good = format!("{}?sslmode=verify-full&sslrootcert={}", db.url, ca.display());
    let store = PostgresStore::connect(&good).unwrap();
    assert!(store.schema_version().unwrap() > 0);
    let ssl: bool = store
        .with(|c| Ok(c.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])?.try_get(0)?))
        .unwrap();
    assert!(ssl, "the store's connection is encrypted");

    // Plain text: the server refuses, and the error says what to add.
    let plain = format!("{:#}", PostgresStore::connect(&db.url).unwrap_err());
    assert!(plain.contains("sslmode=verify-full"), "{plain}");
    // TLS to a server nobody vouched for: refused, with what to name.
    let unknown = format!("{:#}", PostgresStore::connect(&format!("{}?sslmode=require", db.url)).unwrap_err());
    assert!(unknown.contains("sslrootcert"), "{unknown}");
    // A certificate for 127.0.0.1 does not serve `localhost`.
    let other_name = good.replace("127.0.0.1", "localhost");
    let named = format!("{:#}", PostgresStore::connect(&other_name).unwrap_err());
    assert!(named.contains("does not name the host"), "{named}");
    // Another authority's file: refused too.
    let dir = tempfile::tempdir().unwrap();
    let stranger = dir.path().join("other.pem");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(&stranger, params.self_signed(&key).unwrap().pem()).unwrap();
    let wrong = format!("{}?sslmode=verify-full&sslrootcert={}", db.url, stranger.display());
    let wrong = format!("{:#}", PostgresStore::connect(&wrong).unwrap_err());
    assert!(wrong.contains("not signed by a trusted authority"), "{wrong}");
}

/// What only a store that several hosts share must stand, on PostgreSQL: two stores are two
/// hosts, each with its own connections.
mod shared {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{Barrier, Mutex};
    use std::time::Duration;

    use super::{MINUTE, queued};
    use crate::queue::RunQueue as _;
    use crate::store::{NewRun, PostgresStore, RunFilter, RunStatus, RunStore as _};
    use crate::testing::postgres as pg;

    const RUNS: usize = 300;

    #[test]
    fn two_hosts_racing_for_the_same_runs_lease_each_exactly_once() {
        let Some(db) = pg::database() else { return };
        let hosts = [db.store(), db.store()];
        let batch: Vec<NewRun> = (0..RUNS)
            .map(|i| NewRun { app: format!("app-{}", i % 3), trigger: "push".into(), ..NewRun::default() })
            .collect();
        for r in hosts[0].insert_runs(&batch).unwrap() {
            r.unwrap();
        }
        let taken: Mutex<Vec<(i64, String)>> = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for (i, host) in hosts.iter().enumerate() {
                for worker in 0..2 {
                    let taken = &taken;
                    s.spawn(move || {
                        let owner = format!("host-{i}");
                        loop {
                            let available = host.available(32).unwrap();
                            if available.is_empty() {
                                return;
                            }
                            // The two workers of a host walk the list from either end.
                            let order: Vec<_> =
                                if worker == 0 { available } else { available.into_iter().rev().collect() };
                            for run in order {
                                if let Some(lease) = host.lease(run.id, &owner, MINUTE).unwrap() {
                                    assert!(!lease.taken_over);
                                    taken.lock().unwrap().push((run.id, owner.clone()));
                                }
                            }
                        }
                    });
                }
            }
        });
        let taken = taken.into_inner().unwrap();
        let ids: BTreeSet<i64> = taken.iter().map(|(id, _)| *id).collect();
        assert_eq!((taken.len(), ids.len()), (RUNS, RUNS), "every run leased, none twice");
        let per_host: BTreeSet<&str> = taken.iter().map(|(_, o)| o.as_str()).collect();
        assert_eq!(per_host.len(), 2, "both hosts took runs");
        for (id, owner) in &taken {
            assert!(hosts[0].extend(*id, owner, MINUTE).unwrap(), "run {id} is held by {owner}");
            let other = if owner == "host-0" { "host-1" } else { "host-0" };
            assert!(!hosts[1].extend(*id, other, MINUTE).unwrap());
        }
        assert!(hosts[1].available(10).unwrap().is_empty());
    }

    #[test]
    fn hosts_racing_for_the_same_jobs_lease_each_exactly_once() {
        use crate::queue::{JobOffer, JobQueue as _};
        let Some(db) = pg::database() else { return };
        let hosts = [db.store(), db.store(), db.store()];
        let run = queued(&hosts[0], "web");
        hosts[0].lease(run, "graph", MINUTE).unwrap().unwrap();
        const JOBS: usize = 200;
        for i in 0..JOBS {
            let offer = JobOffer { run, attempt: 1, key: format!("job-{i}"), labels: vec![], ticket: "{}".into() };
            hosts[0].offer_job(&offer).unwrap();
        }
        let taken: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for (i, host) in hosts.iter().enumerate() {
                for worker in 0..2 {
                    let taken = &taken;
                    s.spawn(move || {
                        let owner = format!("host-{i}-{worker}");
                        while let Some(lease) = host.lease_job(&owner, &[], MINUTE, None).unwrap() {
                            assert_eq!(lease.tries, 1);
                            taken.lock().unwrap().push((lease.key, owner.clone()));
                        }
                    });
                }
            }
        });
        let taken = taken.into_inner().unwrap();
        let keys: BTreeSet<&str> = taken.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!((taken.len(), keys.len()), (JOBS, JOBS), "every job leased, none twice");
        let owners: BTreeSet<&str> = taken.iter().map(|(_, o)| o.as_str()).collect();
        assert!(owners.len() > 1, "more than one host took jobs: {owners:?}");
        for (key, owner) in &taken {
            let lease = crate::queue::JobLease { run, attempt: 1, key: key.clone(), ticket: String::new(), tries: 1 };
            assert!(hosts[1].extend_job(&lease, owner, MINUTE).unwrap(), "{key} is held by {owner}");
        }
    }

    #[test]
    fn a_lapsed_lease_goes_to_the_other_host_and_the_first_cannot_complete() {
        let Some(db) = pg::database() else { return };
        let (one, two) = (db.store(), db.store());
        let a = queued(&one, "web");
        one.lease(a, "host-1", Duration::from_millis(300)).unwrap().unwrap();
        assert!(two.lease(a, "host-2", MINUTE).unwrap().is_none(), "held");
        assert!(two.available(10).unwrap().is_empty());
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(two.available(10).unwrap().iter().map(|r| r.id).collect::<Vec<_>>(), [a]);
        let lease = two.lease(a, "host-2", MINUTE).unwrap().unwrap();
        assert!(lease.taken_over);
        assert!(!one.extend(a, "host-1", MINUTE).unwrap());
        assert!(!one.complete(a, "host-1", RunStatus::Success, None).unwrap(), "the first host lost it");
        assert_eq!(two.run(a).unwrap().unwrap().status, RunStatus::Running);
        assert!(two.complete(a, "host-2", RunStatus::Success, None).unwrap());
        assert_eq!(one.run(a).unwrap().unwrap().status, RunStatus::Success);
    }

    #[test]
    fn accepts_on_two_hosts_at_once_number_each_app_without_gaps_or_repeats() {
        let Some(db) = pg::database() else { return };
        let hosts = [db.store(), db.store()];
        let start = Barrier::new(4);
        std::thread::scope(|s| {
            for host in &hosts {
                for worker in 0..2 {
                    let start = &start;
                    s.spawn(move || {
                        start.wait();
                        for i in 0..40 {
                            let run =
                                |app: &str| NewRun { app: app.into(), trigger: "push".into(), ..NewRun::default() };
                            if (i + worker) % 4 == 0 {
                                // A group commit of several apps, in either order.
                                let batch =
                                    if worker == 0 { [run("web"), run("api")] } else { [run("api"), run("web")] };
                                for r in host.insert_runs(&batch).unwrap() {
                                    r.unwrap();
                                }
                            } else {
                                host.insert_run(&run(if i % 2 == 0 { "web" } else { "api" })).unwrap();
                            }
                        }
                    });
                }
            }
        });
        let runs = hosts[0].list_runs(&RunFilter { limit: Some(500), ..RunFilter::default() }).unwrap();
        let mut numbers: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for r in &runs {
            numbers.entry(r.app.clone()).or_default().push(r.number);
        }
        let total: usize = numbers.values().map(Vec::len).sum();
        assert_eq!(total, runs.len());
        for (app, mut n) in numbers {
            n.sort();
            assert_eq!(n, (1..=n.len() as i64).collect::<Vec<_>>(), "{app}: unique and without gaps");
        }
    }

    #[test]
    fn the_same_dispatch_on_two_hosts_at_once_stores_one_run() {
        let Some(db) = pg::database() else { return };
        let hosts = [db.store(), db.store()];
        const IDS: usize = 40;
        let start = Barrier::new(4);
        let got: Mutex<Vec<(String, crate::store::Inserted)>> = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for host in &hosts {
                for _ in 0..2 {
                    let (start, got) = (&start, &got);
                    s.spawn(move || {
                        start.wait();
                        for i in 0..IDS {
                            let d = format!("delivery-{i}");
                            let run = NewRun {
                                app: "web".into(),
                                trigger: "push".into(),
                                dispatch_id: Some(d.clone()),
                                ..NewRun::default()
                            };
                            let inserted = host.insert_run(&run).unwrap();
                            got.lock().unwrap().push((d, inserted));
                        }
                    });
                }
            }
        });
        let got = got.into_inner().unwrap();
        let mut by_id: BTreeMap<String, Vec<crate::store::Inserted>> = BTreeMap::new();
        for (d, i) in got {
            by_id.entry(d).or_default().push(i);
        }
        for (d, all) in &by_id {
            assert_eq!(all.len(), 4);
            assert_eq!(all.iter().filter(|i| !i.duplicate).count(), 1, "{d}: stored once");
            assert!(all.iter().all(|i| (i.id, i.number) == (all[0].id, all[0].number)), "{d}: {all:?}");
        }
        assert_eq!(hosts[1].count_runs().unwrap(), IDS as i64);
        let mut numbers: Vec<i64> = by_id.values().map(|all| all[0].number).collect();
        numbers.sort();
        assert_eq!(numbers, (1..=IDS as i64).collect::<Vec<_>>(), "a lost race takes no number");
    }

    #[test]
    fn hosts_starting_together_migrate_once_and_numbers_continue_from_stored_runs() {
        let Some(db) = pg::database() else { return };
        // A database left at version 6, with runs: the counter starts after the highest.
        {
            let mut c = db.client();
            c.batch_execute("CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
                .unwrap();
            for (i, sql) in crate::store::POSTGRES_MIGRATIONS[..6].iter().enumerate() {
                c.batch_execute(sql).unwrap();
                c.execute("INSERT INTO schema_migrations VALUES ($1, 0)", &[&(i as i64 + 1)]).unwrap();
            }
            c.batch_execute(
                "INSERT INTO runs (app, number, status, trigger, created_at) VALUES
                    ('web', 1, 'success', 'push', 1), ('web', 41, 'success', 'push', 1), ('api', 7, 'success', 'push', 1)",
            )
            .unwrap();
        }
        let stores: Vec<PostgresStore> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3).map(|_| s.spawn(|| db.store())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(stores[0].schema_version().unwrap(), crate::store::POSTGRES_MIGRATIONS.len() as i64);
        let applied: i64 = db.client().query_one("SELECT COUNT(*) FROM schema_migrations", &[]).unwrap().get(0);
        assert_eq!(applied, crate::store::POSTGRES_MIGRATIONS.len() as i64, "each migration once");
        let number = |app: &str| {
            stores[1]
                .insert_run(&NewRun { app: app.into(), trigger: "push".into(), ..NewRun::default() })
                .unwrap()
                .number
        };
        assert_eq!((number("web"), number("web"), number("api"), number("new")), (42, 43, 8, 1));
        // A database from a newer skiff is refused.
        db.client().execute("INSERT INTO schema_migrations VALUES (1000, 0)", &[]).unwrap();
        let err = format!("{:#}", PostgresStore::connect(&db.url).unwrap_err());
        assert!(err.contains("newer than this skiff knows"), "{err}");
    }

    /// The server calls the store from its tokio tasks: neither kind of runtime may break.
    #[test]
    fn the_store_answers_inside_either_kind_of_tokio_runtime() {
        let Some(db) = pg::database() else { return };
        let store = std::sync::Arc::new(db.store());
        for rt in [
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap(),
        ] {
            let s = store.clone();
            let id = rt.block_on(async move {
                let id = tokio::spawn(async move { queued(s.as_ref(), "web") }).await.unwrap();
                tokio::task::yield_now().await;
                id
            });
            assert_eq!(store.run(id).unwrap().unwrap().status, RunStatus::Queued);
        }
    }
}

fn pruning_removes_finished_runs_of_one_app_with_their_jobs_only(store: &dyn Store, _: Kind) {
    let old = queued(store, "web");
    store.job_started(old, "build", "build", "build").unwrap();
    store.finish_run(old, RunStatus::Success, None).unwrap();
    let running = queued(store, "web");
    store.lease(running, "host-a", Duration::from_secs(60)).unwrap().unwrap();
    let other = queued(store, "docs");
    store.finish_run(other, RunStatus::Failure, None).unwrap();
    let later = now_ms() + 1000;
    assert_eq!(store.prune_runs("web", later, 10).unwrap(), [old]);
    assert!(store.run(old).unwrap().is_none() && store.jobs(old).unwrap().is_empty());
    // A run in progress stays; so do other apps' runs; and numbers are not reused.
    assert!(store.run(running).unwrap().is_some() && store.run(other).unwrap().is_some());
    assert!(store.prune_runs("web", later, 10).unwrap().is_empty());
    let next = store.insert_run(&NewRun { app: "web".into(), trigger: "push".into(), ..NewRun::default() }).unwrap();
    assert_eq!(next.number, 3);
}

fn a_lease_is_admitted_only_within_the_group_and_the_app_s_limit(store: &dyn Store, _: Kind) {
    use crate::queue::Admission;
    let group = |g: &str| Admission { group: Some(g.into()), app_max: None };
    let at_most = |n: usize| Admission { group: None, app_max: Some(n) };
    let (first, second) = (queued(store, "web"), queued(store, "web"));
    store.set_prepared(first, Some("deploy"), false).unwrap();
    store.set_prepared(second, Some("deploy"), false).unwrap();
    assert!(store.lease_within(first, "host-1", MINUTE, &group("deploy")).unwrap().is_some());
    // The group is held, whichever host asks; another group, or another app's, is not.
    assert!(store.lease_within(second, "host-2", MINUTE, &group("deploy")).unwrap().is_none());
    assert_eq!(store.run(second).unwrap().unwrap().status, RunStatus::Queued);
    let other = queued(store, "docs");
    store.set_prepared(other, Some("deploy"), false).unwrap();
    assert!(store.lease_within(other, "host-2", MINUTE, &group("deploy")).unwrap().is_some());

    // The app's limit counts its running runs on every host, not a run that only waits for
    // approvals, nor a run whose lease lapsed.
    let (third, fourth, fifth) = (queued(store, "web"), queued(store, "web"), queued(store, "web"));
    assert!(store.lease_within(third, "host-2", MINUTE, &at_most(2)).unwrap().is_some());
    assert!(store.lease_within(fourth, "host-1", MINUTE, &at_most(2)).unwrap().is_none());
    store.job_waiting(third, "deploy", "deploy", "deploy", "production", "waiting for an approval").unwrap();
    assert!(store.lease_within(fourth, "host-1", Duration::ZERO, &at_most(2)).unwrap().is_some());
    std::thread::sleep(Duration::from_millis(5));
    assert!(store.lease_within(fifth, "host-1", MINUTE, &at_most(2)).unwrap().is_some(), "fourth's lease lapsed");

    // Once the group's run ends, the next one is admitted.
    assert!(store.complete(first, "host-1", RunStatus::Success, None).unwrap());
    assert!(store.lease_within(second, "host-2", MINUTE, &group("deploy")).unwrap().is_some());

    // A run ended through another host (a cancel) holds its group until its own host has
    // stopped it and released its lease; another owner cannot release it.
    assert!(store.finish_run(second, RunStatus::Cancelled, Some("cancelled")).unwrap());
    let next = queued(store, "web");
    store.set_prepared(next, Some("deploy"), false).unwrap();
    assert!(store.lease_within(next, "host-1", MINUTE, &group("deploy")).unwrap().is_none());
    store.release(second, "host-1").unwrap();
    assert!(store.lease_within(next, "host-1", MINUTE, &group("deploy")).unwrap().is_none());
    assert!(!store.complete(second, "host-2", RunStatus::Cancelled, None).unwrap(), "it was ended already");
    store.release(second, "host-2").unwrap();
    assert_eq!(store.run(second).unwrap().unwrap().status, RunStatus::Cancelled);
    assert!(store.lease_within(next, "host-1", MINUTE, &group("deploy")).unwrap().is_some());
}
