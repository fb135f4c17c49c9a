//! `upload`: sends workspace files to S3-compatible storage (AWS S3, Alibaba
//! OSS, Cloudflare R2, MinIO) signed with SigV4, to a presigned URL, or to the
//! run's artifact store.
//!
//! Credentials come only from granted secrets named by inputs; the network is
//! limited to the endpoint's host. Files above `multipart-threshold` go up in
//! parts of `part-size` bytes.

pub mod files;
pub mod sigv4;

use std::io::{Read, Seek, SeekFrom};

use skiff_step_sdk::http::Request;
use skiff_step_sdk::{Context, Manifest, Outputs, Step, StepError, info};

use sigv4::{Signer, Unsigned};

struct Upload;

fn invalid(m: impl Into<String>) -> StepError {
    StepError::InvalidInput(m.into())
}

/// (workspace path, object key relative to the prefix)
fn collect(sources: &str) -> Result<Vec<(String, String)>, StepError> {
    let mut out = Vec::new();
    for src in sources.split(['\n', ',']).map(str::trim).filter(|s| !s.is_empty()) {
        files::check_inside(src).map_err(|e| invalid(format!("source {e}")))?;
        let src = src.trim_start_matches("/workspace/").trim_start_matches("./");
        let before = out.len();
        if src.contains(['*', '?']) {
            walk(".", &mut |rel| {
                if files::glob_match(src, rel) {
                    out.push((rel.to_string(), rel.to_string()));
                }
            })?;
        } else {
            let meta = std::fs::metadata(src).map_err(|e| StepError::failed(format!("source `{src}`: {e}")))?;
            if meta.is_dir() {
                let base = src.trim_end_matches('/');
                walk(base, &mut |rel| {
                    let key = rel.strip_prefix(base).unwrap_or(rel).trim_start_matches('/').to_string();
                    out.push((rel.to_string(), key));
                })?;
            } else {
                let name = src.rsplit('/').next().unwrap_or(src).to_string();
                out.push((src.to_string(), name));
            }
        }
        if out.len() == before {
            return Err(StepError::failed(format!("source `{src}` matched no files")));
        }
    }
    Ok(out)
}

fn walk(dir: &str, f: &mut dyn FnMut(&str)) -> Result<(), StepError> {
    skiff_step_sdk::files::walk(dir, f).map_err(|e| StepError::failed(format!("listing `{dir}`: {e}")))
}

fn secret_input(ctx: &Context, name_input: &str, value_input: &str) -> Result<Option<String>, StepError> {
    if let Some(name) = ctx.input(name_input).filter(|s| !s.is_empty()) {
        return skiff_step_sdk::secret(name).map(Some).ok_or_else(|| {
            StepError::Denied(format!(
                "secret `{name}` (input `{name_input}`) was not granted: add it to `permissions.secrets`"
            ))
        });
    }
    Ok(ctx.input(value_input).filter(|s| !s.is_empty()).map(String::from))
}

struct Store {
    signer: Signer,
    /// `scheme://host[:port]`
    origin: String,
    host: String,
    /// `/bucket` for path-style, empty for virtual-hosted.
    base: String,
}

impl Store {
    fn from(ctx: &Context) -> Result<Self, StepError> {
        let target = target(ctx);
        let bucket = ctx.required("bucket")?.to_string();
        let region_in = ctx.input("region").filter(|s| !s.is_empty());
        let (endpoint, region, path_style) = match (target.as_str(), ctx.input("endpoint").filter(|s| !s.is_empty())) {
            (_, Some(ep)) => {
                let region = region_in.unwrap_or(if target == "r2" { "auto" } else { "us-east-1" });
                let region = if target == "oss" && !region.starts_with("oss-") {
                    format!("oss-{region}")
                } else {
                    region.into()
                };
                let path_style = !matches!(ctx.input("path-style"), Some("false"));
                (ep.trim_end_matches('/').to_string(), region, path_style)
            }
            ("s3", None) => {
                let r = region_in.unwrap_or("us-east-1");
                (format!("https://{bucket}.s3.{r}.amazonaws.com"), r.to_string(), false)
            }
            ("oss", None) => {
                let r = region_in.ok_or_else(|| invalid("input `region` is required for OSS (like `cn-hangzhou`)"))?;
                let r = r.trim_start_matches("oss-");
                (format!("https://{bucket}.oss-{r}.aliyuncs.com"), format!("oss-{r}"), false)
            }
            (t @ ("r2" | "minio"), None) => return Err(invalid(format!("input `endpoint` is required for {t}"))),
            (other, None) => {
                return Err(invalid(format!(
                    "input `target` is `{other}`; use s3, oss, r2, minio, presigned or artifact"
                )));
            }
        };
        let access_key = secret_input(ctx, "access-key-id-secret", "access-key-id")?.ok_or_else(|| {
            invalid("set `access-key-id-secret` to the name of a granted secret holding the access key id")
        })?;
        let secret_key = secret_input(ctx, "secret-access-key-secret", "access-key-secret")?.ok_or_else(|| {
            invalid("set `secret-access-key-secret` to the name of a granted secret holding the secret access key")
        })?;
        let after = endpoint.find("://").map_or(0, |i| i + 3);
        let host = endpoint[after..].split('/').next().unwrap_or("").to_string();
        Ok(Self {
            signer: Signer { access_key, secret_key, region, service: "s3".into() },
            origin: endpoint[..after + host.len()].to_string(),
            host,
            base: if path_style { format!("/{}", sigv4::uri_encode(&bucket, false)) } else { String::new() },
        })
    }

