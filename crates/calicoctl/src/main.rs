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
    quiet_on_closed_stdout();
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

/// `calicoctl endpoint show | head`: once the reader has gone, a print fails with a broken
/// pipe, and Rust's `println!` panics on it. Such a panic is not an error of ours: end quietly
/// with the status a shell reports for a process stopped by SIGPIPE (128 + 13), as C tools do.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}
