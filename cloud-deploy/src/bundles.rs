//! The bundle store: bundles kept content-addressed (by sha256) in an `object_store`.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};

use crate::CloudError;

/// Content-addressed bundle storage.
#[derive(Clone)]
pub struct BundleStore {
    store: Arc<dyn ObjectStore>,
}

fn object_path(digest: &str) -> ObjectPath {
    ObjectPath::from(format!("bundles/sha256/{digest}"))
}

impl BundleStore {
    /// A store on the local filesystem below `root` (created if missing).
    pub fn local(root: &std::path::Path) -> Result<BundleStore, CloudError> {
        std::fs::create_dir_all(root).map_err(|e| CloudError::io(root, e))?;
        let store = LocalFileSystem::new_with_prefix(root)
            .map_err(|e| CloudError::Storage(format!("bundle store at {}: {e}", root.display())))?;
        Ok(BundleStore {
            store: Arc::new(store),
        })
    }

    /// Stores a bundle under its digest (idempotent: same digest, same bytes).
    pub async fn put(&self, digest: &str, bytes: Bytes) -> Result<(), CloudError> {
        self.store
            .put(&object_path(digest), PutPayload::from(bytes))
            .await
            .map_err(|e| CloudError::Storage(format!("storing bundle {digest}: {e}")))?;
        Ok(())
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
        let owned_digest = digest.to_owned();
        let result = self
            .store
            .get_opts(&object_path(digest), options)
            .await
            .map_err(|e| CloudError::Storage(format!("reading bundle {digest}: {e}")))?;
        Ok(result
            .into_stream()
            .map(move |chunk| {
                chunk
                    .map_err(|e| CloudError::Storage(format!("reading bundle {owned_digest}: {e}")))
            })
            .boxed())
    }
}