    fn send(
        &self,
        method: &str,
        key: &str,
        query: &[(String, String)],
        body: Vec<u8>,
        ctype: Option<&str>,
    ) -> Result<skiff_step_sdk::http::Response, StepError> {
        let path = format!("{}/{}", self.base, sigv4::uri_encode(key, true));
        let hash = sigv4::sha256_hex(&body);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let date = sigv4::amz_date(now);
        let mut headers = vec![
            ("host".to_string(), self.host.clone()),
            ("x-amz-content-sha256".into(), hash.clone()),
            ("x-amz-date".into(), date.clone()),
        ];
        if let Some(ct) = ctype {
            headers.push(("content-type".into(), ct.into()));
        }
        let auth = self
            .signer
            .authorization(&Unsigned { method, path: &path, query, headers: &headers, payload_hash: &hash }, &date);
        let qs = query
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    sigv4::uri_encode(k, false)
                } else {
                    format!("{}={}", sigv4::uri_encode(k, false), sigv4::uri_encode(v, false))
                }
            })
            .collect::<Vec<_>>()
            .join("&");
        let url = if qs.is_empty() { format!("{}{path}", self.origin) } else { format!("{}{path}?{qs}", self.origin) };
        let mut req = Request::new(method, &url).header("authorization", &auth).max_response_bytes(1 << 20);
        for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
            req = req.header(k, v);
        }
        let resp = req.body(body).send()?;
        if resp.status >= 300 {
            let text = resp.text();
            let code = xml_tag(&text, "Code").unwrap_or_default();
            let msg = xml_tag(&text, "Message").unwrap_or_default();
            return Err(StepError::failed(
                format!("{method} `{key}` failed: HTTP {} {code} {msg}", resp.status).trim().to_string(),
            ));
        }
        Ok(resp)
    }

    fn put(&self, file: &str, key: &str, threshold: u64, part_size: u64) -> Result<u64, StepError> {
        let ctype = files::content_type(key);
        let len = std::fs::metadata(file).map_err(|e| StepError::failed(format!("`{file}`: {e}")))?.len();
        if len <= threshold {
            let body = std::fs::read(file).map_err(|e| StepError::failed(format!("reading `{file}`: {e}")))?;
            self.send("PUT", key, &[], body, Some(ctype))?;
            return Ok(len);
        }
        let resp = self.send("POST", key, &[("uploads".into(), String::new())], Vec::new(), Some(ctype))?;
        let id = xml_tag(&resp.text(), "UploadId")
            .ok_or_else(|| StepError::failed("the store did not return an UploadId"))?;
        let result = (|| {
            let mut f = std::fs::File::open(file).map_err(|e| StepError::failed(format!("`{file}`: {e}")))?;
            let mut parts = Vec::new();
            let mut n = 1u32;
            let mut off = 0u64;
            while off < len {
                let size = part_size.min(len - off);
                let mut buf = vec![0; size as usize];
                f.seek(SeekFrom::Start(off)).and_then(|_| f.read_exact(&mut buf)).map_err(StepError::failed)?;
                let q = [("partNumber".to_string(), n.to_string()), ("uploadId".to_string(), id.clone())];
                let r = self.send("PUT", key, &q, buf, None)?;
                let etag = r.header("etag").unwrap_or("").to_string();
                parts.push(format!("<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"));
                n += 1;
                off += size;
            }
            let xml = format!("<CompleteMultipartUpload>{}</CompleteMultipartUpload>", parts.concat());
            self.send("POST", key, &[("uploadId".into(), id.clone())], xml.into_bytes(), Some("application/xml"))?;
            info!("uploaded `{key}` in {} parts", n - 1);
            Ok(len)
        })();
        if result.is_err() {
            let _ = self.send("DELETE", key, &[("uploadId".into(), id)], Vec::new(), None);
        }
        result
    }
}

