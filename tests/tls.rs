//! TLS to the upstream: verified against a CA made inside the test, HTTP/2
//! when ALPN offers it, refused when the CA is not trusted.

mod support;

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use support::client;
use support::{FakeUpstream, Reply, Sidecar};

struct Pki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sidecar test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let key = pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
    .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Pki {
        ca_pem: ca.pem(),
        server: Arc::new(server),
    }
}

/// The upstream answers with the HTTP version it saw.
fn version_reply(r: &support::Recorded, _: usize) -> Reply {
    Reply::text(200, &format!("{:?}", r.version))
}

/// A sidecar whose upstream is `https://localhost:{port}`, trusting the
/// test CA through `upstream.ca_file` (kept in the returned directory).
async fn sidecar_trusting(pki: &Pki, port: u16) -> (Sidecar, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let text = format!(
        "[upstream]\nurl = \"https://localhost:{port}\"\nca_file = \"{}\"\n[spool]\npath = \"{}\"\n",
        ca.display(),
        dir.path().join("spool.sqlite3").display()
    );
    let cfg = datalayer_sidecar::config::Config::from_toml_str(
        &text,
        std::path::Path::new("t"),
        &[],
        &Default::default(),
    )
    .unwrap();
    (Sidecar::start_with(cfg).await, dir)
}

#[tokio::test]
async fn tls_upstream_verified_with_extra_ca_and_h2_by_alpn() {
    let pki = pki();
    let up = FakeUpstream::start_tls(pki.server.clone(), version_reply).await;
    let (sc, _dir) = sidecar_trusting(&pki, up.addr.port()).await;
    let a = client::get(sc.addr, "/api/ping").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.text(),
        "HTTP/2.0",
        "ALPN offered h2, so the upstream leg used it"
    );
    let seen = &up.requests()[0];
    assert_eq!(seen.uri.path(), "/api/ping");
    // Later requests, one after another and several at once, share the
    // one multiplexed connection.
    for _ in 0..5 {
        assert_eq!(client::get(sc.addr, "/api/ping").await.text(), "HTTP/2.0");
    }
    let burst: Vec<_> = (0..8)
        .map(|_| tokio::spawn(client::get(sc.addr, "/api/ping")))
        .collect();
    for t in burst {
        assert_eq!(t.await.unwrap().text(), "HTTP/2.0");
    }
    assert_eq!(up.hits(), 14);
    assert_eq!(
        up.connections(),
        1,
        "one HTTP/2 connection for every request"
    );
}

#[tokio::test]
async fn untrusted_certificate_is_refused() {
    let pki = pki();
    let up = FakeUpstream::start_tls(pki.server.clone(), |_, _| Reply::status(200)).await;
    let url = format!("https://localhost:{}", up.addr.port());
    let sc = Sidecar::start(&url, "").await;
    let a = client::get(sc.addr, "/api/ping").await;
    assert_eq!(a.status, 502, "{}", a.text());
    assert_eq!(a.json()["code"], "upstream_tls_failed");
    assert_eq!(
        up.hits(),
        0,
        "no request was sent over an unverified connection"
    );
}

#[tokio::test]
async fn a_closed_http2_connection_is_replaced() {
    let pki = pki();
    let up = FakeUpstream::start_tls(pki.server.clone(), version_reply).await;
    let (sc, _dir) = sidecar_trusting(&pki, up.addr.port()).await;
    assert_eq!(client::get(sc.addr, "/api/ping").await.text(), "HTTP/2.0");
    // The upstream goes away with the connection, and comes back.
    let addr = up.stop();
    let listener = support::upstream::rebind(addr).await;
    let up = FakeUpstream::start_on(listener, version_reply, Some(pki.server.clone()));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let a = client::get(sc.addr, "/api/ping").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.text(), "HTTP/2.0");
    assert_eq!(up.connections(), 1);
}
