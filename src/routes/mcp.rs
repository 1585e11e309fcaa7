//! The Model Context Protocol server: the API's operations as MCP tools for
//! agents, over streamable HTTP at `/mcp` (same port, same bearer keys and
//! scopes as REST) and over stdio (`context-api mcp`, acting with one key's
//! scope). Each tool's arguments are read by the REST route's own request
//! type, so a tool accepts and refuses exactly what the route does, and a
//! refusal is the route's problem document, as a tool error the agent reads.

use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{tool, tool_handler, tool_router, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::contexts::{ContextResponse, CreateContextRequest, PatchContextRequest};
use super::extract::check_json;
use super::search::{SearchRequest, SearchResponse};
use crate::auth::Scope;
use crate::domain::{ContextId, ContextKey, ContextType, Cursor, ListQuery, PageLimit, UserId};
use crate::error::ApiError;
use crate::service::Contexts;

const INSTRUCTIONS: &str = "Long-term memory for conversations and agents. `remember` \
    stores a memory (a text, optionally with structured content, metadata and an expiry) for a \
    user; `recall` finds the memories relevant to a question (mode `vector` by meaning, `text` \
    by exact words, `hybrid` both); `list_memories` pages through a user's memories, newest \
    first; `get_memory`, `update_memory` and `forget` act on one memory by its id. A key \
    scoped to one user sees and writes only that user's memories, and may omit `user_id`.";

/// The MCP server. Over HTTP each request is served with its own caller's
/// scope (from the bearer key, checked by the `/mcp` route's middleware);
/// over stdio with the scope of the key it was started with.
#[derive(Clone)]
pub struct Memory {
    contexts: Contexts,
    fixed: Option<Scope>,
    tool_router: ToolRouter<Self>,
}

/// `remember`'s arguments.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RememberArgs {
    /// What to remember, in plain words: this is what `recall` matches.
    pub text: String,
    /// Whose memory this is (a UUID). Required with an admin key; a user key
    /// may only give its own user, and may omit it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    /// A name of your choosing for this memory, such as `favourite-drink`:
    /// remembering again under the same key replaces the memory (same id,
    /// new version) instead of adding one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// A short label, such as `preference`, `fact` or `conversation`
    /// (default `memory`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_type: Option<String>,
    /// Structured data to keep with it (a JSON object; `text` is added to it
    /// as `content.text` unless it has one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<Map<String, Value>>,
    /// Labels to filter on later (a JSON object, matched by containment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// Forget it after this many seconds (at most 100 years).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
}

/// `recall`'s arguments.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecallArgs {
    /// The question or topic to find memories about.
    pub query: String,
    /// `vector` (by meaning, the default), `text` (by exact words; works
    /// while the embedding service is down) or `hybrid` (both, fused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// How many memories, 1 to 100 (default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k: Option<i64>,
    /// Only this user's memories (a user key: always its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    /// Only memories with this label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_type: Option<String>,
    /// Only memories whose metadata contains this object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// Only results with at least this score (-1 to 1; see the mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_score: Option<f64>,
    /// If the query cannot be embedded now, search by text instead of failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_to_text: Option<bool>,
}

/// `list_memories`' arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// Only this user's memories (a user key: always its own).
    pub user_id: Option<Uuid>,
    /// Only memories with this label.
    pub context_type: Option<String>,
    /// Only the memory of this key (see `remember`).
    pub key: Option<String>,
    /// Page size, 1 to 100 (default 20).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `get_memory`'s and `forget`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdArgs {
    /// The memory's id.
    pub id: Uuid,
}

/// `update_memory`'s arguments: the fields to replace.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateArgs {
    /// The memory's id.
    #[serde(skip_serializing)]
    pub id: Uuid,
    /// The new text (embedded again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// New structured content (a JSON object), replacing the old.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<Map<String, Value>>,
    /// New metadata (a JSON object), replacing the old.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// A new label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_type: Option<String>,
    /// Forget it this many seconds from now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
}

/// A refusal, as the REST route's problem document, marked as a tool error.
fn refused(e: impl Into<ApiError>) -> CallToolResult {
    let (_, problem) = e.into().problem();
    CallToolResult::structured_error(problem)
}

fn ok(value: impl Serialize) -> CallToolResult {
    CallToolResult::structured(serde_json::to_value(value).expect("a response serializes"))
}

/// Reads `args` with the REST route's request type `T`, under the same
/// limits as a request body.
fn as_request<T: serde::de::DeserializeOwned>(args: Value) -> Result<T, ApiError> {
    check_json(args.to_string().as_bytes())?;
    serde_json::from_value(args).map_err(|e| ApiError::Validation(e.to_string()))
}

impl Memory {
    pub fn new(contexts: Contexts, fixed: Option<Scope>) -> Self {
        Self {
            contexts,
            fixed,
            tool_router: Self::tool_router(),
        }
    }

    /// The caller's scope: the key's of this HTTP request, or the stdio key's.
    fn scope(&self, ctx: &RequestContext<RoleServer>) -> Result<Scope, ApiError> {
        self.fixed
            .or_else(|| {
                ctx.extensions
                    .get::<axum::http::request::Parts>()
                    .and_then(|p| p.extensions.get::<Scope>().copied())
            })
            .ok_or(ApiError::Unauthorized)
    }
}

