#![no_main]
//! The qcow2 reader: header, L1/L2 tables, zero and compressed clusters, on arbitrary bytes
//! (written to a file in /dev/shm, since qcow2 images are files; unlinked once open, so that
//! a run that is killed leaves nothing behind).
use libfuzzer_sys::fuzz_target;
use mirage_image::image::BlockSource;

fuzz_target!(|data: &[u8]| {
    let path = std::path::PathBuf::from(format!("/dev/shm/mirage-fuzz-qcow2-{}", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let opened = std::fs::File::open(&path);
    let _ = std::fs::remove_file(&path);
    let Ok(f) = opened else { return };
    if let Ok(q) = mirage_image::image::qcow2::Qcow2::open(f, &path) {
        let mut buf = vec![0u8; (q.len().min(256 << 10)) as usize];
        let _ = q.read_at(&mut buf, 0);
        let _ = q.data_ranges(0, q.len().min(64 << 20));
    }
});
