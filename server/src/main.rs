//! The `glimpse` command line.

fn main() -> anyhow::Result<()> {
    Ok(())
}
