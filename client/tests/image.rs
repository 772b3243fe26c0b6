//! Image containers and partition tables, on images the tests build with sfdisk and qemu-img.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use mirage_client::demo::pseudo_random;
use mirage_client::image::{self, regions, table};
use mirage_format::{Algorithm, Param, TableType};

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sfdisk(img: &Path, script: &str) {
    mirage_client::demo::sfdisk(img, script).unwrap();
}

fn sfdisk_json(img: &Path) -> serde_json::Value {
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(img)
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["partitiontable"].clone()
}

fn sparse_image(dir: &Path, name: &str, mib: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    p
}

fn write_at(img: &Path, offset: u64, data: &[u8]) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(img)
        .unwrap()
        .write_all_at(data, offset)
        .unwrap();
}

fn qemu_convert(src: &Path, dst: &Path, extra: &[&str]) {
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .args(extra)
        .arg(src)
        .arg(dst));
}

/// Checks that the image at `p` reads as `expect` (samples, and zeros outside its data
/// ranges); returns the digest of its bytes stored as one region.
fn reads_like(p: &Path, expect: &[u8]) -> mirage_format::Digest {
    let src = image::open(p).unwrap();
    assert_eq!(src.len(), expect.len() as u64, "{p:?}");
    let len = expect.len() as u64;
    for (off, n) in [
        (0u64, 4096usize),
        ((5 << 20) - 100, 70_000),
        ((40 << 20) + 700, 200_000),
        (len - 4096, 4096),
    ] {
        let mut buf = vec![0u8; n];
        src.read_at(&mut buf, off).unwrap();
        assert!(
            buf == expect[off as usize..off as usize + n],
            "{p:?} differs at {off}"
        );
    }
    // Everything outside the data ranges really is zero.
    let ranges = src.data_ranges(0, src.len()).unwrap();
    let mut pos = 0u64;
    for (s, e) in ranges.iter().copied().chain([(src.len(), src.len())]) {
        assert!(
            expect[pos as usize..s as usize].iter().all(|b| *b == 0),
            "{p:?}: data in a hole at {pos}..{s}"
        );
        pos = e;
    }
    region_digest(src.as_ref(), src.len())
}

/// The digest of the first `len` bytes of `src` stored as one raw region.
fn region_digest(src: &dyn image::BlockSource, len: u64) -> mirage_format::Digest {
    regions::store_region::<std::convert::Infallible>(src, 0, len, Algorithm::Sha256, |_| Ok(()))
        .unwrap()
        .digest()
}

#[test]
fn qcow2_with_subclusters_reads_as_written() {
    // Extended L2 entries: 32 subclusters per cluster, each allocated, zero or unallocated;
    // the file may end inside its last cluster.
    let dir = tempfile::tempdir().unwrap();
    let raw = sparse_image(dir.path(), "expect.img", 64);
    let writes: [(u64, u64, u8); 6] = [
        (3 << 10, 2 << 10, 0x33),
        ((5 << 20) - 50, 40_000, 0x44),
        ((40 << 20) + 1000, 64 << 10, 0x55),
        ((40 << 20) + (8 << 10), 6 << 10, 0),
        ((40 << 20) + (100 << 10), 1 << 10, 0x66),
        ((64 << 20) - (5 << 10), 5 << 10, 0x77),
    ];
    for cluster in ["64k", "2M"] {
        let q = dir.path().join(format!("sub-{cluster}.qcow2"));
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-o"])
            .arg(format!("extended_l2=on,cluster_size={cluster}"))
            .arg(&q)
            .arg("64M"));
        let mut io = Command::new("qemu-io");
        for (off, len, byte) in writes {
            io.arg("-c").arg(if byte == 0 {
                format!("write -z {off} {len}")
            } else {
                format!("write -P {byte} {off} {len}")
            });
        }
        run(io.arg(&q));
        let info = Command::new("qemu-img")
            .arg("info")
            .arg(&q)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&info.stdout).contains("extended l2: true"));
        if cluster == "64k" {
            for (off, len, byte) in writes {
                write_at(&raw, off, &vec![byte; len as usize]);
            }
        }
        let expect = std::fs::read(&raw).unwrap();
        assert_eq!(
            reads_like(&q, &expect),
            reads_like(&raw, &expect),
            "{cluster}"
        );
    }
}

