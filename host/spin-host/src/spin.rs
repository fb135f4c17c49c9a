//! A local Spin host on Skiff's wasmtime: `wasi:http@0.3` handlers (spin-sdk 7
//! components) with `spin:variables` and `spin:key-value`, outbound HTTP only
//! to the component's `allowed_outbound_hosts`, nothing else (no files, no
//! sockets, no host environment).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::body::Body;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use wasmtime::component::FutureReader;
use wasmtime::component::{Accessor, Component, HasSelf, Linker, Resource, ResourceTable, StreamReader};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks};

use super::kv::KvStores;
use super::manifest::{Manifest, check_variable_name, expand};
use skiff_runtime::capabilities::http::{Allowlist, SendFuture, send_allowed};
use skiff_runtime::to_anyhow;

mod bindings {
    wasmtime::component::bindgen!({
        path: "src/wit",
        world: "skiff:edge-host/spin-host",
        imports: { default: trappable },
        with: { "spin:key-value/key-value.store": super::KvHandle },
    });
}
use bindings::spin::key_value::key_value as kv_wit;
use bindings::spin::variables::variables as vars_wit;

/// Largest request body a component is given; the edge core accepts 1 MiB.
const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Largest response body taken from a component.
const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Linear memory per request instance.
const MAX_MEMORY_BYTES: usize = 128 << 20;
/// A request that takes longer is answered with 504 and its instance dropped (by default).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Instances alive at once (by default): with 128 MiB each, at most 4 GiB.
pub const MAX_CONCURRENCY: usize = 32;

/// Handle to an open key-value store inside one instance.
pub struct KvHandle {
    label: String,
}

/// What one component may use, fixed at start.
struct Loaded {
    pre: ServicePre<EdgeState>,
    allow: Allowlist,
    variables: Arc<BTreeMap<String, String>>,
    environment: Vec<(String, String)>,
    stores: Arc<Vec<String>>,
}

/// A Spin application, compiled and ready to serve.
pub struct SpinApp {
    engine: Engine,
    manifest: Manifest,
    components: BTreeMap<String, Loaded>,
    kv: Arc<KvStores>,
    timeout: Duration,
    instances: tokio::sync::Semaphore,
    max_instances: usize,
}

/// The data of one request's `Store`.
pub struct EdgeState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    outbound: Outbound,
    limits: StoreLimits,
    variables: Arc<BTreeMap<String, String>>,
    stores: Arc<Vec<String>>,
    kv: Arc<KvStores>,
}

/// Outbound HTTP policy: the component's `allowed_outbound_hosts`, nothing more.
struct Outbound {
    component: String,
    allow: Allowlist,
}

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let _ = fut;
        let component = self.component.clone();
        send_allowed(
            &self.allow,
            &skiff_runtime::capabilities::connect::web_pki(),
            request,
            options,
            None,
            move |msg| tracing::warn!(component = %component, "component `{component}`: {msg}"),
            |shown| format!("add `http://{shown}` or `https://{shown}` to `allowed_outbound_hosts` in spin.toml"),
        )
    }
}

impl WasiView for EdgeState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl wasmtime_wasi_http::WasiHttpView for EdgeState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.outbound }
    }
}

impl SpinApp {
    /// Compiles every component of `manifest`, with `given` application variables.
    /// The application's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn new(manifest: Manifest, given: &BTreeMap<String, String>, kv: KvStores) -> anyhow::Result<Self> {
        let values = manifest.resolve_variables(given)?;
        let mut config = Config::new();
        config.wasm_component_model(true).wasm_component_model_async(true).epoch_interruption(true);
        let engine = Engine::new(&config).map_err(to_anyhow)?;
        skiff_runtime::engine::spawn_ticker(engine.weak());

