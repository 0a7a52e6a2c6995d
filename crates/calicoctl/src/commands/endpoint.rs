//! `calicoctl endpoint …`: list endpoints and set which profiles apply to them.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Result};
use calico_datastore::resources::{EndpointFilter, EndpointRecord, ResourceError, Resources};
use calico_model::endpoint::{EndpointKey, EndpointState};
use calico_model::names::validate_name;

use super::{connect, parse_args};
use crate::args::{flag, usage_error, valued, OptSpec};
use crate::table::Table;
use crate::usage::ENDPOINT as USAGE;

const OPTIONS: &[OptSpec] = &[
    valued("--host"),
    valued("--orchestrator"),
    valued("--workload"),
    valued("--endpoint"),
    flag("--detailed"),
];

pub async fn run(argv: &[String]) -> Result<()> {
    let Some(args) = parse_args(argv, OPTIONS, USAGE)? else {
        return Ok(());
    };
    let filter = EndpointFilter {
        host: args.value("--host").map(String::from),
        orchestrator: args.value("--orchestrator").map(String::from),
        workload: args.value("--workload").map(String::from),
        endpoint_id: args.value("--endpoint").map(String::from),
    };
    let words = args.words();
    match words.as_slice() {
        ["show"] => show(&connect().await?, &filter, args.flag("--detailed")).await,
        [id, "profile", action, profiles @ ..] => {
            args.reject_options_except(&["--host", "--orchestrator", "--workload"], USAGE)?;
            profile(id, action, profiles, &filter).await
        }
        _ => Err(usage_error(USAGE, "Invalid endpoint command.")),
    }
}

fn state(record: &EndpointRecord) -> String {
    match &record.endpoint {
        Ok(ep) if ep.state == EndpointState::Active => "active".into(),
        Ok(_) => "inactive".into(),
        Err(_) => "invalid".into(),
    }
}

async fn show(r: &Resources, filter: &EndpointFilter, detailed: bool) -> Result<()> {
    let mut records = r.endpoints(filter).await?;
    records.sort_by(|a, b| a.key.cmp(&b.key));
    if detailed {
        print!("{}", detailed_table(&records));
    } else {
        // (host, orchestrator) -> (workloads, endpoint count)
        let mut counts: BTreeMap<(&str, &str), (BTreeSet<&str>, usize)> = BTreeMap::new();
        for record in &records {
            let entry = counts
                .entry((&record.key.host, &record.key.orchestrator))
                .or_default();
            entry.0.insert(&record.key.workload);
            entry.1 += 1;
        }
        let mut table = Table::new(&[
            "Hostname",
            "Orchestrator ID",
            "Number of Workloads",
            "Number of Endpoints",
        ]);
        for ((host, orchestrator), (workloads, endpoints)) in counts {
            table.row(vec![
                host.into(),
                orchestrator.into(),
                workloads.len().to_string(),
                endpoints.to_string(),
            ]);
        }
        print!("{}", table.render());
    }
    for record in &records {
        if let Err(e) = &record.endpoint {
            eprintln!(
                "Warning: endpoint {} has invalid data: {e}",
                record.key.endpoint_id
            );
        }
    }
    Ok(())
}

/// One row per endpoint, as `endpoint show --detailed` prints them.
pub(super) fn detailed_table(records: &[EndpointRecord]) -> String {
    let mut table = Table::new(&[
        "Hostname",
        "Orchestrator ID",
        "Workload ID",
        "Endpoint ID",
        "Addresses",
        "MAC",
        "Profiles",
        "State",
    ]);
    for record in records {
        let (addresses, mac, profiles) = match &record.endpoint {
            Ok(ep) => (
                ep.nets()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
                ep.mac.clone().unwrap_or_default(),
                ep.profile_ids.join(","),
            ),
            Err(_) => Default::default(),
        };
        let key = &record.key;
        table.row(vec![
            key.host.clone(),
            key.orchestrator.clone(),
            key.workload.clone(),
            key.endpoint_id.clone(),
            addresses,
            mac,
            profiles,
            state(record),
        ]);
    }
    table.render()
}

