//! `mirage push`, `pull`, `mirror`, `backup` and `restore`: names (with their whole version
//! chains) or digests between this library (`--store`, or `--cluster`) and another one.

use anyhow::Result;
use clap::Subcommand;
use mirage_client::backup;
use mirage_client::mirror::MirrorOptions;
use mirage_client::transfer::{transfer, Library, Moved, Options, Progress};

#[derive(Subcommand, Debug)]
pub enum TransferCmd {
    /// Copy named images (with their whole version chains, provenance and delete marks) or
    /// image digests from this library to another: a store directory or a cluster URL.
    /// Only what the other side lacks is sent; run it again to resume.
    Push {
        #[command(flatten)]
        what: Refs,
        /// The destination: a store directory (created if missing) or http(s)://… node URLs.
        #[arg(long, value_name = "DIR|URL")]
        to: String,
        /// Bearer token at a destination cluster.
        #[arg(
            long,
            env = "MIRAGE_TO_TOKEN",
            hide_env_values = true,
            value_name = "TOKEN"
        )]
        to_token: Option<String>,
    },
    /// Copy named images or digests from another library (a store directory or a cluster
    /// URL) into this one. Only what this side lacks is fetched; run it again to resume.
    Pull {
        #[command(flatten)]
        what: Refs,
        /// The source: a store directory or http(s)://… node URLs.
        #[arg(long, value_name = "DIR|URL")]
        from: String,
        /// Bearer token at a source cluster.
        #[arg(
            long,
            env = "MIRAGE_FROM_TOKEN",
            hide_env_values = true,
            value_name = "TOKEN"
        )]
        from_token: Option<String>,
    },
    /// Copy the whole library (every name you may read, with chains, delete marks, defaults,
    /// provenance and ACLs) to a store directory, then verify the copy: every item of every
    /// live version read back and re-hashed. Run it again to bring the backup up to date.
    Backup {
        /// The backup store directory (created if missing).
        #[arg(long, value_name = "DIR")]
        to: std::path::PathBuf,
        #[command(flatten)]
        scope: Scope,
    },
    /// Verify a backup store directory, then copy its library into this one.
    Restore {
        /// The backup store directory.
        #[arg(long, value_name = "DIR")]
        from: std::path::PathBuf,
        #[command(flatten)]
        scope: Scope,
    },
    /// Keep another library (a store directory or a cluster) in step with this one: new
    /// versions, delete marks, default changes and (--acl) ACLs flow across; each pass
    /// reports the lag it found.
    Mirror(MirrorArgs),
}

/// Keep another library in step with this one.
#[derive(clap::Args, Debug)]
pub struct MirrorArgs {
    /// The other library: a store directory or http(s)://… node URLs.
    #[arg(long, value_name = "DIR|URL")]
    to: String,
    /// Bearer token at a destination cluster.
    #[arg(
        long,
        env = "MIRAGE_TO_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    to_token: Option<String>,
    /// Names to mirror (glob; repeat for more). Default: every name you may read.
    #[arg(long = "names", value_name = "GLOB")]
    names: Vec<String>,
    /// Run a pass every S seconds until stopped (default: one pass).
    #[arg(long, value_name = "S")]
    interval: Option<u64>,
    /// Carry ACLs across (owner, readers, writers), users mapped with --map-user; users
    /// without a mapping are left out.
    #[arg(long)]
    acl: bool,
    /// A user here and the user there who stands for them (repeat for more).
    #[arg(long = "map-user", value_name = "HERE=THERE")]
    map_user: Vec<String>,
}

/// Runs `mirage mirror` with `here` as the source.
pub fn mirror(a: &MirrorArgs, here: Library, caller: &str, json: bool) -> Result<()> {
    let there = Library::open(&a.to, a.to_token.as_deref(), caller, false)?;
    let mut users = std::collections::BTreeMap::new();
    for m in &a.map_user {
        let (h, t) = m
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--map-user {m:?}: give HERE=THERE"))?;
        users.insert(h.to_string(), t.to_string());
    }
    let opts = MirrorOptions {
        names: a.names.clone(),
        acl: a.acl,
        users,
        same_users: false,
    };
    let interval = a.interval.map(|s| std::time::Duration::from_secs(s.max(1)));
    mirage_client::mirror::run(&here, &there, &opts, interval, |p| {
        if json {
            println!("{}", serde_json::to_string(p).unwrap_or_default());
        } else {
            println!(
                "{} -> {}: {} names, {} updated, {} versions and {} delete marks added, \
                 {} items ({:.1} MB) sent; lag before the pass: {} versions, {} s{}",
                here.label,
                there.label,
                p.names,
                p.updated.len(),
                p.versions_added,
                p.deletes,
                p.items,
                p.bytes as f64 / 1e6,
                p.behind_versions,
                p.lag_seconds,
                if p.errors.is_empty() {
                    String::new()
                } else {
                    format!("; not mirrored: {}", p.errors.join("; "))
                }
            );
        }
    })
}

