//! The `portcullis` command line (CONTRACT.md, Command line).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portcullis::config::{self, Loaded, Workers};
use portcullis::telemetry::{init_logging, LogFormat};
use portcullis::{demo, Drained, Gateway, RunningGateway};

// A proxy allocates small, short-lived buffers and header maps per request;
// mimalloc serves those with less CPU than glibc malloc (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A layer-7 reverse proxy and API gateway"
)]
struct Cli {
    /// Log line format on stdout.
    #[arg(long, value_enum, default_value = "json", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run {
        #[arg(long, default_value = "gateway.yaml")]
        config: PathBuf,
        /// Do not watch the config file; reload only on SIGHUP or POST /reload.
        #[arg(long)]
        no_watch: bool,
    },
    /// Parse and validate a config file, like `nginx -t`; with `--diff OLD`,
    /// also print what reloading from OLD to it would change.
    Check {
        /// The running (or previous) config to compare with.
        #[arg(long, value_name = "OLD")]
        diff: Option<PathBuf>,
        path: PathBuf,
    },
    /// Start demo backends on the endpoints gateway.yaml names, then the gateway.
    Demo {
        #[arg(long, default_value = "gateway.yaml")]
        config: PathBuf,
        /// Do not watch the config file; reload only on SIGHUP or POST /reload.
        #[arg(long)]
        no_watch: bool,
    },
    /// Mint a signed dev JWT that the demo config accepts.
    Token {
        #[arg(long, default_value = "demo-user")]
        sub: String,
        /// Space-separated scopes, e.g. "users:read orders:write".
        #[arg(long, default_value = "")]
        scope: String,
        /// Lifetime: 30m, 1h, 24h...
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// PEM private key (ECDSA P-256/P-384 or Ed25519).
        #[arg(long, default_value = "certs/jwt-dev.key")]
        key: PathBuf,
        #[arg(long, default_value = portcullis::auth::token::DEMO_ISSUER)]
        iss: String,
        #[arg(long, default_value = portcullis::auth::token::DEMO_AUDIENCE)]
        aud: String,
    },
    /// Run one demo backend (JSON echo with /health), e.g. as a load-test upstream.
    Backend {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long, default_value = "backend")]
        name: String,
        /// Worker threads.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Wait this long before every answer except `/health`'s (250ms,
        /// 1s...): a slow endpoint whose health checks pass.
        #[arg(long, default_value = "0")]
        delay: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run {
        config: PathBuf::from("gateway.yaml"),
        no_watch: false,
    }) {
        Command::Check { path, diff } => check(&path, diff.as_deref()),
        Command::Run { config, no_watch } => run(&config, cli.log_format, false, !no_watch),
        Command::Demo { config, no_watch } => run(&config, cli.log_format, true, !no_watch),
        Command::Token {
            sub,
            scope,
            ttl,
            key,
            iss,
            aud,
        } => token(&sub, &scope, &ttl, &key, &iss, &aud),
        Command::Backend {
            bind,
            name,
            workers,
            delay,
        } => backend(bind, &name, workers, &delay),
    }
}

fn token(sub: &str, scope: &str, ttl: &str, key: &Path, iss: &str, aud: &str) -> ExitCode {
    let ttl = match portcullis::config::values::parse_duration(ttl) {
        Ok(d) if d.as_secs() > 0 => d.as_secs(),
        _ => {
            eprintln!("portcullis token: --ttl must be a duration like 30m or 1h, not `{ttl}`");
            return ExitCode::from(1);
        }
    };
    let minted = std::fs::read_to_string(key)
        .map_err(|e| {
            format!(
                "cannot read {}: {e} (`portcullis demo` creates the dev key)",
                key.display()
            )
        })
        .and_then(|pem| portcullis::auth::token::SigningKey::from_pem(&pem))
        .and_then(|k| k.mint(sub, scope, ttl, iss, aud));
    match minted {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis token: {e}");
            ExitCode::from(1)
        }
    }
}

