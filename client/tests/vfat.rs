#![allow(clippy::unwrap_used)]
//! vfat reader tests on images built with `mkfs.fat` and mtools (no mounts, no root).

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use mirage_client::demo::pseudo_random;
use mirage_client::fs::vfat::{self, Vfat};
use mirage_client::fs::{FsError, FsReader, Node};
use mirage_client::image::{self, BlockSource};
use mirage_format::{EntryKind, Param};

const LONG_200: usize = 200;
/// An even number of seconds: FAT keeps 2-second resolution.
const BASE_MTIME: u64 = 1_300_000_000;

fn run(cmd: &mut Command) {
    let out = cmd
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("TZ", "UTC")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates an image of `kib` KiB with `mkfs.fat ARGS`.
fn mkfs(img: &Path, kib: u64, args: &[&str]) {
    run(Command::new("mkfs.fat")
        .arg("-C")
        .args(args)
        .arg(img)
        .arg(kib.to_string()));
}

/// One file of the source tree.
struct Src {
    data: Vec<u8>,
    mtime: u64,
}

fn write_file(
    root: &Path,
    rel: &str,
    data: Vec<u8>,
    mtime: u64,
    files: &mut BTreeMap<String, Src>,
) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, &data).unwrap();
    File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
        .unwrap();
    files.insert(rel.to_owned(), Src { data, mtime });
}

fn long_name() -> String {
    let mut s = String::new();
    while s.len() < LONG_200 - 4 {
        s.push_str("a long file name ");
    }
    s.truncate(LONG_200 - 4);
    s.push_str(".txt");
    s
}

/// Builds the source tree: returns its files and its directories (relative paths).
fn source_tree(root: &Path, big: usize, many: usize) -> (BTreeMap<String, Src>, HashSet<String>) {
    let mut files = BTreeMap::new();
    let mut t = BASE_MTIME;
    let mut next = || {
        t += 86_400 * 3 + 2;
        t
    };
    write_file(
        root,
        "dir1/dir2/dir3/deep.txt",
        b"deep down".to_vec(),
        next(),
        &mut files,
    );
    write_file(
        root,
        "dir1/Sub Dir/notes.md",
        b"# notes\n".to_vec(),
        next(),
        &mut files,
    );
    write_file(
        root,
        "Grüße résumé.txt",
        "Grüße!".into(),
        next(),
        &mut files,
    );
    write_file(
        root,
        &long_name(),
        pseudo_random(7, 999),
        next(),
        &mut files,
    );
    write_file(
        root,
        "lower.txt",
        b"lowercase 8.3".to_vec(),
        next(),
        &mut files,
    );
    write_file(
        root,
        "UPPER.TXT",
        b"uppercase 8.3".to_vec(),
        next(),
        &mut files,
    );
    write_file(
        root,
        "Mixed.Case.Name.txt",
        b"mixed".to_vec(),
        next(),
        &mut files,
    );
    write_file(root, "empty.bin", Vec::new(), next(), &mut files);
    write_file(
        root,
        "several.bin",
        pseudo_random(1, 20_000),
        next(),
        &mut files,
    );
    if big > 0 {
        write_file(root, "big.bin", pseudo_random(2, big), next(), &mut files);
    }
    for i in 0..many {
        let name = if i % 2 == 0 {
            format!("many/entry number {i:03}.dat")
        } else {
            format!("many/f{i:03}.dat")
        };
        let data = pseudo_random(100 + i as u64, (i * 7) % 300);
        write_file(root, &name, data, next(), &mut files);
    }
    std::fs::create_dir_all(root.join("emptydir")).unwrap();
    let mut dirs = HashSet::new();
    for f in files.keys() {
        let mut p = Path::new(f).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_str().unwrap().to_owned());
            p = d.parent();
        }
    }
    dirs.insert("emptydir".into());
    (files, dirs)
}

/// Copies the contents of `src` into the root of the image (at `spec`, e.g. `img@@1M`).
fn mcopy_tree(spec: &str, src: &Path) {
    let mut cmd = Command::new("mcopy");
    cmd.args(["-s", "-m", "-i", spec]);
    for e in std::fs::read_dir(src).unwrap() {
        cmd.arg(e.unwrap().path());
    }
    cmd.arg("::/");
    run(&mut cmd);
}

