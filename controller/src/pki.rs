//! The certificates of mutual TLS between the controller and the agents.
//! The operator's CA lives in a Secret in its own namespace; each cluster
//! gets an agent server certificate for its pods' DNS names, and the
//! controller presents a client certificate from the same CA.
//! Re-issue decisions use annotations written with each certificate (CA
//! fingerprint, expiry), so no X.509 parsing is needed.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use sha2::{Digest, Sha256};

pub const CA_SECRET: &str = "qdrant-operator-ca";
pub const ANN_CA: &str = "qdrant.io/ca-sha256";
pub const ANN_NOT_AFTER: &str = "qdrant.io/not-after";
const CA_NAME: &str = "qdrant-operator-ca";
/// Leaf certificates live a year by default, and are renewed in their last
/// 30 days (or in the second half of a shorter life).
const LEAF_DAYS: i64 = 365;
const RENEW_DAYS: i64 = 30;

/// How long the certificates the CA issues live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity(jiff::SignedDuration);

impl Default for Validity {
    fn default() -> Self {
        Self(jiff::SignedDuration::from_hours(24 * LEAF_DAYS))
    }
}

impl std::str::FromStr for Validity {
    type Err = String;
    /// `2m`, `12h`, `90d`, `8760h`: at least a minute.
    fn from_str(s: &str) -> Result<Self, String> {
        let d: jiff::SignedDuration = match s.strip_suffix('d').map(str::parse::<i64>) {
            Some(Ok(days)) => jiff::SignedDuration::from_hours(days.saturating_mul(24)),
            _ => s
                .parse()
                .map_err(|e| format!("{s:?} is not a duration such as 2m, 12h or 90d: {e}"))?,
        };
        if d < jiff::SignedDuration::from_secs(60) {
            return Err(format!("{s:?}: a certificate must live at least a minute"));
        }
        Ok(Self(d))
    }
}

impl Validity {
    /// How long before its expiry a certificate is issued again.
    pub fn renew_before(&self) -> jiff::SignedDuration {
        std::cmp::min(
            jiff::SignedDuration::from_hours(24 * RENEW_DAYS),
            self.0 / 2,
        )
    }
}

#[derive(Debug, thiserror::Error)]
#[error("certificate: {0}")]
pub struct PkiError(#[from] rcgen::Error);

pub struct Ca {
    pub cert_pem: String,
    key: KeyPair,
    /// How long the leaf certificates it issues live.
    pub validity: Validity,
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = rcgen::date_time_ymd(2025, 1, 1);
    p.not_after = rcgen::date_time_ymd(2035, 1, 1);
    p
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: jiff::Timestamp,
}

impl Ca {
    /// A new CA: (certificate PEM, key PEM) to store in the CA Secret.
    pub fn generate() -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let cert_pem = ca_params().self_signed(&key)?.pem();
        Ok(Self {
            cert_pem,
            key,
            validity: Validity::default(),
        })
    }

    /// The CA from its stored PEMs. Its parameters are rebuilt (same name,
    /// same key), so certificates it signs chain to the stored certificate.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key: KeyPair::from_pem(key_pem)?,
            validity: Validity::default(),
        })
    }

    /// The same CA issuing certificates that live `validity`.
    pub fn with_validity(mut self, validity: Validity) -> Self {
        self.validity = validity;
        self
    }

    /// When a certificate of this CA that expires at `not_after` is due
    /// to be issued again.
    pub fn renew_at(&self, not_after: jiff::Timestamp) -> jiff::Timestamp {
        not_after - self.validity.renew_before()
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.cert_pem.as_bytes()))
    }

    fn sign(&self, params: CertificateParams, now: jiff::Timestamp) -> Result<Leaf, PkiError> {
        let mut params = params;
        let not_after = now + self.validity.0;
        // Some slack for clocks behind this one, within a short life.
        let slack = std::cmp::min(jiff::SignedDuration::from_hours(1), self.validity.0 / 4);
        params.not_before = to_offset(now - slack);
        params.not_after = to_offset(not_after);
        let key = KeyPair::generate()?;
        let issuer = Issuer::new(ca_params(), &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after,
        })
    }

    /// The agents' server certificate, valid for the given DNS names.
    pub fn server_cert(&self, dns: Vec<String>, now: jiff::Timestamp) -> Result<Leaf, PkiError> {
        let mut p = CertificateParams::new(dns)?;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(p, now)
    }

    /// The controller's client certificate.
    pub fn client_cert(&self, now: jiff::Timestamp) -> Result<Leaf, PkiError> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name
            .push(DnType::CommonName, "qdrant-operator");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(p, now)
    }
}

/// rcgen takes `time::OffsetDateTime`.
fn to_offset(t: jiff::Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.as_second())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Whether a stored certificate must be issued again: another CA signed it,
/// or it is due for renewal (or its annotations are missing).
pub fn needs_reissue(
    ca_sha256: Option<&str>,
    not_after: Option<&str>,
    ca: &Ca,
    now: jiff::Timestamp,
) -> bool {
    if ca_sha256 != Some(ca.fingerprint().as_str()) {
        return true;
    }
    match not_after.and_then(|s| s.parse::<jiff::Timestamp>().ok()) {
        Some(t) => ca.renew_at(t) <= now,
        None => true,
    }
}

/// DNS names of a cluster's agents: each pod through the headless Service.
pub fn agent_dns_names(headless: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("*.{headless}.{namespace}.svc"),
        format!("*.{headless}.{namespace}.svc.cluster.local"),
        "localhost".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reloaded_ca_keeps_its_identity_and_renewal_follows_ca_and_expiry() {
        let ca = Ca::generate().unwrap();
        let again = Ca::load(&ca.cert_pem, &ca.key_pem()).unwrap();
        assert_eq!(ca.fingerprint(), again.fingerprint());
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let leaf = again
            .server_cert(agent_dns_names("q-headless", "ns"), now)
            .unwrap();
        assert!(leaf.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let fp = ca.fingerprint();
        let na = leaf.not_after.to_string();
        assert!(!needs_reissue(Some(&fp), Some(&na), &ca, now));
        assert!(needs_reissue(
            Some(&fp),
            Some(&na),
            &ca,
            leaf.not_after - jiff::SignedDuration::from_hours(24 * 29)
        ));
        assert!(needs_reissue(Some("other-ca"), Some(&na), &ca, now));
        assert!(needs_reissue(None, None, &ca, now));
    }

    #[test]
    fn a_short_lived_certificate_is_renewed_in_the_second_half_of_its_life() {
        let v: Validity = "2m".parse().unwrap();
        assert_eq!(v.renew_before(), jiff::SignedDuration::from_secs(60));
        let year: Validity = "365d".parse().unwrap();
        assert_eq!(year, Validity::default());
        assert_eq!(
            year.renew_before(),
            jiff::SignedDuration::from_hours(24 * 30)
        );
        assert!("30s".parse::<Validity>().is_err());
        assert!(
            "soon"
                .parse::<Validity>()
                .unwrap_err()
                .contains("2m, 12h or 90d")
        );

        let ca = Ca::generate().unwrap().with_validity(v);
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let leaf = ca.client_cert(now).unwrap();
        assert_eq!(leaf.not_after, now + jiff::SignedDuration::from_secs(120));
        let (fp, na) = (ca.fingerprint(), leaf.not_after.to_string());
        let at = |secs| now + jiff::SignedDuration::from_secs(secs);
        assert!(!needs_reissue(Some(&fp), Some(&na), &ca, at(59)));
        assert!(needs_reissue(Some(&fp), Some(&na), &ca, at(60)));
    }
}
