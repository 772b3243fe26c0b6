//! `mirage checkin` / `show` / `ls` / `cat` on disk images the test builds itself.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mirage_client::demo::pseudo_random;

mod common;
use common::debugfs_script;

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn mirage(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mirage"))
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// The JSON view of an item.
fn item(store: &Path, digest: &str) -> serde_json::Value {
    serde_json::from_str(&ok(mirage(store, &["item", digest]))).unwrap()
}

/// The image's filesystems without their layouts (skeletons): identity, parameters, root
/// attributes and file tree. A rebuilt filesystem has another layout but must match these.
fn filesystems(store: &Path, image: &str) -> Vec<serde_json::Value> {
    let disk = item(
        store,
        item(store, image)["disks"][0]["disk"].as_str().unwrap(),
    );
    disk["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["content"]["type"] == "filesystem")
        .map(|p| {
            let mut fs = item(store, p["content"]["digest"].as_str().unwrap());
            assert!(fs["skeleton"].is_string(), "no skeleton stored: {fs}");
            fs.as_object_mut().unwrap().remove("skeleton");
            fs
        })
        .collect()
}

/// Checks out `digest` (with `extra` arguments) and checks it in again: by layout the copy
/// has the same serial number; rebuilt, the same filesystems apart from their layout.
fn round_trip(store: &Path, digest: &str, out: &Path, extra: &[&str]) {
    let mut args = vec!["checkout", digest, "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    ok(mirage(store, &args));
    let again = ok(mirage(store, &["checkin", out.to_str().unwrap()]))
        .trim()
        .to_string();
    if extra.contains(&"--rebuild") {
        assert_eq!(
            filesystems(store, &again),
            filesystems(store, digest),
            "{extra:?}"
        );
    } else {
        assert_eq!(again, digest, "{extra:?}");
    }
}

fn sfdisk(img: &Path, script: &str) {
    mirage_client::demo::sfdisk(img, script).unwrap();
}

/// A sparse file of `len` bytes at `path`.
/// Checks `img` in; its digest and `mirage show --json`.
fn checkin_and_show(store: &Path, img: &Path) -> (String, serde_json::Value) {
    let digest = ok(mirage(store, &["checkin", img.to_str().unwrap()]))
        .trim()
        .to_string();
    let show = serde_json::from_str(&ok(mirage(store, &["show", &digest, "--json"]))).unwrap();
    (digest, show)
}

fn blank(path: &Path, len: u64) {
    std::fs::File::create(path).unwrap().set_len(len).unwrap();
}

fn rootfs(dir: &Path) -> PathBuf {
    let src = dir.join("rootfs");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::create_dir_all(src.join("usr/bin")).unwrap();
    std::fs::write(src.join("etc/hostname"), b"mirage-test\n").unwrap();
    std::fs::write(src.join("usr/bin/tool"), pseudo_random(11, 2_500_000)).unwrap();
    std::os::unix::fs::symlink("../usr/bin/tool", src.join("etc/tool-link")).unwrap();
    std::fs::create_dir_all(src.join("var")).unwrap();
    let odd = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"\xff\xfe\x80'old");
    std::fs::write(src.join("var").join(odd), b"latin-1 name\n").unwrap();
    src
}

/// GPT: BIOS boot (random bytes), ESP (FAT16 with two files), ext4 root.
fn gpt_image(dir: &Path) -> PathBuf {
    let img = dir.join("gpt.img");
    blank(&img, 96 << 20);
    sfdisk(
        &img,
        "label: gpt\nlabel-id: 11111111-2222-3333-4444-555555555555\n\
         start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649\n\
         start=4096, size=65536, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"EFI\"\n\
         start=69632, size=122880, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=\"root\"\n",
    );
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &pseudo_random(3, 300_000), 2048 * 512).unwrap();
    drop(f);
    run(Command::new("mkfs.fat")
        .args([
            "-F", "16", "-i", "12345678", "-n", "ESP", "--offset", "4096",
        ])
        .arg(&img)
        .arg("32768"));
    let boot = dir.join("BOOTX64.EFI");
    std::fs::write(&boot, pseudo_random(4, 150_000)).unwrap();
    let spec = format!("{}@@{}", img.display(), 4096 * 512);
    run(Command::new("mmd")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-i", &spec, "::/EFI"]));
    run(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-i", &spec])
        .arg(&boot)
        .arg("::/EFI/BOOTX64.EFI"));
    let src = rootfs(dir);
    let blocks = 122880 * 512 / 4096;
    run(Command::new("mke2fs")
        .args([
            "-q",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-L",
            "root",
            "-U",
            "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee",
        ])
        .args(["-E", &format!("offset={}", 69632 * 512)])
        .arg("-d")
        .arg(&src)
        .arg(&img)
        .arg(blocks.to_string()));
    img
}

#[test]
fn gpt_image_checks_in_deterministically_and_browses() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let img = gpt_image(dir.path());
    let v: serde_json::Value = serde_json::from_str(&ok(mirage(
        &store,
        &["checkin", img.to_str().unwrap(), "--json"],
    )))
    .unwrap();
    let digest = v["image"].as_str().unwrap().to_string();
    assert_eq!(v["stats"]["filesystems"], 2, "{v}");
    // Blocks no file reaches are not stored: far less than the 96 MiB disk.
    assert!(v["stats"]["new_bytes"].as_u64().unwrap() < 6 << 20, "{v}");
    // The same image again: same serial number, nothing new.
    let again: serde_json::Value = serde_json::from_str(&ok(mirage(
        &store,
        &["checkin", img.to_str().unwrap(), "--json"],
    )))
    .unwrap();
    assert_eq!(again["image"], v["image"]);
    assert_eq!(again["stats"]["items_new"], 0, "{again}");
    // Its qcow2 conversion: same serial number.
    let q = dir.path().join("gpt.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", "-c"])
        .arg(&img)
        .arg(&q));
    let via_qcow2 = ok(mirage(&store, &["checkin", q.to_str().unwrap()]));
    assert_eq!(via_qcow2.trim(), digest);
    // Browse.
    let show: serde_json::Value =
        serde_json::from_str(&ok(mirage(&store, &["show", &digest, "--json"]))).unwrap();
    let parts = show["disks"][0]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    assert!(parts[0]["content"]["raw"].is_string());
    assert_eq!(parts[1]["content"]["filesystem"], "vfat");
    // As `mkfs.fat -i` took it and `blkid` prints it.
    assert_eq!(parts[1]["content"]["uuid"], "1234-5678");
    assert_eq!(parts[2]["content"]["filesystem"], "ext4");
    assert_eq!(parts[2]["content"]["label"], "root");
    assert_eq!(
        parts[2]["content"]["uuid"],
        "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
    );
    assert_eq!(
        show["disks"][0]["disk_id"],
        "11111111-2222-3333-4444-555555555555"
    );
    assert!(ok(mirage(&store, &["show", &digest])).contains("ext4"));
    let ls = ok(mirage(&store, &["ls", &digest, "/etc"]));
    assert_eq!(
        ls.lines().collect::<Vec<_>>(),
        vec!["hostname", "tool-link"]
    );
    let long = ok(mirage(&store, &["ls", &digest, "/etc", "-l"]));
    assert!(long.contains("tool-link -> ../usr/bin/tool"), "{long}");
    let cat = mirage(&store, &["cat", &digest, "/usr/bin/tool"]);
    assert!(cat.status.success());
    assert!(cat.stdout == pseudo_random(11, 2_500_000), "cat differs");
    let esp = mirage(&store, &["cat", &format!("{digest}:2"), "/EFI/BOOTX64.EFI"]);
    assert!(
        esp.status.success(),
        "{}",
        String::from_utf8_lossy(&esp.stderr)
    );
    assert!(esp.stdout == pseudo_random(4, 150_000));
    // FAT looks names up without regard to case.
    let esp = mirage(&store, &["cat", &format!("{digest}:2"), "/efi/bootx64.efi"]);
    assert!(esp.stdout == pseudo_random(4, 150_000));
    // A name that is not UTF-8 is listed quoted as a shell takes it back, and found by its
    // bytes.
    let var = ok(mirage(&store, &["ls", &digest, "/var"]));
    assert_eq!(var.trim_end(), r"$'\xff\xfe\x80\'old'");
    let odd = Command::new(common::bin("mirage"))
        .arg("--store")
        .arg(&store)
        .args(["cat", &digest])
        .arg(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"/var/\xff\xfe\x80'old"),
        )
        .output()
        .unwrap();
    assert_eq!(ok(odd), "latin-1 name\n");
    let missing = mirage(&store, &["cat", &digest, "/nope"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no such file"));
}

#[test]
fn mbr_with_logical_swap_and_a_bare_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // MBR: FAT16, then an extended partition with a swap and an ext2 logical partition.
    let img = dir.path().join("mbr.img");
    blank(&img, 64 << 20);
    sfdisk(&img, "label: dos\nlabel-id: 0xdeadbeef\nstart=2048, size=32768, type=6, bootable\nstart=36864, type=5\nstart=38912, size=8192, type=82\nstart=49152, type=83\n");
    run(Command::new("mkfs.fat")
        .args(["-F", "16", "--offset", "2048"])
        .arg(&img)
        .arg("16384"));
    let swap = dir.path().join("swap");
    blank(&swap, 8192 * 512);
    run(Command::new("mkswap")
        .args(["-U", "01234567-89ab-4cde-8f01-23456789abcd", "-L", "myswap"])
        .arg(&swap));
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &std::fs::read(&swap).unwrap(), 38912 * 512)
        .unwrap();
    drop(f);
    let src = rootfs(dir.path());
    let blocks = ((64u64 << 20) - 49152 * 512) / 1024;
    run(Command::new("mke2fs")
        .args([
            "-q",
            "-t",
            "ext2",
            "-b",
            "1024",
            "-E",
            &format!("offset={}", 49152 * 512),
            "-d",
        ])
        .arg(&src)
        .arg(&img)
        .arg(blocks.to_string()));
    let (digest, show) = checkin_and_show(&store, &img);
    let parts = show["disks"][0]["partitions"].as_array().unwrap();
    let numbers: Vec<u64> = parts
        .iter()
        .map(|p| p["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, vec![1, 2, 5, 6]);
    assert_eq!(parts[0]["content"]["filesystem"], "vfat");
    assert_eq!(parts[2]["content"]["swap"], true);
    assert_eq!(
        parts[2]["content"]["uuid"],
        "01234567-89ab-4cde-8f01-23456789abcd"
    );
    assert_eq!(parts[2]["content"]["label"], "myswap");
    assert_eq!(parts[3]["content"]["filesystem"], "ext2");
    // As `sfdisk` took it (`label-id`) and prints it.
    assert_eq!(show["disks"][0]["disk_id"], "0xdeadbeef");
    let cat = mirage(&store, &["cat", &format!("{digest}:6"), "/etc/hostname"]);
    assert_eq!(cat.stdout, b"mirage-test\n");
    // A bare ext4 filesystem without a partition table.
    let bare = dir.path().join("bare.img");
    run(Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-d"])
        .arg(&src)
        .arg(&bare)
        .arg("32M"));
    let (d, show) = checkin_and_show(&store, &bare);
    assert_eq!(show["disks"][0]["table"], "none");
    assert_eq!(
        show["disks"][0]["partitions"][0]["content"]["filesystem"],
        "ext4"
    );
    assert!(ok(mirage(&store, &["ls", &d, "/usr/bin"])).contains("tool"));
}

/// A 16-byte MBR/EBR entry at `at` (a byte offset), and the sector's 55 AA.
fn table_entry(img: &Path, at: u64, ty: u8, lba: u32, sectors: u32) {
    let mut e = [0u8; 16];
    e[4] = ty;
    e[8..12].copy_from_slice(&lba.to_le_bytes());
    e[12..16].copy_from_slice(&sectors.to_le_bytes());
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &e, at).unwrap();
    let sector = at - at % 512;
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x55, 0xAA], sector + 510).unwrap();
}

