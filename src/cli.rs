//! The command line: `serve` (default), `migrate`, `export`, `import`,
//! `reembed`, `mcp`, `healthcheck`, `openapi`, `keys`, `config`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{self, ConfigError, MigrateSettings, Settings, TransferSettings};
use crate::domain::{ContextType, UserId};
use crate::embeddings::Embedder;
use crate::startup::App;
use crate::store::{self, Store};
use crate::{shutdown, telemetry, transfer};

#[derive(Debug, Parser)]
#[command(
    name = "context-api",
    version,
    about = "Context management service: per-user LLM memory with vector search"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve {
        /// Apply pending migrations before serving (for development; in
        /// production run `context-api migrate` as a separate step).
        #[arg(long)]
        migrate: bool,
    },
    /// Apply the migrations in migrations/ and exit.
    Migrate,
    /// Write every visible context, with its vector and model, to stdout as
    /// NDJSON (one object a line, oldest first).
    Export {
        /// Only this user's contexts.
        #[arg(long)]
        user: Option<uuid::Uuid>,
        /// Only contexts of this type.
        #[arg(long = "type")]
        context_type: Option<String>,
    },
    /// Read contexts written by `export` into this database, in batches (each
    /// written whole or not at all). Ids already stored are skipped, so an
    /// interrupted import resumes when run again. Vectors made by another
    /// model than the configured one are made again from their text.
    Import {
        /// The NDJSON file (`-` for stdin).
        file: std::path::PathBuf,
        /// An invalid line: `skip` reports it by line number and goes on;
        /// `fail` reports it and stops before writing its batch.
        #[arg(long, value_enum, default_value = "fail")]
        on_error: crate::transfer::OnError,
        /// Contexts a batch (one statement).
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(1..=5000))]
        batch_size: u16,
        /// Batches written at once, each on its own connection (at most
        /// DB_POOL_MAX): the database's cores share the index's maintenance.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
        jobs: u16,
        /// For a large load: drop the HNSW index, load without its
        /// maintenance, then build it once (in parallel, without blocking
        /// writes). Searches that used the index read rows exactly meanwhile.
        #[arg(long)]
        defer_index: bool,
        /// The deferred build's maintenance_work_mem (e.g. 2GB; the graph
        /// built in memory is many times faster); default: the server's.
        #[arg(long, requires = "defer_index")]
        maintenance_work_mem: Option<String>,
    },
    /// After a change of model or dimension (EMBEDDING_*): embed every
    /// context again with the configured model into a new column and index,
    /// while the service keeps searching the old vectors, then switch to the
    /// new ones in one transaction. Resumable: run it again after a stop.
    /// Nothing to do when the stored vectors are already the model's.
    Reembed {
        /// Texts a batch (lowered to the provider's limit).
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=4096))]
        batch_size: u16,
    },
    /// Serve the MCP tools over stdio, for desktop MCP clients, acting with
    /// the scope of one API key (a user key confines it to that user). Takes
    /// the service's settings; logs go to stderr.
    Mcp {
        /// The API key to act as (one of API_KEYS). Prefer the environment:
        /// arguments are visible to other users of the machine.
        #[arg(long, env = "CONTEXT_API_KEY", hide_env_values = true)]
        key: Option<String>,
    },
    /// GET this service's /health on the configured port; exit 0 when alive.
    Healthcheck {
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
    /// Print the OpenAPI document (the one served at /openapi.json by a
    /// service with this EMBEDDING_DIM).
    Openapi {
        /// The vectors' dimension the document states.
        #[arg(long, default_value_t = crate::config::default_embedding_dim())]
        dim: usize,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        action: KeysCommand,
    },
    /// Print the effective configuration, secrets redacted, after checking it.
    Config {
        /// Print instead the table of every setting (docs/configuration.md's), unchecked.
        #[arg(long)]
        table: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Print a new random key, once, with the API_KEYS entry that admits it.
    /// The server keeps only the entry (the key's SHA-256); the key itself is
    /// shown here and nowhere else. Needs no configuration.
    New {
        /// `admin` (every user) or a user's UUID (that user's contexts only).
        #[arg(long)]
        scope: String,
    },
}

/// A configuration error: one line on stderr, exit code 2.
fn config_error(e: ConfigError) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(2)
}