fn open_image(img: &Path) -> Arc<dyn BlockSource> {
    Arc::from(image::open(img).unwrap())
}

fn read_content(src: &dyn BlockSource, fs: &Vfat, node: &Node) -> Vec<u8> {
    let mut out = Vec::new();
    for e in fs.extents(node.id).unwrap() {
        assert_eq!(e.logical, out.len() as u64, "extents are contiguous");
        let mut buf = vec![0u8; e.len as usize];
        src.read_at(&mut buf, e.physical.unwrap()).unwrap();
        out.extend_from_slice(&buf);
    }
    out
}

/// Every node of the filesystem by path, with file contents.
fn walk(src: &dyn BlockSource, fs: &Vfat) -> BTreeMap<String, (Node, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(String::new(), fs.root())];
    while let Some((path, id)) = stack.pop() {
        for (name, child) in fs.read_dir(id).unwrap() {
            let name = String::from_utf8(name).unwrap();
            let p = if path.is_empty() {
                name
            } else {
                format!("{path}/{name}")
            };
            let node = fs.node(child).unwrap();
            assert_eq!(node.id, child);
            let data = match node.kind {
                EntryKind::Dir => {
                    stack.push((p.clone(), child));
                    Vec::new()
                }
                _ => read_content(src, fs, &node),
            };
            assert!(out.insert(p.clone(), (node, data)).is_none(), "{p} twice");
        }
    }
    out
}

fn param(fs: &Vfat, key: &str) -> u64 {
    match fs.info().params.get(key) {
        Some(Param::U64(v)) => *v,
        other => panic!("param {key}: {other:?}"),
    }
}

/// Builds an image of the given FAT type holding the full tree and checks everything.
fn roundtrip(bits: u64, kib: u64, big: usize, many: usize) {
    let dir = tempfile::tempdir().unwrap();
    let src_dir = dir.path().join("src");
    let (files, dirs) = source_tree(&src_dir, big, many);
    let img = dir.path().join("fat.img");
    let fat = format!("{bits}");
    mkfs(&img, kib, &["-F", &fat, "-i", "1234ABCD", "-n", "MIRAGE"]);
    mcopy_tree(img.to_str().unwrap(), &src_dir);

    let src = open_image(&img);
    assert!(vfat::probe(src.as_ref(), 0, src.len()));
    let fs = Vfat::open(Arc::clone(&src), 0, src.len()).unwrap();
    let info = fs.info();
    assert_eq!(info.fs_type, "vfat");
    assert_eq!(info.uuid, [0xCD, 0xAB, 0x34, 0x12]);
    assert_eq!(info.label, b"MIRAGE");
    assert_eq!(param(&fs, "fat_bits"), bits);
    assert_eq!(param(&fs, "sector_size"), 512);
    assert_eq!(param(&fs, "total_sectors"), kib * 2);
    assert_eq!(param(&fs, "num_fats"), 2);
    assert_eq!(param(&fs, "media"), 0xF8);
    assert_eq!(
        info.params.get("boot_label"),
        Some(&Param::Bytes(b"MIRAGE     ".to_vec()))
    );
    assert_eq!(
        info.params.get("root_label"),
        Some(&Param::Bytes(b"MIRAGE     ".to_vec()))
    );
    assert_eq!(
        info.params.get("oem_name"),
        Some(&Param::Bytes(b"mkfs.fat".to_vec()))
    );
    if bits == 32 {
        assert_eq!(param(&fs, "root_cluster"), 2);
        assert_eq!(param(&fs, "fsinfo_sector"), 1);
        assert_eq!(param(&fs, "backup_boot_sector"), 6);
        assert!(!info.params.contains_key("root_entries"));
    } else {
        assert_eq!(param(&fs, "root_entries"), 512);
    }

    let root = fs.node(fs.root()).unwrap();
    assert_eq!(root.kind, EntryKind::Dir);
    let got = walk(src.as_ref(), &fs);
    let want: HashSet<&String> = files.keys().chain(dirs.iter()).collect();
    let have: HashSet<&String> = got.keys().collect();
    assert_eq!(have, want);
    for (path, s) in &files {
        let (node, data) = &got[path];
        assert_eq!(node.kind, EntryKind::File, "{path}");
        assert_eq!(node.size, s.data.len() as u64, "{path}");
        assert!(*data == s.data, "{path}: content differs");
        assert_eq!(node.mode, 0o644, "{path}");
        assert_eq!((node.uid, node.gid, node.nlink), (0, 0, 1));
        let diff = (node.mtime.secs - s.mtime as i64).abs();
        assert!(diff < 2, "{path}: mtime {:?} vs {}", node.mtime, s.mtime);
        assert_eq!(node.ctime, node.mtime);
        assert!(node.flags & 0x10 == 0);
        assert!(node.xattrs.is_empty() && node.rdev.is_none() && node.target.is_none());
    }
    for d in &dirs {
        let (node, _) = &got[d];
        assert_eq!(
            (node.kind, node.mode, node.size),
            (EntryKind::Dir, 0o755, 0),
            "{d}"
        );
        assert!(node.flags & 0x10 != 0);
    }
    // Large files are split across few extents, cut to the file size.
    if big > 0 {
        let ext = fs.extents(got["big.bin"].0.id).unwrap();
        assert_eq!(ext.iter().map(|e| e.len).sum::<u64>(), big as u64);
        assert!(ext.len() < 8, "{} extents", ext.len());
    }
    assert!(fs.extents(got["empty.bin"].0.id).unwrap().is_empty());
    // `lower.txt` is stored as a short name with the NT lowercase flags, without LFN entries.
    let id = got["lower.txt"].0.id;
    let mut e = [0u8; 64];
    src.read_at(&mut e, id - 32).unwrap();
    assert_eq!(&e[32..43], b"LOWER   TXT");
    assert_eq!(e[32 + 12] & 0x18, 0x18);
    assert_ne!(e[11], 0x0F, "lower.txt has a long name entry");
    assert!(fs.extents(fs.root()).is_err());
    assert!(fs.read_dir(id).is_err());
}

