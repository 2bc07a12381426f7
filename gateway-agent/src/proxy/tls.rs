//! TLS termination for HTTPS listeners: rustls (TLS 1.2 and 1.3, ALPN h2 and http/1.1) with the
//! certificate chosen by SNI among the listener's certificateRefs — exact hostname first, then the
//! longest wildcard, then a listener without a hostname. Certificates come from the model, so a
//! changed Secret takes effect with the next snapshot.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;
use gateway_model::Model;
use rustls::{
    ServerConfig,
    crypto::ring::sign::any_supported_type,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

/// Parsed certificates per HTTPS listener socket: (hostname pattern, key), in match order.
pub type CertTable = HashMap<SocketAddr, Vec<(Option<String>, Arc<CertifiedKey>)>>;

/// Parses every HTTPS listener's certificates; a certificate that does not parse is logged and
/// left out (the others keep serving).
pub fn cert_table(model: &Model) -> CertTable {
    let mut table = CertTable::new();
    for l in &model.http {
        let Some(certs) = &l.tls else { continue };
        let mut entries = Vec::new();
        for c in certs {
            match certified_key(&c.cert_pem, &c.key_pem) {
                Ok(key) => entries.push((c.hostname.clone(), Arc::new(key))),
                Err(e) => tracing::error!(secret = %c.secret, error = %e, "certificate not usable"),
            }
        }
        entries.sort_by_key(|(h, _)| gateway_model::hostname::order_key(h));
        table.insert(l.address, entries);
    }
    table
}

fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem).collect::<Result<_, _>>()?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in tls.crt");
    let key = PrivateKeyDer::from_pem_slice(key_pem)?;
    Ok(CertifiedKey::new(chain, any_supported_type(&key)?))
}

/// Chooses a listener's certificate by SNI from the current table.
#[derive(Debug)]
struct SniResolver {
    table: Arc<ArcSwap<CertTable>>,
    listener: SocketAddr,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self.table.load();
        let entries = table.get(&self.listener)?;
        let sni = hello.server_name().map(str::to_ascii_lowercase);
        entries
            .iter()
            .find(|(pattern, _)| match (pattern, &sni) {
                (None, _) => true,
                (Some(p), Some(name)) => gateway_model::hostname::matches(p, name),
                (Some(_), None) => false,
            })
            .or_else(|| entries.first())
            .map(|(_, key)| key.clone())
    }
}

/// The rustls server configuration of one HTTPS listener socket.
pub fn server_config(table: Arc<ArcSwap<CertTable>>, listener: SocketAddr) -> Arc<ServerConfig> {
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniResolver { table, listener }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}
