//! `Register` (enrollment: app secret, a device id kept by its app, a new device token) and
//! `Subscribe` (the push stream of notices, which starts with HELLO).

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use walle_proto::v1::{Notice, RegisterRequest, RegisterResponse, SubscribeRequest, notice};

use super::validation::{check_profile, profile_json};
use super::{DevicePlaneService, internal};
use crate::secrets;

pub(super) async fn register(
    service: &DevicePlaneService,
    request: Request<RegisterRequest>,
) -> Result<Response<RegisterResponse>, Status> {
    let request = request.into_inner();
    let profile = check_profile(request.profile.as_ref())?;
    match service
        .state
        .db
        .app_secret_hash(&profile.app_id)
        .await
        .map_err(internal)?
    {
        Some(hash) if hash != secrets::token_hash(&request.enrollment_secret) => {
            return Err(Status::permission_denied(format!(
                "wrong enrollment secret for app {:?}",
                profile.app_id
            )));
        }
        Some(_) => {}
        None if !service.state.config.open_enrollment => {
            return Err(Status::permission_denied(format!(
                "app {:?} is not registered for enrollment",
                profile.app_id
            )));
        }
        None => {}
    }
    let token = secrets::new_token("wld").map_err(internal)?;
    // A device id belongs to the app it first enrolled for: another app's secret (or open
    // enrollment) cannot take it over.
    if let Some(existing) = service
        .state
        .db
        .device_seen(&profile.device_id)
        .await
        .map_err(internal)?
        && !existing.app_id.is_empty()
        && existing.app_id != profile.app_id
    {
        return Err(Status::permission_denied(format!(
            "device {:?} is enrolled for another app",
            profile.device_id
        )));
    }
    service
        .state
        .db
        .upsert_device(
            &profile.device_id,
            &profile.app_id,
            &secrets::token_hash(&token),
            &profile_json(profile),
        )
        .await
        .map_err(internal)?;
    service.tokens.forget_device(&profile.device_id);
    tracing::info!(device = %profile.device_id, "device registered");
    Ok(Response::new(RegisterResponse {
        device_token: token,
        publisher_keys: vec![service.state.publisher.public_key()],
        sync_interval_secs: service.state.config.sync_interval_secs,
    }))
}

pub(super) async fn subscribe(
    service: &DevicePlaneService,
    request: Request<SubscribeRequest>,
) -> Result<Response<ReceiverStream<Result<Notice, Status>>>, Status> {
    let device = service.authenticate(&request).await?;
    let receiver = service.state.hub.subscribe(&device);
    // The device syncs as it connects, which covers anything it missed while disconnected;
    // HELLO tells it the pace window, over which it spreads a reconnect after losing the stream.
    service.state.hub.notify_one_fresh(
        &device,
        Notice {
            kind: notice::Kind::Hello as i32,
            task: String::new(),
            release_id: String::new(),
            pace_window_ms: service.state.config.pace_window_ms,
        },
    );
    tracing::debug!(%device, "device subscribed");
    Ok(Response::new(ReceiverStream::new(receiver)))
}
