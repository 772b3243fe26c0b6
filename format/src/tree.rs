//! `Tree`: one directory of a filesystem, entries sorted by raw name bytes.

use crate::codec::{invalid, DecodeError, Reader, Writer};
use crate::digest::Digest;
use crate::params::{bytes_view, opt_bytes_view};

/// Longest entry name in bytes (ext4 allows 255; vfat long names up to 255 UTF-16 units).
pub const MAX_NAME: usize = 1024;
/// Longest symlink target.
pub const MAX_TARGET: usize = 4096;
/// Longest xattr name.
pub const MAX_XATTR_NAME: usize = 255;
/// Largest xattr value.
pub const MAX_XATTR_VALUE: usize = 1 << 20;

/// Type of a filesystem object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

impl EntryKind {
    fn code(self) -> u8 {
        match self {
            EntryKind::File => 1,
            EntryKind::Dir => 2,
            EntryKind::Symlink => 3,
            EntryKind::CharDev => 4,
            EntryKind::BlockDev => 5,
            EntryKind::Fifo => 6,
            EntryKind::Socket => 7,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => EntryKind::File,
            2 => EntryKind::Dir,
            3 => EntryKind::Symlink,
            4 => EntryKind::CharDev,
            5 => EntryKind::BlockDev,
            6 => EntryKind::Fifo,
            7 => EntryKind::Socket,
            _ => return None,
        })
    }
}

/// A point in time with nanosecond precision; seconds may be negative (before 1970) and
/// far beyond 2038.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    pub secs: i64,
    /// Nanoseconds, `0..1_000_000_000`.
    pub nanos: u32,
}

impl Timestamp {
    /// A timestamp.
    pub const fn new(secs: i64, nanos: u32) -> Self {
        Timestamp { secs, nanos }
    }
    fn write(&self, w: &mut Writer) {
        w.ivar(self.secs);
        w.uvar(u64::from(self.nanos));
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let secs = r.ivar("timestamp secs")?;
        let nanos = r.u32var("timestamp nanos")?;
        if nanos >= 1_000_000_000 {
            return Err(invalid("timestamp", format!("{nanos} nanoseconds")));
        }
        Ok(Timestamp { secs, nanos })
    }
}

/// One extended attribute (ACLs and `security.capability` included).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Xattr {
    /// Full name with namespace, e.g. `security.capability`.
    #[serde(with = "bytes_view")]
    pub name: Vec<u8>,
    /// Value bytes.
    #[serde(with = "bytes_view")]
    pub value: Vec<u8>,
}

/// One directory entry with all metadata of the object it names.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TreeEntry {
    /// Name bytes: not empty, not `.` or `..`, no `/` or NUL.
    #[serde(with = "bytes_view")]
    pub name: Vec<u8>,
    /// Object type.
    pub kind: EntryKind,
    /// Permission bits including setuid, setgid and sticky (`0..=0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (logical size for files, including holes).
    pub size: u64,
    /// Modification time.
    pub mtime: Timestamp,
    /// Access time.
    pub atime: Timestamp,
    /// Change time.
    pub ctime: Timestamp,
    /// Creation time, where the filesystem records one.
    pub crtime: Option<Timestamp>,
    /// Inode flags (immutable, append-only, nodump, ...), as the filesystem stores them.
    pub flags: u64,
    /// Extended attributes sorted by name.
    pub xattrs: Vec<Xattr>,
    /// Content: a Blob or ChunkList for files (none: empty or all holes), a Tree for dirs.
    pub content: Option<Digest>,
    /// Symlink target bytes.
    #[serde(with = "opt_bytes_view")]
    pub target: Option<Vec<u8>>,
    /// Device number for character and block devices.
    pub rdev: Option<u64>,
    /// Hard-link group within the filesystem; entries sharing a group are one inode.
    pub link_group: Option<u64>,
    /// Ranges of a file the source filesystem had no blocks for (sparse holes), as
    /// `(offset, len)` in bytes: sorted, apart and within the size. Everything else of the
    /// file had blocks, including runs of zeros (preallocated or written), which a rebuild
    /// allocates again: a swap file must have no holes. Empty for everything but files.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub holes: Vec<(u64, u64)>,
}

impl TreeEntry {
    /// An entry with zeroed metadata.
    pub fn new(name: impl Into<Vec<u8>>, kind: EntryKind) -> Self {
        TreeEntry {
            name: name.into(),
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: Timestamp::default(),
            atime: Timestamp::default(),
            ctime: Timestamp::default(),
            crtime: None,
            flags: 0,
            xattrs: Vec::new(),
            content: None,
            target: None,
            rdev: None,
            link_group: None,
            holes: Vec::new(),
        }
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.bytes(&self.name);
        self.write_unnamed(w);
    }

