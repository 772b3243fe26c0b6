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
