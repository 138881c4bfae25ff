//! TLS material shared by amqps, HTTP/2 over TLS and mqtts: the configured PEM pair, or
//! a self-signed development pair generated into `<data_dir>/tls/` and reused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::ServerConfig;

#[derive(Debug, Clone)]
pub struct TlsMaterial {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// True when iotsync generated the pair (self-signed, for development).
    pub generated: bool,
}

impl TlsMaterial {
    /// The configured pair, or the development pair (generated on first use).
    pub fn resolve(cfg: &ServerConfig) -> anyhow::Result<Self> {
        if !cfg.tls.cert_file.is_empty() {
            return Ok(Self {
                cert_file: cfg.tls.cert_file.clone().into(),
                key_file: cfg.tls.key_file.clone().into(),
                generated: false,
            });
        }
        let dir = cfg.data_dir.join("tls");
        let cert_file = dir.join("cert.pem");
        let key_file = dir.join("key.pem");
        if !(cert_file.exists() && key_file.exists()) {
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                crate::data_dir::DIR_MODE,
            )
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
            let ck = rcgen::generate_simple_self_signed(vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
                "::1".to_string(),
            ])
            .context("generating the development certificate")?;
            write_private(&cert_file, &ck.cert.pem())
                .with_context(|| format!("writing {}", cert_file.display()))?;
            write_private(&key_file, &ck.key_pair.serialize_pem())
                .with_context(|| format!("writing {}", key_file.display()))?;
            tracing::info!(cert = %cert_file.display(), "generated a self-signed development certificate");
        }
        Ok(Self {
            cert_file,
            key_file,
            generated: true,
        })
    }

    pub fn cert_chain(&self) -> anyhow::Result<Vec<CertificateDer<'static>>> {
        let certs = CertificateDer::pem_file_iter(&self.cert_file)
            .with_context(|| format!("reading tls.cert_file {}", self.cert_file.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing tls.cert_file {}", self.cert_file.display()))?;
        if certs.is_empty() {
            anyhow::bail!(
                "tls.cert_file {} holds no certificate",
                self.cert_file.display()
            );
        }
        Ok(certs)
    }

    pub fn private_key(&self) -> anyhow::Result<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_file(&self.key_file)
            .with_context(|| format!("reading tls.key_file {}", self.key_file.display()))
    }

    /// A rustls server configuration (ring provider) with the given ALPN protocols.
    pub fn server_config(&self, alpn: &[&[u8]]) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(self.cert_chain()?, self.private_key()?)
            .context("tls.cert_file and tls.key_file do not form a usable pair")?;
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(c))
    }
}

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(content.as_bytes())?;
    f.sync_all()
}
