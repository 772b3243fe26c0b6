//! Browsing stored images without checking them out: `show`, `ls`, `cat`.

use std::io::Write;

use anyhow::{bail, Context, Result};
use mirage_format::{Digest, EntryKind, Item, PartitionContent, TableType, Tree, TreeEntry};
use mirage_node::Store;

use crate::image::table::guid_text;

/// Reads and decodes an item.
pub fn item(store: &Store, d: &Digest) -> Result<Item> {
    let bytes = store
        .get(d)?
        .with_context(|| format!("{} is not in the store", d.to_text()))?;
    Ok(Item::decode(&bytes)?)
}

fn hexs(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn utf16(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

/// A 16-byte UUID as text (`8-4-4-4-12` hex); a 4-byte FAT volume ID (kept in its on-disk,
/// little-endian order) as `blkid` and `mkfs.fat -i` write it (`DEAD-BEEF`); other lengths as
/// plain hex.
pub(crate) fn uuid_text(b: &[u8]) -> String {
    if let Ok(id) = <[u8; 4]>::try_from(b) {
        let v = u32::from_le_bytes(id);
        return format!("{:04X}-{:04X}", v >> 16, v & 0xffff);
    }
    if b.len() == 16 {
        let h = hexs(b);
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    } else {
        hexs(b)
    }
}

/// A disk's identifier as partitioning tools print it: a GPT disk GUID, an MBR disk
/// signature (little-endian on disk) as `sfdisk` writes its `label-id` (`0xdeadbeef`).
fn disk_id_text(table: TableType, id: &[u8]) -> String {
    match (table, <[u8; 4]>::try_from(id)) {
        (TableType::Gpt, _) => guid_text(id),
        (_, Ok(sig)) => format!("0x{:08x}", u32::from_le_bytes(sig)),
        _ => hexs(id),
    }
}

/// A JSON description of an image: disks, partitions, filesystems.
pub fn show(store: &Store, d: &Digest) -> Result<serde_json::Value> {
    let Item::Image(img) = item(store, d)? else {
        bail!("{} is not an image", d.to_text())
    };
    let mut disks = Vec::new();
    for disk_ref in &img.disks {
        let Item::Disk(disk) = item(store, &disk_ref.disk)? else {
            bail!("{} is not a disk", disk_ref.disk.to_text())
        };
        let mut parts = Vec::new();
        for p in &disk.partitions {
            let content = match &p.content {
                PartitionContent::Filesystem { digest } => {
                    let Item::Filesystem(fs) = item(store, digest)? else {
                        bail!("{} is not a filesystem", digest.to_text())
                    };
                    serde_json::json!({
                        "filesystem": fs.fs_type, "uuid": uuid_text(&fs.uuid), "label": String::from_utf8_lossy(&fs.label),
                        "block_size": fs.params.get("block_size"), "digest": digest, "root": fs.root,
                    })
                }
                PartitionContent::Swap { uuid, label, .. } => {
                    serde_json::json!({"swap": true, "uuid": uuid_text(uuid), "label": String::from_utf8_lossy(label)})
                }
                PartitionContent::Raw { digest } => serde_json::json!({"raw": digest}),
                PartitionContent::Empty => serde_json::json!({"empty": true}),
            };
            let (type_text, guid) = match disk.table {
                TableType::Gpt => (guid_text(&p.type_id), guid_text(&p.guid)),
                _ => (hexs(&p.type_id), String::new()),
            };
            parts.push(serde_json::json!({
                "number": p.number, "start": p.start, "size": p.size, "type": type_text, "guid": guid,
                "name": utf16(&p.name), "attributes": p.attributes, "content": content,
            }));
        }
        let raw: u64 = disk.regions.iter().map(|r| r.len).sum();
        disks.push(serde_json::json!({
            "name": String::from_utf8_lossy(&disk_ref.name), "digest": disk_ref.disk, "size": disk.size,
            "sector_size": disk.sector_size, "table": disk.table,
            "disk_id": disk_id_text(disk.table, &disk.disk_id),
            "partitions": parts, "raw_regions": disk.regions.len(), "raw_region_bytes": raw,
        }));
    }
    Ok(serde_json::json!({"image": d, "disks": disks}))
}

/// Text form of [`show`].
pub fn show_text(v: &serde_json::Value) -> String {
    let mut s = format!("image {}\n", v["image"].as_str().unwrap_or_default());
    for d in v["disks"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "  disk {}: {} bytes, {} table{}, id {}, {} raw regions ({} bytes)\n",
            d["name"].as_str().unwrap_or_default(),
            d["size"],
            d["table"].as_str().unwrap_or_default(),
            // Only when not the usual 512.
            match d["sector_size"].as_u64() {
                Some(n) if n != 512 => format!(" in {n}-byte sectors"),
                _ => String::new(),
            },
            d["disk_id"].as_str().unwrap_or_default(),
            d["raw_regions"],
            d["raw_region_bytes"]
        ));
        for p in d["partitions"].as_array().into_iter().flatten() {
            let c = &p["content"];
            let what = if let Some(fs) = c["filesystem"].as_str() {
                format!(
                    "{fs} uuid {} label {:?}",
                    c["uuid"].as_str().unwrap_or_default(),
                    c["label"].as_str().unwrap_or_default()
                )
            } else if c["swap"].as_bool() == Some(true) {
                format!("swap uuid {}", c["uuid"].as_str().unwrap_or_default())
            } else if c["raw"].is_string() {
                "raw".to_string()
            } else {
                "empty".to_string()
            };
            s.push_str(&format!(
                "    {:>2}  start {:>12}  size {:>12}  type {}  {}{}\n",
                p["number"],
                p["start"],
                p["size"],
                p["type"].as_str().unwrap_or_default(),
                what,
                p["name"]
                    .as_str()
                    .filter(|n| !n.is_empty())
                    .map(|n| format!("  name {n:?}"))
                    .unwrap_or_default()
            ));
        }
    }
    s
}

