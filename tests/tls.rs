//! TLS on the gateway's client-facing ports, with a CA and a certificate made here:
//! curl and the Rust client connect with the CA file, the load generator too, and a
//! client that does not trust the certificate (or speaks plain TCP) gets nothing.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use ledgerbus_client::{Client, Command as ClientCommand, TlsClient};
use ledgerbus_codec::messages::{CreateAccount, Transfer};
use ledgerbus_codec::{account_flags, ResultCode};

/// Writes `ca.pem` (a CA), `cert.pem` and `key.pem` (for localhost and 127.0.0.1,
/// signed by that CA) into `dir`.
fn make_certificates(dir: &Path) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "ledgerbus test CA");
    let ca = ca_params.clone().self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    // A CA nobody signed the gateway's certificate with.
    let other_key = rcgen::KeyPair::generate().unwrap();
    let other = ca_params.self_signed(&other_key).unwrap();
    std::fs::write(dir.join("other-ca.pem"), other.pem()).unwrap();
}

#[test]
fn gateway_speaks_tls_to_curl_the_rust_client_and_the_load_generator() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_certificates(&certs);
    let cluster = Cluster::start(dir.path());
    let (https, tls_tcp) = (free_tcp(), free_tcp());
    let (cert, key) = (certs.join("cert.pem"), certs.join("key.pem"));
    let _gateway = cluster.spawn_gateway(
        https,
        tls_tcp,
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
    );
    let ca = certs.join("ca.pem");

    // The Rust client over TLS.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tls = TlsClient::new(&ca, "127.0.0.1").unwrap();
    let client = runtime.block_on(async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match Client::connect_with(tls_tcp, API_KEY, Some(tls.clone())).await {
                Ok(client) => return client,
                Err(error) if std::time::Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(error) => panic!("no TLS connection: {error}"),
            }
        }
    });
    let account = |id: u128, flags: u16| {
        ClientCommand::CreateAccount(CreateAccount {
            correlation_id: 0.into(),
            id: id.into(),
            ledger: 1.into(),
            code: 1.into(),
            flags: flags.into(),
            ..Default::default()
        })
    };
    let outcomes =
        runtime.block_on(client.submit(&[account(1, account_flags::ALLOW_NEGATIVE), account(2, 0)])).unwrap();
    assert!(outcomes.iter().all(|o| o.result == ResultCode::Ok), "{outcomes:?}");
    let transfer = ClientCommand::Transfer(Transfer {
        correlation_id: 0.into(),
        id: 77u128.into(),
        debit_account_id: 1u128.into(),
        credit_account_id: 2u128.into(),
        amount: 12.into(),
        ledger: 1.into(),
        code: 1.into(),
        flags: 0.into(),
        ..Default::default()
    });
    assert_eq!(runtime.block_on(client.submit(&[transfer])).unwrap()[0].result, ResultCode::Ok);

    // A client that does not trust the certificate gets no connection.
    let stranger = TlsClient::new(&certs.join("other-ca.pem"), "127.0.0.1").unwrap();
    assert!(runtime.block_on(Client::connect_with(tls_tcp, API_KEY, Some(stranger))).is_err());
    // Nor does a plain TCP client.
    assert!(runtime.block_on(Client::connect(tls_tcp, API_KEY)).is_err());
    // Plain HTTP to the HTTPS port gets no HTTP answer.
    assert!(get(https, "/health", None).is_none_or(|r| r.status != 200));

    // curl with the CA file.
    let url = format!("https://127.0.0.1:{}/accounts/2", https.port());
    let auth = format!("Authorization: Bearer {API_KEY}");
    match Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert", ca.to_str().unwrap(), "-H", &auth, &url])
        .output()
    {
        Ok(output) => {
            let body = String::from_utf8_lossy(&output.stdout);
            assert!(output.status.success(), "{body}{}", String::from_utf8_lossy(&output.stderr));
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(json["credits_posted"], "12", "{body}");
            // Without the CA, curl refuses the certificate.
            let untrusted =
                Command::new("curl").args(["-sS", "--max-time", "20", "-H", &auth, &url]).output().unwrap();
            assert!(!untrusted.status.success());
        }
        Err(error) => println!("skipping the curl checks: curl not runnable ({error})"),
    }

    // The load generator over TLS.
    let bench = Command::new(env!("CARGO_BIN_EXE_ledgerbus"))
        .args(["--log-level", "warn", "bench", "e2e", "--gateway", &tls_tcp.to_string(), "--tls-ca"])
        .arg(&ca)
        .args(["--rate", "2000", "--duration", "1", "--connections", "1", "--accounts", "20", "--json"])
        .env("LEDGERBUS_API_KEY", API_KEY)
        .env_remove("LEDGERBUS_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&bench.stdout);
    assert!(bench.status.success(), "{text}{}", String::from_utf8_lossy(&bench.stderr));
    let report: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(report["accepted"].as_u64().unwrap() > 1_000, "{report}");
    assert_eq!(report["errors"].as_u64(), Some(0), "{report}");
}
