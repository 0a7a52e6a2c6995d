//! Splits a command line the way the original docopt usage did: positional words, plus
//! `--options` anywhere among them, as `--at=2` or `--at 2`.

use std::fmt;

/// An option a command accepts.
#[derive(Debug, Clone, Copy)]
pub struct OptSpec {
    pub name: &'static str,
    pub takes_value: bool,
}

pub const fn flag(name: &'static str) -> OptSpec {
    OptSpec {
        name,
        takes_value: false,
    }
}

pub const fn valued(name: &'static str) -> OptSpec {
    OptSpec {
        name,
        takes_value: true,
    }
}

#[derive(Debug, Default)]
pub struct Args {
    pub words: Vec<String>,
    options: Vec<(&'static str, Option<String>)>,
    pub help: bool,
}

/// A command line that does not fit the usage: the message, and the usage to show with it.
#[derive(Debug)]
pub struct UsageError {
    pub message: String,
    pub usage: &'static str,
}

/// Like docopt, a usage error shows the message and the usage lines, not the whole help.
impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let synopsis = self.usage.split("\n\n").next().unwrap_or_default();
        write!(
            f,
            "{}\n\n{}\n\nSee --help for details.",
            self.message,
            synopsis.trim_end()
        )
    }
}

impl std::error::Error for UsageError {}

pub fn usage_error(usage: &'static str, message: impl Into<String>) -> anyhow::Error {
    UsageError {
        message: message.into(),
        usage,
    }
    .into()
}

impl Args {
    /// Parses `argv` (without the program and command names) against the allowed options.
    pub fn parse(
        argv: &[String],
        allowed: &[OptSpec],
        usage: &'static str,
    ) -> anyhow::Result<Args> {
        let mut args = Args::default();
        let mut rest = argv.iter();
        while let Some(arg) = rest.next() {
            if arg == "--" {
                args.words.extend(rest.by_ref().cloned());
                break;
            }
            if arg == "-h" || arg == "--help" {
                args.help = true;
                continue;
            }
            if !arg.starts_with("--") {
                args.words.push(arg.clone());
                continue;
            }
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (arg.as_str(), None),
            };
            let spec = allowed
                .iter()
                .find(|o| o.name == name)
                .ok_or_else(|| usage_error(usage, format!("Unknown option {name}.")))?;
            let value =
                match (spec.takes_value, inline) {
                    (true, Some(value)) => Some(value),
                    (true, None) => Some(rest.next().cloned().ok_or_else(|| {
                        usage_error(usage, format!("Option {name} needs a value."))
                    })?),
                    (false, Some(_)) => {
                        return Err(usage_error(usage, format!("Option {name} takes no value.")))
                    }
                    (false, None) => None,
                };
            if args.options.iter().any(|(n, _)| *n == spec.name) {
                return Err(usage_error(usage, format!("Option {name} is given twice.")));
            }
            args.options.push((spec.name, value));
        }
        Ok(args)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.options.iter().any(|(n, _)| *n == name)
    }

    pub fn value(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    pub fn words(&self) -> Vec<&str> {
        self.words.iter().map(String::as_str).collect()
    }

    /// Options given that this command form does not use.
    pub fn reject_options_except(&self, used: &[&str], usage: &'static str) -> anyhow::Result<()> {
        match self.options.iter().find(|(n, _)| !used.contains(n)) {
            Some((name, _)) => Err(usage_error(
                usage,
                format!("Option {name} does not apply here."),
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: &[OptSpec] = &[valued("--at"), flag("--detailed")];

    fn parse(line: &str) -> anyhow::Result<Args> {
        let argv: Vec<String> = line.split_whitespace().map(String::from).collect();
        Args::parse(&argv, OPTS, "usage")
    }

    #[test]
    fn options_may_stand_anywhere_in_either_form() {
        let a = parse("p rule add inbound --at=2 allow").unwrap();
        assert_eq!(a.words(), ["p", "rule", "add", "inbound", "allow"]);
        assert_eq!(a.value("--at"), Some("2"));
        let b = parse("--at 3 p --detailed").unwrap();
        assert_eq!((b.value("--at"), b.flag("--detailed")), (Some("3"), true));
    }

    #[test]
    fn unknown_repeated_or_malformed_options_are_usage_errors() {
        for bad in ["--bogus", "--at", "--detailed=yes", "--at=1 --at=2"] {
            let err = parse(bad).unwrap_err();
            assert!(err.downcast_ref::<UsageError>().is_some(), "{bad}");
        }
    }

    #[test]
    fn help_and_double_dash() {
        assert!(parse("p --help").unwrap().help);
        assert_eq!(parse("-- --at").unwrap().words(), ["--at"]);
    }
}
