//! The `ledgerbus` binary as an operator meets it: help, configuration layering
//! (flag > env > file > default) and clear errors naming the bad setting.

use std::process::{Command, Output};

fn ledgerbus(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ledgerbus"));
    command.args(args);
    // Start from a clean slate: the developer's own LEDGERBUS_* must not leak in.
    for (key, _) in std::env::vars() {
        if key.starts_with("LEDGERBUS_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("run ledgerbus")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The line `name = "value"  # origin` of `--check-config` output.
fn setting<'a>(text: &'a str, name: &str) -> &'a str {
    let prefix = format!("{name} = ");
    text.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no `{name}` in:\n{text}"))
}

#[test]
fn help_lists_every_subcommand() {
    let output = ledgerbus(&["--help"], &[]);
    assert!(output.status.success());
    let text = stdout(&output);
    for sub in ["demo", "sequencer", "gateway", "consumer", "bench", "replay"] {
        assert!(text.lines().any(|l| l.trim_start().starts_with(sub)), "--help lacks {sub}:\n{text}");
    }
}

#[test]
fn every_subcommand_explains_its_flags() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["demo"], &["--data", "--http", "--duration", "--no-workload", "--api-key", "--durability"]),
        (&["sequencer"], &["--durability", "--subscribers", "--mtu", "--nak-delay-us", "LEDGERBUS_MTU"]),
        (&["gateway"], &["--sequencer", "--api-keys", "--queue-max"]),
        (&["consumer"], &["memory", "disk", "--listen", "--reorder-datagrams-max", "--snapshot-every"]),
        (&["bench", "transport"], &["--duration", "--receivers", "--loss", "--size", "--json"]),
        (&["bench", "sequencer"], &["--durability", "--json"]),
        (&["bench", "e2e"], &["--rate", "--spawn", "--hgrm", "--plot"]),
        (&["replay"], &["--from-sequencer", "--journal", "--verify", "--to-subscriber", "nak"]),
        (&["replay", "nak"], &["--sequencer", "--from", "--count"]),
    ];
    for (path, flags) in cases {
        let mut args = path.to_vec();
        args.push("--help");
        let output = ledgerbus(&args, &[]);
        assert!(output.status.success(), "{path:?} --help failed");
        let text = stdout(&output);
        for flag in *flags {
            assert!(text.contains(flag), "`ledgerbus {} --help` lacks {flag}", path.join(" "));
        }
    }
}

