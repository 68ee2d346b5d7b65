//! The `Authorization` header of AWS Signature Version 4 (and 4a), read for its form.
//!
//! Riptide does not verify signatures yet (it holds no credentials to check them against): a
//! signed request is accepted whatever its key, and so is an unsigned one. A header that is
//! present but malformed is refused, as AWS refuses it, so that a misconfigured client fails
//! here the way it would against Kinesis. The credential scope's region is kept: the gateway
//! shows stream ARNs in the region the client signed for.

/// The parts of a well-formed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub access_key: String,
    /// `yyyymmdd`.
    pub date: String,
    /// Empty for SigV4a, whose scope has no region.
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

/// Why a header was refused; the message says what a well-formed one looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Authorization: {0}")]
pub struct AuthError(pub String);

const SIGV4: &str = "AWS4-HMAC-SHA256";
const SIGV4A: &str = "AWS4-ECDSA-P256-SHA256";

/// Parses an `Authorization` header value.
pub fn parse(header: &str) -> Result<Authorization, AuthError> {
    let err = |m: String| AuthError(m);
    let (algorithm, rest) = header.trim().split_once(' ').ok_or_else(|| {
        err(format!(
            "must be \"{SIGV4} Credential=..., SignedHeaders=..., Signature=...\", got {header:?}"
        ))
    })?;
    let v4a = match algorithm {
        SIGV4 => false,
        SIGV4A => true,
        other => {
            return Err(err(format!(
                "algorithm must be {SIGV4} or {SIGV4A}, got {other:?}"
            )));
        }
    };
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| err(format!("{part:?} is not key=value")))?;
        let slot = match k {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            other => return Err(err(format!("unknown component {other:?}"))),
        };
        if slot.replace(v).is_some() {
            return Err(err(format!("{k} appears twice")));
        }
    }
    let missing = |name: &str| err(format!("the {name} component is missing"));
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed = signed.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;

    let scope: Vec<&str> = credential.split('/').collect();
    let shape = if v4a {
        "access-key/yyyymmdd/service/aws4_request"
    } else {
        "access-key/yyyymmdd/region/service/aws4_request"
    };
    let (access_key, date, region, service, terminator) = match (v4a, scope.as_slice()) {
        (false, [k, d, r, s, t]) => (*k, *d, *r, *s, *t),
        (true, [k, d, s, t]) => (*k, *d, "", *s, *t),
        _ => {
            return Err(err(format!(
                "Credential must be {shape}, got {credential:?}"
            )));
        }
    };
    let date_ok = date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit());
    if access_key.is_empty()
        || !date_ok
        || (!v4a && region.is_empty())
        || service.is_empty()
        || terminator != "aws4_request"
    {
        return Err(err(format!(
            "Credential must be {shape}, got {credential:?}"
        )));
    }

    let signed_headers: Vec<String> = signed.split(';').map(str::to_string).collect();
    if signed_headers
        .iter()
        .any(|h| h.is_empty() || h.bytes().any(|b| b.is_ascii_uppercase() || b == b' '))
    {
        return Err(err(format!(
            "SignedHeaders must be lowercase header names separated by ';', got {signed:?}"
        )));
    }
    if !signed_headers.iter().any(|h| h == "host") {
        return Err(err(format!(
            "SignedHeaders must include host, got {signed:?}"
        )));
    }
    let hex_ok = !signature.is_empty()
        && signature.len().is_multiple_of(2)
        && signature.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex_ok || (!v4a && signature.len() != 64) {
        return Err(err(format!(
            "Signature must be {} hex digits, got {signature:?}",
            if v4a { "an even number of" } else { "64" }
        )));
    }
    Ok(Authorization {
        access_key: access_key.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers,
        signature: signature.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &str = "fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024";

    fn header(credential: &str, signed: &str, signature: &str) -> String {
        format!("{SIGV4} Credential={credential}, SignedHeaders={signed}, Signature={signature}")
    }

    #[test]
    fn headers_as_sdks_send_them_are_accepted() {
        let a = parse(&header(
            "AKIDEXAMPLE/20240101/eu-west-1/kinesis/aws4_request",
            "content-type;host;x-amz-date;x-amz-target",
            SIG,
        ))
        .expect("well formed");
        assert_eq!(a.access_key, "AKIDEXAMPLE");
        assert_eq!(a.region, "eu-west-1");
        assert_eq!(a.service, "kinesis");
        assert_eq!(a.signed_headers.len(), 4);
        // Without spaces after the commas, as some signers write it.
        let compact = format!(
            "{SIGV4} Credential=k/20240101/us-east-1/kinesis/aws4_request,SignedHeaders=host,Signature={SIG}"
        );
        assert!(parse(&compact).is_ok());
        let v4a = format!(
            "{SIGV4A} Credential=k/20240101/kinesis/aws4_request, SignedHeaders=host;x-amz-region-set, Signature=3045022100ab"
        );
        assert_eq!(parse(&v4a).expect("sigv4a").region, "");
    }

    #[test]
    fn malformed_headers_are_refused_with_what_is_wrong() {
        let good_cred = "k/20240101/us-east-1/kinesis/aws4_request";
        let cases = [
            ("Bearer abc".to_string(), "algorithm"),
            ("AWS4-HMAC-SHA256".to_string(), "must be"),
            (
                format!("{SIGV4} SignedHeaders=host, Signature={SIG}"),
                "Credential component is missing",
            ),
            (
                format!("{SIGV4} Credential={good_cred}, Signature={SIG}"),
                "SignedHeaders component",
            ),
            (
                format!("{SIGV4} Credential={good_cred}, SignedHeaders=host"),
                "Signature component",
            ),
            (
                header("k/2024/us-east-1/kinesis/aws4_request", "host", SIG),
                "Credential must be",
            ),
            (
                header("k/20240101/kinesis/aws4_request", "host", SIG),
                "Credential must be",
            ),
            (
                header("k/20240101/us-east-1/kinesis/aws5_request", "host", SIG),
                "Credential must be",
            ),
            (
                header("/20240101/us-east-1/kinesis/aws4_request", "host", SIG),
                "Credential must be",
            ),
            (header(good_cred, "x-amz-date", SIG), "must include host"),
            (header(good_cred, "Host", SIG), "lowercase"),
            (header(good_cred, "host;;x", SIG), "lowercase"),
            (header(good_cred, "host", "xyz"), "64 hex digits"),
            (header(good_cred, "host", &SIG[..62]), "64 hex digits"),
            (
                format!("{} , Foo=bar", header(good_cred, "host", SIG)),
                "unknown component",
            ),
            (
                format!("{}, Signature={SIG}", header(good_cred, "host", SIG)),
                "twice",
            ),
            (format!("{SIGV4} Credential"), "not key=value"),
        ];
        for (h, want) in cases {
            let e = parse(&h).expect_err(&h);
            assert!(e.to_string().contains(want), "{h:?}: {e}");
            assert!(e.to_string().starts_with("Authorization: "));
        }
    }
}