fn xml_tag(xml: &str, tag: &str) -> Option<String> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].to_string())
}

/// `target`, or `provider` as Serverless-cd's plugin mapping sets it.
fn target(ctx: &Context) -> String {
    let t = ctx.input("target").filter(|s| !s.is_empty()).or(ctx.input("provider")).unwrap_or("s3");
    t.to_ascii_lowercase()
}

fn size_input(ctx: &Context, name: &str, default: u64) -> Result<u64, StepError> {
    match ctx.input(name).filter(|s| !s.is_empty()) {
        None => Ok(default),
        Some(v) => {
            v.trim().parse().map_err(|_| invalid(format!("input `{name}` must be a number of bytes, not `{v}`")))
        }
    }
}

impl Step for Upload {
    fn describe() -> Manifest {
        Manifest::new(
            "upload",
            "Uploads workspace files to S3-compatible storage, a presigned URL, or the run's artifacts.",
        )
        .input("source", "Files, folders or globs in the workspace, comma- or newline-separated", true, None)
        .input("target", "s3, oss, r2, minio, presigned or artifact", false, Some("s3"))
        .input("bucket", "The bucket", false, None)
        .input("region", "The region (`auto` for R2)", false, None)
        .input("endpoint", "S3-compatible endpoint URL; path-style addressing is used with it", false, None)
        .input("path-style", "false for virtual-hosted addressing with a custom endpoint", false, Some("true"))
        .input("prefix", "Key prefix in the bucket", false, None)
        .input("access-key-id-secret", "Name of a granted secret holding the access key id", false, None)
        .input("secret-access-key-secret", "Name of a granted secret holding the secret access key", false, None)
        .input("access-key-id", "The access key id itself (Serverless-cd style)", false, None)
        .input("access-key-secret", "The secret key itself (Serverless-cd style)", false, None)
        .input("multipart-threshold", "Files larger than this go up in parts", false, Some("8388608"))
        .input("part-size", "Multipart part size (at least 5 MiB on AWS)", false, Some("8388608"))
        .input("url", "presigned: the URL to PUT the single file to", false, None)
        .input("name", "artifact: the artifact's name (default: the file's path)", false, None)
        .output("count", "Files uploaded")
        .output("bytes", "Bytes uploaded")
        .output("keys", "Object keys or artifact names, comma-separated")
        .host("${inputs.endpoint}")
        .host("${inputs.url}")
    }

    fn run(ctx: Context) -> Result<Outputs, StepError> {
        let list = collect(ctx.required("source")?)?;
        let target = target(&ctx);
        let mut keys = Vec::new();
        let mut bytes = 0u64;
        match target.as_str() {
            "artifact" => {
                for (path, key) in &list {
                    let name = match ctx.input("name").filter(|s| !s.is_empty()) {
                        Some(n) if list.len() == 1 => n.to_string(),
                        _ => key.clone(),
                    };
                    bytes += skiff_step_sdk::upload_artifact(&name, path).map_err(StepError::Failed)?;
                    keys.push(name);
                }
            }
            "presigned" => {
                let url = ctx.required("url")?;
                let [(path, key)] = list.as_slice() else {
                    return Err(invalid(format!("a presigned URL takes one file; `source` matched {}", list.len())));
                };
                let body = std::fs::read(path).map_err(|e| StepError::failed(format!("reading `{path}`: {e}")))?;
                bytes = body.len() as u64;
                let resp = Request::put(url).header("content-type", files::content_type(key)).body(body).send()?;
                if resp.status >= 300 {
                    return Err(StepError::failed(format!("PUT to the presigned URL failed: HTTP {}", resp.status)));
                }
                keys.push(key.clone());
            }
            _ => {
                let store = Store::from(&ctx)?;
                let part = size_input(&ctx, "part-size", 8 << 20)?.max(1);
                let threshold = size_input(&ctx, "multipart-threshold", 8 << 20)?;
                let prefix = ctx.input_or("prefix", "").trim_matches('/').to_string();
                for (path, key) in &list {
                    let key = if prefix.is_empty() { key.clone() } else { format!("{prefix}/{key}") };
                    bytes += store.put(path, &key, threshold, part)?;
                    info!("uploaded {path} -> {key}");
                    keys.push(key);
                }
            }
        }
        Ok(Outputs::new()
            .set("count", keys.len().to_string())
            .set("bytes", bytes.to_string())
            .set("keys", keys.join(",")))
    }
}

skiff_step_sdk::export!(Upload);
