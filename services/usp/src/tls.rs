//! TLS on the MTPs. As a client (`mqtts://` brokers, `wss://` agents) rdm
//! checks the peer's certificate against the public roots and the CAs of
//! `RDM_USP_TLS_CA_FILE`, for the host name of the URL, though it connects
//! to the address the policy vetted. As the server of agents' WebSockets
//! (`RDM_USP_WEBSOCKET_TLS_CERT`/`_KEY`) it can require client
//! certificates (`RDM_USP_WEBSOCKET_CLIENT_CA`): an agent is then taken
//! only for the endpoint id its certificate names, as TR-369 has agents'
//! certificates carry it (a subjectAltName URI `urn:bbf:usp:id:<id>`).
use anyhow::Context as _;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::WebPkiClientVerifier,
};
use std::{path::Path, sync::Arc};

/// The USP service's TLS settings, read once at start.
#[derive(Clone)]
pub struct Tls {
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    verifier: Arc<WebPkiServerVerifier>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not PEM certificates", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
    Ok(certs)
}

fn store(certs: Vec<CertificateDer<'static>>) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .context("a CA certificate rustls does not take")?;
    }
    Ok(roots)
}

impl Tls {
    /// The public roots, and the CAs in `ca_file` when given.
    pub fn new(ca_file: Option<&Path>) -> anyhow::Result<Self> {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = ca_file {
            roots.roots.extend(store(certificates(path)?)?.roots);
        }
        let (provider, roots) = (provider(), Arc::new(roots));
        let verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        Ok(Self {
            provider,
            roots,
            verifier,
        })
    }

    fn builder(&self) -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
        ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
    }

    /// For a connection whose library checks the name it connected to (the
    /// URL's: tungstenite).
    pub fn client(&self) -> Arc<ClientConfig> {
        Arc::new(
            self.builder()
                .with_root_certificates(self.roots.clone())
                .with_no_client_auth(),
        )
    }

    /// For a connection made to a vetted address by a library that would
    /// check that address (rumqttc): the certificate must name `host`.
    pub fn client_for(&self, host: &str) -> Result<Arc<ClientConfig>, String> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| format!("{host} is not a host name a certificate can name"))?;
        let verifier = Named {
            inner: self.verifier.clone(),
            name,
        };
        Ok(Arc::new(
            self.builder()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth(),
        ))
    }
}

/// The server side of agents' WebSockets: rdm's certificate, and the CAs of
/// agents' certificates when they are required.
pub fn server(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let chain = certificates(cert)?;
    let pem = std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
    let key = rustls_pemfile::private_key(&mut pem.as_slice())?
        .with_context(|| format!("{} holds no private key", key.display()))?;
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(path) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(
                Arc::new(store(certificates(path)?)?),
                provider(),
            )
            .build()?,
        ),
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(builder.with_single_cert(chain, key)?))
}

/// The USP endpoint ids a client certificate names (subjectAltName URIs
/// `urn:bbf:usp:id:<id>`).
pub fn endpoint_ids(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::{extensions::GeneralName, prelude::FromDer};
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(cert) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) => uri.strip_prefix("urn:bbf:usp:id:").map(str::to_owned),
            _ => None,
        })
        .collect()
}

/// Checks a server's certificate for `name` rather than for the name (an
/// address) the connection was made with.
#[derive(Debug)]
struct Named {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for Named {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