        let mut linker = Linker::<EdgeState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(to_anyhow)?;
        wasmtime_wasi::p3::add_to_linker(&mut linker).map_err(to_anyhow)?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker).map_err(to_anyhow)?;
        vars_wit::add_to_linker::<_, HasSelf<EdgeState>>(&mut linker, |s| s).map_err(to_anyhow)?;
        kv_wit::add_to_linker::<_, HasSelf<EdgeState>>(&mut linker, |s| s).map_err(to_anyhow)?;

        let mut components = BTreeMap::new();
        for (id, c) in &manifest.components {
            let bytes = std::fs::read(&c.source).with_context(|| {
                format!(
                    "component `{id}`: cannot read {} (build it first: see its [component.{id}.build])",
                    c.source.display()
                )
            })?;
            let component = Component::new(&engine, &bytes)
                .map_err(|e| anyhow::anyhow!("component `{id}` ({}) does not compile: {e}", c.source.display()))?;
            let pre = linker
                .instantiate_pre(&component)
                .map_err(|e| anyhow::anyhow!("component `{id}` needs something a Spin host here does not give: {e}"))?;
            let pre = ServicePre::new(pre).map_err(|e| {
                anyhow::anyhow!("component `{id}` is not a `wasi:http@0.3.0` handler (build it with spin-sdk 7): {e}")
            })?;
            let hosts = c
                .allowed_outbound_hosts
                .iter()
                .map(|t| expand(t, &values))
                .collect::<anyhow::Result<Vec<_>>>()
                .with_context(|| format!("component `{id}`: allowed_outbound_hosts"))?;
            let allow = Allowlist::parse(&hosts).map_err(|e| anyhow::anyhow!("component `{id}`: {e}"))?;
            let variables = c
                .variables
                .iter()
                .map(|(k, t)| Ok((k.clone(), expand(t, &values)?)))
                .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
            components.insert(
                id.clone(),
                Loaded {
                    pre,
                    allow,
                    variables: Arc::new(variables),
                    environment: c.environment.clone().into_iter().collect(),
                    stores: Arc::new(c.key_value_stores.clone()),
                },
            );
        }
        Ok(Self {
            engine,
            manifest,
            components,
            kv: Arc::new(kv),
            timeout: REQUEST_TIMEOUT,
            instances: tokio::sync::Semaphore::new(MAX_CONCURRENCY),
            max_instances: MAX_CONCURRENCY,
        })
    }

    /// How many instances may run at once (32 by default).
    pub fn with_max_concurrency(mut self, n: usize) -> Self {
        self.instances = tokio::sync::Semaphore::new(n);
        self.max_instances = n;
        self
    }

    /// How long a request may take before it is answered with 504 (30 s by default).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Serves one request in a fresh instance of the routed component.
    pub async fn handle(&self, req: http::Request<Bytes>) -> http::Response<Bytes> {
        let Some(component) = self.manifest.route(req.uri().path()) else {
            return plain(404, format!("no route in {} matches {}", self.manifest.name, req.uri().path()));
        };
        let loaded = &self.components[&component.id];
        let req = match absolute_uri(req) {
            Ok(req) => req,
            Err(msg) => return plain(400, msg),
        };
        // Waiting for an instance has its own budget; the run then gets the whole timeout.
        let Ok(Ok(_instance)) = tokio::time::timeout(self.timeout, self.instances.acquire()).await else {
            let n = self.max_instances;
            tracing::warn!("all {n} instances stayed busy for {:?}; answered 503", self.timeout);
            let text = format!("all {n} instances are busy; try again shortly (--max-concurrency raises the limit)");
            let mut resp = plain(503, text);
            resp.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
            return resp;
        };
        match tokio::time::timeout(self.timeout, self.call(&component.id, loaded, req)).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                tracing::error!(component = %component.id, "component `{}` failed: {e:#}", component.id);
                plain(500, format!("component `{}` failed; see the host's log", component.id))
            }
            Err(_) => {
                tracing::warn!(component = %component.id, "component `{}` stopped after {:?}", component.id, self.timeout);
                plain(504, format!("component `{}` took longer than {:?}", component.id, self.timeout))
            }
        }
    }

    async fn call(
        &self,
        id: &str,
        loaded: &Loaded,
        req: http::Request<Bytes>,
    ) -> wasmtime::Result<http::Response<Bytes>> {
        let mut wasi = WasiCtx::builder();
        wasi.inherit_stdout().inherit_stderr().allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        for (k, v) in &loaded.environment {
            wasi.env(k, v);
        }
        let state = EdgeState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            outbound: Outbound { component: id.to_string(), allow: loaded.allow.clone() },
            limits: StoreLimitsBuilder::new().memory_size(MAX_MEMORY_BYTES).instances(64).build(),
            variables: loaded.variables.clone(),
            stores: loaded.stores.clone(),
            kv: self.kv.clone(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // Yield to the runtime every tick, so the request timeout can stop a spinning guest.
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);

        let (parts, body) = req.into_parts();
        let body = Full::new(body);
        let req = http::Request::from_parts(parts, body);
        let (req, _io) = wasmtime_wasi_http::p3::Request::from_http(&mut store.data_mut().outbound, req);

        let service = loaded.pre.instantiate_async(&mut store).await?;
        let outcome = store
            .run_concurrent(async |acc| -> wasmtime::Result<Result<http::Response<Bytes>, ErrorCode>> {
                let resp = match service.handle(acc, req).await? {
                    Ok(resp) => resp,
                    Err(code) => return Ok(Err(code)),
                };
                let resp = acc.with(|mut access| resp.into_http(&mut access, async { Ok(()) }))?;
                let (parts, body) = resp.into_parts();
                let body = http_body_util::Limited::new(body, MAX_RESPONSE_BYTES)
                    .collect()
                    .await
                    .map_err(|e| wasmtime::format_err!("reading the component's response body: {e}"))?
                    .to_bytes();
                Ok(Ok(http::Response::from_parts(parts, body)))
            })
            .await??;
        match outcome {
            Ok(resp) => Ok(resp),
            Err(code) => Ok(plain(500, format!("component `{id}` answered with an error: {code:?}"))),
        }
    }
}

