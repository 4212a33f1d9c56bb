//! The `hearthlink` binary: arguments, logging, signals, exit codes.
//! Everything else lives in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use hearthlink::{config, control, CancellationToken};
use serde_json::json;

/// Exit code for a bad configuration (protocol 8.15).
const EXIT_CONFIG: u8 = 2;
/// Exit code of `status` when no daemon answers.
const EXIT_NO_DAEMON: u8 = 3;
/// Exit code of `links revoke` for an id no link had (like `links pause`
/// of an unknown link, protocol section 10).
const EXIT_UNKNOWN_LINK: u8 = 2;

#[derive(Parser)]
#[command(
    name = "hearthlink",
    version,
    about = "Home-automation gateway bridge: MQTT to cloud, privacy-filtered assistant links"
)]
struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Configuration file (TOML).
    #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run(ConfigArg),
    /// Write a first configuration (and the token file) for this gateway.
    Init(hearthlink::init::InitArgs),
    /// Validate a configuration file and exit (0 valid, 2 invalid); with
    /// --connect also connect to the broker and the cloud once (1: one failed).
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
        /// Also connect to the broker and open a cloud session, reporting each.
        #[arg(long)]
        connect: bool,
    },
    /// Assistant links.
    Links {
        #[command(subcommand)]
        command: LinksCommand,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Reload the running daemon's configuration (like SIGHUP), reporting the outcome.
    Reload(ConfigArg),
    /// State of the running daemon (exit 0 connected, 1 degraded, 3 no daemon).
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a self-contained demo: in-process broker, local TLS cloud, the real daemon.
    #[cfg(feature = "demo")]
    Demo(hearthlink::demo::DemoArgs),
    /// Present in gateway builds only to say how to get the demo.
    #[cfg(not(feature = "demo"))]
    #[command(hide = true)]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum LinksCommand {
    /// List links (active and revoked).
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a link at once (through the running daemon, or in the state files).
    Revoke {
        /// Link id.
        id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Print the audit trail as one JSON document.
    Export {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this link.
        #[arg(long)]
        link: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own story; the daemon inside only speaks up on trouble.
    #[cfg(feature = "demo")]
    let default_filter = if matches!(cli.command, Command::Demo(_)) {
        "warn,rumqttd=off"
    } else {
        "info,rumqttd=warn"
    };
    #[cfg(not(feature = "demo"))]
    let default_filter = "info";
    let set_log_level = init_logging(cli.log_format, default_filter);
    // One thread runs the whole daemon: its tasks are I/O-bound and hand
    // each message along a chain (broker -> relay -> cloud), which a single
    // thread does without cross-thread wake-ups or idle workers spinning.
    // Blocking file writes go to tokio's blocking pool. The demo also runs
    // an in-process broker and a cloud, so it gets two workers.
    #[cfg(feature = "demo")]
    let multi = matches!(cli.command, Command::Demo(_));
    #[cfg(not(feature = "demo"))]
    let multi = false;
    let mut builder = if multi {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(dispatch(cli.command, set_log_level))
}

/// Installs the subscriber; returns a setter that swaps the filter
/// (`log_level` at start and on reload).
fn init_logging(format: LogFormat, default_filter: &str) -> hearthlink::reload::LogSetter {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, reload, EnvFilter};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let (filter, handle) = reload::Layer::new(filter);
    // Colour only for a person at a terminal, not in the journal or a file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let output = match format {
        LogFormat::Pretty => fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(hearthlink::reload::secret_safe_levels())
        .with(output)
        .init();
    std::sync::Arc::new(move |level: &str| {
        let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())
    })
}

/// Loads the config or prints the error; `Err` carries the exit code.
/// Where the packaged unit is installed, and the token path it loads.
const UNIT_FILES: [&str; 2] = [
    "/usr/lib/systemd/system/hearthlink.service",
    "/etc/systemd/system/hearthlink.service",
];
const UNIT_TOKEN: &str = "/etc/hearthlink/token";

/// Issue 16 item 20: the packaged unit hands the daemon a copy of
/// [`UNIT_TOKEN`] whatever `cloud.token_file` says, so another path would
/// pass check-config and then fail under systemd.
fn unit_token_warning(token_file: &Path) -> Option<String> {
    let installed = UNIT_FILES.iter().any(|u| Path::new(u).exists());
    token_mismatch(token_file, installed)
}

fn token_mismatch(token_file: &Path, unit_installed: bool) -> Option<String> {
    (unit_installed && token_file != Path::new(UNIT_TOKEN)).then(|| {
        format!(
            "cloud.token_file is {}, but the hearthlink systemd unit loads the token from {UNIT_TOKEN}              (LoadCredential) whatever this key says: move the token there, or add a drop-in              (`systemctl edit hearthlink`) with LoadCredential=token:{}",
            token_file.display(),
            token_file.display()
        )
    })
}

fn load_config(path: &Path) -> Result<config::Config, ExitCode> {
    match config::load(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                tracing::warn!("{w}");
            }
            Ok(loaded.config)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

async fn dispatch(command: Command, set_log_level: hearthlink::reload::LogSetter) -> ExitCode {
    let result = match command {
        Command::Run(c) => {
            let config = match load_config(&c.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let path = c.config.clone();
            let opts = hearthlink::Options {
                reload: Some(std::sync::Arc::new(move || config::load(&path))),
                set_log_level: Some(set_log_level),
                sighup: true,
            };
            run_daemon(config, opts).await
        }
        Command::CheckConfig { config: c, connect } => {
            return match config::load(&c.config) {
                Ok(loaded) => {
                    for w in &loaded.warnings {
                        eprintln!("warning: {w}");
                    }
                    if let Some(w) = unit_token_warning(&loaded.config.cloud.token_file) {
                        eprintln!("warning: {w}");
                    }
                    println!("{}: configuration is valid", c.config.display());
                    if connect && !hearthlink::probe::run(&loaded.config).await {
                        return ExitCode::from(1);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        Command::Init(args) => hearthlink::init::run(args).context("hearthlink init"),
        Command::Links { command } => match links(command).await {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Audit {
            command: AuditCommand::Export { config, link },
        } => match load_config(&config.config) {
            Ok(cfg) => hearthlink::audit::export(&cfg.state_dir, link.as_deref())
                .map(|doc| {
                    for line in doc["unreadable"].as_array().into_iter().flatten() {
                        eprintln!("warning: skipped {}", line.as_str().unwrap_or_default());
                    }
                    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default())
                })
                .context("exporting the audit trail"),
            Err(code) => return code,
        },
        Command::Status { config, json } => return status(&config.config, json).await,
        Command::Reload(c) => match load_config(&c.config) {
            Ok(cfg) => control::request(&cfg.control_socket, &json!({"cmd": "reload"}))
                .await
                .map(|v| {
                    for w in v["warnings"].as_array().into_iter().flatten() {
                        eprintln!("warning: {}", w.as_str().unwrap_or_default());
                    }
                    println!("configuration reloaded");
                })
                .context("reload"),
            Err(code) => return code,
        },
        #[cfg(feature = "demo")]
        Command::Demo(args) => hearthlink::demo::run(args).await.context("demo"),
        #[cfg(not(feature = "demo"))]
        Command::Demo { .. } => {
            eprintln!(
                "error: this hearthlink is the gateway build, without the demo; \
                 run it with `cargo run --release --features demo -- demo`"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_daemon(config: config::Config, opts: hearthlink::Options) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    spawn_signal_handler(token.clone())?;
    hearthlink::run_with(config, opts, token)
        .await
        .context("hearthlink run")
}

fn spawn_signal_handler(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        token.cancel();
    });
    Ok(())
}

async fn links(command: LinksCommand) -> anyhow::Result<ExitCode> {
    match command {
        LinksCommand::List { config, json } => {
            let cfg = load_config(&config.config)
                .map_err(|_| anyhow::anyhow!("invalid configuration"))?;
            let rows = match control::request(&cfg.control_socket, &json!({"cmd": "links"})).await {
                Ok(v) => {
                    serde_json::from_value(v["links"].clone()).context("daemon's link list")?
                }
                Err(control::ControlError::NotRunning { .. }) => {
                    let file = hearthlink::links::load_file(&cfg.state_dir)?;
                    let reg = hearthlink::links::Registry::from_file(file)?;
                    control::link_rows(&reg.load())
                }
                Err(e) => return Err(e.into()),
            };
            print_links(&rows, json);
            Ok(ExitCode::SUCCESS)
        }
        LinksCommand::Revoke { id, config } => {
            let cfg = load_config(&config.config)
                .map_err(|_| anyhow::anyhow!("invalid configuration"))?;
            if !hearthlink::protocol::valid_link_id(&id) {
                anyhow::bail!("link id must be 1 to 128 bytes without control characters");
            }
            let (prior, route) =
                control::revoke(&cfg.control_socket, &cfg.state_dir, &id, control::CLI_WAIT)
                    .await?;
            Ok(report_revoke(&id, prior, route))
        }
    }
}

/// Says what a revoke did; an id no link had exits [`EXIT_UNKNOWN_LINK`]
/// (a typo revokes nothing that was active).
fn report_revoke(id: &str, prior: control::Prior, route: control::Route) -> ExitCode {
    use control::{Prior, Route};
    let told = match route {
        Route::Daemon => "the cloud has been told",
        Route::StateFiles => "no daemon running: the cloud will be told at its next start",
    };
    match prior {
        Prior::Active => {
            println!("link {id} revoked; {told}");
            ExitCode::SUCCESS
        }
        Prior::Revoked => {
            println!("link {id} was already revoked");
            ExitCode::SUCCESS
        }
        Prior::Unknown => {
            eprintln!(
                "error: no link {id} was known to this gateway, so no active link was revoked \
                 (`hearthlink links list` shows them); {id} is recorded as revoked all the same, \
                 so it can never be granted"
            );
            ExitCode::from(EXIT_UNKNOWN_LINK)
        }
    }
}

fn print_links(rows: &[control::LinkRow], as_json: bool) {
    if as_json {
        println!("{}", serde_json::to_string_pretty(rows).unwrap_or_default());
        return;
    }
    println!(
        "{:<24} {:<8} {:<8} {:<28} COMMANDS",
        "ID", "KIND", "STATE", "EXPOSE"
    );
    for r in rows {
        let kind = r.kind.map(|k| k.as_str()).unwrap_or("-");
        println!(
            "{:<24} {:<8} {:<8} {:<28} {}",
            r.id,
            kind,
            r.state,
            r.expose.join(","),
            r.commands.join(",")
        );
    }
}

async fn status(path: &Path, as_json: bool) -> ExitCode {
    // A config that would not start a daemon (a missing token, say) still
    // names the socket of one that runs: status answers 3 or the status.
    let socket = match config::load(path) {
        Ok(loaded) => loaded.config.control_socket,
        Err(e) => match config::control_socket_of(path) {
            Some(socket) => {
                eprintln!("warning: {e}");
                socket
            }
            None => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    let v = match control::request(&socket, &json!({"cmd": "status"})).await {
        Ok(v) => v["status"].clone(),
        Err(e) => {
            if as_json {
                println!("{}", json!({"running": false, "error": e.to_string()}));
            } else {
                eprintln!("hearthlink is not running: {e}");
            }
            return ExitCode::from(EXIT_NO_DAEMON);
        }
    };
    let healthy = v["broker"]["connected"] == true && v["cloud"]["connected"] == true;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        hearthlink::control::print_status(&v);
    }
    if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_elsewhere_is_warned_about_only_with_the_unit_installed() {
        let elsewhere = Path::new("/srv/secrets/cloud-token");
        let w = token_mismatch(elsewhere, true).unwrap_or_default();
        assert!(
            w.contains("/srv/secrets/cloud-token") && w.contains("LoadCredential=token:"),
            "{w}"
        );
        assert!(token_mismatch(Path::new(UNIT_TOKEN), true).is_none());
        assert!(token_mismatch(elsewhere, false).is_none());
    }
}
