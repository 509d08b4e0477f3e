//! The `scoregate` binary: parses arguments (`cli::args`), starts diagnostics, loads
//! configuration before any port is bound, runs the chosen command and turns its outcome into an
//! exit code (0 success, 2 a command-line usage error reported by clap, 64 a bad configuration,
//! 1 any other failure; `cli::args` documents them). No logic of its own.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use scoregate::app::{self, Listeners, Telemetry};
use scoregate::cli::args::{
    CheckFormat, Cli, CliKeySlot, CliLogFormat, ClusterCommand, Command, EXIT_CONFIG, KeysCommand,
    TokenCommand,
};
use scoregate::config::{self, Config};
use scoregate::telemetry::metrics::Metrics;
use scoregate::telemetry::{self as tele, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format.map(|f| match f {
        CliLogFormat::Text => LogFormat::Text,
        CliLogFormat::Json => LogFormat::Json,
    });
    if let Command::Run { config } = &cli.command {
        return run(&config.config, format);
    }
    tele::init_diagnostics("info", format.unwrap_or(LogFormat::Text));
    match cli.command {
        Command::CheckConfig {
            config,
            format,
            skip_listen_check,
            file_only,
        } => {
            let config = config.config;
            let machine = if file_only {
                config::MachineChecks::None
            } else if skip_listen_check {
                config::MachineChecks::SkipListeners
            } else {
                config::MachineChecks::All
            };
            check_config(&config, format, machine)
        }
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
        Command::Cluster { command } => cluster(command),
        Command::Token {
            command:
                TokenCommand::Issue {
                    config,
                    service,
                    subject,
                },
        } => print_result(scoregate::cli::issue_token(
            &config.config,
            &service,
            &subject,
        )),
        Command::Token {
            command: TokenCommand::RotateSigningKey { config, service },
        } => print_result(scoregate::cli::rotate_signing_keys(
            &config.config,
            service.as_deref(),
        )),
        Command::Probe {
            address,
            path,
            timeout_ms,
        } => probe(address, &path, Duration::from_millis(timeout_ms)),
        Command::Completions { shell } => write_stdout(&scoregate::cli::args::completions(shell)),
        Command::Man => match scoregate::cli::args::man_page() {
            Ok(page) => write_stdout(&page),
            Err(e) => {
                eprintln!("scoregate: cannot render the manual page: {e}");
                ExitCode::FAILURE
            }
        },
        Command::SampleModel { listen, unix } => sample_model(listen, unix),
    }
}

/// `scoregate cluster seal-key | status | import`.
fn cluster(command: ClusterCommand) -> ExitCode {
    print_result(match command {
        ClusterCommand::SealKey => {
            scoregate::seal::SealKey::generate().map_err(anyhow::Error::from)
        }
        ClusterCommand::Status { config } => config::load_and_validate(&config.config)
            .map_err(anyhow::Error::from)
            .and_then(|c| scoregate::cli::cluster::status(&c)),
        ClusterCommand::Import { config } => config::load_and_validate(&config.config)
            .map_err(anyhow::Error::from)
            .and_then(|c| scoregate::cli::cluster::import(&c)),
    })
}

/// `scoregate sample-model`: the built-in scoring container until a signal.
fn sample_model(
    listen: Option<std::net::SocketAddr>,
    unix: Option<std::path::PathBuf>,
) -> ExitCode {
    use scoregate::sample_model::{serve, serve_unix};
    let listen = match (listen, &unix) {
        (None, None) => Some(std::net::SocketAddr::from(([127, 0, 0, 1], 5001))),
        (listen, _) => listen,
    };
    block_on(None, async move {
        let stop = tokio_util::sync::CancellationToken::new();
        let mut tasks = Vec::new();
        if let Some(listen) = listen {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            tasks.push(tokio::spawn(serve(listener, stop.clone())));
            eprintln!("sample model listening on http://{listen}");
        }
        if let Some(path) = unix {
            remove_stale_socket(&path)?;
            let listener = tokio::net::UnixListener::bind(&path)
                .map_err(|e| anyhow::anyhow!("cannot listen on unix:{}: {e}", path.display()))?;
            tasks.push(tokio::spawn(serve_unix(listener, stop.clone())));
            eprintln!("sample model listening on unix:{}", path.display());
        }
        scoregate::shutdown::signal().await;
        stop.cancel();
        for task in tasks {
            let _ = task.await;
        }
        Ok(())
    })
}

/// A socket file nobody listens on any more (a previous run's) is removed; anything else at
/// `path` is left for `bind` to refuse.
fn remove_stale_socket(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if is_socket && std::os::unix::net::UnixStream::connect(path).is_err() {
        std::fs::remove_file(path).map_err(|e| {
            anyhow::anyhow!("cannot remove the stale socket {}: {e}", path.display())
        })?;
    }
    Ok(())
}

fn write_stdout(bytes: &[u8]) -> ExitCode {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scoregate: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
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
        KeysCommand::List { config, service } => {
            scoregate::cli::keys_list(&config.config, &service)
        }
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
            scoregate::cli::keys_regen(&config.config, &service, slot, value)
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

fn check_config(
    path: &std::path::Path,
    format: CheckFormat,
    machine: config::MachineChecks,
) -> ExitCode {
    match (config::check(path, machine), format) {
        (Ok(c), CheckFormat::Text) => {
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
        (Ok(c), CheckFormat::Json) => {
            let summary = serde_json::json!({
                "file": path,
                "ok": true,
                "problems": [],
                "services": c.services.iter().map(|s| &s.name).collect::<Vec<_>>(),
                "listen": c.server.listen.to_string(),
                "admin_listen": c.server.admin_listen.to_string(),
                "tls": c.server.tls.is_some(),
            });
            println!("{summary}");
            ExitCode::SUCCESS
        }
        (Err(e), CheckFormat::Text) => config_failed(&e),
        (Err(e), CheckFormat::Json) => {
            println!("{}", e.to_json());
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// The one way a configuration's problems are reported (`check-config` and `run`).
fn config_failed(e: &config::ConfigError) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(EXIT_CONFIG)
}

fn run(path: &std::path::Path, format: Option<LogFormat>) -> ExitCode {
    // The configuration is read before diagnostics start (it sets their filter and format) and
    // before any port is bound, with the same checks and messages as `check-config`.
    let config = match config::check(path, config::MachineChecks::All) {
        Ok(c) => c,
        Err(e) => return config_failed(&e),
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