#[test]
fn qcow2_reads_like_its_raw_source_and_gives_the_same_region_digest() {
    let dir = tempfile::tempdir().unwrap();
    let raw = sparse_image(dir.path(), "disk.img", 64);
    write_at(&raw, 0, &pseudo_random(1, 3000));
    write_at(&raw, 5 << 20, &pseudo_random(2, 3 << 20));
    write_at(&raw, (40 << 20) + 777, &pseudo_random(3, 100_000));
    write_at(&raw, (64 << 20) - 512, &pseudo_random(4, 512));
    let plain = dir.path().join("plain.qcow2");
    let deflate = dir.path().join("deflate.qcow2");
    let zstd = dir.path().join("zstd.qcow2");
    let small = dir.path().join("small-clusters.qcow2");
    qemu_convert(&raw, &plain, &[]);
    qemu_convert(&raw, &deflate, &["-c"]);
    qemu_convert(&raw, &zstd, &["-c", "-o", "compression_type=zstd"]);
    qemu_convert(&raw, &small, &["-o", "cluster_size=4096"]);
    let r = image::open(&raw).unwrap();
    assert_eq!(r.format(), "raw");
    let expect = std::fs::read(&raw).unwrap();
    let digests: Vec<_> = [&raw, &plain, &deflate, &zstd, &small]
        .into_iter()
        .map(|p| reads_like(p, &expect))
        .collect();
    assert!(
        digests.windows(2).all(|w| w[0] == w[1]),
        "region digests differ: {digests:?}"
    );
    let src = image::open(&raw).unwrap();
    let mut past = vec![0u8; 10];
    assert!(src.read_at(&mut past, (64 << 20) - 5).is_err());
    // Internal snapshots are not read; the image says so rather than dropping them silently.
    assert!(image::open(&plain).unwrap().left_out().is_empty());
    let st = Command::new("qemu-img")
        .args(["snapshot", "-c", "before"])
        .arg(&plain)
        .status()
        .unwrap();
    assert!(st.success());
    let left = image::open(&plain).unwrap().left_out();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].contains("1 internal snapshot"), "{left:?}");
    assert_eq!(reads_like(&plain, &expect), digests[0]);
}