/// An MBR disk of 4 KiB logical sectors (4Kn), whose table and EBR chain count in them: FAT12
/// of 4 KiB sectors, then an extended partition with a swap and an ext4 logical partition.
/// Read in 512-byte sectors its chain was "EBR at sector 4352 has no 55 AA signature".
#[test]
fn an_mbr_of_4k_sectors_is_read_in_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let img = dir.path().join("mbr4k.img");
    blank(&img, 100 << 20);
    let s = 4096u64;
    table_entry(&img, 446, 0xEF, 256, 4096);
    table_entry(&img, 462, 0x05, 4352, 25600 - 4352);
    // EBRs at 4352 and 6912, each partition 256 sectors after its EBR.
    table_entry(&img, 4352 * s + 446, 0x82, 256, 2048);
    table_entry(&img, 4352 * s + 462, 0x05, 2560, 8448);
    table_entry(&img, 6912 * s + 446, 0x83, 256, 8192);
    run(Command::new("mkfs.fat")
        .args(["-F", "12", "-S", "4096", "-n", "ESP4K", "--offset", "256"])
        .arg(&img)
        .arg("16384"));
    let swap = dir.path().join("swap");
    blank(&swap, 2048 * s);
    run(Command::new("mkswap").args(["-L", "swap4k"]).arg(&swap));
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &std::fs::read(&swap).unwrap(), 4608 * s).unwrap();
    drop(f);
    let src = rootfs(dir.path());
    run(Command::new("mke2fs")
        .args([
            "-q",
            "-t",
            "ext4",
            "-E",
            &format!("offset={}", 7168 * s),
            "-d",
        ])
        .arg(&src)
        .arg(&img)
        .arg("32M"));
    let (digest, show) = checkin_and_show(&store, &img);
    let disk = &show["disks"][0];
    assert_eq!(disk["sector_size"], 4096);
    let parts: Vec<(u64, u64)> = disk["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["number"].as_u64().unwrap(), p["start"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        parts,
        [(1, 256 * s), (2, 4352 * s), (5, 4608 * s), (6, 7168 * s)]
    );
    let contents = &disk["partitions"];
    assert_eq!(contents[0]["content"]["filesystem"], "vfat");
    assert_eq!(contents[2]["content"]["label"], "swap4k");
    assert_eq!(contents[3]["content"]["filesystem"], "ext4");
    assert!(ok(mirage(&store, &["show", &digest])).contains("in 4096-byte sectors"));
    let cat = mirage(&store, &["cat", &format!("{digest}:6"), "/etc/hostname"]);
    assert_eq!(cat.stdout, b"mirage-test\n");
    let out = dir.path().join("out.img");
    ok(mirage(
        &store,
        &["checkout", &digest, "-o", out.to_str().unwrap()],
    ));
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&img).unwrap());
}

