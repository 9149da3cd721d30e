//! `recthinker tools serve`: the tool registry as a Model Context Protocol server (the
//! official Rust SDK, `rmcp`), over stdio or streamable HTTP.
//!
//! Every registry tool is offered with its own JSON schema plus an optional `episode`
//! argument (`SPLIT:SUBSET:INDEX`, e.g. `test:dense:0`); `select_episode` sets a default
//! episode for the rest of the session. A call runs exactly as an in-process call does
//! (`Registry::call` on `EpisodeView::new(world, episode)`), so it sees the same knowledge
//! horizon and gives the same text, and the leakage guarantee of `tools/tests/leakage.rs`
//! carries over. Every failure (unknown tool, bad arguments, bad or missing episode, a tool
//! that panicked) is an MCP tool error (`isError: true`) naming the tool, never a protocol
//! error or a dropped connection.
//!
//! Sessions: over stdio the connection is the session. Over HTTP, clients that connect with
//! a handshake-era protocol version (`initialize`, up to 2025-11-25) get a session per
//! `Mcp-Session-Id`; MCP 2026-07-28 over HTTP is stateless, so there each call names its
//! `episode` and `select_episode` says so.

use anyhow::{anyhow, Context, Result};
use datasets::{Episode, Split, Subset};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, ServerHandler, ServiceExt};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use tools::registry::{cut, Registry, ToolCall};
use tools::{EpisodeView, World};

/// The extra tool that sets the session's episode.
pub const SELECT_EPISODE: &str = "select_episode";
/// The optional argument every registry tool accepts.
pub const EPISODE_ARG: &str = "episode";
/// The HTTP path of the MCP endpoint.
pub const HTTP_PATH: &str = "/mcp";

/// Where the server listens.
#[derive(Debug, Clone)]
pub enum Transport {
    Stdio,
    Http { host: String, port: u16 },
}

/// The episode `SPLIT:SUBSET:INDEX` names (subset `sparse|dense|all`; index from 0, in the
/// order `recthinker data episodes` prints), or a message saying what is wrong.
pub fn find_episode<'w>(world: &'w World, spec: &str) -> Result<&'w Episode, String> {
    let shown = cut(spec, 60);
    let parts: Vec<&str> = spec.split(':').collect();
    let [split, subset, index] = parts[..] else {
        return Err(format!(
            "episode `{shown}`: expected SPLIT:SUBSET:INDEX, e.g. test:dense:0"
        ));
    };
    let split = Split::parse(split).map_err(|e| format!("episode `{shown}`: {e}"))?;
    let subset = Subset::parse(subset).map_err(|e| format!("episode `{shown}`: {e}"))?;
    let index: usize = index.parse().map_err(|_| {
        format!(
            "episode `{shown}`: index `{}` is not a whole number >= 0",
            cut(index, 20)
        )
    })?;
    let eps = world.data.select(split, subset);
    eps.get(index).copied().ok_or_else(|| {
        format!(
            "episode `{shown}`: only {} episodes in {}:{} (indices from 0)",
            eps.len(),
            parts[0],
            parts[1]
        )
    })
}

/// How many episodes each `SPLIT:SUBSET` holds, on one line.
pub fn episode_counts(world: &World) -> String {
    let mut out = Vec::new();
    for (split, s) in [
        (Split::Train, "train"),
        (Split::Valid, "valid"),
        (Split::Test, "test"),
    ] {
        for (subset, b) in [
            (Subset::Sparse, "sparse"),
            (Subset::Dense, "dense"),
            (Subset::All, "all"),
        ] {
            out.push(format!(
                "{s}:{b} {}",
                world.data.select(split, subset).len()
            ));
        }
    }
    out.join(", ")
}

/// The world, the registry and what the server says about them; shared by all sessions.
pub struct Env {
    world: World,
    registry: Registry,
    tools: Vec<rmcp::model::Tool>,
    counts: String,
}

