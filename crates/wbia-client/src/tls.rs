//! TLS for https WBIA URLs and callbacks, trusting what curl trusts: the bundled Mozilla
//! roots, the operating system's store (or `SSL_CERT_FILE`, which `rustls-native-certs` reads
//! instead), and the operator's PEM bundle ([`crate::ClientOptions::ca_file`]).
//!
//! One addition to webpki's rules: a certificate listed in the operator's bundle is trusted
//! as itself when a server presents it. `openssl req -x509 …`, the usual way to make a
//! certificate for a WBIA on a lab server, marks it `CA:TRUE`; webpki refuses any CA
//! certificate as a server's own (`CaUsedAsEndEntity`), where OpenSSL, and so curl and
//! Python, accept a listed certificate as a trust anchor. Such a certificate must still name
//! the host and be within its validity period, and the server must prove it holds its key
//! (the handshake signature, checked as for any certificate).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The client configuration every [`crate::WbiaClient`] connection uses; `bundle` is the
/// operator's PEM bundle, parsed.
pub(crate) fn client_config(
    bundle: Vec<CertificateDer<'static>>,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "a system CA certificate could not be read");
    }
    roots.add_parsable_certificates(native.certs);
    let (_, unusable) = roots.add_parsable_certificates(bundle.iter().cloned());
    if unusable > 0 {
        tracing::debug!(
            unusable,
            "CA bundle certificates webpki cannot use as roots (still trusted as themselves)"
        );
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let verifier = ListedOrChained {
        webpki,
        listed: bundle,
        provider: provider.clone(),
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// webpki's chain verification, or a certificate of the operator's bundle presented as is.
#[derive(Debug)]
struct ListedOrChained {
    webpki: Arc<WebPkiServerVerifier>,
    listed: Vec<CertificateDer<'static>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for ListedOrChained {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chained = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match chained {
            Err(refused)
                if self
                    .listed
                    .iter()
                    .any(|c| c.as_ref() == end_entity.as_ref()) =>
            {
                verify_listed(end_entity, server_name, now).inspect_err(|_| {
                    tracing::debug!(chain_error = %refused, "listed certificate refused");
                })
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// A listed certificate is its own anchor: what is left to check is the name and the dates.
fn verify_listed(
    cert: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<ServerCertVerified, rustls::Error> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert)?;
    rustls::client::verify_server_name(&parsed, server_name)?;
    let (not_before, not_after) = validity(cert.as_ref()).ok_or(
        rustls::Error::InvalidCertificate(CertificateError::BadEncoding),
    )?;
    let now = now.as_secs() as i64;
    if now < not_before {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet,
        ));
    }
    if now > not_after {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
    }
    Ok(ServerCertVerified::assertion())
}

/// One DER element: its tag, its contents, and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (first as usize, rest),
        0x81..=0x84 => {
            let n = (first & 0x7f) as usize;
            let (bytes, rest) = rest.split_at_checked(n)?;
            (
                bytes.iter().fold(0usize, |l, &b| (l << 8) | b as usize),
                rest,
            )
        }
        _ => return None,
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

/// notBefore and notAfter of an X.509 certificate, in seconds since 1970 (RFC 5280 4.1:
/// Certificate → tbsCertificate → [0] version?, serialNumber, signature, issuer, validity).
fn validity(cert: &[u8]) -> Option<(i64, i64)> {
    const SEQUENCE: u8 = 0x30;
    let (SEQUENCE, cert, _) = der_element(cert)? else {
        return None;
    };
    let (SEQUENCE, mut tbs, _) = der_element(cert)? else {
        return None;
    };
    if tbs.first() == Some(&0xa0) {
        tbs = der_element(tbs)?.2;
    }
    for _ in 0..3 {
        tbs = der_element(tbs)?.2; // serialNumber, signature, issuer
    }
    let (SEQUENCE, times, _) = der_element(tbs)? else {
        return None;
    };
    let (tag, not_before, rest) = der_element(times)?;
    let not_before = asn1_time(tag, not_before)?;
    let (tag, not_after, _) = der_element(rest)?;
    Some((not_before, asn1_time(tag, not_after)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`), the
/// two forms RFC 5280 allows, to seconds since 1970.
fn asn1_time(tag: u8, text: &[u8]) -> Option<i64> {
    let digits = |s: &[u8]| -> Option<i64> {
        s.iter().try_fold(0i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + (c - b'0') as i64)
        })
    };
    let (year, rest) = match (tag, text.len()) {
        (0x17, 13) => {
            let yy = digits(&text[..2])?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        (0x18, 15) => (digits(&text[..4])?, &text[4..]),
        _ => return None,
    };
    if rest[10] != b'Z' {
        return None;
    }
    let field = |i: usize| digits(&rest[i..i + 2]);
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 12, 3), 20_790);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        // Every day from 1950 to 2100 follows the one before.
        let mut previous = days_from_civil(1949, 12, 31);
        for year in 1950..=2100 {
            let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
            for month in 1..=12 {
                let days = match month {
                    2 if leap => 29,
                    2 => 28,
                    4 | 6 | 9 | 11 => 30,
                    _ => 31,
                };
                for day in 1..=days {
                    let d = days_from_civil(year, month, day);
                    assert_eq!(d, previous + 1, "{year}-{month}-{day}");
                    previous = d;
                }
            }
        }
    }

    #[test]
    fn asn1_times_both_forms() {
        assert_eq!(asn1_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(asn1_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(asn1_time(0x17, b"500101000000Z"), Some(-631_152_000));
        assert_eq!(asn1_time(0x18, b"20491231235959Z"), Some(2_524_607_999));
        assert_eq!(asn1_time(0x18, b"99991231235959Z"), Some(253_402_300_799));
        for bad in [
            &b"700101000000"[..],
            b"701301000000Z",
            b"7001010000002",
            b"70010100000aZ",
        ] {
            assert_eq!(asn1_time(0x17, bad), None, "{bad:?}");
        }
        assert_eq!(asn1_time(0x13, b"700101000000Z"), None);
    }

    #[test]
    fn truncated_der_is_refused_not_a_panic() {
        for bytes in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 0, 0, 0, 0, 1],
            &[0x30, 0x05, 1, 2],
        ] {
            assert_eq!(validity(bytes), None, "{bytes:?}");
        }
        // Every prefix of a real certificate's start.
        let der = hand_made_certificate();
        for n in 0..der.len() {
            let _ = validity(&der[..n]);
        }
    }

    /// A certificate's first bytes up to its validity, assembled by hand (no generator here).
    fn hand_made_certificate() -> Vec<u8> {
        let times = [
            &[0x30, 0x1e, 0x17, 0x0d][..],
            b"260101000000Z",
            &[0x17, 0x0d],
            b"270101000000Z",
        ]
        .concat();
        let tbs_body = [
            &[0xa0, 0x03, 0x02, 0x01, 0x02][..],
            &[0x02, 0x01, 0x01],
            &[0x30, 0x00],
            &[0x30, 0x00],
            &times,
        ]
        .concat();
        let tbs = [&[0x30, tbs_body.len() as u8][..], &tbs_body].concat();
        let cert = [&[0x30, tbs.len() as u8][..], &tbs].concat();
        assert_eq!(
            validity(&cert),
            Some((
                days_from_civil(2026, 1, 1) * 86_400,
                days_from_civil(2027, 1, 1) * 86_400
            ))
        );
        cert
    }
}