#[test]
fn hostile_images_are_refused_and_nothing_is_registered() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let img = gpt_image(dir.path());
    // Corrupt the ext4 superblock's inode count per group.
    let bad = dir.path().join("bad.img");
    std::fs::copy(&img, &bad).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&bad).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0, 0, 0, 0], 69632 * 512 + 1024 + 0x28).unwrap();
    drop(f);
    let o = mirage(&store, &["checkin", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("partition 3") && err.contains("per group"),
        "{err}"
    );
    // Truncated image: the GPT entries and the filesystem are gone.
    let trunc = dir.path().join("trunc.img");
    std::fs::write(&trunc, &std::fs::read(&img).unwrap()[..4096]).unwrap();
    let o = mirage(&store, &["checkin", trunc.to_str().unwrap()]);
    assert!(!o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stderr).lines().count(), 1);
}

#[test]
fn raw_and_swap_partitions_check_out_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let img = dir.path().join("raw.img");
    blank(&img, 48 << 20);
    sfdisk(&img, "label: dos\nlabel-id: 0x0badcafe\nstart=2048, size=20480, type=da\nstart=22528, type=5\nstart=24576, size=8192, type=82\nstart=34816, type=7f\n");
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    // Boot code, a gap, an unknown partition with data and a zero run, another unknown one.
    std::os::unix::fs::FileExt::write_all_at(&f, &pseudo_random(1, 440), 0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &pseudo_random(2, 5000), 600_000).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &pseudo_random(3, 3 << 20), 2048 * 512).unwrap();
    std::os::unix::fs::FileExt::write_all_at(
        &f,
        &pseudo_random(4, 1 << 20),
        (2048 * 512) + (6 << 20),
    )
    .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &pseudo_random(5, 777_777), 34816 * 512 + 4096)
        .unwrap();
    drop(f);
    let swap = dir.path().join("swap");
    blank(&swap, 8192 * 512);
    run(Command::new("mkswap")
        .args(["-U", "0f0e0d0c-0b0a-4908-8706-050403020100", "-L", "sw"])
        .arg(&swap));
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &std::fs::read(&swap).unwrap(), 24576 * 512)
        .unwrap();
    drop(f);
    let digest = ok(mirage(&store, &["checkin", img.to_str().unwrap()]))
        .trim()
        .to_string();
    let out = dir.path().join("out.img");
    ok(mirage(
        &store,
        &["checkout", &digest, "-o", out.to_str().unwrap()],
    ));
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(&img).unwrap(),
        "checkout differs from the original"
    );
    assert!(std::fs::metadata(&out).unwrap().len() == 48 << 20);
    // qcow2 output, compared by qemu-img.
    let q = dir.path().join("out.qcow2");
    ok(mirage(
        &store,
        &[
            "checkout",
            &digest,
            "-o",
            q.to_str().unwrap(),
            "--format",
            "qcow2",
        ],
    ));
    run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(&img)
        .arg(&q));
    // Checking the copy in gives the same serial number.
    assert_eq!(
        ok(mirage(&store, &["checkin", out.to_str().unwrap()])).trim(),
        digest
    );
    // An existing output is never overwritten.
    let again = mirage(&store, &["checkout", &digest, "-o", out.to_str().unwrap()]);
    assert!(!again.status.success());
}