/// Each subcommand loads and checks only the settings it uses.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command.unwrap_or(Command::Serve { migrate: false }) {
        Command::Openapi { dim } => {
            let doc = crate::routes::openapi::document(dim);
            println!(
                "{}",
                serde_json::to_string_pretty(&doc).expect("a JSON value always serializes")
            );
            ExitCode::SUCCESS
        }
        Command::Keys {
            action: KeysCommand::New { scope },
        } => match crate::auth::new_key(&scope) {
            Ok((key, entry)) => {
                println!("# The key, shown this once; clients send `Authorization: Bearer <key>`:");
                println!("{key}");
                println!(
                    "# Its entry for API_KEYS (or API_KEYS_FILE), comma- or newline-separated:"
                );
                println!("{entry}");
                ExitCode::SUCCESS
            }
            Err(_) => {
                eprintln!("keys new: --scope must be admin or a user UUID, got {scope:?}");
                ExitCode::from(2)
            }
        },
        Command::Config { table: true } => {
            print!("{}", config::markdown_table());
            ExitCode::SUCCESS
        }
        Command::Config { table: false } => match Settings::load() {
            Ok(settings) => {
                print!("{}", settings.redacted());
                ExitCode::SUCCESS
            }
            Err(e) => config_error(e),
        },
        Command::Healthcheck { timeout } => match config::load_bind_address() {
            Ok(bind) => healthcheck(bind, Duration::from_secs(timeout)).await,
            Err(e) => config_error(e),
        },
        Command::Migrate => {
            let settings = match MigrateSettings::load() {
                Ok(s) => s,
                Err(e) => return config_error(e),
            };
            telemetry::init_logging(&settings.log);
            exit_on(migrate(&settings).await)
        }
        Command::Export { user, context_type } => {
            let settings = match MigrateSettings::load() {
                Ok(s) => s,
                Err(e) => return config_error(e),
            };
            let context_type = match context_type.as_deref().map(ContextType::parse).transpose() {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("export: --type: {}", e.message);
                    return ExitCode::from(2);
                }
            };
            telemetry::init_logging_to_stderr(&settings.log);
            exit_on(export(&settings, user.map(UserId), context_type).await)
        }
        Command::Import {
            file,
            on_error,
            batch_size,
            jobs,
            defer_index,
            maintenance_work_mem,
        } => {
            let settings = match TransferSettings::load() {
                Ok(s) => s,
                Err(e) => return config_error(e),
            };
            telemetry::init_logging(&settings.log);
            let options = transfer::ImportOptions {
                batch: batch_size.into(),
                // Each batch holds a connection of the pool.
                jobs: usize::from(jobs).min(settings.database.pool_max as usize),
                on_error,
                defer_index,
                maintenance_work_mem,
            };
            exit_on(import(&settings, &file, options).await)
        }
        Command::Reembed { batch_size } => {
            let settings = match TransferSettings::load() {
                Ok(s) => s,
                Err(e) => return config_error(e),
            };
            telemetry::init_logging_to_stderr(&settings.log);
            exit_on(reembed(&settings, batch_size.into()).await)
        }
        Command::Mcp { key } => {
            let settings = match Settings::load() {
                Ok(s) => s,
                Err(e) => return config_error(e),
            };
            telemetry::init_logging_to_stderr(&settings.log);
            exit_on(mcp_stdio(settings, key).await)
        }
        Command::Serve { migrate } => {
            let settings = match Settings::load() {
                Ok(s) => s,
                Err(e) => return config_error(e),
            };
            telemetry::init_logging(&settings.log);
            if settings.auth.keys.is_none() {
                tracing::warn!("AUTH_DISABLED=true: every caller has admin access to all contexts");
            }
            let result = async {
                let app = App::build(settings, migrate).await?;
                app.run(shutdown::signal()).await
            };
            exit_on(result.await)
        }
    }
}

async fn migrate(settings: &MigrateSettings) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::connect(&settings.database, &settings.schema).await?;
    store::migrate(store.pool(), &settings.schema).await?;
    // The migrations keep the values of their first run; settings that no
    // longer fit the database are refused here as at startup.
    crate::startup::check_schema(&store, &settings.schema, settings.previous_dim).await?;
    tracing::info!(
        embedding_dim = settings.schema.dim,
        text_search_config = settings.schema.text_search_config,
        "migrations applied"
    );
    store.close().await;
    Ok(())
}