#[test]
fn fat12_full_tree() {
    roundtrip(12, 8 * 1024, 3 << 20, 600);
}

#[test]
fn fat12_floppy() {
    roundtrip(12, 1024, 0, 40);
}

#[test]
fn fat16_full_tree() {
    roundtrip(16, 32 * 1024, 3 << 20, 600);
}

#[test]
fn fat32_full_tree() {
    roundtrip(32, 64 * 1024, 3 << 20, 600);
}

#[test]
fn unlabeled_volume_has_empty_label() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fat.img");
    mkfs(&img, 2048, &["-F", "12"]);
    let src = open_image(&img);
    let fs = Vfat::open(Arc::clone(&src), 0, src.len()).unwrap();
    assert!(fs.info().label.is_empty());
    assert!(!fs.info().params.contains_key("root_label"));
    assert_eq!(fs.info().uuid.len(), 4);
    assert!(fs.read_dir(fs.root()).unwrap().is_empty());
}

#[test]
fn filesystem_at_offset() {
    let dir = tempfile::tempdir().unwrap();
    let src_dir = dir.path().join("src");
    let mut files = BTreeMap::new();
    write_file(
        &src_dir,
        "boot/kernel.efi",
        pseudo_random(9, 300_000),
        BASE_MTIME,
        &mut files,
    );
    write_file(
        &src_dir,
        "Readme For You.txt",
        b"hello".to_vec(),
        BASE_MTIME + 10,
        &mut files,
    );
    let img = dir.path().join("disk.img");
    File::create(&img).unwrap().set_len(40 << 20).unwrap();
    run(Command::new("mkfs.fat")
        .args(["-F", "16", "--offset", "2048", "-n", "ESP"])
        .arg(&img)
        .arg("32768"));
    mcopy_tree(&format!("{}@@1M", img.display()), &src_dir);

    let src = open_image(&img);
    assert!(!vfat::probe(src.as_ref(), 0, src.len()));
    assert!(vfat::probe(src.as_ref(), 1 << 20, 32 << 20));
    let fs = Vfat::open(Arc::clone(&src), 1 << 20, 32 << 20).unwrap();
    assert_eq!(fs.info().label, b"ESP");
    let got = walk(src.as_ref(), &fs);
    for (path, s) in &files {
        let (node, data) = &got[path];
        assert!(*data == s.data, "{path}");
        assert!(node.id > 1 << 20);
    }
    for e in fs.extents(got["boot/kernel.efi"].0.id).unwrap() {
        let p = e.physical.unwrap();
        assert!(p >= 1 << 20 && p + e.len <= (33 << 20));
    }
    // The region is larger than the filesystem: fine; smaller: an error.
    assert!(Vfat::open(Arc::clone(&src), 1 << 20, 39 << 20).is_ok());
    let err = Vfat::open(Arc::clone(&src), 1 << 20, 16 << 20).unwrap_err();
    assert!(err.to_string().contains("exceeds"), "{err}");
}

