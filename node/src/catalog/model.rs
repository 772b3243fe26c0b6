//! What the catalog holds. Every record is stored as versioned JSON (`"v": 1`); fields only
//! ever get added, with defaults, so older records stay readable.

use std::collections::{BTreeMap, BTreeSet};

use mirage_format::Digest;
use serde::{Deserialize, Serialize};

/// Seconds and nanoseconds since the Unix epoch, as the log entry that made a change says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Time {
    /// Seconds.
    pub secs: i64,
    /// Nanoseconds.
    pub nanos: u32,
}

/// A user of the library.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Record version.
    pub v: u8,
    /// Name.
    pub name: String,
    /// Administrators may do anything, lock images and add users.
    pub admin: bool,
    /// When it was added.
    pub created: Time,
    /// Hex SHA-256 of the user's bearer token, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
}

/// An image's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageState {
    /// Referenced by at least one version that is not deleted.
    Active,
    /// Every version naming it is deleted: its items may be collected once nothing else
    /// references them. Its record and provenance stay.
    Deleted,
}

/// One image (by serial number) the catalog knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Record version.
    pub v: u8,
    /// Serial number.
    pub digest: Digest,
    /// Active or deleted.
    pub state: ImageState,
    /// First registration.
    pub created: Time,
    /// The image it was derived from (provenance).
    pub parent: Option<Digest>,
    /// Who registered it first.
    pub creator: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Key/value labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// One immutable version of a named image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// 1, 2, … in order of creation.
    pub number: u32,
    /// The image.
    pub image: Digest,
    /// When it was added.
    pub created: Time,
    /// Who added it.
    pub creator: String,
    /// Marked deleted (metadata stays).
    pub deleted: bool,
}

/// A maintenance lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Administrator who locked it.
    pub by: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at: Time,
}

/// A named image: a version chain with a default, an owner and an ACL.
///
/// Stored (record version 2) without its versions: each version is a record of its own
/// (`v/` keys), so adding one costs the same however long the chain is, and `count` says how
/// many there are. Record version 1 held them inline; it stays readable and is rewritten as
/// version 2 by its next change. As the catalog answers it (`named`, `list`), `versions` is
/// the whole chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Named {
    /// Record version (2; 1 before versions had keys of their own).
    pub v: u8,
    /// Name.
    pub name: String,
    /// Owner (changes the ACL, deletes versions).
    pub owner: String,
    /// May read (check out, derive, diff, search).
    pub readers: BTreeSet<String>,
    /// May read and add versions or move the default.
    pub writers: BTreeSet<String>,
    /// Every version ever added, in order (empty in a stored record of version 2).
    #[serde(default)]
    pub versions: Vec<Version>,
    /// Versions ever added (record version 2; 0 in version 1, whose `versions` say it).
    #[serde(default)]
    pub count: u32,
    /// The default version's number (0 when every version is deleted).
    pub default: u32,
    /// Maintenance lock.
    pub lock: Option<LockInfo>,
}

impl Named {
    /// Versions ever added.
    pub fn version_count(&self) -> u32 {
        self.count.max(self.versions.len() as u32)
    }

    /// A version by number, from `versions` (a record as the catalog answers it).
    pub fn version(&self, n: u32) -> Option<&Version> {
        n.checked_sub(1).and_then(|i| self.versions.get(i as usize))
    }

    /// The default version, if any is left.
    pub fn default_version(&self) -> Option<&Version> {
        self.version(self.default)
    }
}

/// A precomputed delta between two images.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaRecord {
    /// Record version.
    pub v: u8,
    /// Image the delta applies to.
    pub source: Digest,
    /// Image it produces.
    pub target: Digest,
    /// The Delta item.
    pub delta: Digest,
    /// When it was recorded.
    pub created: Time,
    /// Who recorded it.
    pub creator: String,
}

/// An upload lease: roots garbage collection must keep until `expires`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Record version.
    pub v: u8,
    /// Id.
    pub id: String,
    /// Who holds it.
    pub holder: String,
    /// Roots kept.
    pub roots: Vec<Digest>,
    /// Taken or last renewed.
    pub renewed: Time,
    /// End.
    pub expires: Time,
}
