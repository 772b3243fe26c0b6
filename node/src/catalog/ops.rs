//! Catalog commands, log entries, answers and errors. A command goes into the log as a
//! [`LogEntry`] (versioned JSON): its caller and time are part of the entry, so applying the
//! same log always gives the same state.

use mirage_cluster_config::{Layout, LayoutChange};
use mirage_format::Digest;
use serde::{Deserialize, Serialize};

use super::model::Time;

/// A state change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Adds a user (admins only; the very first user may add itself, as an admin).
    AddUser {
        /// Name.
        name: String,
        /// Make it an administrator.
        admin: bool,
        /// Hex SHA-256 of the user's bearer token (cluster mode; the token itself is shown
        /// once to whoever added the user and never stored).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_sha256: Option<String>,
    },
    /// Replaces a user's bearer token (the user itself or an admin).
    SetToken {
        /// User name.
        name: String,
        /// Hex SHA-256 of the new token.
        token_sha256: String,
    },
    /// Creates the named image with `image` as version 1 (caller becomes the owner), or adds
    /// `image` as its next version, which becomes the default (needs write access).
    Checkin {
        /// Name.
        name: String,
        /// Image digest (its items must already be stored).
        image: Digest,
        /// Provenance; `None` means the current default version of `name`, if any.
        parent: Option<Digest>,
        /// Free text kept with the image.
        #[serde(default)]
        description: String,
    },
    /// Creates `name` whose version 1 is `source`'s image, with it as parent (needs read on
    /// `source`).
    Derive {
        /// Source name.
        source: String,
        /// Source version (default: its default version).
        version: Option<u32>,
        /// New name.
        name: String,
    },
    /// Moves the default version (rollback or forward); needs write access.
    SetDefault {
        /// Name.
        name: String,
        /// Version number.
        version: u32,
    },
    /// Marks a version deleted (owner or admin). Metadata and provenance stay.
    Delete {
        /// Name.
        name: String,
        /// Version number.
        version: u32,
    },
    /// Maintenance lock (admins): refuses new versions, default changes and deletes.
    Lock {
        /// Name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Lifts a maintenance lock (admins).
    Unlock {
        /// Name.
        name: String,
    },
    /// Records a precomputed delta between two images (the caller must see both).
    AddDelta {
        /// Image the delta applies to.
        source: Digest,
        /// Image it produces.
        target: Digest,
        /// The Delta item.
        delta: Digest,
    },
    /// Takes or renews an upload lease: garbage collection keeps `roots` and everything they
    /// reference until `expires`, so items of an upload in flight are never collected.
    Lease {
        /// Lease id (unique per holder).
        id: String,
        /// Roots of the items being uploaded.
        roots: Vec<Digest>,
        /// End of the lease.
        expires: Time,
    },
    /// Releases one of the caller's leases.
    ReleaseLease {
        /// Lease id.
        id: String,
    },
    /// Brings a named image's version chain from another library (push, pull, mirror; the
    /// items of every live version must be stored first). A new name gets exactly these
    /// versions. A name holding a prefix of the same chain gets the versions it lacks, the
    /// source's delete marks and its default. A name with another history is refused
    /// (`conflict`) unless `force`: then the source's versions it lacks (by image) are added
    /// after its own and the newest becomes the default.
    Import {
        /// Name here.
        name: String,
        /// The source's chain, from version 1.
        versions: Vec<ImportedVersion>,
        /// The source's default version (0: none).
        default: u32,
        /// Set this ACL (owner or admin; new names: anyone creating it).
        #[serde(default)]
        acl: Option<ImportedAcl>,
        /// Add to a name with another history instead of refusing.
        #[serde(default)]
        force: bool,
    },
    /// Records the cluster's first data layout (admins; once).
    InitLayout {
        /// Version 1 of the layout.
        layout: Layout,
    },
    /// Makes the next layout version (admins): a node added, drained or removed.
    ChangeLayout {
        /// Refuse unless the current layout version is this one.
        #[serde(default)]
        expect: Option<u64>,
        /// The change.
        change: LayoutChange,
    },
    /// Changes the ACL (owner or admin).
    Acl {
        /// Name.
        name: String,
        /// Users given read access.
        #[serde(default)]
        grant_read: Vec<String>,
        /// Users given write (and read) access.
        #[serde(default)]
        grant_write: Vec<String>,
        /// Users whose access is removed.
        #[serde(default)]
        revoke: Vec<String>,
    },
}