/// A FAT16 or FAT32 image for damage tests, with its geometry.
struct Damaged {
    _dir: tempfile::TempDir,
    img: PathBuf,
    bits: u64,
    fat_offsets: Vec<u64>,
    data_start: u64,
    cluster_size: u64,
    clusters: u64,
    file: u64,
    dir: u64,
}

impl Damaged {
    fn new(bits: u64, kib: u64) -> Damaged {
        let dir = tempfile::tempdir().unwrap();
        let src_dir = dir.path().join("src");
        let mut files = BTreeMap::new();
        write_file(
            &src_dir,
            "KERNEL.EFI",
            pseudo_random(3, 40_000),
            BASE_MTIME,
            &mut files,
        );
        for i in 0..300 {
            write_file(
                &src_dir,
                &format!("many/file number {i}"),
                vec![1],
                BASE_MTIME,
                &mut files,
            );
        }
        let img = dir.path().join("fat.img");
        mkfs(&img, kib, &["-F", &bits.to_string()]);
        mcopy_tree(img.to_str().unwrap(), &src_dir);
        let src = open_image(&img);
        let fs = Vfat::open(Arc::clone(&src), 0, src.len()).unwrap();
        let bps = param(&fs, "sector_size");
        let spf = param(&fs, "sectors_per_fat") * bps;
        let fat0 = param(&fs, "reserved_sectors") * bps;
        let nfats = param(&fs, "num_fats");
        let root = if bits == 32 {
            0
        } else {
            (param(&fs, "root_entries") * 32).div_ceil(bps) * bps
        };
        let data_start = fat0 + nfats * spf + root;
        let cluster_size = param(&fs, "sectors_per_cluster") * bps;
        let clusters = (param(&fs, "total_sectors") * bps - data_start) / cluster_size;
        let list: BTreeMap<_, _> = fs.read_dir(fs.root()).unwrap().into_iter().collect();
        Damaged {
            img,
            bits,
            fat_offsets: (0..nfats).map(|i| fat0 + i * spf).collect(),
            data_start,
            cluster_size,
            clusters,
            file: list[&b"KERNEL.EFI".to_vec()],
            dir: list[&b"many".to_vec()],
            _dir: dir,
        }
    }

    fn open(&self) -> Result<Vfat, FsError> {
        let src = open_image(&self.img);
        Vfat::open(Arc::clone(&src), 0, src.len())
    }

    /// First cluster of node `id`, from its directory entry.
    fn first_cluster(&self, id: u64) -> u64 {
        let src = open_image(&self.img);
        let mut e = [0u8; 32];
        src.read_at(&mut e, id).unwrap();
        let lo = u64::from(u16::from_le_bytes([e[26], e[27]]));
        let hi = u64::from(u16::from_le_bytes([e[20], e[21]]));
        if self.bits == 32 {
            hi << 16 | lo
        } else {
            lo
        }
    }

    /// Clusters of the test file in chain order, from its extents.
    fn file_clusters(&self) -> Vec<u64> {
        let fs = self.open().unwrap();
        let mut out = Vec::new();
        for e in fs.extents(self.file).unwrap() {
            let first = (e.physical.unwrap() - self.data_start) / self.cluster_size + 2;
            for k in 0..e.len.div_ceil(self.cluster_size) {
                out.push(first + k);
            }
        }
        out
    }

    /// Sets the FAT entry of `cluster` to `value` in every FAT copy.
    fn set_fat(&self, cluster: u64, value: u64) {
        use std::os::unix::fs::FileExt;
        let f = File::options()
            .read(true)
            .write(true)
            .open(&self.img)
            .unwrap();
        for &fat in &self.fat_offsets {
            let (at, bytes) = match self.bits {
                12 => {
                    let at = fat + cluster + cluster / 2;
                    let mut b = [0u8; 2];
                    f.read_exact_at(&mut b, at).unwrap();
                    let old = u16::from_le_bytes(b);
                    let v = value as u16;
                    let new = if cluster % 2 == 1 {
                        (old & 0x000F) | (v << 4)
                    } else {
                        (old & 0xF000) | (v & 0x0FFF)
                    };
                    (at, new.to_le_bytes().to_vec())
                }
                16 => (fat + cluster * 2, (value as u16).to_le_bytes().to_vec()),
                _ => (fat + cluster * 4, (value as u32).to_le_bytes().to_vec()),
            };
            f.write_all_at(&bytes, at).unwrap();
        }
    }
}

