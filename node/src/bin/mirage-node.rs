//! `mirage-node`: a storage node serving the HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mirage_node::{Store, StoreOptions};

/// Mirage storage node.
#[derive(Parser, Debug)]
#[command(name = "mirage-node", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve a store over HTTP until SIGTERM or Ctrl-C.
    Serve {
        /// Store directory (created if missing).
        #[arg(long)]
        store: PathBuf,
        /// Address to listen on (port 0: any free port, printed on start).
        #[arg(long, default_value = "127.0.0.1:7300")]
        listen: SocketAddr,
    },
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MIRAGE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve { store, listen } => {
            let st = Store::open(
                &store,
                StoreOptions {
                    create: true,
                    ..Default::default()
                },
            )
            .with_context(|| format!("opening store {}", store.display()))?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                let addr = listener.local_addr()?;
                println!("listening on http://{addr}");
                mirage_node::api::run(listener, st, shutdown_signal()).await?;
                anyhow::Ok(())
            })?;
        }
    }
    Ok(())
}
