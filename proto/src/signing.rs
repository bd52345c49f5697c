//! Signing release manifests (cloud side) and verifying them (device side), with ed25519.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::manifest::ReleaseManifest;
use crate::v1::{PublisherKey, SignedManifest};

/// Why a signed manifest was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VerifyError {
    #[error("manifest is signed by key {0:?}, which this device does not trust")]
    UnknownKey(String),
    #[error("trusted publisher key {0:?} is not a valid ed25519 public key")]
    BadTrustedKey(String),
    #[error("manifest signature is malformed (expected 64 bytes, got {0})")]
    MalformedSignature(usize),
    #[error("manifest signature does not verify with publisher key {0:?}")]
    BadSignature(String),
    #[error("signed manifest is not a valid release manifest: {0}")]
    BadManifest(String),
}

/// Short identifier of a public key: hex of its first 8 bytes.
pub fn key_id(public_key: &VerifyingKey) -> String {
    hex::encode(&public_key.as_bytes()[..8])
}

/// The publisher key the cloud signs manifests with.
pub struct Publisher {
    key: SigningKey,
}

impl Publisher {
    /// A publisher from a 32-byte ed25519 secret seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Publisher {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// The public half, as devices receive it.
    pub fn public_key(&self) -> PublisherKey {
        let public = self.key.verifying_key();
        PublisherKey {
            key_id: key_id(&public),
            public_key: public.as_bytes().to_vec(),
        }
    }

    /// Signs a release manifest.
    pub fn sign(&self, manifest: &ReleaseManifest) -> SignedManifest {
        let bytes = manifest.to_signed_bytes();
        let signature = self.key.sign(&bytes);
        SignedManifest {
            manifest_json: bytes,
            signature: signature.to_bytes().to_vec(),
            key_id: key_id(&self.key.verifying_key()),
        }
    }
}

/// Verifies a signed manifest against the trusted keys and returns its contents.
pub fn verify(
    signed: &SignedManifest,
    trusted: &[PublisherKey],
) -> Result<ReleaseManifest, VerifyError> {
    let key = trusted
        .iter()
        .find(|k| k.key_id == signed.key_id)
        .ok_or_else(|| VerifyError::UnknownKey(signed.key_id.clone()))?;
    let key_bytes: [u8; 32] = key
        .public_key
        .as_slice()
        .try_into()
        .map_err(|_| VerifyError::BadTrustedKey(key.key_id.clone()))?;
    let public = VerifyingKey::from_bytes(&key_bytes)
        .map_err(|_| VerifyError::BadTrustedKey(key.key_id.clone()))?;
    let signature_bytes: [u8; 64] = signed
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| VerifyError::MalformedSignature(signed.signature.len()))?;
    public
        .verify(
            &signed.manifest_json,
            &Signature::from_bytes(&signature_bytes),
        )
        .map_err(|_| VerifyError::BadSignature(key.key_id.clone()))?;
    serde_json::from_slice(&signed.manifest_json)
        .map_err(|e| VerifyError::BadManifest(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::TaskManifest;

    fn manifest() -> ReleaseManifest {
        let task = TaskManifest::parse(
            "name = \"t\"\nversion = \"1.0.0\"\nruntime = \"python\"\nentry = \"m.py\"\n",
        )
        .unwrap();
        ReleaseManifest {
            task,
            bundle_digest: "ab".repeat(32),
            bundle_size: 10,
        }
    }

    #[test]
    fn round_trips_and_refuses_tampering() {
        let publisher = Publisher::from_seed(&[7; 32]);
        let trusted = [publisher.public_key()];
        let signed = publisher.sign(&manifest());
        assert_eq!(verify(&signed, &trusted).unwrap(), manifest());

        let mut tampered = signed.clone();
        let text = String::from_utf8(tampered.manifest_json).unwrap();
        tampered.manifest_json = text
            .replace("\"bundle_size\":10", "\"bundle_size\":11")
            .into_bytes();
        assert_eq!(
            verify(&tampered, &trusted),
            Err(VerifyError::BadSignature(trusted[0].key_id.clone()))
        );

        let stranger = Publisher::from_seed(&[8; 32]).sign(&manifest());
        assert!(matches!(
            verify(&stranger, &trusted),
            Err(VerifyError::UnknownKey(_))
        ));

        let mut short = signed;
        short.signature.truncate(10);
        assert_eq!(
            verify(&short, &trusted),
            Err(VerifyError::MalformedSignature(10))
        );
    }
}