fn expect_err<T: std::fmt::Debug>(r: Result<T, FsError>, want: &[&str]) {
    let msg = r.unwrap_err().to_string();
    for w in want {
        assert!(msg.contains(w), "error {msg:?} does not name {w:?}");
    }
}

fn damage_chains(bits: u64, kib: u64) {
    let d = Damaged::new(bits, kib);
    let chain = d.file_clusters();
    assert_eq!(chain.len() as u64, 40_000u64.div_ceil(d.cluster_size));
    assert!(chain.len() >= 3, "{chain:?}");
    let (first, last) = (chain[0], *chain.last().unwrap());
    let eoc = match bits {
        12 => 0xFFF,
        16 => 0xFFFF,
        _ => 0x0FFF_FFFF,
    };

    // The third cluster points back to the first.
    d.set_fat(chain[2], first);
    let msg = format!("starting at cluster {first}");
    expect_err(
        d.open().unwrap().extents(d.file),
        &["KERNEL.EFI", "loops", &msg],
    );
    // The last cluster points to itself, or back into the file.
    d.set_fat(chain[2], chain.get(3).copied().unwrap_or(eoc));
    d.set_fat(last, last);
    expect_err(d.open().unwrap().extents(d.file), &["KERNEL.EFI", "loops"]);
    d.set_fat(last, first);
    expect_err(d.open().unwrap().extents(d.file), &["KERNEL.EFI", "loops"]);
    // The chain goes on past the size, as a truncate that did not free the rest leaves it:
    // read to the size, as Linux reads it, when the rest ends cleanly; errors where it does
    // not (a loop of its own, a free cluster).
    let (x, y) = (d.clusters - 1, d.clusters);
    d.set_fat(last, x);
    d.set_fat(x, eoc);
    let fs = d.open().unwrap();
    let ext = fs.extents(d.file).unwrap();
    assert_eq!(ext.iter().map(|e| e.len).sum::<u64>(), 40_000);
    d.set_fat(x, y);
    d.set_fat(y, x);
    expect_err(d.open().unwrap().extents(d.file), &["KERNEL.EFI", "loops"]);
    d.set_fat(y, 0);
    expect_err(
        d.open().unwrap().extents(d.file),
        &["KERNEL.EFI", "free cluster"],
    );
    d.set_fat(last, eoc);
    // A middle cluster points past the data area.
    d.set_fat(last, eoc);
    d.set_fat(chain[1], d.clusters + 5);
    expect_err(
        d.open().unwrap().extents(d.file),
        &["KERNEL.EFI", "outside the data area"],
    );
    // ... to a free cluster, to a bad-cluster mark, ends early.
    d.set_fat(chain[1], 0);
    expect_err(
        d.open().unwrap().extents(d.file),
        &["KERNEL.EFI", "free cluster"],
    );
    d.set_fat(chain[1], eoc - 8);
    expect_err(d.open().unwrap().extents(d.file), &["KERNEL.EFI", "bad"]);
    d.set_fat(chain[1], eoc);
    expect_err(
        d.open().unwrap().extents(d.file),
        &["KERNEL.EFI", "ends after 2 clusters"],
    );
    d.set_fat(chain[1], chain[2]);
    assert!(d.open().unwrap().extents(d.file).is_ok());

    // A directory chain that loops.
    let dfirst = d.first_cluster(d.dir);
    d.set_fat(dfirst, dfirst);
    expect_err(d.open().unwrap().read_dir(d.dir), &["many", "loops"]);
}

#[test]
fn fat12_damaged_chains() {
    damage_chains(12, 2048);
}

#[test]
fn fat16_damaged_chains() {
    damage_chains(16, 32 * 1024);
}

#[test]
fn fat32_damaged_chains() {
    damage_chains(32, 64 * 1024);
}

