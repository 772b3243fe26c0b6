//! User-space filesystem readers (no kernel mount). Each reader parses untrusted bytes from a
//! [`BlockSource`](crate::image::BlockSource) region: errors name the problem, nothing panics,
//! memory stays bounded by the filesystem's own geometry.
//!
//! Every reader exposes the same view: numbered nodes (inode numbers, or any stable id), their
//! metadata, directory listings, and each file's content as a list of extents on the disk.

pub mod ext4;
pub mod swap;
pub mod vfat;

use mirage_format::{EntryKind, Params, Timestamp, Xattr};

use crate::image::ImageError;

/// Errors reading a filesystem.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// Reading the underlying image failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The filesystem is damaged; the message names the structure and where.
    #[error("{fs}: {what}")]
    Corrupt {
        /// Filesystem type.
        fs: &'static str,
        /// What is wrong, and where.
        what: String,
    },
    /// A valid feature this reader does not handle.
    #[error("{fs}: unsupported: {what}")]
    Unsupported {
        /// Filesystem type.
        fs: &'static str,
        /// The feature.
        what: String,
    },
}

/// One filesystem object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Stable id within the filesystem (inode number for ext*); equal ids are hard links.
    pub id: u64,
    /// Object type.
    pub kind: EntryKind,
    /// Permission bits incl. setuid/setgid/sticky (`0..=0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Logical size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: Timestamp,
    /// Access time.
    pub atime: Timestamp,
    /// Change time.
    pub ctime: Timestamp,
    /// Creation time, where recorded.
    pub crtime: Option<Timestamp>,
    /// Inode flags as the filesystem stores them (ext: `i_flags`; vfat: attribute byte).
    pub flags: u64,
    /// Extended attributes, sorted by full name.
    pub xattrs: Vec<Xattr>,
    /// Device number (Linux `makedev` encoding) for char and block devices.
    pub rdev: Option<u64>,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
    /// Link count as stored.
    pub nlink: u32,
}

/// Where a piece of a file's content is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileExtent {
    /// Offset in the file.
    pub logical: u64,
    /// Length in bytes.
    pub len: u64,
    /// Byte offset in the image (absolute, not relative to the filesystem), or `None` for an
    /// extent that reads as zeros (unwritten/preallocated).
    pub physical: Option<u64>,
}

impl FileExtent {
    /// The ranges of a file of `size` bytes that `extents` (in file order) leave without
    /// blocks: its holes, as `(offset, len)`, sorted and apart. Unwritten extents are not
    /// holes: they have blocks that read as zeros.
    pub fn holes(extents: &[FileExtent], size: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut covered = 0u64;
        for e in extents.iter().filter(|e| e.len > 0) {
            if e.logical > covered && covered < size {
                out.push((covered, e.logical.min(size) - covered));
            }
            covered = covered.max(e.logical.saturating_add(e.len));
        }
        if size > covered {
            out.push((covered, size - covered));
        }
        out
    }
}

/// Identity and creation parameters of a filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsInfo {
    /// `ext2`, `ext3`, `ext4`, `vfat`.
    pub fs_type: String,
    /// UUID or volume id bytes.
    pub uuid: Vec<u8>,
    /// Label bytes.
    pub label: Vec<u8>,
    /// Everything else needed to recreate it the same.
    pub params: Params,
}

/// A readable filesystem.
pub trait FsReader: Send + Sync {
    /// Identity and parameters.
    fn info(&self) -> &FsInfo;
    /// Id of the root directory.
    fn root(&self) -> u64;
    /// Bytes the filesystem spans from its start (its own size, which its partition may
    /// exceed).
    fn span(&self) -> u64;
    /// Metadata of one node.
    fn node(&self, id: u64) -> Result<Node, FsError>;
    /// Entries of a directory (without `.` and `..`), as (name bytes, node id).
    fn read_dir(&self, id: u64) -> Result<Vec<(Vec<u8>, u64)>, FsError>;
    /// Content extents of a regular file, sorted by logical offset; gaps are holes.
    fn extents(&self, id: u64) -> Result<Vec<FileExtent>, FsError>;
    /// Content bytes stored inside the metadata (ext4 inline data), if any; past them, up to
    /// the file's size, the file reads as zeros.
    fn inline_data(&self, _id: u64) -> Result<Option<Vec<u8>>, FsError> {
        Ok(None)
    }
    /// The skeleton: absolute byte ranges of everything the filesystem has in use besides
    /// regular-file content (`file_data`, absolute byte ranges), for readers that can lay
    /// files back where they were. `None` when the reader has no skeleton.
    fn skeleton(&self, _file_data: &[(u64, u64)]) -> Result<Option<Vec<(u64, u64)>>, FsError> {
        Ok(None)
    }
}
