//! `Report` (task events: installs, runs, failures, rollbacks) and `Upload` (tunnel records,
//! stored once by record id in the [`records sink`](crate::records_sink)). Each item is checked on its own: the good ones are kept and each
//! bad one is answered with its reason.

use tonic::{Request, Response, Status};
use walle_proto::v1::{ReportRequest, ReportResponse, UploadRequest, UploadResponse};

use super::validation::{check_event, check_record, rejection, upload_records};
use super::{DevicePlaneService, MAX_BATCH, internal};

pub(super) async fn report(
    service: &DevicePlaneService,
    request: Request<ReportRequest>,
) -> Result<Response<ReportResponse>, Status> {
    let device = service.authenticate(&request).await?;
    let events = request.into_inner().events;
    if events.len() > MAX_BATCH {
        return Err(Status::invalid_argument(format!(
            "`events` has more than {MAX_BATCH} entries"
        )));
    }
    // An invalid event is refused on its own (with why); the valid rest of the batch counts.
    let mut rows = Vec::with_capacity(events.len());
    let mut rejected = Vec::new();
    for (i, e) in events.iter().enumerate() {
        match check_event(i, e) {
            Ok(row) => rows.push(row),
            Err(status) => rejected.push(rejection(i, &e.id, &status)),
        }
    }
    // Release health and install counts drive automatic advance and abort, so only events
    // about a release this device was actually handed, for its task and version, count.
    // Others are dropped (and logged), not stored: one stray event must not fail the batch.
    let stored = service
        .state
        .db
        .store_report(&device, rows)
        .await
        .map_err(internal)?;
    for row in &stored.untrusted {
        tracing::warn!(%device, release = %row.release_id, task = %row.task, version = %row.version,
            "dropping a report about a release this device was not handed");
    }
    let accepted = stored.accepted;
    service
        .state
        .metrics
        .report_events_accepted(u64::from(accepted));
    Ok(Response::new(ReportResponse { accepted, rejected }))
}

pub(super) async fn upload(
    service: &DevicePlaneService,
    request: Request<UploadRequest>,
) -> Result<Response<UploadResponse>, Status> {
    let device = service.authenticate(&request).await?;
    let records = upload_records(request.into_inner())?;
    if records.len() > MAX_BATCH {
        return Err(Status::invalid_argument(format!(
            "`records` has more than {MAX_BATCH} entries"
        )));
    }
    let mut rows = Vec::with_capacity(records.len());
    let mut rejected = Vec::new();
    for (i, r) in records.into_iter().enumerate() {
        let id = r.id.clone();
        match check_record(i, r) {
            Ok(row) => rows.push(row),
            Err(status) => rejected.push(rejection(i, &id, &status)),
        }
    }
    // Answered only once the sink holds every record: until then the device keeps them.
    let appended = service
        .state
        .records
        .append(&device, &rows)
        .await
        .map_err(internal)?;
    walle_proto::crash::crash_point("cloud-upload-committed");
    service
        .state
        .metrics
        .upload_records_accepted(u64::from(appended.stored), u64::from(appended.duplicates));
    Ok(Response::new(UploadResponse {
        stored: appended.stored,
        duplicates: appended.duplicates,
        rejected,
    }))
}
