//! The cloud session: register, subscribe to notices, sync.
//!
//! The loop never gives up: any failure ends the session and a new one starts after an
//! exponential backoff with jitter. A notice is answered by a sync at a random time inside its
//! pace window; a periodic sync covers missed notices.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tonic::Code;
use tonic::transport::Channel;
use walle_proto::v1::device_plane_client::DevicePlaneClient;
use walle_proto::v1::{RegisterRequest, SubscribeRequest, notice};

use super::Activation;
use crate::backoff::Backoff;
use crate::credential::{self, Credential};
use crate::{AgentError, cloud, random};

/// Runs sessions until stopped.
pub(crate) async fn run(activation: Arc<Activation>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::reconnect();
    loop {
        let outcome = tokio::select! {
            outcome = session(&activation) => outcome,
            _ = stop.wait_for(|s| *s) => return,
        };
        let was_connected = activation.connected.swap(false, Ordering::SeqCst);
        activation.client.send_replace(None);
        if let Err(e) = outcome {
            tracing::warn!(device = %activation.device_id, error = %e, "cloud session ended");
        }
        let delay = if was_connected {
            backoff.reset();
            let window = activation.pace_window_ms.load(Ordering::Relaxed);
            crate::backoff::after_loss(Duration::from_millis(u64::from(window)))
        } else {
            backoff.next_delay()
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn session(activation: &Activation) -> Result<(), AgentError> {
    let channel = cloud::connect(&activation.config).await?;
    let credential = activation.ensure_registered(channel.clone()).await?;
    let mut client = cloud::authenticated(channel, &credential.device_token)?;
    let mut notices = match client.subscribe(SubscribeRequest {}).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == Code::Unauthenticated => {
            // The cloud forgot us (or the token was revoked): register again next session, but
            // keep trusting the publisher keys we have (see `ensure_registered`).
            credential::store(
                &activation.config.data_dir,
                &Credential {
                    device_token: String::new(),
                    ..credential
                },
            )?;
            return Err(AgentError::Rpc("subscribe", status));
        }
        Err(status) => return Err(AgentError::Rpc("subscribe", status)),
    };
    activation.client.send_replace(Some(client.clone()));
    // `connected` (which also resets the reconnect backoff) waits for the first good sync, so a
    // cloud that accepts streams but fails syncs does not get a reconnect storm.
    activation.sync_and_apply(&mut client).await?;
    activation.connected.store(true, Ordering::SeqCst);
    let interval = Duration::from_secs(u64::from(credential.sync_interval_secs.max(1)));
    loop {
        tokio::select! {
            message = notices.message() => {
                let notice = message
                    .map_err(|s| AgentError::Rpc("subscribe stream", s))?
                    .ok_or_else(|| AgentError::Transport("cloud closed the notice stream".into()))?;
                if notice.kind == notice::Kind::Hello as i32 {
                    // The sync on connect (above) already caught up; HELLO tells the cloud's
                    // pace window, over which a reconnect after a loss is spread.
                    activation.pace_window_ms.store(notice.pace_window_ms, Ordering::Relaxed);
                    continue;
                }
                tokio::time::sleep(random::jitter(u64::from(notice.pace_window_ms))).await;
                activation.sync_and_apply(&mut client).await?;
            }
            _ = tokio::time::sleep(interval) => activation.sync_and_apply(&mut client).await?,
        }
    }
}

impl Activation {
    /// The stored credential, or a new one from registering.
    async fn ensure_registered(&self, channel: Channel) -> Result<Credential, AgentError> {
        let data_dir = &self.config.data_dir;
        let stored = credential::load(data_dir)?;
        if let Some(stored) = &stored
            && !stored.device_token.is_empty()
        {
            self.trust(stored.trusted_keys());
            return Ok(stored.clone());
        }
        let response = DevicePlaneClient::new(channel)
            .register(RegisterRequest {
                profile: Some(cloud::profile(&self.config, &self.device_id)),
                enrollment_secret: self.config.enrollment_secret.clone(),
            })
            .await
            .map_err(|s| AgentError::Rpc("register", s))?
            .into_inner();
        // Trust on first registration only: a re-registration (after the cloud rejected our
        // token) keeps the keys we already trust, so whoever answers it cannot make us run
        // their code.
        let publisher_keys = match stored.filter(|s| !s.publisher_keys.is_empty()) {
            Some(previous) => previous.publisher_keys,
            None => response
                .publisher_keys
                .iter()
                .map(|k| (k.key_id.clone(), hex::encode(&k.public_key)))
                .collect(),
        };
        let credential = Credential {
            device_token: response.device_token,
            publisher_keys,
            sync_interval_secs: response.sync_interval_secs,
        };
        credential::store(data_dir, &credential)?;
        self.trust(credential.trusted_keys());
        tracing::info!(device = %self.device_id, "registered with the cloud");
        Ok(credential)
    }
}
