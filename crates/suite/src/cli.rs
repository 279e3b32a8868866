//! Command line: `loyalty` (the whole suite) and `loyalty serve <service>`.
//! Options come from the platform's settings table, so every setting is a
//! flag, an environment variable and a config-file key, documented once.

use std::collections::BTreeMap;

use clap::{Arg, ArgAction, Command};
use loyalty_common::config::{SETTINGS, env_name};

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// All four services and the gateway in one process.
    Suite,
    /// One service (or the gateway) alone.
    Serve(String),
}

pub const SERVE_TARGETS: [&str; 5] = ["membership", "rewards", "feedback", "retention", "gateway"];

pub fn command() -> Command {
    let mut cmd = Command::new("loyalty")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Customer loyalty platform: membership, rewards, feedback and retention services behind a gateway")
        .long_about(
            "Customer loyalty platform: membership, rewards, feedback and retention services behind a gateway.\n\n\
             Without a subcommand, starts every service and the gateway in one process on the embedded \
             default (SQLite files under ./data, in-process events): gRPC on 127.0.0.1:50051 (with health \
             and reflection), gateway HTTP on 127.0.0.1:8080.\n\n\
             Every option can also be set by its environment variable or as a key in the TOML file named \
             by --config (flag > environment > file > default).",
        )
        .subcommand(
            Command::new("serve")
                .about("Run one service alone (separate database, NATS for events)")
                .long_about(
                    "Run one service alone, as in a deployment where each service scales on its own. \
                     Default ports: membership 50061, rewards 50062, feedback 50063, retention 50064, \
                     gateway 8080. Services that run apart exchange events through NATS JetStream \
                     (--nats-url); without it a service uses an in-process bus and sees only its own events.",
                )
                .arg(
                    Arg::new("service")
                        .required(true)
                        .value_parser(SERVE_TARGETS)
                        .help("which service to run"),
                ),
        );
    for (name, help) in SETTINGS {
        cmd = cmd.arg(
            Arg::new(*name)
                .long(name.replace('_', "-"))
                .value_name(name.to_ascii_uppercase())
                .action(ArgAction::Set)
                .global(true)
                .help(format!("{help} [env: {}]", env_name(name))),
        );
    }
    cmd
}

/// Parses arguments into the mode and the settings given as flags.
pub fn parse(
    args: impl IntoIterator<Item = String>,
) -> Result<(Mode, BTreeMap<String, String>), clap::Error> {
    let matches = command().try_get_matches_from(args)?;
    let mut flags = BTreeMap::new();
    let sub = matches.subcommand();
    for (name, _) in SETTINGS {
        let v = sub
            .and_then(|(_, m)| m.get_one::<String>(name))
            .or_else(|| matches.get_one::<String>(name));
        if let Some(v) = v {
            flags.insert((*name).to_owned(), v.clone());
        }
    }
    let mode = match sub {
        Some(("serve", m)) => {
            Mode::Serve(m.get_one::<String>("service").cloned().unwrap_or_default())
        }
        _ => Mode::Suite,
    };
    Ok((mode, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn no_arguments_is_the_suite() {
        let (mode, flags) = parse(args(&["loyalty"])).unwrap();
        assert_eq!(mode, Mode::Suite);
        assert!(flags.is_empty());
    }

    #[test]
    fn serve_takes_a_service_and_options_anywhere() {
        let (mode, flags) = parse(args(&[
            "loyalty",
            "--log-format",
            "json",
            "serve",
            "rewards",
            "--listen",
            "0.0.0.0:9000",
        ]))
        .unwrap();
        assert_eq!(mode, Mode::Serve("rewards".into()));
        assert_eq!(flags["listen"], "0.0.0.0:9000");
        assert_eq!(flags["log_format"], "json");
    }

    #[test]
    fn unknown_service_is_refused_with_the_choices() {
        let err = parse(args(&["loyalty", "serve", "billing"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("membership"), "{err}");
    }

    #[test]
    fn help_documents_every_setting_with_its_variable() {
        let help = command().render_long_help().to_string();
        for (name, _) in SETTINGS {
            assert!(
                help.contains(&format!("--{}", name.replace('_', "-"))),
                "{name}"
            );
            assert!(help.contains(&env_name(name)), "{name}");
        }
    }
}
