//! `calicoctl config …`: agent (felix) and BGP settings, stored as raw strings.

use anyhow::{bail, Result};
use calico_model::config::{lookup, names, Scope};
use calico_model::keys;

use super::{connect, parse_args};
use crate::args::{flag, usage_error, OptSpec};
use crate::usage::CONFIG as USAGE;

const OPTIONS: &[OptSpec] = &[flag("--remove"), flag("--force")];

pub async fn run(argv: &[String]) -> Result<()> {
    let Some(args) = parse_args(argv, OPTIONS, USAGE)? else {
        return Ok(());
    };
    let words = args.words();
    // `config node bgp …` is this host's own BGP setting, over the global one.
    let (scope, node, name, value) = match words.as_slice() {
        ["felix", name, value @ ..] if value.len() <= 1 => {
            (Scope::Felix, None, *name, value.first().copied())
        }
        ["bgp", name, value @ ..] if value.len() <= 1 => {
            (Scope::Bgp, None, *name, value.first().copied())
        }
        ["node", "bgp", name, value @ ..] if value.len() <= 1 => (
            Scope::Bgp,
            Some(crate::local::node_name(None)?),
            *name,
            value.first().copied(),
        ),
        _ => return Err(usage_error(USAGE, "Invalid config command.")),
    };
    if value.is_some() && args.flag("--remove") {
        return Err(usage_error(USAGE, "Give a value or --remove, not both."));
    }
    let force = args.flag("--force");
    let option = lookup(scope, name);
    let key_name = match option {
        Some(option) => option.key,
        None if force => {
            calico_model::names::validate_name("setting name", name)?;
            eprintln!("The setting '{name}' is not one calicoctl knows; storing it because of --force.");
            name
        }
        None => bail!(
            "The setting '{name}' is not recognized. Known settings: {}. Use --force to store it anyway.",
            names(scope).join(", ")
        ),
    };
    let key = match (scope, node) {
        (Scope::Felix, _) => keys::felix_config(key_name),
        (Scope::Bgp, None) => keys::bgp_global(key_name),
        (Scope::Bgp, Some(node)) => keys::bgp_host(&node, key_name),
    };
    let store = connect().await?;
    let store = store.store();
    match value {
        None if args.flag("--remove") => match store.delete(&key).await? {
            true => println!("Value removed"),
            false => println!("No value configured"),
        },
        None => match store.get(&key).await? {
            Some(kv) => println!("{}", kv.value),
            None => println!("No value configured"),
        },
        Some(value) => {
            let stored = match (option, force) {
                (Some(option), _) => match option.canonical_value(value) {
                    Ok(canonical) => canonical,
                    Err(e) if force => {
                        eprintln!("{e}; storing it because of --force.");
                        value.to_string()
                    }
                    Err(e) => bail!("{e}. Use --force to store it anyway."),
                },
                (None, _) => value.to_string(),
            };
            store.put(&key, &stored).await?;
        }
    }
    Ok(())
}
