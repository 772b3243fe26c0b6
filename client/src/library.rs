//! Library commands on the catalog — names, versions, provenance, ACLs, users — and how a REF
//! (`NAME`, `NAME@VERSION` or a digest, optionally followed by `:PART`) becomes an image.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use mirage_format::Digest;
use mirage_node::catalog::{Command, ImageRecord, ImageState, Named};
use mirage_node::Store;

use crate::context::Ctx;

/// The caller when `--as` is not given: `$USER`, else `$LOGNAME`, else `root`.
pub fn default_caller() -> String {
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "root".into())
}

/// Makes sure the caller is a user: the first caller of an empty catalog becomes its admin.
pub fn ensure_caller(store: &Store, caller: &str) -> Result<()> {
    let c = store.catalog();
    if c.user(caller)?.is_some() {
        return Ok(());
    }
    if c.users()?.is_empty() {
        c.submit(
            caller,
            Command::AddUser {
                name: caller.into(),
                admin: true,
                token_sha256: None,
            },
        )?;
        tracing::info!("{caller} is the first user of this catalog and its admin");
        return Ok(());
    }
    bail!("no user named {caller:?} (an admin adds users with `mirage user add`)")
}

/// Splits `REF:PART` (a partition number after the last colon, unless that colon belongs to a
/// digest's algorithm prefix).
pub fn split_partition(reference: &str) -> (&str, Option<u32>) {
    match reference.rsplit_once(':') {
        Some((r, p))
            if !p.is_empty()
                && p.len() <= 9
                && p.bytes().all(|b| b.is_ascii_digit())
                && !r.is_empty()
                && !matches!(r, "sha256" | "sha1") =>
        {
            (r, p.parse().ok())
        }
        _ => (reference, None),
    }
}

/// The image a REF (without `:PART`) names for `caller`. A digest of an image the catalog
/// knows is refused, exactly like an unknown name, unless the caller may see that image (an
/// admin, its creator, or a reader of a name that holds it); a digest the catalog does not
/// know (an image checked in without a name) is the checker-in's to share.
pub fn image_of(store: &Store, caller: &str, reference: &str) -> Result<Digest> {
    Ctx::local(store, caller).image_of(reference)
}

/// Library commands.
#[derive(Subcommand, Debug)]
pub enum LibraryCmd {
    /// Versions of a named image.
    Versions {
        /// Name.
        name: String,
    },
    /// Named images you may read, with their default versions.
    Images {
        /// Every version, deleted ones included.
        #[arg(long)]
        all: bool,
    },
    /// Make VERSION the default of NAME (rollback or forward).
    Default {
        /// Name.
        name: String,
        /// Version number.
        version: u32,
    },
    /// Mark NAME@VERSION deleted (owner or admin; metadata and provenance stay).
    Delete {
        /// NAME@VERSION.
        reference: String,
    },
    /// Create NEW whose first version is SRC's image, with SRC as parent.
    Derive {
        /// Source: NAME or NAME@VERSION.
        source: String,
        /// New name.
        name: String,
    },
    /// Ancestors and descendants of an image.
    Provenance {
        /// NAME, NAME@VERSION or digest.
        reference: String,
        /// Print a graphviz DOT graph.
        #[arg(long)]
        dot: bool,
    },
    /// Lock a named image for maintenance (admins).
    Lock {
        /// Name.
        name: String,
        /// Why (shown to whoever is refused).
        #[arg(long)]
        reason: String,
    },
    /// Lift a maintenance lock (admins).
    Unlock {
        /// Name.
        name: String,
    },
    /// Show or change who may read and write a named image (owner or admin to change).
    Acl {
        /// Name.
        name: String,
        /// Give USER read access.
        #[arg(long = "grant-read", value_name = "USER")]
        grant_read: Vec<String>,
        /// Give USER write (and read) access.
        #[arg(long = "grant-write", value_name = "USER")]
        grant_write: Vec<String>,
        /// Remove USER's access.
        #[arg(long, value_name = "USER")]
        revoke: Vec<String>,
    },
    /// Files added, deleted, modified and changed in metadata only, per filesystem.
    Diff {
        /// First image (NAME, NAME@VERSION or digest).
        a: String,
        /// Second image.
        b: String,
        /// Count access- and change-time differences too (left out by default).
        #[arg(long)]
        all_times: bool,
    },
    /// Images and versions holding a path (glob: `*`, `?` within a name, `**` across
    /// directories) or a content digest.
    Search {
        /// Glob over whole paths, e.g. '/usr/lib/postgresql/**' or '**/sshd'.
        #[arg(long, group = "what")]
        path: Option<String>,
        /// Content digest of a file (as `mirage ls --json` shows it).
        #[arg(long, group = "what")]
        content: Option<String>,
        /// Installed package NAME or NAME=VERSION (dpkg or apk database in the image).
        #[arg(long, group = "what")]
        package: Option<String>,
    },
    /// Installed packages of an image, or (--aggregate) which versions hold which packages.
    Inventory {
        /// NAME, NAME@VERSION or digest (not with --aggregate).
        reference: Option<String>,
        /// Over every version you may read: package -> versions -> images.
        #[arg(long)]
        aggregate: bool,
        /// Only packages whose names match one of these globs, separated by '|'
        /// (e.g. 'postgresql*|mariadb*|mysql*').
        #[arg(long = "match", value_name = "GLOBS")]
        matching: Option<String>,
    },
    /// Users of the catalog.
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
}

