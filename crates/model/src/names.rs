//! Names that become parts of datastore keys or nftables identifiers.

use crate::ModelError;

/// The longest profile, tag or host name (a DNS name's limit): long enough for any name a
/// person or an orchestrator means, short enough that names stay readable in every listing.
pub const NAME_MAX: usize = 253;

/// Profile and tag names: `[a-zA-Z0-9_.-]{1,253}`, as in the original calicoctl, except that
/// the first character is a letter, digit or `_`. They end up in etcd keys and nftables
/// comments, and on command lines: a name starting with `-` (a tag `--`, say) would be read as
/// an option when `rule show` output is pasted back into `rule add`.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), ModelError> {
    if name.is_empty() {
        return Err(ModelError::invalid(what, name, "it is empty"));
    }
    if name.len() > NAME_MAX {
        // The name itself would drown the message: show its start.
        let start: String = name.chars().take(40).collect();
        return Err(ModelError::invalid(
            what,
            format!("{start}..."),
            format!(
                "it is {} characters long; the limit is {NAME_MAX}",
                name.chars().count()
            ),
        ));
    }
    if name.starts_with(['-', '.']) {
        return Err(ModelError::invalid(
            what,
            name,
            "it must start with a letter, a digit or '_'",
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(ModelError::invalid(
            what,
            name,
            format!("'{bad}' is not allowed; use letters, digits, '_', '.' and '-'"),
        ));
    }
    Ok(())
}

/// Host names follow the same alphabet as profile names (they are key segments too).
pub fn validate_hostname(name: &str) -> Result<(), ModelError> {
    validate_name("host name", name)
}

/// Orchestrator, workload and endpoint ids are chosen by orchestrators; we only insist that they
/// are usable as one key segment: non-empty, no '/', no whitespace or control characters.
pub fn validate_key_segment(what: &'static str, id: &str) -> Result<(), ModelError> {
    if id.is_empty() {
        return Err(ModelError::invalid(what, id, "it is empty"));
    }
    if id == "." || id == ".." {
        return Err(ModelError::invalid(what, id, "'.' and '..' are not ids"));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| *c == '/' || c.is_whitespace() || c.is_control())
    {
        return Err(ModelError::invalid(
            what,
            id,
            format!("{bad:?} is not allowed in an id"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_accept_the_legacy_alphabet() {
        for ok in ["PROF_A_C_E", "management-ui", "a.b", "x", "0", "_x", "a-"] {
            validate_name("profile name", ok).unwrap();
        }
    }

    #[test]
    fn names_refuse_anything_else() {
        for bad in ["", "a b", "a/b", "é", "a:b", "a*", "--", "-x", ".hidden"] {
            let err = validate_name("profile name", bad).unwrap_err().to_string();
            assert!(err.contains("invalid profile name"), "{err}");
        }
    }

    #[test]
    fn names_are_capped_at_253_characters() {
        validate_name("profile name", &"p".repeat(NAME_MAX)).unwrap();
        let err = validate_name("profile name", &"p".repeat(300))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("300 characters long; the limit is 253"),
            "{err}"
        );
        assert!(err.len() < 200, "the message stays readable: {err}");
    }

    #[test]
    fn key_segments_refuse_slashes_and_blanks() {
        validate_key_segment("workload id", "9f3c:abc_1").unwrap();
        for bad in ["", "a/b", "a b", "..", "a\n"] {
            assert!(validate_key_segment("workload id", bad).is_err(), "{bad:?}");
        }
    }
}
