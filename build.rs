//! Rebuilds when a migration is added: `sqlx::migrate!` embeds the files of
//! `migrations/` at compile time, and cargo does not watch that directory
//! on its own (a new file would otherwise be missing from the binary).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
