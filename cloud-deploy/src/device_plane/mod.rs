//! The device plane: the gRPC service devices talk to (`walle.device.v1.DevicePlane`), one
//! module per family of calls:
//!
//! - [`session`]: `Register` (enrollment, the device token) and `Subscribe` (the notice stream);
//! - [`sync`]: `Sync`, the pull: what the device should run, decided by [`sync::desired_set`], a
//!   pure function over the served releases, the one chosen per task and what the device runs;
//! - [`transfer`]: `FetchBundle`, resumable bundle streaming under a transfer budget;
//! - [`reports`]: `Report` (task events) and `Upload` (tunnel records);
//! - [`validation`]: the checks every input passes at this boundary;
//! - [`tokens`]: device tokens recently confirmed by the database, so calls skip that read.
//!
//! Every input is validated here, at the boundary, and rejected with `INVALID_ARGUMENT` naming
//! the field; nothing from a rejected request is stored.

mod reports;
mod session;
pub mod sync;
mod tokens;
mod transfer;
mod validation;

use std::pin::Pin;

use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use walle_proto::v1::device_plane_server::DevicePlane;
use walle_proto::v1::{
    BundleChunk, FetchBundleRequest, Notice, RegisterRequest, RegisterResponse, ReportRequest,
    ReportResponse, SubscribeRequest, SyncRequest, SyncResponse, UploadRequest, UploadResponse,
};

pub use transfer::RETRY_AFTER_MS;

use crate::{AppState, CloudError, secrets};

/// Most events, records or installed tasks accepted in one call.
const MAX_BATCH: usize = 1000;

/// The gRPC service implementation.
pub struct DevicePlaneService {
    pub(super) state: AppState,
    pub(super) served: crate::served_cache::ServedCache,
    tokens: tokens::TokenCache,
}

impl DevicePlaneService {
    /// A service over the shared cloud state.
    pub fn new(state: AppState) -> Self {
        DevicePlaneService {
            state,
            served: crate::served_cache::ServedCache::default(),
            tokens: tokens::TokenCache::default(),
        }
    }

    pub(super) async fn authenticate<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let header = request.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing `authorization: Bearer <device token>` metadata")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("`authorization` metadata must be `Bearer <device token>`")
            })?;
        let hash = secrets::token_hash(token);
        if let Some(device) = self.tokens.device(&hash) {
            return Ok(device);
        }
        let device = self
            .state
            .db
            .device_by_token_hash(&hash)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::unauthenticated("unknown device token; register again"))?;
        self.tokens.confirmed(&hash, &device);
        Ok(device)
    }
}

/// A storage error as a gRPC status (its kind kept where a device can act on it).
pub(super) fn internal(e: CloudError) -> Status {
    tracing::error!(error = %e, "device plane call failed");
    match e {
        CloudError::NotFound(m) => Status::not_found(m),
        CloudError::Invalid(m) => Status::invalid_argument(m),
        // The records sink is away or refused: the device keeps the records and retries.
        e @ CloudError::RecordsSink(_) => Status::unavailable(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

type BoxedStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl DevicePlane for DevicePlaneService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        session::register(self, request).await
    }

    type SubscribeStream = ReceiverStream<Result<Notice, Status>>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        session::subscribe(self, request).await
    }

    async fn sync(&self, request: Request<SyncRequest>) -> Result<Response<SyncResponse>, Status> {
        let answer = sync::sync(self, request).await;
        self.state.metrics.sync_call(answer.is_ok());
        answer
    }

    type FetchBundleStream = BoxedStream<BundleChunk>;

    async fn fetch_bundle(
        &self,
        request: Request<FetchBundleRequest>,
    ) -> Result<Response<Self::FetchBundleStream>, Status> {
        transfer::fetch_bundle(self, request).await
    }

    async fn report(
        &self,
        request: Request<ReportRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        reports::report(self, request).await
    }

    async fn upload(
        &self,
        request: Request<UploadRequest>,
    ) -> Result<Response<UploadResponse>, Status> {
        reports::upload(self, request).await
    }
}