#[test]
fn flags_override_env_which_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ledgerbus.toml");
    std::fs::write(
        &file,
        "log-level = \"warn\"\n[sequencer]\nmtu = 1200\nnak_delay_us = 50\nheartbeat-interval-us = 300\n\
         durability = \"os\"\nsubscribers = [\"127.0.0.1:9000\", \"127.0.0.1:9001\"]\n",
    )
    .unwrap();
    let output = ledgerbus(
        &["--config", file.to_str().unwrap(), "sequencer", "--mtu", "1300", "--check-config"],
        &[
            ("LEDGERBUS_NAK_DELAY_US", "70"),
            ("LEDGERBUS_HEARTBEAT_INTERVAL_US", "400"),
            ("LEDGERBUS_SEQUENCER_SECRET", "0123456789abcdef0"),
            ("LEDGERBUS_BUS_KEY", &"ab".repeat(32)),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert_eq!(setting(&text, "mtu"), "mtu = \"1300\"  # flag");
    assert_eq!(setting(&text, "nak-delay-us"), "nak-delay-us = \"70\"  # env");
    assert_eq!(setting(&text, "heartbeat-interval-us"), "heartbeat-interval-us = \"400\"  # env");
    assert_eq!(setting(&text, "durability"), "durability = \"os\"  # file");
    assert_eq!(setting(&text, "subscribers"), "subscribers = \"127.0.0.1:9000,127.0.0.1:9001\"  # file");
    assert_eq!(setting(&text, "log-level"), "log-level = \"warn\"  # file");
    assert_eq!(setting(&text, "nak-retry-us"), "nak-retry-us = \"300\"  # default");
}

#[test]
fn config_file_from_the_environment_and_secrets_stay_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ledgerbus.toml");
    let bus_key = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7";
    std::fs::write(
        &file,
        format!("[sequencer]\nsecret = \"do-not-print-this-secret\"\nbus-key = \"{bus_key}\"\n"),
    )
    .unwrap();
    let output = ledgerbus(&["sequencer", "--check-config"], &[("LEDGERBUS_CONFIG", file.to_str().unwrap())]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert_eq!(setting(&text, "secret"), "secret = \"<hidden>\"  # file");
    assert_eq!(setting(&text, "bus-key"), "bus-key = \"<hidden>\"  # file");
    assert!(!text.contains("do-not-print-this-secret"));
    assert!(!text.contains("5ec7e7"), "the bus key is never printed");
}

/// Arguments, environment, and the flag the error must name.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn invalid_configuration_fails_at_start_naming_the_setting() {
    let cases: &[Case] = &[
        (&["sequencer", "--mtu", "100"], &[], "--mtu"),
        (&["sequencer"], &[("LEDGERBUS_MTU", "lots")], "--mtu"),
        (&["sequencer", "--multicast-group", "10.1.2.3"], &[], "--multicast-group"),
        (&["sequencer", "--ring-datagrams", "3"], &[], "--ring-datagrams"),
        (&["sequencer", "--secret", "short"], &[], "--secret"),
        (&["sequencer", "--nak-delay-us", "5000", "--nak-retry-us", "100"], &[], "--nak-delay-us"),
        (&["sequencer", "--retransmit-linger-us", "5000"], &[], "--retransmit-linger-us"),
        (&["consumer", "disk", "--reorder-datagrams-max", "0"], &[], "--reorder-datagrams-max"),
        (&["bench", "transport", "--loss", "150"], &[], "--loss"),
        (&["bench", "e2e", "--rate", "fast"], &[], "--rate"),
        (&["replay", "--journal", "x", "--from", "5", "--to", "2"], &[], "--to"),
        (&["sequencer", "--durability", "maybe"], &[], "--durability"),
        (
            &["sequencer", "--bus-key", "abc"],
            &[("LEDGERBUS_SEQUENCER_SECRET", "0123456789abcdef0")],
            "--bus-key",
        ),
        (&["consumer", "disk"], &[], "--bus-key"),
        (&["consumer", "memory"], &[], "--api-keys"),
    ];
    for (args, env, setting) in cases {
        let output = ledgerbus(args, env);
        assert_eq!(output.status.code(), Some(2), "{args:?} should fail with status 2");
        let text = stderr(&output);
        assert!(text.contains(setting), "{args:?}: error does not name {setting}:\n{text}");
    }
}

#[test]
fn bad_config_files_are_rejected_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[sequencer]\nmtuu = 1400\n", "mtuu"),
        ("[sequencr]\nmtu = 1400\n", "sequencr"),
        ("[sequencer]\nmtu = \"big\"\n", "--mtu"),
        ("this is not toml", "parsing config file"),
    ];
    for (index, (content, expected)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad{index}.toml"));
        std::fs::write(&file, content).unwrap();
        let output = ledgerbus(&["--config", file.to_str().unwrap(), "sequencer", "--check-config"], &[]);
        assert_eq!(output.status.code(), Some(2), "{content:?} should be rejected");
        assert!(stderr(&output).contains(expected), "{content:?}: {}", stderr(&output));
    }
    let output = ledgerbus(&["--config", "/nonexistent/ledgerbus.toml", "schema"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("/nonexistent/ledgerbus.toml"));
}

#[test]
fn schema_prints_the_xml_source_of_truth() {
    let output = ledgerbus(&["schema"], &[]);
    assert!(output.status.success());
    assert_eq!(stdout(&output), ledgerbus_codec::SCHEMA_XML);
}

#[test]
fn bench_transport_reports_json_with_nothing_unrecovered() {
    let output = ledgerbus(
        &["bench", "transport", "--duration", "0.5", "--loss", "5", "--receivers", "2", "--json"],
        &[],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let last = text.lines().last().expect("a JSON line");
    for key in ["\"events_per_sec\":", "\"naks\":", "\"retransmits\":", "\"unrecovered\":0,"] {
        assert!(last.contains(key), "{key} missing from {last}");
    }
    assert!(!last.contains("\"events\":0,"), "events were sent: {last}");
}

#[test]
fn demo_with_a_taken_port_fails_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = ledgerbus(&["demo", "--http", &address, "--duration", "1"], &[]);
    assert_eq!(output.status.code(), Some(75), "a failed start is a failure: EX_TEMPFAIL, address in use");
    let text = stderr(&output);
    assert!(text.contains(&address) && text.contains("--http"), "{text}");
    assert!(!stdout(&output).contains("is running"), "{}", stdout(&output));
}

