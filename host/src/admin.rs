//! The host's admin socket (`hoist_net::admin`): `status` answers the
//! relay's status as one JSON object; `watch` answers it, then one line per
//! change as it happens (woken by the status channel, never by a timer);
//! `reload` re-reads the rules and answers what is in force, or why the
//! config file was refused (the old rules stay). The CLI side is in
//! `main.rs`; the JSON and the table in `status`.

use crate::status::{events, to_json, Relay};
use crate::{Config, Status};
use hoist_net::admin::{AdminConn, AdminListener};
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// A reload asked for, and where its outcome goes: what is in force now,
/// or why the rules were refused.
pub type Reload = oneshot::Sender<Result<String, String>>;

/// Serves admin connections until `shutdown`.
pub async fn serve(
    listener: AdminListener,
    config: Arc<Config>,
    status: watch::Receiver<Status>,
    reload: mpsc::Sender<Reload>,
    shutdown: CancellationToken,
) {
    listener
        .serve(shutdown, |conn| {
            let (config, status, reload) = (config.clone(), status.clone(), reload.clone());
            async move { handle(conn, &config, status, reload).await }
        })
        .await
}

fn relay(config: &Config) -> Relay {
    Relay {
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        guest: config.guest.to_string(),
        refused: config.limit.refused(),
    }
}

async fn handle(
    mut conn: AdminConn,
    config: &Config,
    mut status: watch::Receiver<Status>,
    reload: mpsc::Sender<Reload>,
) -> anyhow::Result<()> {
    let Some(req) = conn.recv().await? else { return Ok(()) };
    match req["command"].as_str() {
        Some("status") => {
            let now = status.borrow().clone();
            conn.send(&to_json(&now, &relay(config))).await?;
        }
        Some("watch") => {
            let mut last = status.borrow_and_update().clone();
            let mut first = to_json(&last, &relay(config));
            first["event"] = json!("status");
            conn.send(&first).await?;
            // Ends when the relay stops (the sender drops) or the reader
            // goes away (a send fails).
            while status.changed().await.is_ok() {
                let now = status.borrow_and_update().clone();
                for line in events(&last, &now, &relay(config)) {
                    conn.send(&line).await?;
                }
                last = now;
            }
        }
        Some("reload") => {
            let (tx, rx) = oneshot::channel();
            let answer: Value = match reload.send(tx).await {
                Err(_) => json!({"ok": false, "error": "the relay is stopping"}),
                Ok(()) => match rx.await {
                    Ok(Ok(rules)) => json!({"ok": true, "rules": rules}),
                    Ok(Err(e)) => json!({"ok": false, "error": e}),
                    Err(_) => json!({"ok": false, "error": "the relay is stopping"}),
                },
            };
            conn.send(&answer).await?;
        }
        other => {
            let e = format!("unknown command {other:?}: status, watch or reload");
            conn.send(&json!({"ok": false, "error": e})).await?;
        }
    }
    Ok(())
}

/// How to start a relay, for the "nothing running" line.
const START: &str = "hoist-host --guest <address of the agent>";

/// `hoist-host status`: the table, the JSON, or (`watch`) the JSON lines of
/// every change until the relay stops.
pub async fn show_status(path: &std::path::Path, as_json: bool, watch: bool) -> anyhow::Result<()> {
    let table = |v: &Value| crate::status::table(v, std::time::SystemTime::now());
    hoist_net::admin::print_status(path, "hoist-host", START, as_json, watch, table).await
}

/// `hoist-host reload`: what is in force now, or why the file was refused.
pub async fn reload(path: &std::path::Path) -> anyhow::Result<()> {
    let mut conn =
        hoist_net::admin::ask(path, &json!({"command": "reload"}), "hoist-host", START).await?;
    let answer = conn.recv().await?.ok_or_else(|| anyhow::anyhow!("the relay hung up"))?;
    match answer["ok"].as_bool() {
        Some(true) => {
            println!("rules reloaded: {}", answer["rules"].as_str().unwrap_or("?"));
            Ok(())
        }
        _ => anyhow::bail!(
            "the rules were not reloaded (the old ones stay in force): {}",
            answer["error"].as_str().unwrap_or("no reason given")
        ),
    }
}