#[test]
fn mbr_with_extended_and_logical_partitions_matches_sfdisk() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image(dir.path(), "mbr.img", 64);
    sfdisk(&img, "label: dos\nlabel-id: 0x1234abcd\nstart=2048, size=16384, type=83, bootable\nstart=18432, size=40960, type=5\nstart=20480, size=8192, type=6\nstart=30720, size=8192, type=82\nstart=40960, size=8192, type=c\n");
    let t = table::parse(image::open(&img).unwrap().as_ref()).unwrap();
    let j = sfdisk_json(&img);
    assert_eq!(t.kind, TableType::Mbr);
    assert_eq!(t.disk_id, vec![0xcd, 0xab, 0x34, 0x12]);
    let ours: Vec<(u64, u64, String)> = t
        .partitions
        .iter()
        .map(|p| (p.start / 512, p.size / 512, format!("{:x}", p.type_id[0])))
        .collect();
    let theirs: Vec<(u64, u64, String)> = j["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
                p["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(ours, theirs);
    let numbers: Vec<u32> = t.partitions.iter().map(|p| p.number).collect();
    assert_eq!(numbers, vec![1, 2, 5, 6, 7]);
    assert_eq!(t.partitions[0].attributes, 0x80);
    assert!(t.partitions[1].container);
}

#[test]
fn gpt_with_bios_boot_esp_and_linux_matches_sfdisk() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image(dir.path(), "gpt.img", 64);
    sfdisk(
        &img,
        "label: gpt\nlabel-id: 0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0\n\
         start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=\"bios\"\n\
         start=4096, size=65536, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"EFI System\", uuid=11111111-2222-3333-4444-555555555555\n\
         start=69632, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=\"root ✓\", attrs=\"LegacyBIOSBootable\"\n",
    );
    let t = table::parse(image::open(&img).unwrap().as_ref()).unwrap();
    let j = sfdisk_json(&img);
    assert_eq!(t.kind, TableType::Gpt);
    assert_eq!(
        table::guid_text(&t.disk_id).to_uppercase(),
        j["id"].as_str().unwrap()
    );
    let theirs = j["partitions"].as_array().unwrap();
    assert_eq!(t.partitions.len(), theirs.len());
    for (p, q) in t.partitions.iter().zip(theirs) {
        assert_eq!(p.start / 512, q["start"].as_u64().unwrap());
        assert_eq!(p.size / 512, q["size"].as_u64().unwrap());
        assert_eq!(
            table::guid_text(&p.type_id).to_uppercase(),
            q["type"].as_str().unwrap()
        );
        assert_eq!(
            table::guid_text(&p.guid).to_uppercase(),
            q["uuid"].as_str().unwrap()
        );
        let name = String::from_utf16(
            &p.name
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(name, q["name"].as_str().unwrap());
    }
    assert_eq!(t.partitions[2].attributes, 1 << 2);
    // A damaged primary entry array, then also a damaged primary header: the backup.
    write_at(&img, 2 * 512 + 200, b"garbage");
    let t1 = table::parse(image::open(&img).unwrap().as_ref()).unwrap();
    assert_eq!(t1.partitions, t.partitions);
    assert_eq!(t1.params["header_used"], Param::Text("backup".into()));
    write_at(&img, 512 + 60, b"garbage");
    let t2 = table::parse(image::open(&img).unwrap().as_ref()).unwrap();
    assert_eq!(t2.partitions, t.partitions);
    // Both damaged: a clear error.
    write_at(&img, (64 << 20) - 512 + 60, b"garbage");
    let err = table::parse(image::open(&img).unwrap().as_ref())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("primary table unusable (header CRC mismatch)")
            && err.contains("backup unusable"),
        "{err}"
    );
}

fn mbr_entry(img: &Path, slot: u64, ty: u8, lba: u32, sectors: u32) {
    let mut e = [0u8; 16];
    e[4] = ty;
    e[8..12].copy_from_slice(&lba.to_le_bytes());
    e[12..16].copy_from_slice(&sectors.to_le_bytes());
    write_at(img, 446 + 16 * slot, &e);
    write_at(img, 510, &[0x55, 0xAA]);
}

