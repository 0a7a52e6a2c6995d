//! `calicoctl profile …`: profiles, their tags and their rules.

use std::io::Read;

use anyhow::{bail, Context, Result};
use calico_datastore::resources::{EndpointFilter, Resources};
use calico_model::grammar::parse_rule;
use calico_model::names::validate_name;
use calico_model::profile::{Direction, ProfileRules};
use calico_model::rule::Rule;

use super::{connect, parse_args};
use crate::args::{flag, usage_error, valued, Args, OptSpec};
use crate::table::Table;
use crate::usage::PROFILE as USAGE;

const OPTIONS: &[OptSpec] = &[flag("--detailed"), flag("--no-check"), valued("--at")];

pub async fn run(argv: &[String]) -> Result<()> {
    let Some(args) = parse_args(argv, OPTIONS, USAGE)? else {
        return Ok(());
    };
    let words = args.words();
    match words.as_slice() {
        ["show"] => {
            args.reject_options_except(&["--detailed"], USAGE)?;
            show(&connect().await?, args.flag("--detailed")).await
        }
        ["add", name] => {
            args.reject_options_except(&[], USAGE)?;
            add(name).await
        }
        ["remove", name] => {
            args.reject_options_except(&["--no-check"], USAGE)?;
            remove(name, args.flag("--no-check")).await
        }
        [name, "tag", rest @ ..] => {
            args.reject_options_except(&[], USAGE)?;
            validate_name("profile name", name)?;
            tag(name, rest).await
        }
        [name, "rule", rest @ ..] => {
            validate_name("profile name", name)?;
            rule(name, rest, &args).await
        }
        _ => Err(usage_error(USAGE, "Invalid profile command.")),
    }
}

async fn show(r: &Resources, detailed: bool) -> Result<()> {
    let names = r.profile_names().await?;
    if !detailed {
        let mut table = Table::new(&["Name"]);
        names.into_iter().for_each(|n| table.row(vec![n]));
        print!("{}", table.render());
        return Ok(());
    }
    let endpoints = r.endpoints(&EndpointFilter::default()).await?;
    let mut table = Table::new(&[
        "Name",
        "Host",
        "Orchestrator ID",
        "Workload ID",
        "Endpoint ID",
        "State",
    ]);
    for name in names {
        let members: Vec<_> = endpoints
            .iter()
            .filter_map(|rec| Some((&rec.key, rec.endpoint.as_ref().ok()?)))
            .filter(|(_, ep)| ep.profile_ids.contains(&name))
            .collect();
        if members.is_empty() {
            let none = || "None".to_string();
            table.row(vec![name.clone(), none(), none(), none(), none(), none()]);
        }
        for (key, ep) in members {
            let state = serde_json::to_value(ep.state)?
                .as_str()
                .unwrap_or_default()
                .to_string();
            table.row(vec![
                name.clone(),
                key.host.clone(),
                key.orchestrator.clone(),
                key.workload.clone(),
                key.endpoint_id.clone(),
                state,
            ]);
        }
    }
    print!("{}", table.render());
    Ok(())
}

async fn add(name: &str) -> Result<()> {
    validate_name("profile name", name)?;
    if connect().await?.create_profile(name).await? {
        println!("Created profile {name}");
    } else {
        println!("Profile {name} already exists.");
    }
    Ok(())
}

async fn remove(name: &str, no_check: bool) -> Result<()> {
    validate_name("profile name", name)?;
    let r = connect().await?;
    if !r.profile_exists(name).await? {
        bail!("Profile {name} not found.");
    }
    if !no_check {
        let users = r.endpoints_using(name).await?;
        if let Some(first) = users.first() {
            bail!(
                "Cannot remove profile {name} - it is in use by {} endpoint(s), e.g. {} on host {}.\n\
                 Use the '--no-check' flag to remove the profile anyway.",
                users.len(),
                first.endpoint_id,
                first.host
            );
        }
    }
    if !r.delete_profile(name).await? {
        bail!("Profile {name} not found.");
    }
    println!("Deleted profile {name}");
    Ok(())
}

async fn tag(profile: &str, words: &[&str]) -> Result<()> {
    let r = connect().await?;
    match words {
        ["show"] => {
            for tag in r.get_profile(profile).await?.tags {
                println!("{tag}");
            }
        }
        ["add", tag] => {
            validate_name("tag", tag)?;
            let added = r
                .update_tags(profile, |tags| {
                    let new = !tags.iter().any(|t| t == tag);
                    if new {
                        tags.push(tag.to_string());
                    }
                    Ok(new)
                })
                .await?;
            match added {
                true => println!("Tag {tag} added to profile {profile}"),
                false => println!("Tag {tag} is already on profile {profile}"),
            }
        }
        ["remove", tag] => {
            validate_name("tag", tag)?;
            r.update_tags(profile, |tags| {
                let before = tags.len();
                tags.retain(|t| t != tag);
                match tags.len() < before {
                    true => Ok(true),
                    false => Err(refused(format!("Tag {tag} is not on profile {profile}"))),
                }
            })
            .await?;
            println!("Tag {tag} removed from profile {profile}");
        }
        _ => return Err(usage_error(USAGE, "Invalid profile tag command.")),
    }
    Ok(())
}