/// The guest sees an absolute URL, as behind Spin's own listener; a Host header that makes
/// none is the client's error.
fn absolute_uri(req: http::Request<Bytes>) -> Result<http::Request<Bytes>, String> {
    if req.uri().authority().is_some() {
        return Ok(req);
    }
    let (mut parts, body) = req.into_parts();
    let host = match parts.headers.get(http::header::HOST) {
        None => "localhost",
        Some(h) => h.to_str().map_err(|_| "the Host header is not text".to_string())?,
    };
    let bad = || format!("the Host header `{host}` is not a host name with an optional port");
    // A whole authority, nothing more: no path that would shift the routed one, no user info.
    let authority: http::uri::Authority = host.parse().map_err(|_| bad())?;
    if authority.as_str().contains('@') {
        return Err(bad());
    }
    let pq = parts.uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    parts.uri =
        http::Uri::builder().scheme("http").authority(authority).path_and_query(pq).build().map_err(|_| bad())?;
    Ok(http::Request::from_parts(parts, body))
}

fn plain(status: u16, text: String) -> http::Response<Bytes> {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Bytes::from(text + "\n"))
        .expect("a static response is valid")
}

impl vars_wit::Host for EdgeState {}

impl<T> vars_wit::HostWithStore<T> for HasSelf<EdgeState> {
    async fn get(acc: &Accessor<T, Self>, name: String) -> wasmtime::Result<Result<String, vars_wit::Error>> {
        Ok(acc.with(|mut access| {
            let state = access.get();
            if check_variable_name(&name).is_err() {
                return Err(vars_wit::Error::InvalidName(format!(
                    "`{name}`: use lower-case letters, digits and `_`, starting with a letter"
                )));
            }
            state.variables.get(&name).cloned().ok_or_else(|| {
                vars_wit::Error::Undefined(format!("`{name}` is not in this component's [component.*.variables]"))
            })
        }))
    }
}

fn kv_error(e: rusqlite::Error) -> kv_wit::Error {
    kv_wit::Error::Other(format!("the key-value file failed: {e}"))
}

impl kv_wit::Host for EdgeState {}