#[test]
fn hostile_tables_and_containers_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let parse = |p: &Path| {
        table::parse(image::open(p).unwrap().as_ref())
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    // A partition past the end of the disk.
    let a = sparse_image(dir.path(), "past-end.img", 8);
    mbr_entry(&a, 0, 0x83, 2048, 1 << 20);
    assert!(
        parse(&a).unwrap_err().contains("past the end"),
        "{:?}",
        parse(&a)
    );
    // Overlapping partitions.
    let b = sparse_image(dir.path(), "overlap.img", 8);
    mbr_entry(&b, 0, 0x83, 2048, 4096);
    mbr_entry(&b, 1, 0x83, 4000, 4096);
    assert!(
        parse(&b).unwrap_err().contains("overlap"),
        "{:?}",
        parse(&b)
    );
    // An EBR chain that loops back to itself.
    let c = sparse_image(dir.path(), "loop.img", 8);
    mbr_entry(&c, 0, 0x05, 2048, 8192);
    let mut ebr = [0u8; 512];
    ebr[446 + 4] = 0x83;
    ebr[446 + 8..446 + 12].copy_from_slice(&63u32.to_le_bytes());
    ebr[446 + 12..446 + 16].copy_from_slice(&100u32.to_le_bytes());
    ebr[462 + 4] = 0x05;
    ebr[462 + 8..462 + 12].copy_from_slice(&0u32.to_le_bytes());
    ebr[462 + 12..462 + 16].copy_from_slice(&200u32.to_le_bytes());
    ebr[510] = 0x55;
    ebr[511] = 0xAA;
    write_at(&c, 2048 * 512, &ebr);
    assert!(parse(&c).unwrap_err().contains("loops"), "{:?}", parse(&c));
    // A truncated qcow2 and one whose L2 entry points outside the file.
    let raw = sparse_image(dir.path(), "d.img", 8);
    write_at(&raw, 1 << 20, &pseudo_random(9, 70_000));
    let q = dir.path().join("d.qcow2");
    qemu_convert(&raw, &q, &[]);
    let bytes = std::fs::read(&q).unwrap();
    let t = dir.path().join("truncated.qcow2");
    std::fs::write(&t, &bytes[..60]).unwrap();
    let err = image::open(&t).err().unwrap().to_string();
    assert!(err.contains("truncated"), "{err}");
    // Find the L2 table: L1 offset at header byte 40, first L1 entry points to it.
    let l1_off = u64::from_be_bytes(bytes[40..48].try_into().unwrap()) as usize;
    let l2_off = (u64::from_be_bytes(bytes[l1_off..l1_off + 8].try_into().unwrap())
        & 0x00ff_ffff_ffff_fe00) as usize;
    let mut bad = bytes.clone();
    let entry = l2_off + 8 * 16; // guest cluster 16 = 1 MiB with 64 KiB clusters
    bad[entry..entry + 8].copy_from_slice(&((1u64 << 63) | (1u64 << 40)).to_be_bytes());
    let bq = dir.path().join("bad-l2.qcow2");
    std::fs::write(&bq, &bad).unwrap();
    let src = image::open(&bq).unwrap();
    let mut buf = vec![0u8; 4096];
    let err = src.read_at(&mut buf, 1 << 20).unwrap_err().to_string();
    assert!(err.contains("L2 entry") && err.contains("outside"), "{err}");
    // An L1 table claimed far beyond the file.
    let mut bad = bytes.clone();
    bad[40..48].copy_from_slice(&(1u64 << 50).to_be_bytes());
    let bq = dir.path().join("bad-l1.qcow2");
    std::fs::write(&bq, &bad).unwrap();
    let err = image::open(&bq).err().unwrap().to_string();
    assert!(err.contains("L1 table"), "{err}");
}

#[test]
fn other_containers_are_read_through_qemu_img_with_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let raw = sparse_image(dir.path(), "disk.img", 16);
    write_at(&raw, 1 << 20, &pseudo_random(7, 2 << 20));
    let want = region_digest(image::open(&raw).unwrap().as_ref(), 16 << 20);
    for fmt in ["vmdk", "vdi", "vhdx", "vpc"] {
        let p = dir.path().join(format!("disk.{fmt}"));
        run(Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", fmt])
            .arg(&raw)
            .arg(&p));
        let src = image::open(&p).unwrap();
        assert!(src.len() >= 16 << 20, "{fmt}");
        // vpc rounds the size up to its geometry; compare the first 16 MiB.
        assert_eq!(region_digest(src.as_ref(), 16 << 20), want, "{fmt}");
    }
    // A qcow2 whose clusters live in an external data file (qcow2 v3), raw or not: the image
    // names a file to read it with, so it is read (through qemu-img, which finds a relative
    // name next to the image) only when asked to follow the files it names.
    for (name, opts) in [
        ("ext-raw", "data_file=ext-raw.data,data_file_raw=on"),
        ("ext", "data_file=ext.data"),
    ] {
        let p = dir.path().join(format!("{name}.qcow2"));
        run(Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2", "-o", opts])
            .arg(&raw)
            .arg(&p)
            .current_dir(dir.path()));
        let err = image::open(&p).err().unwrap().to_string();
        assert!(
            err.contains("external data file") && err.contains("--follow-backing"),
            "{err}"
        );
        let src = image::open_with(&p, true).unwrap();
        assert_eq!(src.len(), 16 << 20, "{name}");
        assert_eq!(region_digest(src.as_ref(), 16 << 20), want, "{name}");
    }
}