fn patch(img: &Path, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = File::options().write(true).open(img).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

#[test]
fn damaged_boot_sector() {
    let d = Damaged::new(16, 32 * 1024);
    let good = std::fs::read(&d.img).unwrap();
    let reset = || std::fs::write(&d.img, &good).unwrap();
    let cases: [(usize, &[u8], &str); 7] = [
        (13, &[0], "sectors per cluster 0"),
        (13, &[3], "sectors per cluster 3"),
        (11, &[0, 3], "bytes per sector"),
        (16, &[0], "FAT count is 0"),
        (14, &[0, 0], "reserved sector count"),
        (22, &[0xFF, 0xFF], "leave no data area"),
        (21, &[0x12], "media descriptor"),
    ];
    for (at, bytes, want) in cases {
        reset();
        patch(&d.img, at as u64, bytes);
        expect_err(d.open(), &[want]);
        let src = open_image(&d.img);
        assert!(!vfat::probe(src.as_ref(), 0, src.len()), "{want}");
    }
    // More clusters than FAT16 numbers, in a volume that says it is not FAT32 (a 16-bit FAT
    // size): one sector per cluster instead of mkfs.fat's four.
    let wide = Damaged::new(16, 40 * 1024);
    patch(&wide.img, 13, &[1]);
    expect_err(wide.open(), &["too many for FAT16"]);
    // Truncated image.
    reset();
    File::options()
        .write(true)
        .open(&d.img)
        .unwrap()
        .set_len(10 << 20)
        .unwrap();
    expect_err(d.open(), &["exceeds", "truncated"]);
    let src = open_image(&d.img);
    assert!(!vfat::probe(src.as_ref(), 0, src.len()));
    // A region past the end of the image.
    expect_err(Vfat::open(Arc::clone(&src), 0, 64 << 20), &["does not fit"]);
    // Too short for a boot sector.
    std::fs::write(&d.img, [0xEBu8; 100]).unwrap();
    let src = open_image(&d.img);
    assert!(!vfat::probe(src.as_ref(), 0, src.len()));
    assert!(Vfat::open(Arc::clone(&src), 0, src.len()).is_err());
}

/// Random byte damage in the metadata of a small image: errors are fine, panics and hangs are
/// not.
#[test]
fn random_damage_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let src_dir = dir.path().join("src");
    let (_, _) = source_tree(&src_dir, 0, 30);
    let img = dir.path().join("fat.img");
    mkfs(&img, 1024, &["-F", "12", "-n", "FUZZ"]);
    mcopy_tree(img.to_str().unwrap(), &src_dir);
    let good = std::fs::read(&img).unwrap();
    // Boot sector, FATs, root directory and the first directory clusters.
    let meta = 64 * 1024;
    let mut opened = 0;
    for round in 0..300u64 {
        let mut bad = good.clone();
        let noise = pseudo_random(round + 1000, 64);
        for k in 0..(1 + round % 8) as usize {
            let at = u64::from_le_bytes(noise[k * 8..k * 8 + 8].try_into().unwrap()) as usize;
            let at = if round % 3 == 0 { at % 512 } else { at % meta };
            bad[at] = noise[(k * 8 + 3) % 64];
        }
        std::fs::write(&img, &bad).unwrap();
        let src = open_image(&img);
        let _ = vfat::probe(src.as_ref(), 0, src.len());
        let Ok(fs) = Vfat::open(Arc::clone(&src), 0, src.len()) else {
            continue;
        };
        opened += 1;
        let mut stack = vec![fs.root()];
        let mut seen = HashSet::new();
        while let Some(id) = stack.pop() {
            if !seen.insert(id) || seen.len() > 10_000 {
                continue;
            }
            let Ok(list) = fs.read_dir(id) else { continue };
            for (_, child) in list {
                match fs.node(child) {
                    Ok(n) if n.kind == EntryKind::Dir => stack.push(child),
                    Ok(_) => {
                        let _ = fs.extents(child);
                    }
                    Err(_) => {}
                }
            }
        }
    }
    // Most damage is in places the boot sector check does not look at.
    assert!(opened > 100, "only {opened} damaged images opened");
}

