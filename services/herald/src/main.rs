//! `herald`: the node binary and its operator commands.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use herald::cli;
use herald::config::{LogFormatSetting, Settings};
use herald::startup::Application;

/// herald: real-time notifications from your backends to WebSocket clients.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML, YAML or JSON); without it the embedded demo config is used.
    #[arg(long, global = true, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve,
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Publish one event (to NATS, or to a running node's POST /v1/publish).
    Publish(cli::publish::PublishArgs),
    /// Connect to /v1/ws and print notifications as JSON lines.
    Tail(cli::tail::TailArgs),
    /// Read a password on stdin and print its argon2id hash for the credentials file.
    HashPassword,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print it with secrets redacted.
    Check,
}

/// `service.name` of exported spans unless `OTEL_SERVICE_NAME` sets one.
const SERVICE_NAME: &str = "herald";

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => serve(cli.config),
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            let settings = load(cli.config.as_deref())?;
            for warning in settings.deprecation_warnings() {
                eprintln!("warning: {warning}");
            }
            println!("{}", settings.to_redacted_toml());
            eprintln!("config ok");
            Ok(())
        }
        Command::Publish(args) => {
            let settings = load(cli.config.as_deref())?;
            // Warnings only on the terminal; the producer span is exported when OTEL_* say so.
            let telemetry =
                herald_telemetry::init("warn", herald_telemetry::LogFormat::Pretty, SERVICE_NAME)?;
            let result = runtime()?.block_on(cli::publish::run(&settings, args));
            telemetry.shutdown();
            result
        }
        Command::Tail(args) => runtime()?.block_on(cli::tail::run(args)),
        Command::HashPassword => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!password.is_empty(), "no password on stdin");
            println!(
                "{}",
                herald::auth::hash_password(password)
                    .map_err(|e| anyhow::anyhow!("cannot hash: {e}"))?
            );
            Ok(())
        }
    }
}

fn load(path: Option<&std::path::Path>) -> anyhow::Result<Settings> {
    Settings::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn serve(config: Option<PathBuf>) -> anyhow::Result<()> {
    let settings = load(config.as_deref())?;
    let format = match settings.log.format {
        LogFormatSetting::Pretty => herald_telemetry::LogFormat::Pretty,
        LogFormatSetting::Json => herald_telemetry::LogFormat::Json,
    };
    let telemetry = herald_telemetry::init(&settings.log.level, format, SERVICE_NAME)?;
    if settings.uses_demo_credentials() {
        tracing::warn!(
            "!!! DEMO CREDENTIALS ACTIVE (config/dev.toml: demo@herald.local/demo, herald-demo-token, herald-dev-admin). \
             Never expose this node: pass --config with your own credentials !!!"
        );
    }
    for warning in settings.security_warnings() {
        tracing::warn!("{warning}");
    }
    for warning in settings.deprecation_warnings() {
        tracing::warn!("{warning}");
    }
    let result = actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings).await?;
        // Tests and scripts read this line to learn the bound port.
        println!("herald listening on http://{}", app.address());
        if let Some(metrics) = app.metrics_address() {
            println!("herald metrics on http://{metrics}/metrics");
        }
        app.run_until_stopped().await
    });
    // After the runtime: the last spans are flushed without holding up the drain.
    telemetry.shutdown();
    result
}