/// Checks the names given: valid, existing profiles, each named once.
async fn check_profiles(r: &Resources, profiles: &[&str]) -> Result<Vec<String>> {
    let mut seen = BTreeSet::new();
    for name in profiles {
        validate_name("profile name", name)?;
        if !seen.insert(*name) {
            bail!("Profile with name {name} was specified more than once.");
        }
        if !r.profile_exists(name).await? {
            bail!("Profile with name {name} was not found.");
        }
    }
    Ok(profiles.iter().map(|p| p.to_string()).collect())
}

async fn profile(id: &str, action: &str, profiles: &[&str], filter: &EndpointFilter) -> Result<()> {
    let r = connect().await?;
    let key = r.find_endpoint(id, filter).await?;
    profile_action(&r, &key, action, profiles).await
}

/// `… profile (append|remove|set|show) [<PROFILES>...]` on one endpoint.
pub(super) async fn profile_action(
    r: &Resources,
    key: &EndpointKey,
    action: &str,
    profiles: &[&str],
) -> Result<()> {
    let key = key.clone();
    if action == "show" {
        if !profiles.is_empty() {
            return Err(usage_error(USAGE, "'profile show' takes no profile names."));
        }
        let profiles = r.get_endpoint(&key).await?.profile_ids;
        if profiles.is_empty() {
            println!("Endpoint has no profiles associated with it.");
        } else {
            let mut table = Table::new(&["Name"]);
            profiles.into_iter().for_each(|p| table.row(vec![p]));
            print!("{}", table.render());
        }
        return Ok(());
    }
    let names = check_profiles(r, profiles).await?;
    match action {
        "append" => {
            if names.is_empty() {
                bail!("No profile specified.");
            }
            let mut already = Vec::new();
            r.update_endpoint(&key, |ep| {
                already = names
                    .iter()
                    .filter(|n| ep.profile_ids.contains(n))
                    .cloned()
                    .collect();
                let new: Vec<String> = names
                    .iter()
                    .filter(|n| !ep.profile_ids.contains(n))
                    .cloned()
                    .collect();
                ep.profile_ids.extend(new.iter().cloned());
                Ok(!new.is_empty())
            })
            .await?;
            for name in &already {
                println!("Profile {name} is already in endpoint profile list");
            }
            let appended: Vec<&String> = names.iter().filter(|n| !already.contains(n)).collect();
            if !appended.is_empty() {
                println!("Profile(s) {} appended.", join(&appended));
            }
        }
        "remove" => {
            if names.is_empty() {
                bail!("No profile specified.");
            }
            r.update_endpoint(&key, |ep| {
                if let Some(missing) = names.iter().find(|n| !ep.profile_ids.contains(n)) {
                    return Err(ResourceError::Refused(format!(
                        "Profile {missing} is not in endpoint profile list."
                    )));
                }
                ep.profile_ids.retain(|p| !names.contains(p));
                Ok(true)
            })
            .await?;
            println!(
                "Profile(s) {} removed.",
                join(&names.iter().collect::<Vec<_>>())
            );
        }
        "set" => {
            r.update_endpoint(&key, |ep| {
                let changed = ep.profile_ids != names;
                ep.profile_ids = names.clone();
                Ok(changed)
            })
            .await?;
            if names.is_empty() {
                println!("Removed all profiles from endpoint.");
            } else {
                println!(
                    "Profile(s) set to {}.",
                    join(&names.iter().collect::<Vec<_>>())
                );
            }
        }
        other => {
            return Err(usage_error(
                USAGE,
                format!("Expected append, remove, set or show after 'profile', not '{other}'."),
            ))
        }
    }
    Ok(())
}

fn join(names: &[&String]) -> String {
    names
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