#[tool_router]
impl Memory {
    #[tool(
        description = "Store a memory for a user: a text (what recall matches), optionally with \
                       structured content, metadata and an expiry. With a key, replaces the \
                       memory of that key. Returns the stored memory with its id.",
        annotations(destructive_hint = false, idempotent_hint = false)
    )]
    async fn remember(
        &self,
        Parameters(args): Parameters<RememberArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let result = async {
            let scope = self.scope(&ctx)?;
            let mut content = args.content.clone().unwrap_or_default();
            content
                .entry("text")
                .or_insert_with(|| Value::String(args.text.clone()));
            let mut body = serde_json::to_value(&args).expect("arguments serialize");
            body["content"] = Value::Object(content);
            if args.context_type.is_none() {
                body["context_type"] = json!("memory");
            }
            let req: CreateContextRequest = as_request(body)?;
            let new = req.parse(scope, self.contexts.dim())?;
            let ctx = if new.key.is_some() {
                self.contexts.put(scope, new).await?.0
            } else {
                self.contexts.create(scope, new).await?
            };
            Ok::<_, ApiError>(ContextResponse::from(ctx))
        };
        result.await.map_or_else(refused, ok)
    }

    #[tool(
        description = "Find the memories most relevant to a query, best first, each with its \
                       score. Modes: vector (by meaning, default), text (by exact words), \
                       hybrid (both). Filters: user_id, context_type, metadata, min_score.",
        annotations(read_only_hint = true)
    )]
    async fn recall(
        &self,
        Parameters(args): Parameters<RecallArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let result = async {
            let scope = self.scope(&ctx)?;
            let req: SearchRequest =
                as_request(serde_json::to_value(&args).expect("arguments serialize"))?;
            let (input, filter, k) = req.parse(self.contexts.dim())?;
            let (mode, hits) = self.contexts.search(scope, input, filter, k).await?;
            Ok::<_, ApiError>(SearchResponse::new(mode, hits))
        };
        result.await.map_or_else(refused, ok)
    }

    #[tool(
        description = "List a user's memories, newest first, a page at a time (pass \
                       next_cursor back as cursor for the next page).",
        annotations(read_only_hint = true)
    )]
    async fn list_memories(
        &self,
        Parameters(args): Parameters<ListArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let result = async {
            let scope = self.scope(&ctx)?;
            let query = ListQuery {
                user_id: args.user_id.map(UserId),
                context_type: args
                    .context_type
                    .as_deref()
                    .map(ContextType::parse)
                    .transpose()?,
                key: args.key.as_deref().map(ContextKey::parse).transpose()?,
                metadata: None,
                embedding_status: None,
                limit: PageLimit::parse(args.limit)?,
                after: args.cursor.as_deref().map(Cursor::parse).transpose()?,
            };
            let page = self.contexts.list(scope, query).await?;
            Ok::<_, ApiError>(json!({
                "items": page.items.into_iter().map(ContextResponse::from).collect::<Vec<_>>(),
                "next_cursor": page.next.map(|c| c.encode()),
            }))
        };
        result.await.map_or_else(refused, ok)
    }

    #[tool(
        description = "Read one memory by its id.",
        annotations(read_only_hint = true)
    )]
    async fn get_memory(
        &self,
        Parameters(args): Parameters<IdArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let result = async {
            let scope = self.scope(&ctx)?;
            let c = self.contexts.get(scope, ContextId(args.id), false).await?;
            Ok::<_, ApiError>(ContextResponse::from(c))
        };
        result.await.map_or_else(refused, ok)
    }

    #[tool(
        description = "Change a memory: give its id and only the fields to replace (text, \
                       content, metadata, context_type, ttl_seconds). Returns the new state.",
        annotations(destructive_hint = true, idempotent_hint = true)
    )]
    async fn update_memory(
        &self,
        Parameters(args): Parameters<UpdateArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let result = async {
            let scope = self.scope(&ctx)?;
            let mut body = serde_json::to_value(&args).expect("arguments serialize");
            // A new text alone: keep content.text in step, as remember writes it.
            if let (Some(text), None) = (&args.text, &args.content) {
                let current = self.contexts.get(scope, ContextId(args.id), false).await?;
                if current.content.get("text").is_some_and(Value::is_string) {
                    let mut content = current.content;
                    content.insert("text".into(), Value::String(text.clone()));
                    body["content"] = Value::Object(content);
                }
            }
            let req: PatchContextRequest = as_request(body)?;
            let patch = req.parse(self.contexts.dim())?;
            let c = self
                .contexts
                .update(scope, ContextId(args.id), patch, None)
                .await?;
            Ok::<_, ApiError>(ContextResponse::from(c))
        };
        result.await.map_or_else(refused, ok)
    }

    #[tool(
        description = "Forget a memory by its id: it is no longer listed or recalled.",
        annotations(destructive_hint = true, idempotent_hint = false)
    )]
    async fn forget(
        &self,
        Parameters(args): Parameters<IdArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let result = async {
            let scope = self.scope(&ctx)?;
            self.contexts
                .delete(scope, ContextId(args.id), false, None)
                .await?;
            Ok::<_, ApiError>(json!({"forgotten": args.id}))
        };
        result.await.map_or_else(refused, ok)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Memory {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "context-api",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(INSTRUCTIONS)
    }
}

/// The `/mcp` service: stateless streamable HTTP with JSON answers, so any
/// replica answers any request (no session to pin to one). Hosts are not
/// checked (the DNS-rebinding guard of local servers): every request needs a
/// bearer key, which a rebound browser page does not have, and the service
/// is reached by whatever name its proxy gives it.
pub fn http_service(
    contexts: Contexts,
    max_body_bytes: usize,
) -> StreamableHttpService<Memory, LocalSessionManager> {
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .disable_allowed_hosts()
        .with_max_request_body_bytes(max_body_bytes);
    StreamableHttpService::new(
        move || Ok(Memory::new(contexts.clone(), None)),
        Arc::new(LocalSessionManager::default()),
        config,
    )
}
