//! `forward`: dispatches sent once each through an in-memory relay, and the answers given.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::future::Future;
use std::task::{Context, Poll, Waker};

use serde_json::json;
use skiff_edge_core::{Answer, DispatchRequest, Outcome, Relay, RelayError, forward, handle_webhook};

use crate::fixtures::{NOW, apps, load, master};

const APPS: &str = r#"
- name: web
  on: push
- name: api
  on: push
"#;

type Host = Box<dyn Fn(&str) -> Result<u16, RelayError>>;

/// The edge's key-value store and the host, in memory; `host` answers each dispatch id.
struct Memory {
    taken: RefCell<BTreeSet<String>>,
    posted: RefCell<Vec<String>>,
    host: Host,
    store: Result<(), RelayError>,
}

impl Memory {
    fn new(host: impl Fn(&str) -> Result<u16, RelayError> + 'static) -> Self {
        Memory { taken: RefCell::default(), posted: RefCell::default(), host: Box::new(host), store: Ok(()) }
    }

    fn taken(&self) -> Vec<String> {
        self.taken.borrow().iter().cloned().collect()
    }

    fn posted(&self) -> Vec<String> {
        self.posted.take()
    }
}

impl Relay for Memory {
    async fn seen(&self, id: &str) -> Result<bool, RelayError> {
        self.store.clone()?;
        Ok(self.taken.borrow().contains(id))
    }

    async fn remember(&self, id: &str) -> Result<(), RelayError> {
        self.store.clone()?;
        self.taken.borrow_mut().insert(id.to_owned());
        Ok(())
    }

    async fn post(&self, request: &DispatchRequest) -> Result<u16, RelayError> {
        assert!(request.headers.iter().any(|(k, v)| k == "webhook-id" && *v == request.id));
        self.posted.borrow_mut().push(request.id.clone());
        (self.host)(&request.id)
    }
}

/// Runs `future` to completion; the in-memory relay never waits.
fn block_on<F: Future>(future: F) -> F::Output {
    match std::pin::pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the in-memory relay never waits"),
    }
}

/// A GitHub push both apps run on, and the ids of its two dispatches.
fn push() -> (Outcome, String, String) {
    let rec = load("github", "push");
    let outcome = handle_webhook(&master("github", apps(APPS)), &rec.headers, &rec.body, NOW);
    let ids: Vec<String> = outcome.requests().iter().map(|r| r.id.clone()).collect();
    let [web, api] = <[String; 2]>::try_from(ids).unwrap();
    assert!(web.ends_with(":web") && api.ends_with(":api"), "{web} {api}");
    (outcome, web, api)
}

fn json_of(answer: &Answer) -> serde_json::Value {
    serde_json::from_slice(&answer.body).unwrap()
}

#[test]
fn a_host_taking_every_dispatch_passes_the_outcome_status_and_body() {
    let (outcome, web, api) = push();
    for host_status in [200, 202, 204, 299] {
        let relay = Memory::new(move |_| Ok(host_status));
        let answer = block_on(forward(&relay, &outcome));
        assert_eq!(answer, Answer { status: 202, body: outcome.response_body(), log: None });
        assert_eq!(relay.posted(), [web.clone(), api.clone()]);
        assert_eq!(relay.taken(), [api.clone(), web.clone()]);
    }
}

#[test]
fn a_redelivery_is_not_sent_again() {
    let (outcome, web, api) = push();
    let relay = Memory::new(|_| Ok(202));
    relay.taken.borrow_mut().insert(web.clone());
    let answer = block_on(forward(&relay, &outcome));
    assert_eq!((answer.status, answer.log), (202, None));
    assert_eq!(relay.posted(), [api.as_str()]);

    let again = block_on(forward(&relay, &outcome));
    assert_eq!(again, Answer { status: 202, body: outcome.response_body(), log: None });
    assert!(relay.posted().is_empty(), "both were taken already");
    assert_eq!(relay.taken(), [api, web]);
}

#[test]
fn a_host_failing_is_502_and_only_what_it_took_is_remembered() {
    let (outcome, web, api) = push();
    let relay =
        Memory::new(
            |id| {
                if id.ends_with(":web") { Ok(500) } else { Err(RelayError::Host("connection refused".into())) }
            },
        );
    let answer = block_on(forward(&relay, &outcome));
    assert_eq!(answer.status, 502);
    let failures = [format!("{web}: host answered 500"), format!("{api}: connection refused")];
    assert_eq!(json_of(&answer), json!({"error": "the host did not accept the run", "failures": failures}));
    assert_eq!(answer.log, Some(format!("dispatch failed: {}", failures.join("; "))));
    assert_eq!(relay.posted(), [web.clone(), api.clone()], "a failure does not stop the other dispatches");
    assert!(relay.taken().is_empty());

    // Only `web` fails: `api` is taken, and the redelivery sends `web` alone.
    let relay = Memory::new(|id| if id.ends_with(":web") { Ok(302) } else { Ok(202) });
    assert_eq!(block_on(forward(&relay, &outcome)).status, 502);
    assert_eq!(relay.taken(), [api.as_str()]);
    let relay = Memory { host: Box::new(|_| Ok(202)), ..relay };
    relay.posted();
    assert_eq!(block_on(forward(&relay, &outcome)).status, 202);
    assert_eq!(relay.posted(), [web]);
}

#[test]
fn a_failing_store_or_configuration_is_500_and_explained_in_the_log_only() {
    let (outcome, _, _) = push();
    let relay =
        Memory { store: Err(RelayError::Store("key-value store `default`: gone".into())), ..Memory::new(|_| Ok(202)) };
    let answer = block_on(forward(&relay, &outcome));
    assert_eq!(answer.status, 500);
    assert_eq!(json_of(&answer), json!({"error": "the master's key-value store failed; see its log"}));
    assert_eq!(answer.log.as_deref(), Some("key-value store `default`: gone"));
    assert!(relay.posted().is_empty());

    let relay = Memory::new(|_| Err(RelayError::Misconfigured("variable `host_url` gives no valid URL".into())));
    let answer = block_on(forward(&relay, &outcome));
    assert_eq!(answer.status, 500);
    assert_eq!(json_of(&answer), json!({"error": "the master is misconfigured; see its log"}));
    assert_eq!(answer.log.as_deref(), Some("configuration: variable `host_url` gives no valid URL"));
    assert_eq!(relay.posted().len(), 1, "stops at the first");
}

#[test]
fn nothing_to_dispatch_is_answered_without_the_relay() {
    let rec = load("github", "ping");
    let outcome = handle_webhook(&master("github", apps(APPS)), &rec.headers, &rec.body, NOW);
    let relay = Memory { store: Err(RelayError::Store("never asked".into())), ..Memory::new(|_| panic!()) };
    let answer = block_on(forward(&relay, &outcome));
    assert_eq!(answer, Answer { status: 200, body: outcome.response_body(), log: None });
    assert!(json_of(&answer)["message"].as_str().unwrap().starts_with("pong: "));
}