impl Env {
    pub fn new(world: World, registry: Registry) -> Self {
        let episode = json!({"type": "string", "description":
            "The episode, SPLIT:SUBSET:INDEX (split train|valid|test, subset sparse|dense|all, \
             index from 0), e.g. test:dense:0. Defaults to the session's episode (select_episode)."});
        let mut tools = Vec::new();
        for s in registry.schemas().as_array().into_iter().flatten() {
            let f = &s["function"];
            let (Some(name), Some(mut params)) =
                (f["name"].as_str(), f["parameters"].as_object().cloned())
            else {
                continue;
            };
            if let Some(props) = params.get_mut("properties").and_then(Value::as_object_mut) {
                props.insert(EPISODE_ARG.into(), episode.clone());
            }
            let description = f["description"].as_str().unwrap_or_default().to_string();
            tools.push(rmcp::model::Tool::new(
                name.to_string(),
                description,
                params,
            ));
        }
        let counts = episode_counts(&world);
        let select = json!({"type": "object", "properties": {EPISODE_ARG: episode}, "required": [EPISODE_ARG]});
        tools.push(rmcp::model::Tool::new(
            SELECT_EPISODE,
            format!(
                "Set this session's episode (SPLIT:SUBSET:INDEX, e.g. test:dense:0): later calls \
                 without an \"episode\" argument use it. Episodes: {counts}."
            ),
            select.as_object().cloned().unwrap_or_default(),
        ));
        Self {
            world,
            registry,
            tools,
            counts,
        }
    }

    /// The MCP tool list: the registry's tools (each with the optional `episode`) and
    /// `select_episode`.
    pub fn tools(&self) -> &[rmcp::model::Tool] {
        &self.tools
    }

    fn instructions(&self) -> String {
        format!(
            "RecThinker's recommendation tools over one prepared dataset. Every tool works on one \
             episode (a user, their history before the target and 10 candidate items): pass \
             \"episode\": \"SPLIT:SUBSET:INDEX\" (e.g. test:dense:0), or call {SELECT_EPISODE} once \
             per session. Episodes: {}.",
            self.counts
        )
    }

    /// Checks a `select_episode` call; the episode it selects and the reply text.
    pub fn select(&self, mut args: JsonObject) -> Result<(String, String), String> {
        let spec = episode_arg(SELECT_EPISODE, &mut args)?.ok_or_else(|| {
            format!(
                "Error: {SELECT_EPISODE}: missing required argument \"episode\" \
                 (SPLIT:SUBSET:INDEX, e.g. test:dense:0). Episodes: {}.",
                self.counts
            )
        })?;
        if let Some(key) = args.keys().next() {
            return Err(format!(
                "Error: {SELECT_EPISODE}: unknown argument \"{}\" (known: [\"episode\"])",
                cut(key, 40)
            ));
        }
        let e =
            find_episode(&self.world, &spec).map_err(|m| self.episode_error(SELECT_EPISODE, &m))?;
        let user = &self.world.data.users[e.user as usize].raw_id;
        let text = format!(
            "Selected episode {spec}: user {user}, {} candidates. Calls without \"episode\" now use it.",
            e.candidates.len()
        );
        Ok((spec, text))
    }

    /// Runs registry tool `name` with `args` (which may carry `episode`) for that episode,
    /// or else `session`'s. The observation text, or the error text.
    pub fn call(
        &self,
        name: &str,
        mut args: JsonObject,
        session: Option<&str>,
    ) -> Result<String, String> {
        if !self.registry.names().contains(&name) {
            return Err(format!(
                "Error: unknown tool \"{}\". Available tools: {}, {SELECT_EPISODE}.",
                cut(name, 60),
                self.registry.names().join(", ")
            ));
        }
        let spec = match episode_arg(name, &mut args)? {
            Some(spec) => spec,
            None => session.map(str::to_string).ok_or_else(|| {
                format!(
                    "Error: {name}: no episode: pass \"episode\": \"SPLIT:SUBSET:INDEX\" (e.g. \
                     test:dense:0) or call {SELECT_EPISODE} first. Episodes: {}.",
                    self.counts
                )
            })?,
        };
        let e = find_episode(&self.world, &spec).map_err(|m| self.episode_error(name, &m))?;
        // The in-process path, unchanged: the same view, horizon, checks and output cap.
        let call = ToolCall::new(name, Value::Object(args));
        let obs = self
            .registry
            .call(&self.world, &EpisodeView::new(&self.world, e), &call);
        if obs.ok {
            Ok(obs.text)
        } else {
            Err(obs.text)
        }
    }

    fn episode_error(&self, tool: &str, message: &str) -> String {
        format!("Error: {tool}: {message}. Episodes: {}.", self.counts)
    }
}

/// Takes the `episode` argument out of `args`: None when absent, an error when not a string.
fn episode_arg(tool: &str, args: &mut JsonObject) -> Result<Option<String>, String> {
    match args.remove(EPISODE_ARG) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!(
            "Error: {tool}: argument \"episode\" must be a string SPLIT:SUBSET:INDEX, got {}",
            cut(&other.to_string(), 40)
        )),
    }
}

