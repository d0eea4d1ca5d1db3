//! `completions` and `man`: the command line's own documentation, made
//! from its clap definition (never written by hand, never out of date).

use std::io::Write as _;
use std::path::Path;

use crate::exit::Exit;

/// A completion script for `shell`, on stdout.
pub(super) fn completions(mut cmd: clap::Command, shell: clap_complete::Shell) -> Exit {
    clap_complete::generate(shell, &mut cmd, "mixpanel-rotator", &mut std::io::stdout());
    Exit::Ok
}

/// The manual page, on stdout; or every page (the command's and one per
/// subcommand) into `dir`, their paths on stdout.
pub(super) fn man_page(cmd: clap::Command, dir: Option<&Path>) -> Exit {
    let mut out = std::io::stdout().lock();
    let Some(dir) = dir else {
        return match clap_mangen::Man::new(cmd).render(&mut out) {
            Ok(()) => Exit::Ok,
            Err(e) => {
                eprintln!("error: cannot write the manual page: {e}");
                Exit::Failed
            }
        };
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!(
            "error: cannot create {} (`--dir`) for the manual pages: {e}; name a directory this user can write",
            dir.display()
        );
        return Exit::Failed;
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let pages = std::iter::once(cmd.clone()).chain(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    for page in pages {
        match clap_mangen::Man::new(page).generate_to(dir) {
            Ok(path) => {
                let _ = writeln!(out, "{}", path.display());
            }
            Err(e) => {
                eprintln!(
                    "error: cannot write a manual page into {} (`--dir`): {e}",
                    dir.display()
                );
                return Exit::Failed;
            }
        }
    }
    Exit::Ok
}