#[test]
fn gpt_with_esp_and_ext4_round_trips_through_checkout() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let img = gpt_image(dir.path());
    // Attributes and a creation time on the ESP that mcopy alone would not reproduce.
    let spec = format!("{}@@{}", img.display(), 4096 * 512);
    run(Command::new("mattrib").env("MTOOLS_SKIP_CHECK", "1").args([
        "-i",
        &spec,
        "+h",
        "+s",
        "::/EFI/BOOTX64.EFI",
    ]));
    let digest = ok(mirage(&store, &["checkin", img.to_str().unwrap()]))
        .trim()
        .to_string();
    let original = std::fs::read(&img).unwrap();
    for mode in ["layout", "rebuild"] {
        let extra: &[&str] = if mode == "rebuild" {
            &["--rebuild"]
        } else {
            &[]
        };
        let qcow = dir.path().join(format!("{mode}.qcow2"));
        round_trip(
            &store,
            &digest,
            &qcow,
            &[&["--format", "qcow2"], extra].concat(),
        );
        let out = dir.path().join(format!("{mode}.img"));
        round_trip(&store, &digest, &out, extra);
        run(Command::new("e2fsck").arg("-fn").arg(format!(
            "{}?offset={}",
            out.display(),
            69632 * 512
        )));
        let esp = dir.path().join("esp.part");
        let bytes = std::fs::read(&out).unwrap();
        std::fs::write(&esp, &bytes[4096 * 512..(4096 + 65536) * 512]).unwrap();
        run(Command::new("fsck.fat").arg("-n").arg(&esp));
        assert!(
            original[..2048 * 512] == bytes[..2048 * 512],
            "{mode}: partition table area differs"
        );
        assert!(
            original[2048 * 512..4096 * 512] == bytes[2048 * 512..4096 * 512],
            "{mode}: BIOS boot partition differs"
        );
        if mode == "layout" {
            // Built from a sparse file, the image has nothing in its free blocks: laid out
            // again, it comes back byte for byte.
            assert!(original == bytes, "layout checkout is not byte-identical");
        }
    }
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A tree with every object kind and the metadata mke2fs -d drops set afterwards by debugfs.
fn rich_tree(dir: &Path) -> PathBuf {
    let src = rootfs(dir);
    std::fs::write(src.join("etc/shadow"), b"root:*:19000:0:99999:7:::\n").unwrap();
    std::os::unix::fs::lchown(src.join("etc/shadow"), Some(0), Some(42)).unwrap();
    std::fs::create_dir_all(src.join("dev")).unwrap();
    run(Command::new("mknod")
        .arg(src.join("dev/null"))
        .args(["c", "1", "3"]));
    run(Command::new("mknod")
        .arg(src.join("dev/nvme0n1p1"))
        .args(["b", "259", "1"]));
    run(Command::new("mkfifo").arg(src.join("dev/initctl")));
    std::fs::write(src.join("usr/bin/passwd"), pseudo_random(21, 60_000)).unwrap();
    std::fs::set_permissions(
        src.join("usr/bin/passwd"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
    std::fs::hard_link(src.join("usr/bin/tool"), src.join("usr/bin/tool2")).unwrap();
    std::os::unix::fs::symlink("x".repeat(300), src.join("etc/long-link")).unwrap();
    let sparse = std::fs::File::create(src.join("var-sparse")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"tail", 30 << 20).unwrap();
    let script = r#"
import os, socket, struct, sys
r = sys.argv[1]
s = socket.socket(socket.AF_UNIX); s.bind(os.path.join(r, "dev/log")); s.close()
os.setxattr(os.path.join(r, "usr/bin/passwd"), "security.capability", bytes.fromhex("0100000200200000000000000000000000000000"))
os.setxattr(os.path.join(r, "etc/hostname"), "user.origin", b"test")
os.setxattr(os.path.join(r, "etc/hostname"), "trusted.x", b"\x00\xff")
acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in [(1, 7, 0xffffffff), (2, 6, 1000), (4, 5, 0xffffffff), (16, 7, 0xffffffff), (32, 5, 0xffffffff)])
os.setxattr(os.path.join(r, "etc"), "system.posix_acl_default", acl)
os.utime(os.path.join(r, "etc/shadow"), ns=(-10**18, -86400 * 400 * 10**9 + 5))
"#;
    run(Command::new("python3").arg("-c").arg(script).arg(&src));
    src
}

fn fix_times(img: &str, dir: &Path, flags: u32) {
    // What mke2fs -d drops: nanoseconds, a time after 2038, a creation time, inode flags.
    let cmds = format!(
        "sif /etc/hostname mtime_extra {}\nsif /etc/hostname crtime @1000000000\nsif /etc/hostname crtime_extra {}\nsif /usr/bin/passwd mtime @-192522479\nsif /usr/bin/passwd mtime_extra {}\nsif /etc/shadow flags {flags:#x}\n",
        123_456_789u32 << 2,
        999u32 << 2,
        (5u32 << 2) | 1
    );
    debugfs_script(dir, img, &cmds);
}

#[test]
fn ext_filesystems_round_trip_through_checkout() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to build the source tree (device nodes, ownership)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let src = rich_tree(dir.path());
    // GPT: BIOS boot with bytes, ext4 (bigalloc) root; MBR: ext3 and ext2 (meta_bg) in logical
    // partitions.
    let gpt = dir.path().join("gpt.img");
    blank(&gpt, 128 << 20);
    sfdisk(&gpt, "label: gpt\nstart=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649\nstart=4096, size=200000, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709\n");
    let f = std::fs::OpenOptions::new().write(true).open(&gpt).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &pseudo_random(8, 200_000), 2048 * 512).unwrap();
    drop(f);
    run(Command::new("mke2fs")
        .args([
            "-q",
            "-t",
            "ext4",
            "-L",
            "root",
            // Allocation in clusters of 16 blocks: the bitmaps count clusters.
            "-O",
            "bigalloc",
            "-C",
            "16384",
            "-E",
            "offset=2097152",
            "-d",
        ])
        .arg(&src)
        .arg(&gpt)
        .arg("100000"));
    fix_times(
        &format!("{}?offset=2097152", gpt.display()),
        dir.path(),
        0x80070,
    );
    let mbr = dir.path().join("mbr.img");
    blank(&mbr, 160 << 20);
    sfdisk(
        &mbr,
        "label: dos\nstart=2048, type=5\nstart=4096, size=120000, type=83\nstart=126976, type=83\n",
    );
    run(Command::new("mke2fs")
        .args([
            "-q",
            "-t",
            "ext3",
            "-b",
            "1024",
            "-E",
            "offset=2097152",
            "-d",
        ])
        .arg(&src)
        .arg(&mbr)
        .arg("60000"));
    run(Command::new("mke2fs")
        .args([
            "-q",
            "-t",
            "ext2",
            // Group descriptors a block per meta group (four of them), as online growth
            // past the reserved table leaves them.
            "-O",
            "meta_bg,^resize_inode",
            "-g",
            "256",
            "-E",
            &format!("offset={}", 126976 * 512),
            "-d",
        ])
        .arg(&src)
        .arg(&mbr)
        .arg("30000"));
    fix_times(
        &format!("{}?offset=2097152", mbr.display()),
        dir.path(),
        0x70,
    );
    for (img, offsets, part) in [
        (&gpt, vec![4096 * 512], ""),
        (&mbr, vec![4096 * 512, 126976 * 512], ":5"),
    ] {
        let digest = ok(mirage(&store, &["checkin", img.to_str().unwrap()]))
            .trim()
            .to_string();
        for extra in [&[][..], &["--rebuild"][..]] {
            let out = dir.path().join(format!(
                "{}{}.out",
                img.file_name().unwrap().to_string_lossy(),
                extra.len()
            ));
            round_trip(&store, &digest, &out, extra);
            for off in &offsets {
                run(Command::new("e2fsck")
                    .arg("-fn")
                    .arg(format!("{}?offset={off}", out.display())));
            }
            // Identical partition tables and raw regions.
            let (a, b) = (std::fs::read(img).unwrap(), std::fs::read(&out).unwrap());
            assert!(
                a[..1 << 20] == b[..1 << 20],
                "{}: table area differs",
                img.display()
            );
            assert!(
                a[a.len() - (1 << 20)..] == b[b.len() - (1 << 20)..],
                "{}: disk tail differs",
                img.display()
            );
        }
        // And the metadata mke2fs -d cannot carry really is there.
        let fs_ref = format!("{digest}{part}");
        let long = ok(mirage(&store, &["ls", &fs_ref, "/etc", "-l"]));
        assert!(long.contains(".123456789 hostname"), "{long}");
        let dev = ok(mirage(&store, &["ls", &fs_ref, "/dev", "-l"]));
        assert!(
            dev.lines()
                .any(|l| l.starts_with('c') && l.ends_with(" null")),
            "{dev}"
        );
        assert!(
            dev.lines()
                .any(|l| l.starts_with('s') && l.ends_with(" log")),
            "{dev}"
        );
    }
}