/// The root tree of the filesystem `part` names (default: the largest), whether it is FAT
/// (whose directories look names up without regard to case), and its root's inode flags.
fn fs_root(store: &Store, d: &Digest, part: Option<u32>) -> Result<(Digest, bool, u64)> {
    let r = d.to_text();
    let Item::Image(img) = item(store, d)? else {
        bail!("{r} is not an image")
    };
    let mut best: Option<(u64, Digest)> = None;
    for disk_ref in &img.disks {
        let Item::Disk(disk) = item(store, &disk_ref.disk)? else {
            bail!("damaged image: disk is not a disk")
        };
        for p in &disk.partitions {
            if let PartitionContent::Filesystem { digest } = &p.content {
                if part == Some(p.number) {
                    best = Some((u64::MAX, *digest));
                } else if part.is_none() && best.is_none_or(|(s, _)| p.size > s) {
                    best = Some((p.size, *digest));
                }
            }
        }
    }
    let (_, fs_digest) = best.with_context(|| match part {
        Some(n) => format!("partition {n} of {r} holds no filesystem"),
        None => format!("{r} holds no filesystem"),
    })?;
    let Item::Filesystem(fs) = item(store, &fs_digest)? else {
        bail!("damaged image: not a filesystem")
    };
    Ok((fs.root, fs.fs_type == "vfat", fs.root_attrs.flags))
}

/// The entry of `t` named `name`; in a directory that ignores case (an ext4 casefold
/// directory, any FAT directory) also one whose name is the same in lower case (Unicode's
/// simple lower-casing, close to but not exactly the kernel's casefolding).
fn lookup<'t>(t: &'t Tree, name: &[u8], ignore_case: bool) -> Option<&'t TreeEntry> {
    if let Some(e) = t.get(name) {
        return Some(e);
    }
    if !ignore_case {
        return None;
    }
    let want = std::str::from_utf8(name).ok()?.to_lowercase();
    t.entries
        .iter()
        .find(|e| std::str::from_utf8(&e.name).is_ok_and(|n| n.to_lowercase() == want))
}

fn tree(store: &Store, d: &Digest) -> Result<Tree> {
    match item(store, d)? {
        Item::Tree(t) => Ok(t),
        other => bail!("{} is a {}, not a directory", d.to_text(), other.kind()),
    }
}

/// Resolves `path`: the entry it names (None for the root) and the tree holding the root.
fn resolve(
    store: &Store,
    image: &Digest,
    part: Option<u32>,
    path: &[u8],
) -> Result<(Digest, Option<TreeEntry>)> {
    let (mut cur, fat, mut flags) = fs_root(store, image, part)?;
    let mut entry: Option<TreeEntry> = None;
    let shown = shell_name(path);
    for comp in path.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
        if let Some(e) = &entry {
            if e.kind != EntryKind::Dir {
                bail!("{shown}: {} is not a directory", shell_name(&e.name));
            }
        }
        let t = tree(store, &cur)?;
        let e = lookup(
            &t,
            comp,
            fat || flags & crate::fsbuild::ext4::CASEFOLD_FL != 0,
        )
        .cloned()
        .with_context(|| format!("{shown}: no such file or directory"))?;
        if let Some(c) = e.content {
            cur = c;
        }
        flags = e.flags;
        entry = Some(e);
    }
    Ok((cur, entry))
}