fn refused(message: String) -> calico_datastore::resources::ResourceError {
    calico_datastore::resources::ResourceError::Refused(message)
}

fn direction(word: &str) -> Result<Direction> {
    Direction::from_word(word).ok_or_else(|| {
        usage_error(
            USAGE,
            format!("Expected 'inbound' or 'outbound', not '{word}'."),
        )
    })
}

/// `--at`: a position counting from 1.
fn position(args: &Args) -> Result<Option<usize>> {
    args.value("--at")
        .map(|text| {
            text.parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    anyhow::anyhow!("Invalid position '{text}' for --at: positions count from 1.")
                })
        })
        .transpose()
}

async fn rule(profile: &str, words: &[&str], args: &Args) -> Result<()> {
    match words {
        ["add", dir, rule_words @ ..] => {
            let direction = direction(dir)?;
            let rule = parse_rule(rule_words)?;
            rule_add(profile, direction, rule, position(args)?).await
        }
        ["remove", dir, rule_words @ ..] => {
            let direction = direction(dir)?;
            let target = match (position(args)?, rule_words.is_empty()) {
                (Some(at), true) => Target::Position(at),
                (None, false) => Target::Rule(parse_rule(rule_words)?),
                _ => {
                    return Err(usage_error(
                        USAGE,
                        "Give either --at=<POSITION> or the rule to remove.",
                    ))
                }
            };
            rule_remove(profile, direction, target).await
        }
        ["show"] => {
            args.reject_options_except(&[], USAGE)?;
            rule_show(profile).await
        }
        ["json"] => {
            args.reject_options_except(&[], USAGE)?;
            let rules = connect().await?.get_profile(profile).await?.rules;
            println!("{}", serde_json::to_string_pretty(&rules)?);
            Ok(())
        }
        ["update"] => {
            args.reject_options_except(&[], USAGE)?;
            rule_update(profile).await
        }
        _ => Err(usage_error(USAGE, "Invalid profile rule command.")),
    }
}

async fn rule_add(
    profile: &str,
    direction: Direction,
    rule: Rule,
    at: Option<usize>,
) -> Result<()> {
    let added = connect()
        .await?
        .update_rules(profile, |rules| {
            let list = rules.get_mut(direction);
            if list.contains(&rule) {
                return Ok(false);
            }
            let index = at.unwrap_or(list.len() + 1) - 1;
            if index > list.len() {
                return Err(refused(format!(
                    "Position {} is out of range: profile {profile} has {} {direction} rule(s), so a new one can go at 1 to {}.",
                    index + 1,
                    list.len(),
                    list.len() + 1
                )));
            }
            list.insert(index, rule.clone());
            Ok(true)
        })
        .await?;
    if !added {
        println!("Rule already present, skipping.");
    }
    Ok(())
}

enum Target {
    Position(usize),
    Rule(Rule),
}

async fn rule_remove(profile: &str, direction: Direction, target: Target) -> Result<()> {
    connect()
        .await?
        .update_rules(profile, |rules| {
            let list = rules.get_mut(direction);
            let index = match &target {
                Target::Position(at) if *at <= list.len() => at - 1,
                Target::Position(at) => {
                    return Err(refused(format!(
                    "Position {at} is out of range: profile {profile} has {} {direction} rule(s).",
                    list.len()
                )))
                }
                Target::Rule(rule) => list
                    .iter()
                    .position(|r| r == rule)
                    .ok_or_else(|| refused("Rule not found.".into()))?,
            };
            list.remove(index);
            Ok(true)
        })
        .await?;
    Ok(())
}

async fn rule_show(profile: &str) -> Result<()> {
    let rules = connect().await?.get_profile(profile).await?.rules;
    for (title, list) in [
        ("Inbound rules:", &rules.inbound_rules),
        ("Outbound rules:", &rules.outbound_rules),
    ] {
        println!("{title}");
        for (i, rule) in list.iter().enumerate() {
            println!("{:>4} {rule}", i + 1);
        }
    }
    Ok(())
}

async fn rule_update(profile: &str) -> Result<()> {
    let mut json = String::new();
    std::io::stdin()
        .read_to_string(&mut json)
        .context("cannot read the rules JSON from stdin")?;
    let new = ProfileRules::from_json(&json)?;
    if let Some(id) = new.id.as_deref().filter(|id| *id != profile) {
        bail!("Rules JSON \"id\"={id} does not match profile name {profile}.");
    }
    connect()
        .await?
        .update_rules(profile, |rules| {
            *rules = ProfileRules {
                id: None,
                ..new.clone()
            };
            Ok(true)
        })
        .await?;
    println!("Successfully updated rules on profile {profile}");
    Ok(())
}