#[test]
fn short_names_deleted_entries_and_checksum_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let src_dir = dir.path().join("src");
    let mut files = BTreeMap::new();
    for name in ["Long File Name.txt", "gone.txt", "KEEP.TXT"] {
        write_file(&src_dir, name, name.into(), BASE_MTIME, &mut files);
    }
    let img = dir.path().join("fat.img");
    mkfs(&img, 1024, &["-F", "12"]);
    mcopy_tree(img.to_str().unwrap(), &src_dir);
    run(Command::new("mdel").arg("-i").arg(&img).arg("::/gone.txt"));
    let list = |img: &Path| -> BTreeMap<String, u64> {
        let src = open_image(img);
        let fs = Vfat::open(Arc::clone(&src), 0, src.len()).unwrap();
        let l = fs.read_dir(fs.root()).unwrap();
        l.into_iter()
            .map(|(n, id)| (String::from_utf8(n).unwrap(), id))
            .collect()
    };
    let before = list(&img);
    let names: Vec<&str> = before.keys().map(String::as_str).collect();
    assert_eq!(names, ["KEEP.TXT", "Long File Name.txt"]);

    // A long name whose checksum does not match its short entry is ignored.
    let long = before["Long File Name.txt"];
    let src = open_image(&img);
    let mut lfn = [0u8; 32];
    src.read_at(&mut lfn, long - 32).unwrap();
    assert_eq!(lfn[11], 0x0F);
    patch(&img, long - 32 + 13, &[lfn[13].wrapping_add(1)]);
    // First byte 0x05 stands for 0xE5 (code page 437: 'σ'); NT flag 0x10: lowercase extension.
    let keep = before["KEEP.TXT"];
    patch(&img, keep, &[0x05]);
    patch(&img, keep + 12, &[0x10]);
    let after = list(&img);
    assert_eq!(after.get("LONGFI~1.TXT"), Some(&long), "{after:?}");
    assert_eq!(after.get("σEEP.txt"), Some(&keep), "{after:?}");
    assert_eq!(after.len(), 2);
}

#[test]
fn mtime_and_crtime_decoding() {
    // A file whose entry is patched to known dates: 2020-02-29 23:59:58 written,
    // created 2021-12-31 12:34:56.78, accessed 2022-01-01.
    let dir = tempfile::tempdir().unwrap();
    let src_dir = dir.path().join("src");
    let mut files = BTreeMap::new();
    write_file(&src_dir, "T.TXT", b"t".to_vec(), BASE_MTIME, &mut files);
    let img = dir.path().join("fat.img");
    mkfs(&img, 1024, &["-F", "12"]);
    mcopy_tree(img.to_str().unwrap(), &src_dir);
    let src = open_image(&img);
    let fs = Vfat::open(Arc::clone(&src), 0, src.len()).unwrap();
    let id = fs.read_dir(fs.root()).unwrap()[0].1;
    let date = |y: u16, m: u16, d: u16| ((y - 1980) << 9) | (m << 5) | d;
    let time = |h: u16, m: u16, s: u16| (h << 11) | (m << 5) | (s / 2);
    let mut e = [0u8; 32];
    src.read_at(&mut e, id).unwrap();
    e[11] = 0x01 | 0x02 | 0x20; // read-only, hidden, archive
    e[13] = 178;
    e[14..16].copy_from_slice(&time(12, 34, 56).to_le_bytes());
    e[16..18].copy_from_slice(&date(2021, 12, 31).to_le_bytes());
    e[18..20].copy_from_slice(&date(2022, 1, 1).to_le_bytes());
    e[22..24].copy_from_slice(&time(23, 59, 58).to_le_bytes());
    e[24..26].copy_from_slice(&date(2020, 2, 29).to_le_bytes());
    patch(&img, id, &e);
    let src = open_image(&img);
    let fs = Vfat::open(Arc::clone(&src), 0, src.len()).unwrap();
    let n = fs.node(id).unwrap();
    assert_eq!(n.mtime.secs, 1_583_020_798); // 2020-02-29T23:59:58Z
    assert_eq!(n.mtime.nanos, 0);
    assert_eq!(n.ctime, n.mtime);
    assert_eq!(n.atime.secs, 1_640_995_200); // 2022-01-01T00:00:00Z
    let c = n.crtime.unwrap();
    assert_eq!(c.secs, 1_640_954_096 + 1); // 2021-12-31T12:34:56Z + 1.78 s
    assert_eq!(c.nanos, 780_000_000);
    assert_eq!(n.flags, 0x23);
    assert_eq!(n.mode, 0o444);
}