#[test]
fn an_image_on_a_block_device_reads_like_its_file_and_a_fifo_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A FIFO is refused before it is opened (an open would wait for a writer).
    let fifo = dir.path().join("fifo");
    run(Command::new("mkfifo").arg(&fifo));
    let err = image::open(&fifo).err().unwrap().to_string();
    assert!(
        err.contains("not a regular file or a block device"),
        "{err}"
    );
    // A block device's metadata says 0 bytes; its size is where it ends.
    let raw = sparse_image(dir.path(), "disk.img", 64);
    write_at(&raw, 5 << 20, &pseudo_random(9, 100_000));
    write_at(&raw, (40 << 20) + 800, &pseudo_random(10, 100_000));
    let qcow = dir.path().join("disk.qcow2");
    qemu_convert(&raw, &qcow, &[]);
    let expect = std::fs::read(&raw).unwrap();
    for file in [&raw, &qcow] {
        let out = Command::new("losetup")
            .args(["-f", "--show", "-r"])
            .arg(file)
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!(
                "SKIPPED: no loop device ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        let dev = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        let read = std::panic::catch_unwind(|| reads_like(&dev, &expect));
        run(Command::new("losetup").arg("-d").arg(&dev));
        assert_eq!(read.unwrap(), reads_like(&raw, &expect), "{file:?}");
    }
}

/// Images as they are downloaded, compressed or archived, are named and refused with what to
/// do: their bytes would otherwise check in as one opaque raw disk.
#[test]
fn compressed_and_archived_images_are_named_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let disk = sparse_image(dir.path(), "disk.img", 4);
    sfdisk(&disk, "label: dos\nstart=2048, type=83\n");
    let tool = |prog: &str, args: &[&str], out: &str| {
        let o = Command::new(prog).args(args).arg(&disk).output().unwrap();
        assert!(o.status.success(), "{prog}");
        let p = dir.path().join(out);
        std::fs::write(&p, o.stdout).unwrap();
        p
    };
    let cases = [
        (tool("xz", &["-c"], "disk.img.xz"), "xz-compressed", "xz -d"),
        (
            tool("gzip", &["-c"], "disk.img.gz"),
            "gzip-compressed",
            "gzip -d",
        ),
        (
            tool("zstd", &["-q", "-c"], "disk.img.zst"),
            "zstd-compressed",
            "zstd -d",
        ),
        (
            tool("bzip2", &["-c"], "disk.img.bz2"),
            "bzip2-compressed",
            "bzip2 -d",
        ),
    ];
    let ova = dir.path().join("appliance.ova");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&ova)
        .arg("-C")
        .arg(dir.path())
        .arg("disk.img"));
    let zip = dir.path().join("disk.zip");
    std::fs::write(&zip, b"PK\x03\x04\x14\x00\x00\x00\x08\x00").unwrap();
    for (path, what, how) in cases.into_iter().chain([
        (ova, "tar archive", "tar xf"),
        (zip, "zip archive", "unzip"),
    ]) {
        let err = image::open(&path).err().expect("refused").to_string();
        assert!(err.contains(what) && err.contains(how), "{err}");
    }
    // The disk itself still opens.
    assert!(image::open(&disk).is_ok());
}