impl kv_wit::HostStore for EdgeState {
    fn drop(&mut self, rep: Resource<KvHandle>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

/// The label of an open store, if the handle is this instance's.
fn label<T>(
    acc: &Accessor<T, HasSelf<EdgeState>>,
    store: &Resource<KvHandle>,
) -> wasmtime::Result<(String, Arc<KvStores>)> {
    acc.with(|mut access| {
        let state = access.get();
        let label = state.table.get(store)?.label.clone();
        Ok((label, state.kv.clone()))
    })
}

impl<T> kv_wit::HostStoreWithStore<T> for HasSelf<EdgeState> {
    async fn open(
        acc: &Accessor<T, Self>,
        label: String,
    ) -> wasmtime::Result<Result<Resource<KvHandle>, kv_wit::Error>> {
        acc.with(|mut access| {
            let state = access.get();
            if !state.stores.contains(&label) {
                return Ok(Err(kv_wit::Error::AccessDenied));
            }
            Ok(Ok(state.table.push(KvHandle { label })?))
        })
    }

    async fn get(
        acc: &Accessor<T, Self>,
        store: Resource<KvHandle>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, kv_wit::Error>> {
        let (label, kv) = label(acc, &store)?;
        Ok(kv.get(&label, &key).map_err(kv_error))
    }

    async fn set(
        acc: &Accessor<T, Self>,
        store: Resource<KvHandle>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), kv_wit::Error>> {
        let (label, kv) = label(acc, &store)?;
        Ok(kv.set(&label, &key, &value).map_err(kv_error))
    }

    async fn delete(
        acc: &Accessor<T, Self>,
        store: Resource<KvHandle>,
        key: String,
    ) -> wasmtime::Result<Result<(), kv_wit::Error>> {
        let (label, kv) = label(acc, &store)?;
        Ok(kv.delete(&label, &key).map_err(kv_error))
    }

    async fn exists(
        acc: &Accessor<T, Self>,
        store: Resource<KvHandle>,
        key: String,
    ) -> wasmtime::Result<Result<bool, kv_wit::Error>> {
        let (label, kv) = label(acc, &store)?;
        Ok(kv.get(&label, &key).map(|v| v.is_some()).map_err(kv_error))
    }

    async fn get_keys(
        acc: &Accessor<T, Self>,
        store: Resource<KvHandle>,
    ) -> wasmtime::Result<(StreamReader<String>, FutureReader<Result<(), kv_wit::Error>>)> {
        let (label, kv) = label(acc, &store)?;
        let (keys, result) = match kv.keys(&label) {
            Ok(keys) => (keys, Ok(())),
            Err(e) => (Vec::new(), Err(kv_error(e))),
        };
        acc.with(|mut access| {
            let stream = StreamReader::new(&mut access, keys)?;
            let done = FutureReader::new(&mut access, async move { wasmtime::error::Ok(result) })?;
            Ok((stream, done))
        })
    }
}

/// Variables from `--variable name=value`, then `SPIN_VARIABLE_<NAME>`.
pub fn given_variables(args: &[String], manifest: &Manifest) -> anyhow::Result<BTreeMap<String, String>> {
    let mut given = BTreeMap::new();
    for name in manifest.variables.keys() {
        if let Ok(v) = std::env::var(format!("SPIN_VARIABLE_{}", name.to_uppercase())) {
            given.insert(name.clone(), v);
        }
    }
    for a in args {
        let Some((k, v)) = a.split_once('=') else {
            bail!("`--variable {a}` needs the form name=value");
        };
        given.insert(k.trim().to_string(), v.to_string());
    }
    Ok(given)
}

/// Serves `app` on `listener` until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve(
    app: Arc<SpinApp>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let router = axum::Router::new().fallback(move |req: http::Request<Body>| {
        let app = app.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = match axum::body::to_bytes(body, MAX_REQUEST_BYTES).await {
                Ok(b) => b,
                Err(_) => {
                    return plain(413, format!("the request body is larger than {MAX_REQUEST_BYTES} bytes"))
                        .map(Body::from);
                }
            };
            app.handle(http::Request::from_parts(parts, body)).await.map(Body::from)
        }
    });
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_host(host: Option<&[u8]>, target: &str) -> Result<http::Request<Bytes>, String> {
        let mut req = http::Request::get(target).body(Bytes::new()).unwrap();
        if let Some(h) = host {
            req.headers_mut().insert(http::header::HOST, http::HeaderValue::from_bytes(h).unwrap());
        }
        absolute_uri(req)
    }

    #[test]
    fn the_host_header_gives_the_authority_and_nothing_else() {
        let req = with_host(Some(b"edge.example:3000"), "/hooks/web?x=1").unwrap();
        assert_eq!(req.uri().to_string(), "http://edge.example:3000/hooks/web?x=1");
        assert_eq!(with_host(None, "/healthz").unwrap().uri().to_string(), "http://localhost/healthz");
        for bad in [&b"a b"[..], b"x/y", b"user@host", b"", b"\xff"] {
            let err = with_host(Some(bad), "/hooks/web").unwrap_err();
            assert!(err.contains("Host header"), "{err}");
        }
    }

    proptest::proptest! {
        /// Whatever the client sends as Host, the guest sees the routed path and query.
        #[test]
        fn no_host_header_changes_the_path(host in proptest::collection::vec(0x20u8..0x7f, 0..40), path in "/[a-z]{0,10}(/[a-z]{1,10}){0,3}") {
            if let Ok(req) = with_host(Some(&host), &format!("{path}?q=1")) {
                proptest::prop_assert_eq!(req.uri().path(), path.as_str());
                proptest::prop_assert_eq!(req.uri().query(), Some("q=1"));
                proptest::prop_assert!(!req.uri().authority().unwrap().as_str().contains('@'));
            }
        }
    }
}
