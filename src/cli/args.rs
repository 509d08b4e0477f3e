//! The command line as clap sees it: every command, flag, default and help text, the version
//! string and the exit codes. `main` dispatches on it; `completions` and `man` render it, and the
//! tests parse the README's commands with it, so what is documented is what parses.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Where `--config` comes from when the flag is absent.
pub const CONFIG_ENV: &str = "SCOREGATE_CONFIG";

/// Success.
pub const EXIT_OK: u8 = 0;
/// Any other failure: startup after the checks (a bind race, the runtime), a failed probe, an
/// offline command that could not do its work.
pub const EXIT_FAILURE: u8 = 1;
/// A command-line usage error (unknown flag, missing or invalid value), reported by clap.
pub const EXIT_USAGE: u8 = 2;
/// `check-config` or `run` found problems with the configuration or with running it here (every
/// problem is listed). 64 is `EX_USAGE` in `sysexits.h` (`EX_CONFIG` would be 78); kept because
/// operators' scripts and the deploy kit rely on it.
pub const EXIT_CONFIG: u8 = 64;

/// `--version`: the package version, the commit it was built from (`unknown` outside a git
/// checkout, e.g. from a source tarball, unless `SCOREGATE_COMMIT` was set at build time) and the
/// enabled cargo features.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SCOREGATE_BUILD_COMMIT"),
    ", features: ",
    env!("SCOREGATE_BUILD_FEATURES"),
    ", TLS: rustls with aws-lc-rs)"
);

const AFTER_HELP: &str = "\
Exit codes: 0 success; 1 failure (startup after the checks, a failed probe, an offline command);
2 usage error (unknown flag, missing or invalid value); 64 the configuration has problems, or cannot
run on this machine (check-config and run list every problem).

Environment: SCOREGATE_CONFIG is the default for --config; SCOREGATE_LOG sets the diagnostic
filter (tracing directives, e.g. info,scoregate=debug); POD_NAME names the instance in records.";

#[derive(Debug, Parser)]
#[command(
    name = "scoregate",
    version = VERSION,
    about = "A secure gateway for ML scoring containers",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Diagnostic log format on stderr (default: `[telemetry] log_format`, else text).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<CliLogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

/// The configuration file: `--config`, else `$SCOREGATE_CONFIG`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// The configuration file (TOML); relative paths in it resolve against its directory.
    #[arg(long, short, env = CONFIG_ENV, value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckFormat {
    /// One problem per line, on stderr.
    Text,
    /// One JSON object on stdout.
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CliLogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CliKeySlot {
    Primary,
    Secondary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway with a configuration file.
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Validate a configuration file exactly as `run` would, list every problem, and exit.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
        /// How problems are printed.
        #[arg(long, value_enum, default_value = "text")]
        format: CheckFormat,
        /// Do not check that the listen addresses are free (for the file of a running gateway,
        /// before a reload: its own listeners hold them).
        #[arg(long)]
        skip_listen_check: bool,
        /// Check the file only, not this machine (state directory, record file, listen
        /// addresses): for a file meant for another machine, e.g. one rendered for a pod.
        #[arg(long, conflicts_with = "skip_listen_check")]
        file_only: bool,
    },
    /// One-command first run: a sample model behind the gateway with a throwaway TLS certificate.
    Demo {
        /// The scoring listener (port 0: any free port, printed).
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// The admin listener (port 0: any free port, printed).
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
        /// Where the model listens (plain HTTP); 127.0.0.1:5001 unless only `--unix` is given.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Listen on this Unix socket (as gunicorn `--bind unix:` or uvicorn `--uds`), and on
        /// TCP only if `--listen` is given too; a stale socket file left there is replaced.
        #[arg(long, value_name = "PATH")]
        unix: Option<PathBuf>,
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
    /// Print a shell completion script, e.g.
    /// `scoregate completions bash > /etc/bash_completion.d/scoregate`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the manual page (roff), e.g. `scoregate man > scoregate.1 && man ./scoregate.1`.
    Man,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Print a new seal key (32 random bytes, base64) for `[cluster] seal_key_file`.
    SealKey,
    /// Print the etcd endpoints' health, the namespace's revision and the live replicas.
    Status {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Copy a local `state_dir` (keys, signing keys, role assignments, admin credential) into an
    /// empty namespace; refuses a namespace that holds anything.
    Import {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print both keys as JSON.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// The key-mode service (its `name`).
        #[arg(long)]
        service: String,
    },
    /// Replace one key with a generated one, or with --value (use `--value -` to read it from
    /// stdin so it stays out of shell history and the process list).
    Regen {
        #[command(flatten)]
        config: ConfigArg,
        /// The key-mode service (its `name`).
        #[arg(long)]
        service: String,
        /// Which key to replace.
        #[arg(long, value_enum)]
        key: CliKeySlot,
        /// The new key (`-`: read one line from stdin); without it a key is generated.
        #[arg(long)]
        value: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Sign a token for a token-mode service with its current signing key (offline), printing
    /// the same JSON as `POST /services/{name}/token`.
    Issue {
        #[command(flatten)]
        config: ConfigArg,
        /// The token-mode service (its `name`).
        #[arg(long)]
        service: String,
        /// The token's `sub` claim (the principal in records).
        #[arg(long, default_value = "cli")]
        subject: String,
    },
    /// Make a new signing key the signer (all token-mode services, or --service); a running
    /// gateway picks it up within a second, and earlier keys verify until their tokens expire.
    RotateSigningKey {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this token-mode service (default: all of them).
        #[arg(long)]
        service: Option<String>,
    },
}

/// The completion script for `shell`.
pub fn completions(shell: Shell) -> Vec<u8> {
    use clap::CommandFactory as _;
    let mut out = Vec::new();
    let target = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(target, &mut Cli::command(), "scoregate", &mut out);
    out
}

/// The manual page (roff).
pub fn man_page() -> std::io::Result<Vec<u8>> {
    use clap::CommandFactory as _;
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// Every command and every flag, at every depth, says what it is for.
    #[test]
    fn every_command_and_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg
                    .get_help()
                    .is_none_or(|h| h.to_string().trim().is_empty())
                {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(sub_path.clone());
                }
                walk(sub, &sub_path, missing);
            }
        }
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cmd, "scoregate", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:#?}");
    }

    #[test]
    fn config_comes_from_the_environment_variable_when_the_flag_is_absent() {
        let arg = Cli::command()
            .find_subcommand("run")
            .and_then(|run| {
                run.get_arguments()
                    .find(|a| a.get_id() == "config")
                    .and_then(|a| a.get_env().map(ToOwned::to_owned))
            })
            .expect("run --config has an environment default");
        assert_eq!(arg, CONFIG_ENV);
    }
}
