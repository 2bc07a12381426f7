//! `gateway-agent check`: compile a config directory and print every object's status.

use gateway_model::check::{Format, render};

use crate::{
    cli::{CheckArgs, OutputFormat},
    snapshot::Snapshot,
    source::file::ConfigDir,
};

/// Prints the statuses; fails (non-zero exit) with file and line when a file does not parse.
pub fn run(args: &CheckArgs) -> anyhow::Result<()> {
    let reading = ConfigDir::default().read(&args.config_dir)?;
    if !reading.errors.is_empty() {
        for e in &reading.errors {
            eprintln!("error: {e}");
        }
        anyhow::bail!(
            "{} file(s) under {} do not parse",
            reading.errors.len(),
            args.config_dir.display()
        );
    }
    let mut compiler = gateway_model::Compiler::new(crate::compile_options(args.bind_address));
    let snap = Snapshot::compile(1, reading, &mut compiler);
    let format = match args.output {
        OutputFormat::Yaml => Format::Yaml,
        OutputFormat::Json => Format::Json,
    };
    print!("{}", render(&snap.statuses, format));
    Ok(())
}
