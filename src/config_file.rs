//! The `--config` TOML file, applied as clap defaults.
//!
//! Setting each file value as the default of its argument gives the precedence
//! operators expect with no merging code: clap takes a flag first, then the
//! environment variable, then the default, which is now the file's value.
//! Keys are long flag names (`mtu`, `nak-delay-us` or `nak_delay_us`); top-level
//! keys set global flags and a table per subcommand (`[sequencer]`,
//! `[bench.transport]`) sets that subcommand's flags. An unknown key is an error
//! naming it, so a typo never silently falls back to a default.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Where `--config` points, found before clap parses (the file shapes the parser).
pub fn find_config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let Some(text) = arg.to_str() else { continue };
        if text == "--" {
            break;
        }
        if text == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("LEDGERBUS_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The settings that came from the file, as `subcommand path` + `arg id`, so that
/// `--check-config` can say where each value came from.
pub type FileSettings = BTreeSet<(String, String)>;

/// Reads `path` and installs its values as defaults on `command`.
pub fn apply(command: clap::Command, path: &Path) -> anyhow::Result<(clap::Command, FileSettings)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))?;
    let mut applied = FileSettings::new();
    let command = apply_table(command, &table, &[], path, &mut applied)?;
    Ok((command, applied))
}

fn apply_table(
    mut command: clap::Command,
    table: &toml::Table,
    section: &[String],
    path: &Path,
    applied: &mut FileSettings,
) -> anyhow::Result<clap::Command> {
    for (key, value) in table {
        let setting = section.iter().chain(std::iter::once(key)).cloned().collect::<Vec<_>>().join(".");
        if let toml::Value::Table(inner) = value {
            if command.find_subcommand(key).is_none() {
                bail!("config file {}: unknown section [{setting}]", path.display());
            }
            let mut nested = section.to_vec();
            nested.push(key.clone());
            let mut result = Ok(());
            command = command.mut_subcommand(key, |sub| {
                match apply_table(sub.clone(), inner, &nested, path, applied) {
                    Ok(sub) => sub,
                    Err(error) => {
                        result = Err(error);
                        sub
                    }
                }
            });
            result?;
            continue;
        }
        let long = key.replace('_', "-");
        let Some(id) =
            command.get_arguments().find(|a| a.get_long() == Some(long.as_str())).map(|a| a.get_id().clone())
        else {
            let place =
                if section.is_empty() { "top level".to_string() } else { format!("[{}]", section.join(".")) };
            bail!("config file {}: unknown setting `{key}` at {place}", path.display());
        };
        let text = value_to_string(value)
            .with_context(|| format!("config file {}: setting `{setting}`", path.display()))?;
        command = command.mut_arg(id.clone(), |arg| arg.default_value(text));
        applied.insert((section.join("."), id.to_string()));
    }
    Ok(command)
}

fn value_to_string(value: &toml::Value) -> anyhow::Result<String> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Array(items) => {
            items.iter().map(value_to_string).collect::<anyhow::Result<Vec<_>>>()?.join(",")
        }
        toml::Value::Datetime(_) | toml::Value::Table(_) => bail!("expected a string, number, bool or list"),
    })
}