#[test]
fn a_bare_fat_filesystem_is_not_mistaken_for_a_partition_table() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let img = dir.path().join("fat.img");
    blank(&img, 32 << 20);
    run(Command::new("mkfs.fat")
        .args(["-F", "16", "-i", "0badf00d", "-n", "BARE"])
        .arg(&img));
    let f = dir.path().join("hello.txt");
    std::fs::write(&f, b"hello fat\n").unwrap();
    let spec = format!("{}@@0", img.display());
    run(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-i", &spec])
        .arg(&f)
        .arg("::/hello.txt"));
    let (digest, show) = checkin_and_show(&store, &img);
    assert_eq!(show["disks"][0]["table"], "none");
    assert_eq!(
        show["disks"][0]["partitions"][0]["content"]["filesystem"],
        "vfat"
    );
    assert_eq!(
        ok(mirage(&store, &["cat", &digest, "/hello.txt"])),
        "hello fat\n"
    );
    for extra in [&[][..], &["--rebuild"][..]] {
        let out = dir.path().join(format!("out{}.img", extra.len()));
        round_trip(&store, &digest, &out, extra);
        run(Command::new("fsck.fat").arg("-n").arg(&out));
    }
}

#[test]
fn inline_files_read_as_zeros_past_their_inline_bytes() {
    // `mke2fs -d` with inline_data stores a sparse file as an inline inode whose size passes
    // its (empty) inline bytes; the kernel and e2fsck read the rest as zeros.
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let src = dir.path().join("tree");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/tiny"), b"inline\n").unwrap();
    std::fs::write(src.join("in-xattr"), pseudo_random(3, 150)).unwrap();
    std::fs::File::create(src.join("holes"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let img = dir.path().join("inline.img");
    blank(&img, 32 << 20);
    run(Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-O", "inline_data", "-I", "512", "-d"])
        .arg(&src)
        .arg(&img));
    let stat = run(Command::new("debugfs")
        .args(["-R", "stat /holes"])
        .arg(&img));
    assert!(
        String::from_utf8_lossy(&stat.stdout).contains("Size of inline data: 60"),
        "the fixture has no short inline file"
    );
    let digest = ok(mirage(&store, &["checkin", img.to_str().unwrap()]))
        .trim()
        .to_string();
    let holes = mirage(&store, &["cat", &digest, "/holes"]);
    assert!(holes.status.success());
    assert_eq!(holes.stdout, vec![0u8; 1 << 20]);
    assert_eq!(
        mirage(&store, &["cat", &digest, "/in-xattr"]).stdout,
        pseudo_random(3, 150)
    );
    for extra in [&[][..], &["--rebuild"][..]] {
        let out = dir.path().join(format!("out{}.img", extra.len()));
        round_trip(&store, &digest, &out, extra);
        run(Command::new("e2fsck").arg("-fn").arg(&out));
    }
}

/// `img` with a journal that needs recovery: the blocks that `change` (debugfs requests) alters
/// in a copy, logged as one transaction with `debugfs`'s journal writer (`jo_args` open the
/// journal, e.g. with checksums) and not replayed. Returns the changed copy.
fn dirty_journal(dir: &Path, img: &Path, bs: u64, jo_args: &str, change: &[&str]) -> PathBuf {
    let changed = dir.join(format!(
        "{}-changed.img",
        img.file_stem().unwrap().to_string_lossy()
    ));
    std::fs::copy(img, &changed).unwrap();
    for c in change {
        run(Command::new("debugfs").args(["-w", "-R", c]).arg(&changed));
    }
    let (a, b) = (
        std::fs::read(img).unwrap(),
        std::fs::read(&changed).unwrap(),
    );
    let blocks: Vec<usize> = (0..a.len() / bs as usize)
        .filter(|i| {
            let r = i * bs as usize..(i + 1) * bs as usize;
            a[r.clone()] != b[r]
        })
        .collect();
    assert!(blocks.len() > 3, "the change altered {blocks:?}");
    let data = dir.join("logged.bin");
    let bytes: Vec<u8> = blocks
        .iter()
        .flat_map(|i| b[i * bs as usize..(i + 1) * bs as usize].to_vec())
        .collect();
    std::fs::write(&data, bytes).unwrap();
    let list = blocks.iter().map(|b| b.to_string()).collect::<Vec<_>>();
    debugfs_script(
        dir,
        img,
        &format!(
            "jo {jo_args}\njw -b {} {}\njc\n",
            list.join(","),
            data.display()
        ),
    );
    changed
}

fn needs_recovery(img: &Path) -> bool {
    let out = run(Command::new("dumpe2fs").arg("-h").arg(img));
    String::from_utf8_lossy(&out.stdout).contains("needs_recovery")
}

#[test]
fn a_journal_that_needs_recovery_is_replayed_as_a_mount_would() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let src = rootfs(dir.path());
    for (bs, fs_type, jo_args) in [
        (4096u64, "ext4", "-c -v 3"),
        (1024, "ext4", ""),
        (4096, "ext3", ""),
    ] {
        let img = dir.path().join(format!("{fs_type}-{bs}.img"));
        blank(&img, 32 << 20);
        run(Command::new("mke2fs")
            .args(["-q", "-t", fs_type, "-b", &bs.to_string(), "-d"])
            .arg(&src)
            .arg(&img));
        let changed = dirty_journal(
            dir.path(),
            &img,
            bs,
            jo_args,
            &[
                "sif /etc/hostname mode 0100600",
                "mkdir /srv",
                "symlink /srv/link /etc/hostname",
            ],
        );
        assert!(needs_recovery(&img), "{fs_type} {bs}: the fixture is clean");
        let digest = ok(mirage(&store, &["checkin", img.to_str().unwrap()]))
            .trim()
            .to_string();
        let expect = ok(mirage(&store, &["checkin", changed.to_str().unwrap()]))
            .trim()
            .to_string();
        for path in ["/", "/etc", "/srv"] {
            assert_eq!(
                ok(mirage(&store, &["ls", &digest, path, "-l"])),
                ok(mirage(&store, &["ls", &expect, path, "-l"])),
                "{fs_type} {bs}: {path} as recovered"
            );
        }
        // The copy is the recovered filesystem: clean, no log left to replay.
        let out = dir.path().join(format!("{fs_type}-{bs}.out"));
        ok(mirage(
            &store,
            &["checkout", &digest, "-o", out.to_str().unwrap()],
        ));
        run(Command::new("e2fsck").arg("-fn").arg(&out));
        assert!(!needs_recovery(&out));
    }
    // A block logged by one transaction and revoked by a later one keeps its old bytes.
    let img = dir.path().join("revoke.img");
    blank(&img, 32 << 20);
    run(Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-b", "4096", "-d"])
        .arg(&src)
        .arg(&img));
    let bmap = run(Command::new("debugfs")
        .args(["-R", "bmap /usr/bin/tool 0"])
        .arg(&img));
    let block: u64 = String::from_utf8_lossy(&bmap.stdout)
        .trim()
        .parse()
        .unwrap();
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, pseudo_random(77, 4096)).unwrap();
    let revoked = dir.path().join("revoked.img");
    std::fs::copy(&img, &revoked).unwrap();
    for (target, cmds) in [
        (&img, format!("jo\njw -b {block} {}\njc\n", junk.display())),
        (
            &revoked,
            format!(
                "jo\njw -b {block} {}\njc\njo\njw -r {block}\njc\n",
                junk.display()
            ),
        ),
    ] {
        debugfs_script(dir.path(), target, &cmds);
        assert!(needs_recovery(target));
    }
    let tool = pseudo_random(11, 2_500_000);
    for (image, first) in [
        (&img, pseudo_random(77, 4096)),
        (&revoked, tool[..4096].to_vec()),
    ] {
        let d = ok(mirage(&store, &["checkin", image.to_str().unwrap()]))
            .trim()
            .to_string();
        let got = mirage(&store, &["cat", &d, "/usr/bin/tool"]).stdout;
        assert_eq!(got.len(), tool.len());
        assert!(got[..4096] == first[..], "{image:?}: first block");
        assert!(got[4096..] == tool[4096..], "{image:?}: the rest");
    }
    // A log whose start lies outside it: a clear error, nothing registered.
    let jmap = run(Command::new("debugfs").args(["-R", "bmap <8> 0"]).arg(&img));
    let jsb: u64 = String::from_utf8_lossy(&jmap.stdout)
        .trim()
        .parse()
        .unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &u32::MAX.to_be_bytes(), jsb * 4096 + 0x1C)
        .unwrap();
    drop(f);
    let bad = mirage(
        &store,
        &["checkin", img.to_str().unwrap(), "--name", "dirty"],
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("journal: log bounds"), "{err}");
    assert!(!ok(mirage(&store, &["images"])).contains("dirty"));
}