/// User commands.
#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Add a user (admins; the first caller of an empty catalog is its admin).
    Add {
        /// Name.
        name: String,
        /// Make the user an administrator.
        #[arg(long)]
        admin: bool,
    },
    /// List users.
    List,
    /// Give a user a new bearer token (the user itself or an admin); the old one stops
    /// working.
    Token {
        /// Name.
        name: String,
    },
}

/// Prints a user's new token (made by the cluster node in remote mode, here otherwise: a
/// node serving this store accepts it).
fn print_token(name: &str, token: String, json: bool) -> Result<()> {
    if json {
        return print_json(&serde_json::json!({"name": name, "token": token}));
    }
    println!("token for {name} (shown once): {token}");
    Ok(())
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn name_at(reference: &str) -> Result<(&str, u32)> {
    let (n, v) = reference
        .rsplit_once('@')
        .with_context(|| format!("{reference:?}: expected NAME@VERSION"))?;
    Ok((
        n,
        v.parse()
            .with_context(|| format!("{reference:?}: the version is a number"))?,
    ))
}

fn versions_text(n: &Named) -> String {
    let mut s = format!("{}  owner {}", n.name, n.owner);
    if let Some(l) = &n.lock {
        let _ = write!(s, "  LOCKED by {}: {}", l.by, l.reason);
    }
    s.push('\n');
    for v in &n.versions {
        let mark = if v.number == n.default { '*' } else { ' ' };
        let state = if v.deleted { "  (deleted)" } else { "" };
        let _ = writeln!(
            s,
            "{mark} {:>4}  {}  {}  by {}{state}",
            v.number,
            v.image.to_text(),
            v.created.secs,
            v.creator
        );
    }
    s
}

/// Runs a library command as `caller`.
pub fn run(ctx: &Ctx<'_>, json: bool, cmd: &LibraryCmd) -> Result<()> {
    let store = ctx.store;
    let submit = |command: Command| -> Result<()> {
        let r = ctx.submit(command)?;
        if json {
            print_json(&r)?;
        }
        Ok(())
    };
    match cmd {
        LibraryCmd::Versions { name } => {
            let n = ctx.named(name)?;
            if json {
                print_json(&n)?;
            } else {
                print!("{}", versions_text(&n));
            }
        }
        LibraryCmd::Images { all } => {
            let list = ctx.list()?;
            if json {
                return print_json(&list);
            }
            for n in &list {
                if *all {
                    print!("{}", versions_text(n));
                } else if let Some(v) = n.default_version() {
                    let lock = if n.lock.is_some() { "  LOCKED" } else { "" };
                    println!(
                        "{}@{}  {}  owner {}  {} versions{lock}",
                        n.name,
                        v.number,
                        v.image.to_text(),
                        n.owner,
                        n.versions.len()
                    );
                }
            }
        }
        LibraryCmd::Default { name, version } => submit(Command::SetDefault {
            name: name.clone(),
            version: *version,
        })?,
        LibraryCmd::Delete { reference } => {
            let (name, version) = name_at(reference)?;
            submit(Command::Delete {
                name: name.into(),
                version,
            })?
        }
        LibraryCmd::Derive { source, name } => {
            let (src, version) = match source.rsplit_once('@') {
                Some((s, v)) => (
                    s,
                    Some(v.parse().context("the version after @ is a number")?),
                ),
                None => (source.as_str(), None),
            };
            submit(Command::Derive {
                source: src.into(),
                version,
                name: name.clone(),
            })?
        }
        LibraryCmd::Provenance { reference, dot } => {
            let image = ctx.image_of(reference)?;
            provenance(ctx, &image, *dot, json)?;
        }
        LibraryCmd::Lock { name, reason } => submit(Command::Lock {
            name: name.clone(),
            reason: reason.clone(),
        })?,
        LibraryCmd::Unlock { name } => submit(Command::Unlock { name: name.clone() })?,
        LibraryCmd::Acl {
            name,
            grant_read,
            grant_write,
            revoke,
        } => {
            if !(grant_read.is_empty() && grant_write.is_empty() && revoke.is_empty()) {
                ctx.submit(Command::Acl {
                    name: name.clone(),
                    grant_read: grant_read.clone(),
                    grant_write: grant_write.clone(),
                    revoke: revoke.clone(),
                })?;
            }
            let n = ctx.named(name)?;
            if json {
                print_json(&serde_json::json!({
                    "name": n.name, "owner": n.owner, "readers": n.readers, "writers": n.writers,
                }))?;
            } else {
                println!("owner   {}", n.owner);
                println!(
                    "writers {}",
                    n.writers.iter().cloned().collect::<Vec<_>>().join(" ")
                );
                println!(
                    "readers {}",
                    n.readers.iter().cloned().collect::<Vec<_>>().join(" ")
                );
            }
        }
        LibraryCmd::Diff { a, b, all_times } => {
            let (da, db) = (ctx.image_with_content(a)?, ctx.image_with_content(b)?);
            let diffs = crate::diff::diff_images(
                store,
                &da,
                &db,
                crate::diff::DiffOptions {
                    all_times: *all_times,
                },
            )?;
            if json {
                return print_json(&diffs);
            }
            for d in &diffs {
                let count = |k| d.changes.iter().filter(|c| c.change == k).count();
                use crate::diff::ChangeKind as K;
                println!(
                    "partition {}: {} added, {} deleted, {} modified, {} metadata only ({} directories read, {} entries compared)",
                    d.partition,
                    count(K::Added),
                    count(K::Deleted),
                    count(K::Modified),
                    count(K::Metadata),
                    d.trees_read,
                    d.entries_compared
                );
                for c in &d.changes {
                    println!("{}", crate::diff::change_line(c));
                }
            }
        }
        LibraryCmd::Search {
            path,
            content,
            package,
        } => {
            let q = match (path, content, package) {
                (Some(p), _, _) => crate::search::Query::Path(p.clone()),
                (_, Some(c), _) => crate::search::Query::Content(c.parse()?),
                (_, _, Some(p)) => {
                    let (name, version) = match p.split_once('=') {
                        Some((n, v)) => (n.to_string(), Some(v.to_string())),
                        None => (p.clone(), None),
                    };
                    crate::search::Query::Package { name, version }
                }
                _ => bail!("give --path, --content or --package"),
            };
            let named = ctx.list()?;
            for n in &named {
                for v in n.versions.iter().filter(|v| !v.deleted) {
                    ctx.content(&v.image)?;
                }
            }
            let found = crate::search::search(store, &named, &q)?;
            if json {
                return print_json(&found);
            }
            for h in &found.hits {
                for (part, p) in &h.paths {
                    println!(
                        "{}  {}  {part}:{p}",
                        h.versions.join(","),
                        h.image.to_text()
                    );
                }
            }
            eprintln!(
                "{} of {} images match ({} trees read)",
                found.hits.len(),
                found.images,
                found.trees_read
            );
        }
        LibraryCmd::Inventory {
            reference,
            aggregate,
            matching,
        } => inventory(
            ctx,
            reference.as_deref(),
            *aggregate,
            matching.as_deref(),
            json,
        )?,
        LibraryCmd::User { cmd } => match cmd {
            UserCmd::Add { name, admin } => {
                let (t, h) = mirage_node::auth::new_token();
                let r = ctx.submit(Command::AddUser {
                    name: name.clone(),
                    admin: *admin,
                    token_sha256: Some(h),
                })?;
                print_token(name, r.token.unwrap_or(t), json)?;
            }
            UserCmd::Token { name } => {
                let (t, h) = mirage_node::auth::new_token();
                let r = ctx.submit(Command::SetToken {
                    name: name.clone(),
                    token_sha256: h,
                })?;
                print_token(name, r.token.unwrap_or(t), json)?;
            }
            UserCmd::List => {
                let users = ctx.users()?;
                if json {
                    return print_json(&users);
                }
                for u in users {
                    println!("{}{}", u.name, if u.admin { "  (admin)" } else { "" });
                }
            }
        },
    }
    Ok(())
}

fn inventory(
    ctx: &Ctx<'_>,
    reference: Option<&str>,
    aggregate: bool,
    matching: Option<&str>,
    json: bool,
) -> Result<()> {
    let wanted = |name: &str| {
        matching.is_none_or(|m| {
            m.split('|')
                .any(|g| crate::search::glob_match(g.trim().as_bytes(), name.as_bytes()))
        })
    };
    match (reference, aggregate) {
        (Some(r), false) => {
            let image = ctx.image_with_content(r)?;
            let inv = crate::inventory::of_image(ctx.store, &image)?;
            if json {
                return print_json(&inv);
            }
            for (part, pkgs) in &inv {
                for p in pkgs.iter().filter(|p| wanted(&p.name)) {
                    println!("{part}  {} {} {} ({})", p.name, p.version, p.arch, p.db);
                }
            }
            Ok(())
        }
        (None, true) => {
            // package -> version -> name@version list
            let mut agg: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
            for n in ctx.list()? {
                for v in n.versions.iter().filter(|v| !v.deleted) {
                    ctx.content(&v.image)?;
                    for (_, pkgs) in crate::inventory::of_image(ctx.store, &v.image)? {
                        for p in pkgs.into_iter().filter(|p| wanted(&p.name)) {
                            agg.entry(p.name)
                                .or_default()
                                .entry(p.version)
                                .or_default()
                                .insert(format!("{}@{}", n.name, v.number));
                        }
                    }
                }
            }
            if json {
                return print_json(&agg);
            }
            for (name, versions) in &agg {
                for (version, images) in versions {
                    let list: Vec<&str> = images.iter().map(String::as_str).collect();
                    println!("{name} {version}  {}", list.join(" "));
                }
            }
            Ok(())
        }
        _ => bail!("give an image, or --aggregate (not both)"),
    }
}

/// Ancestors (parent chain) and descendants of `image` among the images `caller` may see.
fn provenance(ctx: &Ctx<'_>, image: &Digest, dot: bool, json: bool) -> Result<()> {
    let all: BTreeMap<Digest, ImageRecord> = ctx
        .images(None)?
        .into_iter()
        .map(|r| (r.digest, r))
        .collect();
    // The versions (name@number, not deleted) of each image among the names the caller reads.
    let mut refs: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
    for n in ctx.list()? {
        for v in n.versions.iter().filter(|v| !v.deleted) {
            refs.entry(v.image)
                .or_default()
                .push(format!("{}@{}", n.name, v.number));
        }
    }
    if !all.contains_key(image) {
        bail!(
            "{} is not in the catalog (or you may not see it)",
            image.to_text()
        );
    }
    let mut ancestors = Vec::new();
    let mut cur = all.get(image).and_then(|r| r.parent);
    let mut seen = BTreeSet::from([*image]);
    while let Some(p) = cur.filter(|p| seen.insert(*p)) {
        ancestors.push(p);
        cur = all.get(&p).and_then(|r| r.parent);
    }
    let mut children: BTreeMap<Digest, Vec<Digest>> = BTreeMap::new();
    for r in all.values() {
        if let Some(p) = r.parent.filter(|p| *p != r.digest) {
            children.entry(p).or_default().push(r.digest);
        }
    }
    let mut descendants = Vec::new();
    let mut stack = vec![*image];
    let mut seen = BTreeSet::from([*image]);
    while let Some(d) = stack.pop() {
        for ch in children.get(&d).into_iter().flatten() {
            if seen.insert(*ch) {
                descendants.push(*ch);
                stack.push(*ch);
            }
        }
    }
    let label = |d: &Digest| -> Result<String> {
        let names: Vec<String> = refs.get(d).cloned().unwrap_or_default();
        let state = match all.get(d).map(|r| r.state) {
            Some(ImageState::Deleted) => " (deleted)",
            _ => "",
        };
        Ok(format!("{} {}{state}", d, names.join(" ")))
    };
    if json {
        return print_json(&serde_json::json!({
            "image": image, "ancestors": ancestors, "descendants": descendants,
        }));
    }
    if dot {
        println!("digraph provenance {{");
        let mut nodes: Vec<Digest> = ancestors.clone();
        nodes.push(*image);
        nodes.extend(descendants.iter().copied());
        for d in &nodes {
            let style = if d == image { ", style=bold" } else { "" };
            println!(
                "  \"{}\" [label=\"{}\"{style}];",
                d.hex(),
                label(d)?.replace('"', "'")
            );
        }
        for d in &nodes {
            if let Some(p) = all
                .get(d)
                .and_then(|r| r.parent)
                .filter(|p| nodes.contains(p))
            {
                println!("  \"{}\" -> \"{}\";", p.hex(), d.hex());
            }
        }
        println!("}}");
        return Ok(());
    }
    for a in ancestors.iter().rev() {
        println!("ancestor    {}", label(a)?);
    }
    println!("image       {}", label(image)?);
    for d in &descendants {
        println!("descendant  {}", label(d)?);
    }
    Ok(())
}
