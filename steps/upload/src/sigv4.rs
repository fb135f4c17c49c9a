//! AWS Signature Version 4 for S3-compatible stores, over plain data.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

/// Hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// URI-encodes per SigV4: unreserved characters kept; `/` kept when `path`.
pub fn uri_encode(s: &str, path: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') || (path && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The credentials and scope of a signature.
#[derive(Debug, Clone)]
pub struct Signer {
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Region (`us-east-1`, `oss-cn-hangzhou`, `auto` for R2).
    pub region: String,
    /// Service, `s3`.
    pub service: String,
}

/// A request to sign: `headers` must hold `host`; names lower-case.
pub struct Unsigned<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// The encoded path.
    pub path: &'a str,
    /// Query pairs, not encoded.
    pub query: &'a [(String, String)],
    /// Headers to sign.
    pub headers: &'a [(String, String)],
    /// Hex sha256 of the payload, or `UNSIGNED-PAYLOAD`.
    pub payload_hash: &'a str,
}

impl Signer {
    fn key(&self, date: &str) -> Vec<u8> {
        let k = hmac(format!("AWS4{}", self.secret_key).as_bytes(), date.as_bytes());
        let k = hmac(&k, self.region.as_bytes());
        let k = hmac(&k, self.service.as_bytes());
        hmac(&k, b"aws4_request")
    }

    /// The canonical request, string to sign and signature; `amz_date` is `YYYYMMDDTHHMMSSZ`.
    pub fn sign(&self, req: &Unsigned, amz_date: &str) -> (String, String, String) {
        let date = &amz_date[..8];
        let mut q: Vec<(String, String)> =
            req.query.iter().map(|(k, v)| (uri_encode(k, false), uri_encode(v, false))).collect();
        q.sort();
        let query = q.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        let mut h: Vec<(String, String)> =
            req.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string())).collect();
        h.sort();
        let canonical_headers: String = h.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let signed = h.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(";");
        let canonical =
            format!("{}\n{}\n{query}\n{canonical_headers}\n{signed}\n{}", req.method, req.path, req.payload_hash);
        let scope = format!("{date}/{}/{}/aws4_request", self.region, self.service);
        let to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", sha256_hex(canonical.as_bytes()));
        let sig = hex::encode(hmac(&self.key(date), to_sign.as_bytes()));
        (canonical, to_sign, sig)
    }

    /// The `Authorization` header for `req`.
    pub fn authorization(&self, req: &Unsigned, amz_date: &str) -> String {
        let (_, _, sig) = self.sign(req, amz_date);
        let mut names: Vec<String> = req.headers.iter().map(|(k, _)| k.to_ascii_lowercase()).collect();
        names.sort();
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{}/{}/{}/aws4_request, SignedHeaders={}, Signature={sig}",
            self.access_key,
            &amz_date[..8],
            self.region,
            self.service,
            names.join(";")
        )
    }
}

/// `YYYYMMDDTHHMMSSZ` for Unix seconds (UTC), without a date library.
pub fn amz_date(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let rem = unix % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published example: "GET Object" from the S3 SigV4 documentation
    /// (examplebucket, Range header, 20130524T000000Z).
    #[test]
    fn matches_aws_s3_get_object_example() {
        let s = Signer {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            region: "us-east-1".into(),
            service: "s3".into(),
        };
        let empty = sha256_hex(b"");
        let headers = vec![
            ("host".to_string(), "examplebucket.s3.amazonaws.com".to_string()),
            ("range".into(), "bytes=0-9".into()),
            ("x-amz-content-sha256".into(), empty.clone()),
            ("x-amz-date".into(), "20130524T000000Z".into()),
        ];
        let req = Unsigned { method: "GET", path: "/test.txt", query: &[], headers: &headers, payload_hash: &empty };
        let (_, _, sig) = s.sign(&req, "20130524T000000Z");
        assert_eq!(sig, "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
    }

    /// AWS's "PUT Object" example (welcome.txt with x-amz-storage-class).
    #[test]
    fn matches_aws_s3_put_object_example() {
        let s = Signer {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            region: "us-east-1".into(),
            service: "s3".into(),
        };
        let hash = sha256_hex(b"Welcome to Amazon S3.");
        let headers = vec![
            ("date".to_string(), "Fri, 24 May 2013 00:00:00 GMT".to_string()),
            ("host".into(), "examplebucket.s3.amazonaws.com".into()),
            ("x-amz-content-sha256".into(), hash.clone()),
            ("x-amz-date".into(), "20130524T000000Z".into()),
            ("x-amz-storage-class".into(), "REDUCED_REDUNDANCY".into()),
        ];
        let req = Unsigned {
            method: "PUT",
            path: &uri_encode("/test$file.text", true),
            query: &[],
            headers: &headers,
            payload_hash: &hash,
        };
        let (_, _, sig) = s.sign(&req, "20130524T000000Z");
        assert_eq!(sig, "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd");
    }

    #[test]
    fn dates_are_formatted_in_utc() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(1_369_353_600), "20130524T000000Z");
        assert_eq!(amz_date(951_782_400 + 3661), "20000229T010101Z");
    }
}
