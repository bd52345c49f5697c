//! The bundle store: bundles kept content-addressed (by sha256) in an `object_store` — the local
//! filesystem by default, or an S3-compatible bucket shared by every replica.
//!
//! Bundles go in from a file on disk (an upload is spooled there first, see [`crate::catalog`]) in
//! parts, and come out as a stream from any offset, so no bundle is ever held whole in memory.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::CloudError;

/// Bundles up to this size are stored with one PUT; larger ones in parts of this size (S3's
/// smallest allowed part is 5 MiB).
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts uploaded at once for one bundle.
const PARTS_IN_FLIGHT: usize = 2;

/// Where bundles are kept.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BundleStoreConfig {
    /// The local filesystem, below `<data_dir>/objects`.
    #[default]
    Local,
    /// An S3-compatible bucket (AWS S3, MinIO, Ceph, …).
    S3(S3Config),
}

/// An S3-compatible bucket. Absent credentials, region and endpoint come from the standard
/// `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
/// `AWS_ENDPOINT`), so secrets need not sit in the config file.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket (e.g. `walle/prod`); bundles go below `<prefix>/bundles/`.
    #[serde(default)]
    pub prefix: String,
    /// Endpoint URL of a non-AWS store, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    #[serde(skip_serializing)]
    pub secret_access_key: Option<String>,
    /// Permit a plain-HTTP endpoint (test servers); otherwise HTTPS is required unless
    /// `AWS_ALLOW_HTTP=true`.
    #[serde(default)]
    pub allow_http: bool,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// Content-addressed bundle storage.
#[derive(Clone)]
pub struct BundleStore {
    store: Arc<dyn ObjectStore>,
    /// Where the store is, for error messages (`file:///…` or `s3://bucket/prefix`).
    location: String,
}

fn object_path(digest: &str) -> ObjectPath {
    ObjectPath::from(format!("bundles/sha256/{digest}"))
}

impl BundleStore {
    /// Opens the configured store and checks that it can be reached.
    pub async fn open(
        config: &BundleStoreConfig,
        data_dir: &Path,
    ) -> Result<BundleStore, CloudError> {
        let store = match config {
            BundleStoreConfig::Local => BundleStore::local(&data_dir.join("objects"))?,
            BundleStoreConfig::S3(s3) => BundleStore::s3(s3)?,
        };
        store.check_reachable().await?;
        Ok(store)
    }

    /// A store on the local filesystem below `root` (created if missing).
    pub fn local(root: &Path) -> Result<BundleStore, CloudError> {
        std::fs::create_dir_all(root).map_err(|e| CloudError::io(root, e))?;
        let location = format!("file://{}", root.display());
        let store =
            LocalFileSystem::new_with_prefix(root).map_err(|source| CloudError::Storage {
                context: format!("bundle store {location}"),
                source,
            })?;
        Ok(BundleStore {
            store: Arc::new(store),
            location,
        })
    }

    /// A store in an S3-compatible bucket.
    pub fn s3(config: &S3Config) -> Result<BundleStore, CloudError> {
        // The S3 client's TLS (reqwest + rustls) uses the process-wide provider: ring, as the
        // rest of the cloud. Installing fails harmlessly if a provider is already installed.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let location = format!("s3://{}/{}", config.bucket, config.prefix);
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&config.bucket);
        if config.allow_http {
            builder = builder.with_allow_http(true);
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &config.region {
            builder = builder.with_region(region);
        }
        if let Some(key) = &config.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let s3 = builder
            .build()
            .map_err(|source| CloudError::StorageConfig {
                location: location.clone(),
                source,
            })?;
        let store: Arc<dyn ObjectStore> = if config.prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, config.prefix.as_str()))
        };
        Ok(BundleStore { store, location })
    }

    /// Where the store is: `file:///…` or `s3://bucket/prefix`.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Lists the bundle prefix (one cheap call, whatever the number of bundles): at start, so
    /// a wrong bucket, endpoint or credential fails the start instead of the first upload, and
    /// for `/v1/health`.
    pub async fn check_reachable(&self) -> Result<(), CloudError> {
        self.store
            .list_with_delimiter(Some(&ObjectPath::from("bundles")))
            .await
            .map_err(|source| CloudError::Storage {
                context: format!("bundle store {}", self.location),
                source,
            })?;
        Ok(())
    }

    /// Whether a bundle with this digest is stored.
    pub async fn contains(&self, digest: &str) -> Result<bool, CloudError> {
        match self.store.head(&object_path(digest)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error("checking", digest, e)),
        }
    }

    /// Stores the bundle in `file` (`size` bytes) under its digest, in parts when large.
    /// Idempotent: a digest already stored is not written again.
    pub async fn put_file(&self, digest: &str, file: &Path, size: u64) -> Result<(), CloudError> {
        if self.contains(digest).await? {
            return Ok(());
        }
        let mut reader = tokio::fs::File::open(file)
            .await
            .map_err(|e| CloudError::io(file, e))?;
        if size <= PART_BYTES as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            reader
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| CloudError::io(file, e))?;
            self.store
                .put(&object_path(digest), PutPayload::from(bytes))
                .await
                .map_err(|e| self.error("storing", digest, e))?;
            return Ok(());
        }
        let upload = self
            .store
            .put_multipart(&object_path(digest))
            .await
            .map_err(|e| self.error("starting upload of", digest, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        if let Err(e) = self.write_parts(&mut writer, &mut reader, file).await {
            let _ = writer.abort().await;
            return Err(e);
        }
        writer
            .finish()
            .await
            .map_err(|e| self.error("completing upload of", digest, e))?;
        Ok(())
    }

    async fn write_parts(
        &self,
        writer: &mut WriteMultipart,
        reader: &mut tokio::fs::File,
        file: &Path,
    ) -> Result<(), CloudError> {
        let mut buffer = vec![0u8; 1024 * 1024];
        loop {
            let n = reader
                .read(&mut buffer)
                .await
                .map_err(|e| CloudError::io(file, e))?;
            if n == 0 {
                return Ok(());
            }
            writer
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(|source| CloudError::Storage {
                    context: format!("uploading a part to {}", self.location),
                    source,
                })?;
            writer.write(&buffer[..n]);
        }
    }

    /// Streams a bundle from `offset` to its end.
    pub async fn read_from(
        &self,
        digest: &str,
        offset: u64,
    ) -> Result<BoxStream<'static, Result<Bytes, CloudError>>, CloudError> {
        let options = GetOptions {
            range: (offset > 0).then_some(GetRange::Offset(offset)),
            ..Default::default()
        };
        let result = self
            .store
            .get_opts(&object_path(digest), options)
            .await
            .map_err(|e| self.error("reading", digest, e))?;
        let this = self.clone();
        let owned_digest = digest.to_owned();
        Ok(result
            .into_stream()
            .map(move |chunk| chunk.map_err(|e| this.error("reading", &owned_digest, e)))
            .boxed())
    }

    fn error(&self, doing: &str, digest: &str, source: object_store::Error) -> CloudError {
        CloudError::Storage {
            context: format!("{doing} bundle {digest} in {}", self.location),
            source,
        }
    }
}
