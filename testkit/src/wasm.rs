//! A wasmtime host for the real .wasm components, serving wasi:http 0.2 over
//! real HTTP on loopback, as `wasmtime serve` does.
//!
//! Each request gets a fresh instance (as under Spin and `wasmtime serve`),
//! the component's environment comes from the test, and every response is
//! reported to the test, so that it can wait on answers instead of sleeping.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// The built component `name` (`producer` or `worker`), as `make wasm`
/// leaves it.
pub fn wasm_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release")
        });
    dir.join(format!("{name}.wasm"))
}

/// One engine for every test in the process: compiling is the costly part.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::new(&Config::new()).expect("a default engine config is valid"))
}

/// Loads (once per process) and returns the compiled component `name`.
pub fn component(name: &str) -> anyhow::Result<Component> {
    static CACHE: OnceLock<Mutex<HashMap<String, Component>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(found) = cache.lock().expect("not poisoned").get(name) {
        return Ok(found.clone());
    }
    let path = wasm_path(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the components first (`make wasm`)",
            path.display()
        );
    }
    let component = Component::from_file(engine(), &path)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("failed to compile {}", path.display()))?;
    cache
        .lock()
        .expect("not poisoned")
        .insert(name.to_owned(), component.clone());
    Ok(component)
}

/// The names of everything a component imports.
pub fn imports(name: &str) -> anyhow::Result<Vec<String>> {
    let component = component(name)?;
    Ok(component
        .component_type()
        .imports(engine())
        .map(|(name, _)| name.to_owned())
        .collect())
}

/// One answer the component gave.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status.
    pub status: u16,
    /// The body.
    pub body: Bytes,
    /// The headers of the request it answered.
    pub request_headers: hyper::HeaderMap,
}

/// A component served on loopback.
pub struct ServedComponent {
    /// Its address.
    pub addr: SocketAddr,
    /// Every answer it gave, in order.
    pub answers: mpsc::UnboundedReceiver<Answer>,
    task: tokio::task::JoinHandle<()>,
    guests: TaskTracker,
    connections: tokio_util::sync::CancellationToken,
}

impl ServedComponent {
    /// The URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops accepting and waits (at most 10 s) for guests still running
    /// after their answer, e.g. the producer's report, so that none is cut
    /// off when the test's runtime shuts down.
    pub async fn shutdown(self) {
        self.task.abort();
        self.guests.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.guests.wait()).await;
    }

    /// Dies as a crashed or OOM-killed container would: the listener closes
    /// and every open connection is cut, requests in flight included.
    pub fn kill(self) {
        self.connections.cancel();
        self.task.abort();
    }
}

impl Drop for ServedComponent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Host {
    pre: ProxyPre<Guest>,
    guests: TaskTracker,
    env: Vec<(String, String)>,
    answers: mpsc::UnboundedSender<Answer>,
}

/// One instance's host state: WASI, wasi:http, and the peak linear memory
/// the instance asked for.
pub struct Guest {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    /// The most linear memory the instance has asked for, in bytes.
    pub memory: usize,
}

impl Guest {
    /// State with the component's environment `env` and the host's stderr.
    pub fn new(env: &[(String, String)]) -> Self {
        let mut wasi = WasiCtx::builder();
        wasi.inherit_stderr().envs(env);
        Self {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            memory: 0,
        }
    }
}

impl wasmtime::ResourceLimiter for Guest {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.memory = self.memory.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

/// The component `name`, linked with WASI and wasi:http and pre-instantiated:
/// what a host keeps, so that each request only instantiates.
pub fn proxy_pre(name: &str) -> anyhow::Result<ProxyPre<Guest>> {
    let mut linker = Linker::new(engine());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Ok(ProxyPre::new(linker.instantiate_pre(&component(name)?)?)?)
}

impl WasiView for Guest {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Guest {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: Default::default(),
        }
    }
}

/// Serves component `name` on 127.0.0.1:0 with environment `env`.
pub async fn serve(name: &str, env: &[(&str, &str)]) -> anyhow::Result<ServedComponent> {
    serve_at(name, env, SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// Serves component `name` on `addr`: a fixed one brings a killed
/// component back where its clients expect it.
pub async fn serve_at(
    name: &str,
    env: &[(&str, &str)],
    addr: SocketAddr,
) -> anyhow::Result<ServedComponent> {
    let pre = proxy_pre(name)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let guests = TaskTracker::new();
    let host = Arc::new(Host {
        pre,
        guests: guests.clone(),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        answers: tx,
    });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let connections = tokio_util::sync::CancellationToken::new();
    let cut = connections.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let host = host.clone();
            let cut = cut.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let host = host.clone();
                    async move { host.handle(req).await }
                });
                let connection = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = connection => {}
                    () = cut.cancelled() => {}
                }
            });
        }
    });
    Ok(ServedComponent {
        addr,
        answers: rx,
        task,
        guests,
        connections,
    })
}

impl Host {
    async fn handle(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> anyhow::Result<hyper::Response<Full<Bytes>>> {
        let request_headers = req.headers().clone();
        let mut store = Store::new(engine(), Guest::new(&self.env));
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)?;
        let out = store.data_mut().http().new_response_outparam(sender)?;
        let pre = self.pre.clone();
        // The guest may keep running after it has answered (the producer
        // reports its answer afterwards), so it runs in its own task.
        let guest = self.guests.spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await
        });
        let response = match receiver.await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => bail!("the guest answered with an error: {e:?}"),
            Err(_) => match guest.await {
                Ok(Err(e)) => {
                    return Err(
                        anyhow::Error::from(e).context("the guest trapped before answering")
                    );
                }
                _ => bail!("the guest never answered"),
            },
        };
        // Buffer the (small) body, so that the test sees what the client saw.
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the guest's body: {e:?}"))?
            .to_bytes();
        let _ = self.answers.send(Answer {
            status: parts.status.as_u16(),
            body: body.clone(),
            request_headers,
        });
        Ok(hyper::Response::from_parts(parts, Full::new(body)))
    }
}
