//! Where the embedded store lives.

use std::path::PathBuf;

/// The default store directory: `$MIRAGE_STORE` is handled by the CLI; this is the fallback,
/// `$XDG_DATA_HOME/mirage`, else `~/.local/share/mirage`.
pub fn default_store() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("mirage");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/mirage")
}

/// The local cache store of a cluster (remote mode): `$XDG_CACHE_HOME/mirage/clusters/<url>`,
/// else `~/.cache/mirage/clusters/<url>`, the URL made a safe file name.
pub fn default_cache(cluster_url: &str) -> PathBuf {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => std::env::var_os("HOME")
            .map_or_else(|| PathBuf::from("."), PathBuf::from)
            .join(".cache"),
    };
    let name: String = cluster_url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    base.join("mirage/clusters").join(name)
}
