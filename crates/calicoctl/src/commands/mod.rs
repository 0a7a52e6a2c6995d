//! One module per command group; `dispatch` picks the group from the first word.

mod bgp;
mod config;
mod container;
mod endpoint;
mod ipam;
mod master;
mod node;
mod pool;
mod profile;
mod status;
mod system;

use anyhow::Result;
use calico_datastore::resources::Resources;

use crate::args::usage_error;
use crate::usage;

pub async fn dispatch(argv: &[String]) -> Result<()> {
    let Some((command, rest)) = argv.split_first() else {
        return Err(usage_error(usage::MAIN, "No command given."));
    };
    match command.as_str() {
        "profile" => profile::run(rest).await,
        "endpoint" => endpoint::run(rest).await,
        "pool" => pool::run(rest).await,
        "bgp" => bgp::run(rest).await,
        "config" => config::run(rest).await,
        "node" => node::run(rest).await,
        "container" => container::run(rest).await,
        "ipam" => ipam::run(rest).await,
        "master" => master::run(rest).await,
        "checksystem" => system::checksystem(rest).await,
        "diags" => system::diags(rest).await,
        "status" => status::run(rest).await,
        "version" | "--version" => {
            println!("{}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        "-h" | "--help" | "help" => {
            print!("{}", usage::MAIN);
            Ok(())
        }
        other => Err(usage_error(
            usage::MAIN,
            format!("Unknown command '{other}'."),
        )),
    }
}

/// The datastore, as the environment names it.
async fn connect() -> Result<Resources> {
    Ok(Resources::new(calico_datastore::connect_from_env().await?))
}

/// Splits a command group's arguments; `None` when `--help` was asked for (and answered).
fn parse_args(
    argv: &[String],
    options: &[crate::args::OptSpec],
    usage: &'static str,
) -> Result<Option<crate::args::Args>> {
    let args = crate::args::Args::parse(argv, options, usage)?;
    if args.help {
        print!("{usage}");
        return Ok(None);
    }
    Ok(Some(args))
}