    /// Every field but the name (a filesystem root has none).
    pub(crate) fn write_unnamed(&self, w: &mut Writer) {
        w.u8(self.kind.code());
        let mut present = 0u8;
        for (bit, on) in [
            (1, self.content.is_some()),
            (2, self.crtime.is_some()),
            (4, self.target.is_some()),
            (8, self.rdev.is_some()),
            (16, self.link_group.is_some()),
            (32, !self.holes.is_empty()),
        ] {
            if on {
                present |= bit;
            }
        }
        w.u8(present);
        w.uvar(u64::from(self.mode));
        w.uvar(u64::from(self.uid));
        w.uvar(u64::from(self.gid));
        w.uvar(self.size);
        self.mtime.write(w);
        self.atime.write(w);
        self.ctime.write(w);
        if let Some(t) = &self.crtime {
            t.write(w);
        }
        w.uvar(self.flags);
        w.uvar(self.xattrs.len() as u64);
        for x in &self.xattrs {
            w.bytes(&x.name);
            w.bytes(&x.value);
        }
        if let Some(d) = &self.content {
            w.digest(d);
        }
        if let Some(t) = &self.target {
            w.bytes(t);
        }
        if let Some(r) = self.rdev {
            w.uvar(r);
        }
        if let Some(g) = self.link_group {
            w.uvar(g);
        }
        if !self.holes.is_empty() {
            w.uvar(self.holes.len() as u64);
            let mut end = 0;
            for &(offset, len) in &self.holes {
                w.uvar(offset - end);
                w.uvar(len);
                end = offset + len;
            }
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let name = r.bytes("entry name", MAX_NAME)?.to_vec();
        let e = Self::read_unnamed(r, name)?;
        e.validate()?;
        Ok(e)
    }

    /// Reads the fields after the name (not validated).
    pub(crate) fn read_unnamed(r: &mut Reader<'_>, name: Vec<u8>) -> Result<Self, DecodeError> {
        let code = r.u8("entry kind")?;
        let kind = EntryKind::from_code(code).ok_or(DecodeError::UnknownTag {
            field: "entry kind",
            tag: u64::from(code),
        })?;
        let present = r.u8("entry presence")?;
        if present & !63 != 0 {
            return Err(DecodeError::UnknownTag {
                field: "entry presence",
                tag: u64::from(present),
            });
        }
        let mode = r.u32var("mode")?;
        let uid = r.u32var("uid")?;
        let gid = r.u32var("gid")?;
        let size = r.uvar("size")?;
        let mtime = Timestamp::read(r)?;
        let atime = Timestamp::read(r)?;
        let ctime = Timestamp::read(r)?;
        let crtime = if present & 2 != 0 {
            Some(Timestamp::read(r)?)
        } else {
            None
        };
        let flags = r.uvar("flags")?;
        let nx = r.count("xattrs", 2)?;
        let mut xattrs = Vec::with_capacity(nx);
        for _ in 0..nx {
            let name = r.bytes("xattr name", MAX_XATTR_NAME)?.to_vec();
            let value = r.bytes("xattr value", MAX_XATTR_VALUE)?.to_vec();
            xattrs.push(Xattr { name, value });
        }
        let content = if present & 1 != 0 {
            Some(r.digest("content")?)
        } else {
            None
        };
        let target = if present & 4 != 0 {
            Some(r.bytes("symlink target", MAX_TARGET)?.to_vec())
        } else {
            None
        };
        let rdev = if present & 8 != 0 {
            Some(r.uvar("rdev")?)
        } else {
            None
        };
        let link_group = if present & 16 != 0 {
            Some(r.uvar("link group")?)
        } else {
            None
        };
        let mut holes = Vec::new();
        if present & 32 != 0 {
            let n = r.count("holes", 2)?;
            holes.reserve(n);
            let mut end = 0u64;
            for _ in 0..n {
                let gap = r.uvar("hole gap")?;
                let len = r.uvar("hole length")?;
                let offset = end
                    .checked_add(gap)
                    .ok_or_else(|| invalid("holes", "offset overflows"))?;
                end = offset
                    .checked_add(len)
                    .ok_or_else(|| invalid("holes", "end overflows"))?;
                holes.push((offset, len));
            }
        }
        let e = TreeEntry {
            name,
            kind,
            mode,
            uid,
            gid,
            size,
            mtime,
            atime,
            ctime,
            crtime,
            flags,
            xattrs,
            content,
            target,
            rdev,
            link_group,
            holes,
        };
        Ok(e)
    }

    /// Checks the rules of the format for one entry.
    pub fn validate(&self) -> Result<(), DecodeError> {
        validate_name(&self.name)?;
        self.check(false)
    }

    /// Checks the metadata of a filesystem's root directory: unnamed, a directory, no content
    /// (the Filesystem item names the root Tree).
    pub fn validate_root(&self) -> Result<(), DecodeError> {
        if !self.name.is_empty() || self.kind != EntryKind::Dir || self.content.is_some() {
            return Err(invalid(
                "filesystem root",
                "must be an unnamed directory entry without content",
            ));
        }
        self.check(true)
    }

    fn check(&self, root: bool) -> Result<(), DecodeError> {
        if self.mode > 0o7777 {
            return Err(invalid(
                "mode",
                format!("{:o} has bits beyond 07777", self.mode),
            ));
        }
        for t in [
            Some(self.mtime),
            Some(self.atime),
            Some(self.ctime),
            self.crtime,
        ]
        .into_iter()
        .flatten()
        {
            if t.nanos >= 1_000_000_000 {
                return Err(invalid("timestamp", format!("{} nanoseconds", t.nanos)));
            }
        }
        for pair in self.xattrs.windows(2) {
            if pair[0].name >= pair[1].name {
                return Err(invalid("xattrs", "unsorted or duplicate names"));
            }
        }
        for x in &self.xattrs {
            if x.name.is_empty() || x.name.contains(&0) {
                return Err(invalid("xattr name", "empty or holds NUL"));
            }
        }
        let k = self.kind;
        let need = |ok: bool, why: &str| -> Result<(), DecodeError> {
            if ok {
                Ok(())
            } else {
                Err(invalid(
                    "entry",
                    format!("{:?} {why}", String::from_utf8_lossy(&self.name)),
                ))
            }
        };
        need(
            root || (k == EntryKind::Dir) == self.content.is_some() || k == EntryKind::File,
            "content only for files and (always) for directories",
        )?;
        need(
            (k == EntryKind::Symlink) == self.target.is_some(),
            "symlink target iff symlink",
        )?;
        if let Some(t) = &self.target {
            need(
                !t.is_empty() && !t.contains(&0),
                "symlink target empty or holds NUL",
            )?;
        }
        need(
            matches!(k, EntryKind::CharDev | EntryKind::BlockDev) == self.rdev.is_some(),
            "device number iff device",
        )?;
        need(
            k != EntryKind::Dir || self.link_group.is_none(),
            "directories cannot be hard links",
        )?;
        need(
            k == EntryKind::File || self.holes.is_empty(),
            "holes only for files",
        )?;
        let mut end = 0u64;
        for (i, &(offset, len)) in self.holes.iter().enumerate() {
            let stop = offset.checked_add(len);
            need(
                len > 0
                    && (i == 0 || offset > end)
                    && offset >= end
                    && stop.is_some_and(|s| s <= self.size),
                "holes must be non-empty, sorted, apart and within the size",
            )?;
            end = stop.unwrap_or(u64::MAX);
        }
        Ok(())
    }
}

/// Checks one path component.
pub fn validate_name(name: &[u8]) -> Result<(), DecodeError> {
    if name.is_empty() {
        return Err(invalid("name", "empty"));
    }
    if name == b"." || name == b".." {
        return Err(invalid(
            "name",
            format!("{:?} is reserved", String::from_utf8_lossy(name)),
        ));
    }
    if name.len() > MAX_NAME {
        return Err(invalid("name", format!("{} bytes", name.len())));
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(invalid(
            "name",
            format!("{:?} holds '/' or NUL", String::from_utf8_lossy(name)),
        ));
    }
    Ok(())
}

/// One directory.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub struct Tree {
    /// Entries sorted by raw name bytes, names unique.
    pub entries: Vec<TreeEntry>,
}

impl Tree {
    /// A tree from entries in any order; fails on invalid or duplicate entries.
    pub fn new(mut entries: Vec<TreeEntry>) -> Result<Self, DecodeError> {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let t = Tree { entries };
        t.validate()?;
        Ok(t)
    }

    /// Checks every entry and the order.
    pub fn validate(&self) -> Result<(), DecodeError> {
        for e in &self.entries {
            e.validate()?;
        }
        for pair in self.entries.windows(2) {
            if pair[0].name >= pair[1].name {
                return Err(invalid(
                    "tree",
                    format!(
                        "entries unsorted or duplicate at {:?}",
                        String::from_utf8_lossy(&pair[1].name)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Looks an entry up by name.
    pub fn get(&self, name: &[u8]) -> Option<&TreeEntry> {
        self.entries
            .binary_search_by(|e| e.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.uvar(self.entries.len() as u64);
        for e in &self.entries {
            e.write(w);
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.count("tree entries", 15)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(TreeEntry::read(r)?);
        }
        let t = Tree { entries };
        t.validate()?;
        Ok(t)
    }
}
