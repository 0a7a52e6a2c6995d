//! calicoctl: the command line of Calico. Each command group lives in `commands/`; they share
//! a docopt-style argument splitter (`args`), usage texts (`usage`) and tables (`table`).

mod args;
mod commands;
mod local;
mod table;
mod usage;

use std::process::ExitCode;

use args::UsageError;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(commands::dispatch(&argv)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            match error.downcast_ref::<UsageError>() {
                Some(usage) => eprintln!("{usage}"),
                None => eprintln!("{error:#}"),
            }
            ExitCode::FAILURE
        }
    }
}