/// A name (or path) as text: as it is when it is printable UTF-8, else quoted the way a shell
/// takes it back (`$'\xff\xfeold'`, as GNU `ls` quotes for a terminal), so that it can be
/// passed to `mirage cat` or `ls` again.
pub fn shell_name(name: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(name) {
        Ok(s) if !s.chars().any(char::is_control) => std::borrow::Cow::Borrowed(s),
        _ => {
            let mut out = String::from("$'");
            for chunk in name.utf8_chunks() {
                for c in chunk.valid().chars() {
                    match c {
                        '\\' | '\'' => {
                            out.push('\\');
                            out.push(c);
                        }
                        c if c.is_control() => {
                            let mut b = [0u8; 4];
                            for byte in c.encode_utf8(&mut b).bytes() {
                                out.push_str(&format!("\\x{byte:02x}"));
                            }
                        }
                        c => out.push(c),
                    }
                }
                for byte in chunk.invalid() {
                    out.push_str(&format!("\\x{byte:02x}"));
                }
            }
            out.push('\'');
            std::borrow::Cow::Owned(out)
        }
    }
}

/// Entries of a directory, or the single entry a file path names. `path` is bytes: names
/// need not be UTF-8.
pub fn ls(
    store: &Store,
    image: &Digest,
    part: Option<u32>,
    path: impl AsRef<[u8]>,
) -> Result<Vec<TreeEntry>> {
    let (d, entry) = resolve(store, image, part, path.as_ref())?;
    match entry {
        Some(e) if e.kind != EntryKind::Dir => Ok(vec![e]),
        _ => Ok(tree(store, &d)?.entries),
    }
}

/// One `ls` line.
pub fn ls_line(e: &TreeEntry, long: bool) -> String {
    let name = shell_name(&e.name);
    if !long {
        return name.into_owned();
    }
    let t = match e.kind {
        EntryKind::File => '-',
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
        EntryKind::CharDev => 'c',
        EntryKind::BlockDev => 'b',
        EntryKind::Fifo => 'p',
        EntryKind::Socket => 's',
    };
    let target = e
        .target
        .as_ref()
        .map(|t| format!(" -> {}", shell_name(t)))
        .unwrap_or_default();
    format!(
        "{t}{:04o} {:>6} {:>6} {:>12} {}.{:09} {}{}",
        e.mode, e.uid, e.gid, e.size, e.mtime.secs, e.mtime.nanos, name, target
    )
}

/// Writes a file's content.
pub fn cat(
    store: &Store,
    image: &Digest,
    part: Option<u32>,
    path: impl AsRef<[u8]>,
    out: &mut impl Write,
) -> Result<()> {
    let path = path.as_ref();
    let (_, entry) = resolve(store, image, part, path)?;
    let shown = shell_name(path);
    let e = entry.with_context(|| format!("{shown} is a directory"))?;
    if e.kind != EntryKind::File {
        bail!("{shown} is not a regular file");
    }
    let Some(d) = e.content else {
        std::io::copy(&mut zeros(e.size), out)?;
        return Ok(());
    };
    match item(store, &d)? {
        Item::Blob { data } => out.write_all(&data)?,
        Item::ChunkList(list) => {
            let mut pos = 0u64;
            for c in &list.chunks {
                std::io::copy(&mut zeros(c.offset - pos), out)?;
                let bytes = store
                    .get(&c.digest)?
                    .with_context(|| format!("chunk {} missing", c.digest.to_text()))?;
                out.write_all(bytes.get(2..).unwrap_or_default())?;
                pos = c.offset + c.len;
            }
            std::io::copy(&mut zeros(list.size - pos), out)?;
        }
        other => bail!("{shown}: content is a {}", other.kind()),
    }
    Ok(())
}

fn zeros(n: u64) -> std::io::Take<std::io::Repeat> {
    std::io::Read::take(std::io::repeat(0), n)
}

#[cfg(test)]
mod tests {
    use super::shell_name;

    #[test]
    fn names_that_are_not_printable_utf8_are_quoted_for_a_shell() {
        assert_eq!(shell_name(b"plain name.txt"), "plain name.txt");
        assert_eq!(shell_name("Größe ✓".as_bytes()), "Größe ✓");
        assert_eq!(shell_name(b"a\xffb"), r"$'a\xffb'");
        assert_eq!(shell_name(b"tab\there"), r"$'tab\x09here'");
        assert_eq!(shell_name(b"\xc3'q\\"), r"$'\xc3\'q\\'");
        // Only bytes that are not valid UTF-8 are escaped; valid characters beside them stay.
        assert_eq!(shell_name("é\u{7f}".as_bytes()), r"$'é\x7f'");
    }
}