/// One version of a named image as another library holds it (`Command::Import`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedVersion {
    /// The image.
    pub image: Digest,
    /// When it was added there.
    pub created: Time,
    /// Who added it there.
    pub creator: String,
    /// Marked deleted there (its items need not be stored).
    pub deleted: bool,
    /// The image's provenance there.
    #[serde(default)]
    pub parent: Option<Digest>,
    /// The image's description there.
    #[serde(default)]
    pub description: String,
    /// The image's labels there.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Who may do what with an imported name (a mirror carries ACLs across, users mapped).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedAcl {
    /// Owner.
    pub owner: String,
    /// Readers.
    pub readers: std::collections::BTreeSet<String>,
    /// Writers.
    pub writers: std::collections::BTreeSet<String>,
}

/// One entry of the catalog log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Entry format version (1).
    pub v: u8,
    /// Position in the log, from 1.
    pub index: u64,
    /// When it was submitted (the only clock the state machine sees).
    pub time: Time,
    /// Who submitted it.
    pub caller: String,
    /// What it does.
    pub command: Command,
}

/// What an applied command answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The named image concerned.
    pub name: Option<String>,
    /// The version concerned.
    pub version: Option<u32>,
    /// The image concerned.
    pub image: Option<Digest>,
    /// The layout version a layout command made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<u64>,
}

/// Why a command or query was refused. Each variant has a stable code ([`CatalogError::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CatalogError {
    /// No such named image, or one the caller may not read (the two are indistinguishable).
    #[error("no image named {0:?}")]
    NotFound(String),
    /// The name is taken.
    #[error("an image named {0:?} already exists")]
    Exists(String),
    /// The caller may see the image but not do this.
    #[error("permission denied: {0}")]
    Denied(String),
    /// The image is locked for maintenance.
    #[error("{name} is locked for maintenance by {by}: {reason}")]
    Locked {
        /// Name.
        name: String,
        /// Who locked it.
        by: String,
        /// Why.
        reason: String,
    },
    /// No such version.
    #[error("{name} has no version {version}")]
    NoSuchVersion {
        /// Name.
        name: String,
        /// Version asked for.
        version: u32,
    },
    /// The version is deleted.
    #[error("{name}@{version} is deleted")]
    Deleted {
        /// Name.
        name: String,
        /// Version.
        version: u32,
    },
    /// Unknown user.
    #[error("no user named {0:?} (an admin adds users with `mirage user add`)")]
    NoSuchUser(String),
    /// A malformed name, reference or argument.
    #[error("{0}")]
    Invalid(String),
    /// The storage under the catalog failed.
    #[error("catalog storage: {0}")]
    Storage(String),
    /// The name has another history than the one being imported.
    #[error("{0}")]
    Conflict(String),
}

impl CatalogError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            CatalogError::NotFound(_) => "not_found",
            CatalogError::Exists(_) => "exists",
            CatalogError::Denied(_) => "denied",
            CatalogError::Locked { .. } => "locked",
            CatalogError::NoSuchVersion { .. } => "no_such_version",
            CatalogError::Deleted { .. } => "deleted",
            CatalogError::NoSuchUser(_) => "no_such_user",
            CatalogError::Invalid(_) => "invalid",
            CatalogError::Storage(_) => "storage",
            CatalogError::Conflict(_) => "conflict",
        }
    }
}

/// Names of users and images: 1–128 bytes of letters, digits, `.`, `_`, `-`, `/`, not
/// starting with `.`, `/` or `-` (so a name never looks like a digest, a path or an option).
pub fn check_name(what: &str, name: &str) -> Result<(), CatalogError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(['.', '/', '-'])
        && !name.contains("//")
        && !name.contains(':')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CatalogError::Invalid(format!(
            "{what} {name:?}: use 1-128 letters, digits, '.', '_', '-' or '/', not first '.', '/' or '-'"
        )))
    }
}
