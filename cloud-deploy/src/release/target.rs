//! Targeting: predicates over the device profile, combined with all/any/not.

use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use walle_proto::v1::DeviceProfile;

pub use walle_proto::profile::lenient_version;

/// A device as targeting sees it: the profile it sent at Register and Sync, and the named device
/// groups it is a member of (looked up by the cloud, never sent by the device, never stored with
/// the profile). Reads of profile fields go through to the [`DeviceProfile`]; its serde form is
/// the profile's alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    pub device: DeviceProfile,
    pub groups: Vec<String>,
}

impl From<DeviceProfile> for Profile {
    fn from(device: DeviceProfile) -> Profile {
        Profile {
            device,
            groups: Vec::new(),
        }
    }
}

impl Deref for Profile {
    type Target = DeviceProfile;

    fn deref(&self) -> &DeviceProfile {
        &self.device
    }
}

impl Serialize for Profile {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.device.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Profile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Profile, D::Error> {
        DeviceProfile::deserialize(d).map(Profile::from)
    }
}

/// Which devices a release is for. `{"all": []}` (the default) matches every device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Target {
    /// Every sub-predicate holds (true when empty).
    #[schema(no_recursion)]
    All(Vec<Target>),
    /// At least one sub-predicate holds.
    #[schema(no_recursion)]
    Any(Vec<Target>),
    /// The sub-predicate does not hold.
    #[schema(no_recursion)]
    Not(Box<Target>),
    /// The host app is exactly this one.
    AppId(String),
    /// The app version satisfies a semver requirement, e.g. `">=5.2, <6"`.
    AppVersion(String),
    /// The OS is this one (case-insensitive), e.g. `"android"`.
    Os(String),
    /// The OS version satisfies a semver requirement (versions like `14` read as `14.0.0`).
    OsVersion(String),
    /// The device model is one of these.
    Model(Vec<String>),
    /// The hardware tier is one of these.
    HardwareTier(Vec<String>),
    /// The region is one of these.
    Region(Vec<String>),
    /// The device carries this tag.
    Tag(String),
    /// The device is one of these.
    DeviceIds(Vec<String>),
    /// The device is a member of this named group (managed through `/v1/groups`; membership
    /// changes apply at the device's next sync).
    Group(String),
}

impl Default for Target {
    fn default() -> Self {
        Target::All(Vec::new())
    }
}

fn version_satisfies(requirement: &str, version: &str) -> bool {
    match (
        semver::VersionReq::parse(requirement),
        lenient_version(version),
    ) {
        (Ok(req), Some(v)) => req.matches(&v),
        _ => false,
    }
}

impl Target {
    /// Whether a device with this profile is targeted.
    pub fn matches(&self, p: &Profile) -> bool {
        match self {
            Target::All(all) => all.iter().all(|t| t.matches(p)),
            Target::Any(any) => any.iter().any(|t| t.matches(p)),
            Target::Not(inner) => !inner.matches(p),
            Target::AppId(id) => p.app_id == *id,
            Target::AppVersion(req) => version_satisfies(req, &p.app_version),
            Target::Os(os) => p.os.eq_ignore_ascii_case(os),
            Target::OsVersion(req) => version_satisfies(req, &p.os_version),
            Target::Model(models) => models.contains(&p.model),
            Target::HardwareTier(tiers) => tiers.contains(&p.hardware_tier),
            Target::Region(regions) => regions.contains(&p.region),
            Target::Tag(tag) => p.tags.contains(tag),
            Target::DeviceIds(ids) => ids.contains(&p.device_id),
            Target::Group(group) => p.groups.contains(group),
        }
    }

    /// Whether any predicate names a group (checked on every Sync, so it allocates nothing).
    pub fn uses_groups(&self) -> bool {
        match self {
            Target::All(list) | Target::Any(list) => list.iter().any(Target::uses_groups),
            Target::Not(inner) => inner.uses_groups(),
            Target::Group(_) => true,
            _ => false,
        }
    }

    /// Names of the groups this target refers to, each once, in order of appearance.
    pub fn groups(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        self.visit_groups(&mut out);
        out
    }

