//! The device-plane client: how the agent reaches the cloud (endpoint, TLS, the device token on
//! every call) and how it describes itself there.

use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};
use walle_proto::v1::DeviceProfile;
use walle_proto::v1::device_plane_client::DevicePlaneClient;

use crate::{AgentError, DeviceConfig};

/// Adds the device token to every call.
#[derive(Clone)]
pub(crate) struct Auth(AsciiMetadataValue);

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// An authenticated device-plane client.
pub(crate) type Client = DevicePlaneClient<InterceptedService<Channel, Auth>>;

/// A client that sends `token` with every call.
pub(crate) fn authenticated(channel: Channel, token: &str) -> Result<Client, AgentError> {
    let token = AsciiMetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| AgentError::BadStoredToken)?;
    Ok(DevicePlaneClient::with_interceptor(channel, Auth(token)))
}

/// Connects to the configured cloud (with its CA certificate, if one is configured).
pub(crate) async fn connect(config: &DeviceConfig) -> Result<Channel, AgentError> {
    endpoint(config)?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect()
        .await
        .map_err(|source| AgentError::Connect {
            url: config.cloud_url.clone(),
            source,
        })
}

fn endpoint(config: &DeviceConfig) -> Result<Endpoint, AgentError> {
    let endpoint = Endpoint::from_shared(config.cloud_url.clone())
        .map_err(|e| AgentError::Config(format!("cloud_url {:?}: {e}", config.cloud_url)))?;
    let Some(ca) = &config.cloud_ca_cert else {
        return Ok(endpoint);
    };
    let pem = std::fs::read(ca)
        .map_err(|e| AgentError::Config(format!("cloud_ca_cert {}: {e}", ca.display())))?;
    endpoint
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
        .map_err(|e| AgentError::Config(format!("TLS with cloud_ca_cert {}: {e}", ca.display())))
}

/// How this device describes itself at Register and Sync: its configured profile, with the
/// device id it settled on.
pub(crate) fn profile(config: &DeviceConfig, device_id: &str) -> DeviceProfile {
    DeviceProfile {
        device_id: device_id.to_owned(),
        ..config.profile.clone()
    }
}