/// Copies a library to or from a backup directory, verifying the backup: after a backup,
/// before a restore.
fn backup_or_restore(
    src: &Library,
    dst: &Library,
    scope: &Scope,
    restore: bool,
    json: bool,
) -> Result<()> {
    let (names, verify) = (&scope.names, !scope.no_verify);
    let backup = if restore { src } else { dst };
    let check = || -> Result<Option<backup::Verified>> {
        if !verify {
            return Ok(None);
        }
        let v = backup.verify()?;
        Ok(Some(v))
    };
    let before = if restore { check()? } else { None };
    let progress = Progress::start(json);
    let copied = backup::copy_library(src, dst, names);
    drop(progress);
    let copied = copied?;
    let verified = if restore { before } else { check()? };
    if json {
        let out = serde_json::json!({"copied": copied, "verified": verified});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{} -> {}: {} names, {} updated, {} versions added, {} items ({:.1} MB) sent",
        src.label,
        dst.label,
        copied.names,
        copied.updated.len(),
        copied.versions_added,
        copied.items,
        copied.bytes as f64 / 1e6
    );
    if let Some(v) = verified {
        println!(
            "verified {}: {} live images, {} items ({:.1} MB) read back and re-hashed",
            backup.label,
            v.images,
            v.items,
            v.bytes as f64 / 1e6
        );
    }
    Ok(())
}

/// What a push or pull brings across, and how.
#[derive(clap::Args, Debug)]
pub struct Refs {
    /// Names or digests.
    #[arg(required = true)]
    refs: Vec<String>,
    #[command(flatten)]
    opts: NameOpts,
}

/// What a backup or restore copies.
#[derive(clap::Args, Debug)]
pub struct Scope {
    /// Only these names (glob; repeat for more).
    #[arg(long = "names", value_name = "GLOB")]
    names: Vec<String>,
    /// Skip the verify step.
    #[arg(long)]
    no_verify: bool,
}

/// How a name is brought across.
#[derive(clap::Args, Debug)]
pub struct NameOpts {
    /// Bring the (one) name across under this name.
    #[arg(long, value_name = "NAME")]
    rename: Option<String>,
    /// When the name has another history at the destination, add these versions after its
    /// own instead of refusing.
    #[arg(long)]
    force: bool,
}

/// Runs a transfer with `here` (this library: `--store` or `--cluster`) as one side; `caller`
/// is the user on a store-directory side.
pub fn run(cmd: &TransferCmd, here: Library, caller: &str, json: bool) -> Result<()> {
    let (src, dst, refs, o) = match cmd {
        TransferCmd::Mirror(a) => return mirror(a, here, caller, json),
        TransferCmd::Backup { to, scope } => {
            let there = Library::dir(to, caller, true)?;
            return backup_or_restore(&here, &there, scope, false, json);
        }
        TransferCmd::Restore { from, scope } => {
            let there = Library::dir(from, caller, false)?;
            return backup_or_restore(&there, &here, scope, true, json);
        }
        TransferCmd::Push { what, to, to_token } => {
            let there = Library::open(to, to_token.as_deref(), caller, false)?;
            (here, there, &what.refs, &what.opts)
        }
        TransferCmd::Pull {
            what,
            from,
            from_token,
        } => {
            let there = Library::open(from, from_token.as_deref(), caller, true)?;
            (there, here, &what.refs, &what.opts)
        }
    };
    let opts = Options {
        rename: o.rename.clone(),
        force: o.force,
    };
    let progress = Progress::start(json);
    let moved = transfer(&src, &dst, refs, &opts);
    drop(progress);
    let moved = moved?;
    if json {
        println!("{}", serde_json::to_string_pretty(&moved)?);
        return Ok(());
    }
    for m in &moved {
        println!("{}", line(m, &src.label, &dst.label));
    }
    Ok(())
}

fn line(m: &Moved, from: &str, to: &str) -> String {
    let what = match &m.name {
        Some(n) if *n != m.source => format!("{} as {n} ({} versions)", m.source, m.versions),
        Some(_) => format!("{} ({} versions)", m.source, m.versions),
        None => m.source.clone(),
    };
    let default = m
        .default
        .map(|d| format!(", default version {d}"))
        .unwrap_or_default();
    format!(
        "{what}: {from} -> {to}: {} items, {:.1} MB sent{default}",
        m.items,
        m.bytes as f64 / 1e6
    )
}
