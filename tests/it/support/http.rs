//! The loopback HTTP server the stand-ins run on (`auth0_rudderstack::standin::http`), and a private CA made
//! at test time for serving it over HTTPS.
//!
//! Only the certificate is made here: it needs `rcgen`, which the daemon never does, so it stays a test
//! dependency; the TLS serving itself is the library's, the same code the `demo` runs.

#![allow(dead_code)]

pub use auth0_rudderstack::standin::http::*;

/// A fresh private CA (ECDSA P-256) and a server certificate it signed for `127.0.0.1` and `localhost`.
pub fn generate_tls() -> Tls {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "auth0-rudderstack test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().expect("server key");
    // A string that parses as an IP address becomes an IP SAN; the stand-ins' URLs use 127.0.0.1.
    let mut leaf_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("SANs");
    leaf_params.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.use_authority_key_identifier_extension = true;
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("sign the server certificate");

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone(), ca_cert.der().clone()];
    Tls::new(&ca_cert.pem(), chain, key).expect("a server configuration for the certificate")
}
