//! A run's artifacts: listed, and downloaded one by one, with the token that reaches its app.

use super::*;
use skiff_runtime::artifact_store::Artifact;

/// A run's artifacts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ArtifactList {
    /// By name.
    #[schema(value_type = Vec<Object>)]
    pub artifacts: Vec<Artifact>,
}

/// Lists the artifacts a run's steps stored (`upload` with `target: artifact`).
#[utoipa::path(get, path = "/v1/runs/{id}/artifacts", tag = "artifacts", params(("id" = i64, Path, description = "Run id")),
    responses((status = 200, description = "The run's artifacts: name, size, sha256, the step that stored it, when", body = ArtifactList),
              (status = 400, description = "The id is malformed", body = ErrorBody),
              (status = 404, description = "No such run, or the token does not reach its app", body = ErrorBody)),
    security(("token" = [])))]
pub(crate) async fn list_artifacts(
    State(s): State<Arc<Shared>>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<ArtifactList>> {
    visible_run(&s, &caller, id)?;
    let store = s.artifacts.clone();
    let artifacts = tokio::task::spawn_blocking(move || store.list(&id.to_string()))
        .await
        .map_err(|e| anyhow::anyhow!("listing artifacts: {e}"))?
        .map_err(|e| anyhow::anyhow!("listing the artifacts of run {id}: {e}"))?;
    Ok(Json(ArtifactList { artifacts }))
}

/// Downloads one artifact: its bytes as stored, with its SHA-256 in `x-checksum-sha256`.
#[utoipa::path(get, path = "/v1/runs/{id}/artifacts/{name}", tag = "artifacts",
    params(("id" = i64, Path, description = "Run id"), ("name" = String, Path, description = "Artifact name")),
    responses((status = 200, description = "The artifact's bytes", content_type = "application/octet-stream", body = Vec<u8>),
              (status = 400, description = "The id is malformed", body = ErrorBody),
              (status = 404, description = "No such run or artifact, or the token does not reach its app", body = ErrorBody)),
    security(("token" = [])))]
pub(crate) async fn download_artifact(
    State(s): State<Arc<Shared>>,
    caller: Caller,
    ApiPath((id, name)): ApiPath<(i64, String)>,
) -> ApiResult<Response> {
    visible_run(&s, &caller, id)?;
    let store = s.artifacts.clone();
    let wanted = name.clone();
    let opened = tokio::task::spawn_blocking(move || store.open(&id.to_string(), &wanted))
        .await
        .map_err(|e| anyhow::anyhow!("opening an artifact: {e}"))?
        .map_err(|e| anyhow::anyhow!("opening artifact `{name}` of run {id}: {e}"))?;
    let Some((artifact, reader)) = opened else {
        return Err(ApiError::NotFound(format!(
            "run {id} has no artifact `{name}`: `GET /v1/runs/{id}/artifacts` lists the ones it has"
        )));
    };
    let body = Body::from_stream(read_in_chunks(reader));
    let disposition = format!("attachment; filename=\"{}\"", artifact.name);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, artifact.size.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
            (header::HeaderName::from_static("x-checksum-sha256"), artifact.sha256),
        ],
        body,
    )
        .into_response())
}

/// A blocking reader as a stream of chunks, read on a blocking thread so a large artifact
/// neither sits in memory nor stalls the server's threads.
pub(crate) fn read_in_chunks(
    mut reader: Box<dyn std::io::Read + Send>,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let chunk = match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => Ok(Bytes::copy_from_slice(&buf[..n])),
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            // A client that went away closes the channel: stop reading.
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
}
