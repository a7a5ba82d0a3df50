//! The files rdm's ACS serves (Tr069FileService): each tenant's own,
//! written to disk as they stream in (never whole in memory), at most the
//! service's limit, and replaced whole or not at all.
use crate::{cwmp::Acs, store};
use rdm_kit::{
    Error, ErrorCode, Principal, Result,
    db::{Scope, now_millis, timestamp},
};
use rdm_proto::tr069::{self as pb, tr069_file_service_server::Tr069FileService};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

pub struct Files(pub Arc<Acs>);

fn file_pb(f: store::FileRow) -> pb::File {
    pb::File {
        name: f.name,
        size: f.size.max(0) as u64,
        sha256: f.sha256,
        content_type: f.content_type,
        create_time: Some(timestamp(f.create_time)),
    }
}

fn err(e: Error) -> Status {
    e.in_domain(crate::DOMAIN).into()
}

impl Files {
    /// Streams the upload to a new file; its row once it is whole.
    async fn upload(
        &self,
        p: &Principal,
        mut parts: Streaming<pb::UploadFileRequest>,
    ) -> Result<store::FileRow> {
        let first = parts
            .message()
            .await
            .map_err(|s| Error::from_status(&s))?
            .ok_or_else(|| Error::invalid("name", "the upload is empty"))?;
        let rules = rdm_kit::endpoint::dynamic(&first, "rdm.tr069.v1.UploadFileRequest")?;
        rdm_kit::rules::check(&rules, "")?;
        if first.name.is_empty() {
            return Err(Error::invalid("name", "name the file"));
        }
        let content_type = first
            .file
            .as_ref()
            .map(|f| f.content_type.clone())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "application/octet-stream".into());
        let dir = self.0.files_dir.join(&p.tenant_id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| Error::internal("making the file directory", e))?;
        let stored = format!("{}/{}", p.tenant_id, crate::cwmp::random_id());
        let path = self.0.files_dir.join(&stored);
        let written = async {
            let mut out = tokio::fs::File::create(&path)
                .await
                .map_err(|e| Error::internal("creating a file", e))?;
            let mut hash = Sha256::new();
            let mut size = 0u64;
            let mut piece = first.file;
            loop {
                if let Some(data) = piece.map(|f| f.data) {
                    size += data.len() as u64;
                    if size > self.0.file_limit {
                        return Err(Error::new(
                            ErrorCode::PayloadTooLarge,
                            format!("the file is larger than {} bytes", self.0.file_limit),
                        )
                        .with_meta("field", "file"));
                    }
                    hash.update(&data);
                    out.write_all(&data)
                        .await
                        .map_err(|e| Error::internal("writing a file", e))?;
                }
                match parts.message().await.map_err(|s| Error::from_status(&s))? {
                    Some(next) => piece = next.file,
                    None => break,
                }
            }
            out.sync_all()
                .await
                .map_err(|e| Error::internal("writing a file", e))?;
            Ok((size, hex::encode(hash.finalize())))
        };
        let (size, sha256) = match written.await {
            Ok(w) => w,
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(e);
            }
        };
        let row = store::FileRow {
            tenant_id: p.tenant_id.clone(),
            name: first.name,
            size: size as i64,
            sha256,
            content_type,
            path: stored,
            create_time: now_millis(),
        };
        let mut tx = self.0.db.begin_write(Scope::of(p)).await?;
        let replaced = store::put_file(&mut tx, &row).await?;
        tx.commit().await?;
        if let Some(old) = replaced {
            let _ = tokio::fs::remove_file(self.0.files_dir.join(old)).await;
        }
        tracing::info!(tenant_id = %p.tenant_id, file = %row.name, size, "tr069 file stored");
        Ok(row)
    }
}

#[tonic::async_trait]
impl Tr069FileService for Files {
    async fn upload_file(
        &self,
        req: Request<Streaming<pb::UploadFileRequest>>,
    ) -> Result<Response<pb::UploadFileResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?.clone();
        let row = self.upload(&p, req.into_inner()).await.map_err(err)?;
        Ok(Response::new(pb::UploadFileResponse {
            file: Some(file_pb(row)),
        }))
    }

    async fn list_files(
        &self,
        req: Request<pb::ListFilesRequest>,
    ) -> Result<Response<pb::ListFilesResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        let run = async {
            let mut tx = self.0.db.begin(Scope::of(p)).await?;
            store::files(&mut tx, &p.tenant_id).await
        };
        let files = run.await.map_err(err)?;
        Ok(Response::new(pb::ListFilesResponse {
            files: files.into_iter().map(file_pb).collect(),
        }))
    }

    async fn delete_file(
        &self,
        req: Request<pb::DeleteFileRequest>,
    ) -> Result<Response<pb::DeleteFileResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        let name = &req.get_ref().name;
        let run = async {
            let mut tx = self.0.db.begin_write(Scope::of(p)).await?;
            let path = store::delete_file(&mut tx, &p.tenant_id, name)
                .await?
                .ok_or_else(|| Error::not_found(format!("no file {name:?}")))?;
            tx.commit().await?;
            let _ = tokio::fs::remove_file(self.0.files_dir.join(path)).await;
            Ok(())
        };
        run.await.map_err(err)?;
        Ok(Response::new(pb::DeleteFileResponse {}))
    }
}
