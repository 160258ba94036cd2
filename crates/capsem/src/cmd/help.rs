//! `capsem completions` and `capsem man`: shell completions and manual
//! pages, generated from the same clap definitions as `--help`.

use std::path::Path;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::exit::Failure;

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Result<i32, Failure> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "capsem", &mut script);
    crate::out::write(format_args!("{}", String::from_utf8_lossy(&script)));
    Ok(0)
}

/// Prints capsem.1, or writes it and one page per subcommand into `dir`.
pub fn man(dir: Option<&Path>) -> Result<i32, Failure> {
    let command = Cli::command();
    let Some(dir) = dir else {
        let mut page = Vec::new();
        render(command, &mut page)?;
        crate::out::write(format_args!("{}", String::from_utf8_lossy(&page)));
        return Ok(0);
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::new(format!("creating {}: {e}", dir.display())))?;
    let mut pages = vec![("capsem.1".to_owned(), command.clone())];
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        let name = format!("capsem-{}", sub.get_name());
        pages.push((format!("{name}.1"), sub.clone().name(name)));
    }
    for (file, page) in pages {
        let path = dir.join(&file);
        let mut text = Vec::new();
        render(page, &mut text)?;
        std::fs::write(&path, text)
            .map_err(|e| Failure::new(format!("writing {}: {e}", path.display())))?;
    }
    Ok(0)
}

fn render(command: clap::Command, out: &mut Vec<u8>) -> Result<(), Failure> {
    clap_mangen::Man::new(command)
        .render(out)
        .map_err(|e| Failure::new(format!("rendering the manual page: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_that_knows_the_subcommands() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "capsem", &mut script);
            let text = String::from_utf8(script).unwrap();
            for sub in ["doctor", "sessions", "settings", "completions"] {
                assert!(text.contains(sub), "{shell:?} lacks {sub}");
            }
        }
    }

    #[test]
    fn man_pages_are_written_per_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        man(Some(dir.path())).unwrap();
        let page = std::fs::read_to_string(dir.path().join("capsem-doctor.1")).unwrap();
        assert!(page.contains(".TH capsem-doctor"), "{page}");
        assert!(dir.path().join("capsem.1").exists());
    }
}
