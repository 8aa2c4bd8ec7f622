//! Write the man pages and shell completions for the package: `cargo run --example gen-assets -- OUTDIR`.
//!
//! Both are generated from `auth0_rudderstack::cli::Cli`, the parser the binary itself uses, so they cannot
//! drift from the real flags. This is an example rather than a `build.rs` or a hidden subcommand so that
//! clap_mangen and clap_complete stay dev-dependencies and the installed binary does not carry them.
//!
//! Layout of OUTDIR (the paths `[package.metadata.deb]` in Cargo.toml points at):
//! - `man/auth0-rudderstack.1` and one `auth0-rudderstack-<command>.1` per command, gzipped by cargo-deb;
//! - `completions/auth0-rudderstack.bash`, `completions/_auth0-rudderstack` (zsh),
//!   `completions/auth0-rudderstack.fish`.

use std::path::PathBuf;
use std::process::ExitCode;

use auth0_rudderstack::cli::Cli;
use clap::CommandFactory;
use clap_complete::Shell;

const BIN: &str = "auth0-rudderstack";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: cargo run --example gen-assets -- OUTDIR");
        return ExitCode::from(2);
    };
    match generate(PathBuf::from(out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn generate(out: PathBuf) -> std::io::Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    // Start from empty directories: a page left over from a renamed command would otherwise be packaged.
    for dir in [&man, &completions] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
    }

    // One page for the program and one per command (`man auth0-rudderstack-sync`), like git's.
    clap_mangen::generate_to(Cli::command(), &man)?;

    let mut cmd = Cli::command();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut cmd, BIN, &completions)?;
        eprintln!("wrote {}", path.display());
    }
    let mut pages = std::fs::read_dir(&man)?.map(|e| e.map(|e| e.path())).collect::<Result<Vec<_>, _>>()?;
    pages.sort();
    for page in pages {
        eprintln!("wrote {}", page.display());
    }
    Ok(())
}
