//! Accepting runs as the store grows: runs accepted per second with 0, 100,000 and 1,000,000
//! runs of the same app already stored (rows generated directly), through the store's own
//! insert (the number from the app's counter, the dedupe lookup, the insert, a durable commit).
//! Beside it, the query numbers came from before (`MAX(number) + 1` over the app's runs), timed
//! on the same stores, to show what the counter removed.
//!
//! `cargo bench -p skiff --bench accept` prints a table (see docs/BENCHMARKS.md); the target is
//! accepts flat within 20 % from 0 to 1,000,000 stored runs. `SKIFF_BENCH_N` accepts per size.

use std::time::Instant;

use skiff_server::store::{NewRun, RunStore as _, SqliteStore};

fn fill(path: &std::path::Path, n: usize) {
    let mut conn = rusqlite::Connection::open(path).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO runs (app, number, status, trigger, git_ref, dispatch_id, created_at)
                 VALUES ('web', ?1, 'success', 'push', 'refs/heads/main', ?2, ?1)",
            )
            .unwrap();
        for i in 1..=n {
            insert.execute(rusqlite::params![i as i64, format!("filled-{i}")]).unwrap();
        }
    }
    tx.execute("INSERT OR REPLACE INTO run_numbers (app, next) VALUES ('web', ?1)", [n as i64 + 1]).unwrap();
    tx.commit().unwrap();
}

fn main() {
    let accepts: usize = std::env::var("SKIFF_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "accept benchmark: {accepts} accepts per size; {} cores; load {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("| runs stored | accepts/s | × at 0 | old `MAX(number)+1` query, µs each |");
    println!("|---|---|---|---|");
    let mut at_zero = None;
    for stored in [0usize, 100_000, 1_000_000] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skiff.db");
        drop(SqliteStore::open(&path).unwrap());
        fill(&path, stored);
        // The number query the store used before the counter, on the same rows.
        let conn = rusqlite::Connection::open(&path).unwrap();
        let t = Instant::now();
        let reps = 50;
        for _ in 0..reps {
            let _: i64 = conn
                .query_row(
                    "SELECT COALESCE(MAX(number), 0) + 1 FROM runs INDEXED BY runs_app WHERE app = 'web'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
        }
        let old_us = t.elapsed().as_secs_f64() * 1e6 / reps as f64;
        drop(conn);

        let store = SqliteStore::open(&path).unwrap();
        let t = Instant::now();
        for i in 0..accepts {
            let run = NewRun {
                app: "web".into(),
                trigger: "push".into(),
                git_ref: Some("refs/heads/main".into()),
                dispatch_id: Some(format!("bench-{i}")),
                ..NewRun::default()
            };
            let inserted = store.insert_run(&run).unwrap();
            assert_eq!(inserted.number, (stored + i + 1) as i64);
        }
        let rate = accepts as f64 / t.elapsed().as_secs_f64();
        let base = *at_zero.get_or_insert(rate);
        println!("| {stored} | {rate:.0} | {:.2} | {old_us:.0} |", rate / base);
    }
}
