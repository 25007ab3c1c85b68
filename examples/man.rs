//! Writes the man pages (`clawnode.1` and one per subcommand, e.g.
//! `clawnode-run.1`) into the directory given as the only argument.
//! Used by `packaging/build.sh`.

use std::path::PathBuf;

use clap::CommandFactory as _;

fn main() -> std::io::Result<()> {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: man OUT_DIR");
        std::process::exit(2);
    };
    std::fs::create_dir_all(&dir)?;
    let cmd = clawnode::cli::Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    std::fs::write(dir.join("clawnode.1"), page)?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("clawnode-{}", sub.get_name());
        // A short-lived program: leaking the name gives clap its &'static str.
        let static_name: &'static str = Box::leak(name.clone().into_boxed_str());
        let sub = sub.clone().name(static_name).display_name(static_name);
        let mut page = Vec::new();
        clap_mangen::Man::new(sub).render(&mut page)?;
        std::fs::write(dir.join(format!("{name}.1")), page)?;
    }
    Ok(())
}