/// One MCP session: the shared environment and this session's selected episode.
#[derive(Clone)]
pub struct Session {
    env: Arc<Env>,
    selected: Arc<Mutex<Option<String>>>,
    /// Served over HTTP, where 2026-07-28 requests are stateless (a new `Session` each).
    http: bool,
}

impl Session {
    pub fn new(env: Arc<Env>, http: bool) -> Self {
        Self {
            env,
            selected: Arc::new(Mutex::new(None)),
            http,
        }
    }

    fn selected(&self) -> Option<String> {
        self.selected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn run(&self, name: String, args: JsonObject, stateless: bool) -> Result<String, String> {
        if name == SELECT_EPISODE {
            let (spec, text) = self.env.select(args)?;
            if stateless {
                return Err(format!(
                    "Error: {SELECT_EPISODE}: `{spec}` is a valid episode, but this connection has no \
                     session (MCP 2026-07-28 over HTTP is stateless), so a selection would not last \
                     past this call: pass \"episode\" with each tool call, or connect with a \
                     handshake-era protocol version (2025-11-25 or earlier) to get a session."
                ));
            }
            *self.selected.lock().unwrap_or_else(|p| p.into_inner()) = Some(spec);
            return Ok(text);
        }
        let (env, session) = (self.env.clone(), self.selected());
        let tool = name.clone();
        // Tools are CPU work (SASRec runs on libtorch): off the async workers, and a panic
        // in one becomes this call's error.
        tokio::task::spawn_blocking(move || env.call(&tool, args, session.as_deref()))
            .await
            .unwrap_or_else(|e| Err(format!("Error: {name}: the tool failed internally ({e})")))
    }
}

impl ServerHandler for Session {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("recthinker", env!("CARGO_PKG_VERSION")))
            .with_instructions(self.env.instructions())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.env.tools.clone()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let stateless = self.http
            && context
                .protocol_version()
                .is_some_and(|v| !v.has_initialize());
        let args = request.arguments.unwrap_or_default();
        let result = match self.run(request.name.to_string(), args, stateless).await {
            Ok(text) => CallToolResult::success(vec![ContentBlock::text(text)]),
            Err(text) => CallToolResult::error(vec![ContentBlock::text(text)]),
        };
        Ok(result.into())
    }
}

/// Serves `env` until stdin closes (stdio) or Ctrl-C (HTTP).
pub fn serve(env: Env, transport: Transport) -> Result<()> {
    let env = Arc::new(env);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match transport {
            Transport::Stdio => serve_stdio(env).await,
            Transport::Http { host, port } => serve_http(env, &host, port).await,
        }
    })
}

async fn serve_stdio(env: Arc<Env>) -> Result<()> {
    let running = Session::new(env, false)
        .serve(rmcp::transport::io::stdio_pipes())
        .await
        .map_err(|e| anyhow!("starting the MCP server on stdio: {e}"))?;
    running.waiting().await.context("the MCP server on stdio")?;
    Ok(())
}

async fn serve_http(env: Arc<Env>, host: &str, port: u16) -> Result<()> {
    let mut config = StreamableHttpServerConfig::default();
    // The SDK accepts only loopback Host headers by default (DNS rebinding); a server bound
    // elsewhere on purpose accepts its own host name, or any when bound to all addresses.
    let ip: Option<std::net::IpAddr> = host.trim_matches(['[', ']']).parse().ok();
    if ip.is_some_and(|ip| ip.is_unspecified()) {
        config = config.disable_allowed_hosts();
    } else if !ip.is_some_and(|ip| ip.is_loopback()) && host != "localhost" {
        config = config.with_allowed_hosts(["localhost", "127.0.0.1", "::1", host]);
    }
    let stop = config.cancellation_token.clone();
    let service: StreamableHttpService<Session, LocalSessionManager> = StreamableHttpService::new(
        move || Ok(Session::new(env.clone(), true)),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let router = axum::Router::new().route_service(HTTP_PATH, service);
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .with_context(|| format!("binding {host}:{port}"))?;
    let addr = listener.local_addr()?;
    eprintln!("recthinker tools serve: MCP (streamable HTTP) on http://{addr}{HTTP_PATH}");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        })
        .await
        .context("the MCP server on HTTP")
}