async fn reembed(
    settings: &TransferSettings,
    batch_size: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::connect(&settings.database, &settings.schema).await?;
    let embedder = Embedder::build(&settings.embeddings).await?;
    match crate::reembed::reembed(&store, &embedder, batch_size).await? {
        crate::reembed::Reembedded::UpToDate => {
            tracing::info!("the stored vectors are the configured model's: nothing to do")
        }
        crate::reembed::Reembedded::Switched { rows } => {
            tracing::info!(rows, "re-embedding done")
        }
    }
    store.close().await;
    Ok(())
}

async fn export(
    settings: &MigrateSettings,
    user: Option<UserId>,
    context_type: Option<ContextType>,
) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::connect(&settings.database, &settings.schema).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let done = transfer::export(&store, user, context_type.as_ref(), &mut out).await?;
    tracing::info!(contexts = done.contexts, "export done");
    store.close().await;
    Ok(())
}

async fn import(
    settings: &TransferSettings,
    file: &std::path::Path,
    options: transfer::ImportOptions,
) -> Result<(), Box<dyn std::error::Error>> {
    let (input, bytes): (Box<dyn std::io::BufRead>, u64) = if file == std::path::Path::new("-") {
        (Box::new(std::io::stdin().lock()), 0)
    } else {
        let f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let bytes = f.metadata()?.len();
        (Box::new(std::io::BufReader::new(f)), bytes)
    };
    let store = Store::connect(&settings.database, &settings.schema).await?;
    let embedder = Embedder::build(&settings.embeddings).await?;
    let done = transfer::import(&store, &embedder, input, bytes, options).await?;
    tracing::info!(
        written = done.written,
        already_present = done.present,
        invalid = done.invalid,
        reembedded = done.reembedded,
        left_pending = done.pending,
        "import done"
    );
    eprintln!(
        "import: {} written, {} already present, {} invalid lines skipped, {} embedded again ({} left pending)",
        done.written, done.present, done.invalid, done.reembedded, done.pending
    );
    if done.pending > 0 {
        eprintln!(
            "import: the service's embedding worker makes the {} pending vectors; until then those \
             contexts are found by text search only (GET /contexts?embedding_status=pending lists them)",
            done.pending
        );
    }
    store.close().await;
    Ok(())
}

/// The MCP server on stdin and stdout, until the client closes them. The
/// embedding worker runs beside it, so that a memory stored while the
/// embedding service is slow is embedded even with no HTTP service running.
async fn mcp_stdio(
    settings: Settings,
    key: Option<String>,
) -> Result<(), Box<dyn std::error::Error>> {
    use rmcp::ServiceExt;
    let scope = match (&settings.auth.keys, key) {
        (None, _) => crate::auth::Scope::Admin,
        (Some(_), None) => {
            return Err("mcp: set CONTEXT_API_KEY (or --key) to one of the API keys".into())
        }
        (Some(keys), Some(key)) => keys
            .lookup(&key)
            .ok_or("mcp: CONTEXT_API_KEY is not one of API_KEYS")?,
    };
    let contexts = crate::startup::contexts(&settings, false).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(crate::workers::embed_pending(
        contexts.clone(),
        settings.embeddings.batch_size,
        settings.workers.embed_interval,
        settings.embeddings.claim_lease(),
        stop.clone(),
    ));
    tracing::info!(?scope, "serving MCP on stdio");
    let server = crate::routes::mcp::Memory::new(contexts, Some(scope))
        .serve(rmcp::transport::stdio())
        .await?;
    server.waiting().await?;
    stop.cancel();
    let _ = worker.await;
    Ok(())
}

fn exit_on<E: std::fmt::Display>(r: Result<(), E>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "exiting");
            eprintln!("context-api: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The container image has no curl: this is its HEALTHCHECK.
async fn healthcheck(bind: SocketAddr, timeout: Duration) -> ExitCode {
    let ip = match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let url = format!("http://{}/health", SocketAddr::new(ip, bind.port()));
    let client = match reqwest::Client::builder().timeout(timeout).build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("healthcheck: {url} answered {}", r.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("healthcheck: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}