    fn visit_groups<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Target::All(list) | Target::Any(list) => {
                list.iter().for_each(|t| t.visit_groups(out));
            }
            Target::Not(inner) => inner.visit_groups(out),
            Target::Group(name) if !out.contains(&name.as_str()) => out.push(name),
            _ => {}
        }
    }

    /// Whether this matches every device (no predicate at all).
    pub fn is_everyone(&self) -> bool {
        matches!(self, Target::All(all) if all.is_empty())
    }

    /// Checks requirements parse and lists are non-empty; the error names the field.
    pub fn validate(&self, path: &str) -> Result<(), TargetError> {
        let nonempty = |field: &str, list: &[String]| {
            if list.is_empty() || list.iter().any(|s| s.trim().is_empty()) {
                Err(TargetError::EmptyList {
                    field: format!("{path}.{field}"),
                })
            } else {
                Ok(())
            }
        };
        match self {
            Target::All(list) | Target::Any(list) => {
                let name = if matches!(self, Target::All(_)) {
                    "all"
                } else {
                    "any"
                };
                if matches!(self, Target::Any(_)) && list.is_empty() {
                    return Err(TargetError::EmptyAny {
                        field: format!("{path}.any"),
                    });
                }
                for (i, t) in list.iter().enumerate() {
                    t.validate(&format!("{path}.{name}[{i}]"))?;
                }
                Ok(())
            }
            Target::Not(inner) => inner.validate(&format!("{path}.not")),
            Target::AppVersion(req) | Target::OsVersion(req) => {
                let field = if matches!(self, Target::AppVersion(_)) {
                    "app_version"
                } else {
                    "os_version"
                };
                semver::VersionReq::parse(req).map(drop).map_err(|source| {
                    TargetError::NotARequirement {
                        field: format!("{path}.{field}"),
                        requirement: req.clone(),
                        source,
                    }
                })
            }
            Target::AppId(s) | Target::Os(s) | Target::Tag(s) | Target::Group(s)
                if s.trim().is_empty() =>
            {
                Err(TargetError::EmptyValue {
                    field: path.to_owned(),
                })
            }
            Target::Model(l) => nonempty("model", l),
            Target::HardwareTier(l) => nonempty("hardware_tier", l),
            Target::Region(l) => nonempty("region", l),
            Target::DeviceIds(l) => nonempty("device_ids", l),
            _ => Ok(()),
        }
    }
}

/// A target that cannot be evaluated as written; `field` is where it sits in the policy
/// (e.g. `policy.target.all[1].app_version`).
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// `any` with no predicate, which would match no device.
    #[error("{field}: give at least one predicate")]
    EmptyAny { field: String },
    /// A version predicate that is not a semver requirement.
    #[error("{field}: {requirement:?} is not a semver requirement: {source}")]
    NotARequirement {
        field: String,
        requirement: String,
        #[source]
        source: semver::Error,
    },
    /// An id, OS, tag or group predicate with an empty value.
    #[error("{field}: value is empty")]
    EmptyValue { field: String },
    /// A list predicate with no value, or an empty one.
    #[error("{field}: give at least one non-empty value")]
    EmptyList { field: String },
}

impl TargetError {
    /// Where the offending predicate sits.
    pub fn field(&self) -> &str {
        match self {
            TargetError::EmptyAny { field }
            | TargetError::NotARequirement { field, .. }
            | TargetError::EmptyValue { field }
            | TargetError::EmptyList { field } => field,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone() -> Profile {
        Profile {
            device: DeviceProfile {
                device_id: "d1".into(),
                app_id: "shop".into(),
                app_version: "5.2.0".into(),
                os: "Android".into(),
                os_version: "14".into(),
                model: "Pixel 8".into(),
                hardware_tier: "high".into(),
                region: "eu".into(),
                tags: vec!["beta".into()],
            },
            groups: vec!["qa".into()],
        }
    }

    fn target(json: &str) -> Target {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn predicates_and_combinators() {
        let p = phone();
        for (json, expected) in [
            (r#"{"all": []}"#, true),
            (r#"{"app_version": ">=5.0, <6"}"#, true),
            (r#"{"app_version": ">=5.3"}"#, false),
            (r#"{"os_version": ">=12"}"#, true),
            (r#"{"os": "android"}"#, true),
            (r#"{"hardware_tier": ["mid", "high"]}"#, true),
            (r#"{"region": ["us"]}"#, false),
            (r#"{"tag": "beta"}"#, true),
            (r#"{"device_ids": ["d2"]}"#, false),
            (r#"{"model": ["Pixel 8"]}"#, true),
            (r#"{"not": {"tag": "beta"}}"#, false),
            (r#"{"group": "qa"}"#, true),
            (r#"{"group": "vip"}"#, false),
            (r#"{"any": [{"region": ["us"]}, {"app_id": "shop"}]}"#, true),
            (
                r#"{"all": [{"region": ["eu"]}, {"hardware_tier": ["low"]}]}"#,
                false,
            ),
        ] {
            assert_eq!(target(json).matches(&p), expected, "{json}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let err = target(r#"{"all": [{"tag": "x"}, {"app_version": ">>5"}]}"#)
            .validate("policy.target")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("policy.target.all[1].app_version"), "{err}");
        let err = target(r#"{"any": []}"#)
            .validate("policy.target")
            .unwrap_err()
            .to_string();
        assert!(err.contains("policy.target.any"), "{err}");
        assert!(serde_json::from_str::<Target>(r#"{"colour": "red"}"#).is_err());
        let err = target(r#"{"not": {"group": " "}}"#)
            .validate("policy.target")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("policy.target.not"), "{err}");
    }

    #[test]
    fn groups_are_listed_once() {
        let t = target(
            r#"{"any": [{"group": "qa"}, {"not": {"group": "vip"}}, {"all": [{"group": "qa"}]}]}"#,
        );
        assert_eq!(t.groups(), vec!["qa", "vip"]);
        assert!(t.uses_groups());
        assert!(!target(r#"{"not": {"tag": "beta"}}"#).uses_groups());
    }
}