/// The demo prints every port and writes them to `<data>/cluster.toml`, which
/// `replay`, `replay nak` and `bench e2e` take with `--cluster`.
#[test]
fn demo_writes_a_cluster_file_the_tools_take() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_ledgerbus"))
        .args([
            "--log-level",
            "warn",
            "demo",
            "--http",
            "127.0.0.1:0",
            "--duration",
            "60",
            "--payments",
            "200",
        ])
        .arg("--data")
        .arg(dir.path())
        .env_remove("LEDGERBUS_CONFIG")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    let mut exports = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if let Some(rest) = line.trim().strip_prefix("for the tools") {
            for pair in rest.split_whitespace().filter(|w| w.contains('=')) {
                let (key, value) = pair.split_once('=').unwrap();
                exports.push((key.to_string(), value.to_string()));
            }
        }
        if line.contains("all three match") {
            break;
        }
    }
    let cluster = dir.path().join("cluster.toml");
    assert!(cluster.is_file(), "{printed}");
    for needle in ["replay --from-sequencer", "replay nak --sequencer", "cluster.toml"] {
        assert!(printed.contains(needle), "the demo names {needle}:\n{printed}");
    }
    let env: Vec<(&str, &str)> = exports.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert!(env.iter().any(|(k, _)| *k == "LEDGERBUS_BUS_KEY"), "{printed}");
    let cluster = cluster.to_str().unwrap();

    let verify = ledgerbus(&["replay", "--cluster", cluster, "--verify"], &env);
    assert!(verify.status.success(), "{}{}", stdout(&verify), stderr(&verify));
    assert!(stdout(&verify).contains("verified: clean"), "{}", stdout(&verify));
    let nak = ledgerbus(&["replay", "nak", "--cluster", cluster, "--from", "1", "--count", "2"], &env);
    assert!(nak.status.success(), "{}{}", stdout(&nak), stderr(&nak));
    let bench = ledgerbus(
        &["bench", "e2e", "--cluster", cluster, "--rate", "1000", "--duration", "1", "--json"],
        &env,
    );
    assert!(bench.status.success(), "{}{}", stdout(&bench), stderr(&bench));
    // SIGTERM: the demo stops its processes in order.
    assert_eq!(unsafe { libc::kill(demo.id() as i32, libc::SIGTERM) }, 0);
    assert!(demo.wait().unwrap().success());
}

#[test]
fn io_errors_name_the_path_and_say_it_once() {
    let output = ledgerbus(
        &["sequencer", "--data-dir", "/etc/passwd", "--metrics-listen", "127.0.0.1:0"],
        &[("LEDGERBUS_SEQUENCER_SECRET", "0123456789abcdef0"), ("LEDGERBUS_BUS_KEY", &"ab".repeat(32))],
    );
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains("/etc/passwd"), "{text}");
    assert_eq!(text.matches("Not a directory").count(), 1, "{text}");
}

/// Two components never read the same environment variable for different things: a
/// shell that configures one must not silently reconfigure another.
#[test]
fn component_settings_have_their_own_environment_names() {
    let mut seen: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
    let sources = ["mod.rs", "bench.rs", "replay.rs"].map(|file| {
        std::fs::read_to_string(format!("{}/src/cli/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    });
    for line in sources.iter().flat_map(|source| source.lines()) {
        if let Some(rest) = line.split("env = \"").nth(1) {
            let name = rest.split('"').next().unwrap().to_string();
            seen.entry(name).or_default().push(line.trim().to_string());
        }
    }
    // Shared on purpose: one secret, one set of keys, one policy, one capacity for all.
    let shared = [
        "LEDGERBUS_SEQUENCER_SECRET",
        "LEDGERBUS_API_KEYS",
        "LEDGERBUS_DURABILITY",
        "LEDGERBUS_TRANSFER_CAPACITY",
        "LEDGERBUS_BENCH_DURATION",
        // The SQL projection's database: its consumer and `sql verify` (read only).
        "LEDGERBUS_SQL_DATABASE",
    ];
    for (name, uses) in seen {
        assert!(
            uses.len() == 1 || shared.contains(&name.as_str()),
            "{name} is read by several settings: {uses:?}"
        );
    }
}