fn check(path: &Path, diff_from: Option<&Path>) -> ExitCode {
    match config::load_file(path) {
        Ok(loaded) => {
            if let Some(old_path) = diff_from {
                // The old file only needs to be YAML: it may be the broken
                // config being replaced.
                let old = std::fs::read_to_string(old_path)
                    .map_err(|e| e.to_string())
                    .and_then(|text| {
                        config::yaml::parse(&text)
                            .map(|(v, _)| v)
                            .map_err(|e| e.message)
                    });
                match old {
                    Ok(old) => {
                        let changes = config::diff::diff(&old, &loaded.raw);
                        if changes.is_empty() {
                            println!("no changes from {}", old_path.display());
                        }
                        for c in changes {
                            println!("{c}");
                        }
                    }
                    Err(e) => {
                        eprintln!("{}: cannot read it to compare: {e}", old_path.display());
                        return ExitCode::from(1);
                    }
                }
            }
            for w in &loaded.warnings {
                eprintln!("{w}");
            }
            let c = &loaded.config;
            println!(
                "{}: ok: {} listener(s), {} upstream(s), {} route(s); sha256 {}",
                path.display(),
                c.listeners.len(),
                c.upstreams.len(),
                c.routes.len(),
                &loaded.hash[..12]
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: {} error(s)", path.display(), errors.0.len());
            ExitCode::from(1)
        }
    }
}

fn run(path: &Path, log_format: LogFormat, demo: bool, watch: bool) -> ExitCode {
    if demo {
        // Before loading: the demo config names the dev certificates.
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
        let certs = dir.unwrap_or(Path::new(".")).join("certs");
        match demo::ensure_dev_certs(&certs) {
            Ok(true) => println!("created a dev CA and certificates in {}", certs.display()),
            Ok(false) => {}
            Err(e) => {
                eprintln!(
                    "portcullis demo: cannot create dev certificates in {}: {e}",
                    certs.display()
                );
                return ExitCode::from(1);
            }
        }
    }
    let loaded = match config::load_file(path) {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(1);
        }
    };
    let workers = match loaded.config.server.workers {
        Workers::Count(n) => n,
        Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    // One worker: a single-threaded event loop, like NGINX's worker or
    // HAProxy with nbthread 1, without work-stealing bookkeeping.
    let mut rt = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    rt.enable_all();
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let _log_guard = init_logging(log_format);
    rt.block_on(serve(loaded, demo, watch))
}

async fn serve(loaded: Loaded, demo: bool, watch: bool) -> ExitCode {
    if demo {
        match demo::spawn_backends(&loaded.config).await {
            Ok(started) => {
                for (name, addr) in started {
                    tracing::info!(backend = %name, %addr, "demo backend started");
                }
            }
            Err(e) => {
                eprintln!("portcullis demo: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let config = loaded.config.clone();
    // A day-long token for the demo's protected routes.
    let demo_token = if demo {
        std::fs::read_to_string(loaded.base_dir.join("certs").join(demo::DEV_JWT_KEY))
            .ok()
            .and_then(|pem| portcullis::auth::token::SigningKey::from_pem(&pem).ok())
            .and_then(|k| {
                k.mint(
                    "demo-user",
                    "users:read",
                    86_400,
                    portcullis::auth::token::DEMO_ISSUER,
                    portcullis::auth::token::DEMO_AUDIENCE,
                )
                .ok()
            })
    } else {
        None
    };
    let mut gateway = match Gateway::start(loaded).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("portcullis: {e}");
            return ExitCode::from(1);
        }
    };
    if demo {
        // After the log lines, so the commands are the last thing on screen.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        println!(
            "{}",
            demo::commands(
                &config,
                &gateway.listeners(),
                gateway.admin_addr(),
                demo_token.as_deref()
            )
        );
    }
    if watch {
        gateway.watch_config();
    }
    wait_and_drain(gateway).await
}

/// Waits for SIGTERM or SIGINT, then drains. A second signal exits at once.
async fn wait_and_drain(gateway: RunningGateway) -> ExitCode {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        eprintln!("portcullis: cannot install signal handlers");
        return ExitCode::from(1);
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                // Logged, counted and shown in /status by the reload itself.
                let _ = portcullis::reload::reload(gateway.shared(), "SIGHUP").await;
            }
        }
    }
    tracing::info!("shutdown signal received");
    let drained = tokio::select! {
        d = gateway.shutdown() => Some(d),
        _ = term.recv() => None,
        _ = int.recv() => None,
    };
    match drained {
        // The contract: after drain_timeout the process exits 0 either way.
        Some(Drained::Clean | Drained::TimedOut) => ExitCode::SUCCESS,
        None => {
            tracing::warn!("second signal: exiting without waiting for the drain");
            ExitCode::from(1)
        }
    }
}

fn backend(bind: SocketAddr, name: &str, workers: usize, delay: &str) -> ExitCode {
    let delay = match portcullis::config::values::parse_duration(delay) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("portcullis backend: --delay: {e}");
            return ExitCode::from(1);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build();
    let Ok(rt) = rt else {
        eprintln!("portcullis: cannot start the runtime");
        return ExitCode::from(1);
    };
    rt.block_on(async {
        match demo::spawn_backend_with_delay(bind, name, delay).await {
            Ok(addr) => {
                println!("backend {name} listening on {addr}");
                let _ = tokio::signal::ctrl_c().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("portcullis backend: cannot listen on {bind}: {e}");
                ExitCode::from(1)
            }
        }
    })
}
