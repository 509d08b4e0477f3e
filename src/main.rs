//! The `scoregate` binary: parses arguments, starts diagnostics, loads configuration before any
//! port is bound, runs the chosen command and turns its outcome into an exit code (0 success, 2 a
//! command-line usage error reported by clap, 64 a bad configuration, 1 any other failure). No
//! logic of its own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use scoregate::app::{self, Listeners, Telemetry};
use scoregate::config::{self, Config};
use scoregate::telemetry::metrics::Metrics;
use scoregate::telemetry::{self as tele, LogFormat};

/// The configuration is invalid. 64 is `EX_USAGE` in `sysexits.h` (`EX_CONFIG` would be 78);
/// kept at 64 because operators' scripts and the README already rely on it.
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "scoregate",
    version,
    about = "A secure gateway for ML scoring containers"
)]
struct Cli {
    /// Diagnostic log format on stderr (default: `[telemetry] log_format`, else text).
    #[arg(long, global = true, value_enum)]
    log_format: Option<CliLogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CliLogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway with a configuration file.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file exactly as `run` would, list every problem, and exit.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// One-command first run: a sample model behind the gateway with a throwaway TLS certificate.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin_listen: SocketAddr,
        /// Stop by itself after this many seconds.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Also print request records (JSON lines) to stdout.
        #[arg(long)]
        records: bool,
    },
    /// Inspect or rotate a key-mode service's keys in the state directory (a running gateway
    /// picks the change up within a second).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Token-mode operations on the state directory.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Fleet mode (`[cluster] backend = "etcd"`).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Serve only the built-in sample scoring model (plain HTTP), e.g. as a load-test upstream.
    SampleModel {
        #[arg(long, default_value = "127.0.0.1:5001")]
        listen: SocketAddr,
    },
    /// GET a health endpoint of a running gateway; exit 0 on a 2xx answer, 1 otherwise (for a
    /// container HEALTHCHECK where there is no shell or curl).
    Probe {
        /// The probe listener (`server.probe_listen`), or the admin listener.
        #[arg(long, default_value = "127.0.0.1:9902")]
        address: SocketAddr,
        /// `/readyz` (ready to take traffic) or `/livez` (the process is alive).
        #[arg(long, default_value = "/readyz")]
        path: String,
        /// Give up (unhealthy) after this long.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Print a new seal key (32 random bytes, base64) for `[cluster] seal_key_file`.
    SealKey,
    /// Print the etcd endpoints' health, the namespace's revision and the live replicas.
    Status {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Copy a local `state_dir` (keys, signing keys, role assignments, admin credential) into an
    /// empty namespace; refuses a namespace that holds anything.
    Import {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Print both keys as JSON.
    List {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        service: String,
    },
    /// Replace one key with a generated one, or with --value (use `--value -` to read it from
    /// stdin so it stays out of shell history and the process list).
    Regen {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        service: String,
        #[arg(long, value_enum)]
        key: CliKeySlot,
        #[arg(long)]
        value: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Sign a token for a token-mode service with its current signing key (offline), printing
    /// the same JSON as `POST /services/{name}/token`.
    Issue {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        service: String,
        #[arg(long, default_value = "cli")]
        subject: String,
    },
    /// Make a new signing key the signer (all token-mode services, or --service); a running
    /// gateway picks it up within a second, and earlier keys verify until their tokens expire.
    RotateSigningKey {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        service: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CliKeySlot {
    Primary,
    Secondary,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format.map(|f| match f {
        CliLogFormat::Text => LogFormat::Text,
        CliLogFormat::Json => LogFormat::Json,
    });
    if let Command::Run { config } = &cli.command {
        return run(config, format);
    }
    tele::init_diagnostics("info", format.unwrap_or(LogFormat::Text));
    match cli.command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Run { .. } => ExitCode::FAILURE,
        Command::Demo {
            listen,
            admin_listen,
            seconds,
            records,
        } => block_on(
            None,
            scoregate::demo::run(scoregate::demo::DemoOptions {
                listen,
                admin_listen,
                duration: Duration::from_secs(seconds),
                records,
            }),
        ),
        Command::Keys { command } => keys(command),
        Command::Cluster { command } => print_result(match command {
            ClusterCommand::SealKey => {
                scoregate::cluster::seal::SealKey::generate().map_err(anyhow::Error::from)
            }
            ClusterCommand::Status { config } => config::load_and_validate(&config)
                .map_err(anyhow::Error::from)
                .and_then(|c| scoregate::cli::cluster::status(&c)),
            ClusterCommand::Import { config } => config::load_and_validate(&config)
                .map_err(anyhow::Error::from)
                .and_then(|c| scoregate::cli::cluster::import(&c)),
        }),
        Command::Token {
            command:
                TokenCommand::Issue {
                    config,
                    service,
                    subject,
                },
        } => print_result(scoregate::cli::issue_token(&config, &service, &subject)),
        Command::Token {
            command: TokenCommand::RotateSigningKey { config, service },
        } => print_result(scoregate::cli::rotate_signing_keys(
            &config,
            service.as_deref(),
        )),
        Command::Probe {
            address,
            path,
            timeout_ms,
        } => probe(address, &path, Duration::from_millis(timeout_ms)),
        Command::SampleModel { listen } => block_on(None, async move {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            let stop = tokio_util::sync::CancellationToken::new();
            let serve = tokio::spawn(scoregate::sample_model::serve(listener, stop.clone()));
            eprintln!("sample model listening on http://{listen}");
            scoregate::shutdown::signal().await;
            stop.cancel();
            let _ = serve.await;
            Ok(())
        }),
    }
}

fn probe(address: SocketAddr, path: &str, timeout: Duration) -> ExitCode {
    block_on(Some(1), async {
        let answer = scoregate::probe::probe(address, path, timeout).await?;
        println!("GET http://{address}{path}: {}", answer.status);
        anyhow::ensure!(
            answer.healthy(),
            "unhealthy: {} {}",
            answer.status,
            answer.body.trim()
        );
        Ok(())
    })
}

fn keys(command: KeysCommand) -> ExitCode {
    let result = match command {
        KeysCommand::List { config, service } => scoregate::cli::keys_list(&config, &service),
        KeysCommand::Regen {
            config,
            service,
            key,
            value,
        } => read_value(value).and_then(|value| {
            let slot = match key {
                CliKeySlot::Primary => scoregate::auth::KeySlot::Primary,
                CliKeySlot::Secondary => scoregate::auth::KeySlot::Secondary,
            };
            scoregate::cli::keys_regen(&config, &service, slot, value)
        }),
    };
    print_result(result)
}

fn print_result(result: anyhow::Result<String>) -> ExitCode {
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("scoregate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--value -` reads the key from stdin (trailing newline removed).
fn read_value(value: Option<String>) -> anyhow::Result<Option<String>> {
    match value.as_deref() {
        Some("-") => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            Ok(Some(line.trim_end_matches(['\r', '\n']).to_owned()))
        }
        _ => Ok(value),
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match config::load_and_validate(path) {
        Ok(c) => {
            let cluster = match c.cluster.etcd() {
                None => "local".to_owned(),
                Some(e) => format!(
                    "etcd namespace {} as instance {}, {} endpoint(s)",
                    e.namespace,
                    e.instance,
                    e.endpoints.len()
                ),
            };
            println!(
                "{}: OK ({} service(s), scoring listener {}, admin listener {}, TLS {}, cluster {cluster})",
                path.display(),
                c.services.len(),
                c.server.listen,
                c.server.admin_listen,
                if c.server.tls.is_some() { "on" } else { "off" }
            );
            // Valid but risky: said on stderr, the exit status stays 0.
            for warning in c.server.warnings() {
                eprintln!("warning: {warning}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn run(path: &std::path::Path, format: Option<LogFormat>) -> ExitCode {
    // The configuration is read before diagnostics start (it sets their filter and format) and
    // before any port is bound.
    let config = match config::load_and_validate(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    tele::init_diagnostics(
        &config.telemetry.log_filter,
        format.unwrap_or(config.telemetry.log_format),
    );
    raise_fd_limit(config.server.max_connections);
    let threads = config.server.worker_threads;
    block_on(threads, serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&config).await?;
    let metrics = Arc::new(Metrics::new());
    let (records, writer) = tele::start_records(&config.telemetry, &metrics)?;
    let telemetry = Telemetry { metrics, records };
    let drained = app::run(config, listeners, telemetry, scoregate::shutdown::signal()).await?;
    writer.join();
    tracing::info!(?drained, "scoregate stopped");
    Ok(())
}

/// Raises the open-file limit to the hard limit so `max_connections` is reachable (each
/// connection is a descriptor, plus the upstream side), also when a reload raises it later.
fn raise_fd_limit(max_connections: usize) {
    let wanted = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(1024);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(got) if got < wanted => tracing::warn!(
            limit = got,
            max_connections,
            "the open-file limit is below what max_connections needs; raise `ulimit -n`"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}

fn block_on(
    threads: Option<usize>,
    fut: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    // One worker: tokio's current-thread scheduler, which has no work stealing and no cross-thread
    // wake-ups (measured in loadtest/RESULTS.md); otherwise the multi-threaded one.
    let mut builder = if threads == Some(1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = threads {
            b.worker_threads(n);
        }
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("scoregate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scoregate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