#[test]
fn a_qcow2_overlay_is_read_with_its_backing_chain_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let base = gpt_image(dir.path());
    let overlay = dir.path().join("overlay.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&overlay));
    run(Command::new("qemu-io")
        .args(["-c", "write -P 0x61 2M 64k"])
        .arg(&overlay));
    let flat = dir.path().join("flat.img");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&overlay)
        .arg(&flat));
    let refused = mirage(&store, &["checkin", overlay.to_str().unwrap()]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("backing file") && err.contains("--follow-backing"),
        "{err}"
    );
    let followed = ok(mirage(
        &store,
        &["checkin", "--follow-backing", overlay.to_str().unwrap()],
    ));
    assert_eq!(
        followed,
        ok(mirage(&store, &["checkin", flat.to_str().unwrap()]))
    );
    assert_ne!(
        followed,
        ok(mirage(&store, &["checkin", base.to_str().unwrap()]))
    );
}

#[test]
fn an_image_walked_while_the_store_opens_checks_in_the_same_and_failures_stay_apart() {
    use mirage_client::indexer::{checkin_prepared, checkin_with, prepare_while, CheckinOptions};
    use mirage_node::{Store, StoreOptions};
    let dir = tempfile::tempdir().unwrap();
    let img = gpt_image(dir.path());
    let open = |p: &Path| {
        Store::open(
            p,
            StoreOptions {
                create: true,
                ..Default::default()
            },
        )
    };
    let opts = CheckinOptions {
        threads: 2,
        hints: true,
    };
    let (store, prepared) = prepare_while(|| open(&dir.path().join("a")), &img, 2);
    let (beside, _) = checkin_prepared(&store.unwrap(), prepared.unwrap(), opts).unwrap();
    let (after, _) = checkin_with(&open(&dir.path().join("b")).unwrap(), &img, opts).unwrap();
    assert_eq!(beside, after);
    // A store that cannot be opened (a file stands where its parent directory would be)
    // leaves the image prepared; an image that cannot be read leaves the store open.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let (store, prepared) = prepare_while(|| open(&file.join("store")), &img, 2);
    assert!(store.is_err());
    assert!(prepared.is_ok());
    let missing = dir.path().join("missing.img");
    let (store, prepared) = prepare_while(|| open(&dir.path().join("c")), &missing, 2);
    assert!(store.is_ok());
    let err = prepared.unwrap_err().to_string();
    assert!(err.contains("missing.img"), "{err}");
}
