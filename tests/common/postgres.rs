//! A real Postgres server for a test: a fresh cluster in a temporary folder (`initdb`,
//! password authentication), on a free 127.0.0.1 port, stopped and deleted when
//! dropped. Debian's `postgresql` package provides the binaries (`.ci/run` installs
//! it). As root the server runs as the `postgres` user, since it refuses root.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct PostgresServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    run_as: Option<String>,
    pub port: u16,
    password: String,
}

/// The newest installed server's binaries.
fn binaries() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn id_of(user: &str, flag: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, user]).output().ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

impl PostgresServer {
    /// A running server, or `None` (the reason printed) where none can run here.
    /// With `LEDGERBUS_REQUIRE_POSTGRES=1` (CI) a missing server fails instead.
    pub fn start() -> Option<PostgresServer> {
        PostgresServer::start_with(false)
    }

    /// A server that accepts TCP connections over TLS only (a certificate for
    /// 127.0.0.1 signed by [`ca`](Self::ca)); plain TCP is refused.
    pub fn start_tls() -> Option<PostgresServer> {
        PostgresServer::start_with(true)
    }

    fn start_with(tls: bool) -> Option<PostgresServer> {
        let required = std::env::var("LEDGERBUS_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
        let skip = |reason: String| {
            assert!(!required, "Postgres is required (LEDGERBUS_REQUIRE_POSTGRES=1) but {reason}");
            eprintln!("SKIPPING the Postgres part of this test: {reason}");
            None
        };
        let Some(bin) = binaries() else {
            return skip("no server binaries under /usr/lib/postgresql (apt-get install postgresql)".into());
        };
        let root = unsafe { libc::geteuid() } == 0;
        let run_as = if root {
            if id_of("postgres", "-u").is_none() {
                return skip("running as root and there is no `postgres` user to run the server".into());
            }
            Some("postgres".to_string())
        } else {
            None
        };
        let dir = tempfile::Builder::new().prefix("ledgerbus-pg-").tempdir().unwrap();
        if root {
            let (uid, gid) = (id_of("postgres", "-u").unwrap(), id_of("postgres", "-g").unwrap());
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let mut random = [0u8; 12];
        getrandom::fill(&mut random).unwrap();
        let password: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, &password).unwrap();
        if let Some(user) = &run_as {
            let (uid, gid) = (id_of(user, "-u").unwrap(), id_of(user, "-g").unwrap());
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).unwrap();
        }
        let mut server = PostgresServer { dir, bin, run_as, port: 0, password };
        let data = server.data();
        let initdb = server.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "ledgerbus",
                "-A",
                "scram-sha-256",
                "--pwfile",
                pwfile.to_str().unwrap(),
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        if !initdb.status.success() {
            return skip(format!("initdb failed: {}", String::from_utf8_lossy(&initdb.stderr)));
        }
        let mut tls_options = String::new();
        if tls {
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            ca_params.distinguished_name.push(rcgen::DnType::CommonName, "ledgerbus test database CA");
            let ca = ca_params.clone().self_signed(&ca_key).unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
            let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
            std::fs::write(server.ca(), ca.pem()).unwrap();
            let other_key = rcgen::KeyPair::generate().unwrap();
            std::fs::write(
                server.dir.path().join("other-ca.pem"),
                ca_params.self_signed(&other_key).unwrap().pem(),
            )
            .unwrap();
            let (cert_file, key_file) = (data.join("server.crt"), data.join("server.key"));
            std::fs::write(&cert_file, cert.pem()).unwrap();
            std::fs::write(&key_file, key.serialize_pem()).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
            if let Some(user) = &server.run_as {
                let (uid, gid) = (id_of(user, "-u").unwrap(), id_of(user, "-g").unwrap());
                for file in [&cert_file, &key_file] {
                    std::os::unix::fs::chown(file, Some(uid), Some(gid)).unwrap();
                }
            }
            // Unix socket for the test's own set-up; TCP only with TLS.
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
            )
            .unwrap();
            tls_options = " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key".into();
        }
        for _attempt in 0..3 {
            server.port = ledgerbus_tools::cluster::free_tcp().unwrap().port();
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1{tls_options}",
                server.port,
                server.dir.path().display()
            );
            let log = server.dir.path().join("log");
            let started = server.run(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-l",
                    log.to_str().unwrap(),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    &options,
                    "start",
                ],
            );
            if started.status.success() {
                return Some(server);
            }
            eprintln!("pg_ctl start: {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        skip("the server did not start (see its log above)".into())
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, tool: &str, args: &[&str]) -> std::process::Output {
        let exe = self.bin.join(tool);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(&exe);
                command
            }
            None => Command::new(&exe),
        };
        command.args(args).current_dir(Path::new("/")).output().unwrap()
    }

    /// The URL of `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://ledgerbus:{}@127.0.0.1:{}/{database}", self.password, self.port)
    }

    /// The CA that signed a TLS server's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A CA that signed nothing of this server's.
    pub fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }

    /// Creates `database` (through the Unix socket) and returns its TCP URL.
    pub fn create_database(&self, database: &str) -> String {
        let socket = format!(
            "host={} port={} user=ledgerbus password={} dbname=postgres",
            self.dir.path().display(),
            self.port,
            self.password
        );
        let mut client = ::postgres::Client::connect(&socket, ::postgres::NoTls).unwrap();
        client.batch_execute(&format!("CREATE DATABASE {database}")).unwrap();
        self.url(database)
    }

    /// The password (to check that it never shows).
    pub fn password(&self) -> &str {
        &self.password
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.run("pg_ctl", &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"]);
    }
}
