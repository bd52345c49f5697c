//! The device profile: what a device says it is (host app, OS, model, hardware tier, region,
//! tags), which release policies target.
//!
//! [`DeviceProfile`] is one type everywhere: the `walle.device.v1.DeviceProfile` message sent at
//! Register and Sync, the device's `[profile]` config table, and the JSON the cloud stores for
//! each device (serde, derived in `build.rs`; every field has the proto field's name, a missing
//! one reads as empty). Its [`Default`] is the wire's (every field empty); a device's defaults
//! (app id, OS, tier) are the device's own business and live with its configuration.
//!
//! The limits here are the cloud's: [`DeviceProfile::check_limits`] is what the cloud accepts
//! at Register and Sync, and [`DeviceProfile::check`] is what a device checks at start, so that
//! a value the cloud would refuse stops the device before its first contact with the cloud.
//! [`check_id`] and [`check_text`] are the same rules for single values.

pub use crate::v1::DeviceProfile;

/// Longest device id, app id or tag (and any other id on the device plane) the cloud accepts.
pub const MAX_ID_CHARS: usize = 128;
/// Longest other profile value (and any other free text on the device plane) the cloud accepts.
pub const MAX_TEXT_CHARS: usize = 4096;
/// Most tags the cloud accepts in a profile.
pub const MAX_TAGS: usize = 64;

/// What is wrong with one profile value (worded to follow the value's name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileValueError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {0} characters")]
    TooLong(usize),
    #[error("must not contain control characters")]
    ControlCharacter,
    #[error(
        "{0:?} is not a version like 5.2.0: release policies compare app versions as semver, \
         so no app_version target could ever match this device"
    )]
    NotAVersion(String),
    #[error("must be at most {MAX_TAGS} tags, not {0}")]
    TooManyTags(usize),
}

/// A profile field the cloud would refuse at Register, or could never target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("profile.{field}: {problem}")]
pub struct ProfileError {
    /// The field, as named in the message, the JSON and the device's `[profile]` table.
    pub field: &'static str,
    pub problem: ProfileValueError,
}

impl DeviceProfile {
    /// The names of the fields, as in the JSON form and the device's `[profile]` table.
    pub const FIELDS: &'static [&'static str] = &[
        "device_id",
        "app_id",
        "app_version",
        "os",
        "os_version",
        "model",
        "hardware_tier",
        "region",
        "tags",
    ];

    /// What the cloud accepts at Register and Sync: a device id and an app id ([`check_id`]),
    /// other values within [`MAX_TEXT_CHARS`], at most [`MAX_TAGS`] tags, each an id. Fields are
    /// checked in their order and the first at fault is reported.
    pub fn check_limits(&self) -> Result<(), ProfileError> {
        check_id(&self.device_id).map_err(at("device_id"))?;
        self.check_fields(check_text)
    }

    /// What a device checks at start: the cloud's limits ([`DeviceProfile::check_limits`]), with
    /// the device id allowed empty (it is then generated and kept in the data dir), and an app
    /// version release targeting can compare ([`check_app_version`]). An OS version targeting
    /// cannot compare is only warned about: its format is the platform's, not the app's to
    /// choose.
    pub fn check(&self) -> Result<(), ProfileError> {
        if !self.device_id.is_empty() {
            check_id(&self.device_id).map_err(at("device_id"))?;
        }
        self.check_fields(check_app_version)?;
        if !self.os_version.is_empty() && lenient_version(&self.os_version).is_none() {
            tracing::warn!(
                os_version = %self.os_version,
                "profile.os_version is not a version like 14 or 17.4: \
                 no os_version target will match this device"
            );
        }
        Ok(())
    }

    /// Every field but the device id, the app version by `app_version`.
    fn check_fields(
        &self,
        app_version: fn(&str) -> Result<(), ProfileValueError>,
    ) -> Result<(), ProfileError> {
        check_id(&self.app_id).map_err(at("app_id"))?;
        app_version(&self.app_version).map_err(at("app_version"))?;
        for (field, value) in [
            ("os", &self.os),
            ("os_version", &self.os_version),
            ("model", &self.model),
            ("hardware_tier", &self.hardware_tier),
            ("region", &self.region),
        ] {
            check_text(value).map_err(at(field))?;
        }
        if self.tags.len() > MAX_TAGS {
            return Err(at("tags")(ProfileValueError::TooManyTags(self.tags.len())));
        }
        for tag in &self.tags {
            check_id(tag).map_err(at("tags"))?;
        }
        Ok(())
    }
}

/// Names the field a value problem is in.
fn at(field: &'static str) -> impl Fn(ProfileValueError) -> ProfileError {
    move |problem| ProfileError { field, problem }
}

/// An id (device id, app id, tag): not empty, at most [`MAX_ID_CHARS`] printable characters.
pub fn check_id(value: &str) -> Result<(), ProfileValueError> {
    if value.is_empty() {
        return Err(ProfileValueError::Empty);
    }
    if value.chars().count() > MAX_ID_CHARS {
        return Err(ProfileValueError::TooLong(MAX_ID_CHARS));
    }
    if value.chars().any(char::is_control) {
        return Err(ProfileValueError::ControlCharacter);
    }
    Ok(())
}

/// Other profile text: at most [`MAX_TEXT_CHARS`] characters, may be empty.
pub fn check_text(value: &str) -> Result<(), ProfileValueError> {
    if value.chars().count() > MAX_TEXT_CHARS {
        return Err(ProfileValueError::TooLong(MAX_TEXT_CHARS));
    }
    Ok(())
}

/// The app version: text release targeting can compare (see [`lenient_version`]).
pub fn check_app_version(value: &str) -> Result<(), ProfileValueError> {
    check_text(value)?;
    match lenient_version(value) {
        Some(_) => Ok(()),
        None => Err(ProfileValueError::NotAVersion(value.to_owned())),
    }
}

/// Reads a version as release targeting does: `14` → 14.0.0, `17.4` → 17.4.0, `5.2.0-beta` as
/// is.
pub fn lenient_version(text: &str) -> Option<semver::Version> {
    let text = text.trim();
    if let Ok(v) = semver::Version::parse(text) {
        return Some(v);
    }
    let padded = match text.split('.').count() {
        1 => format!("{text}.0.0"),
        2 => format!("{text}.0"),
        _ => return None,
    };
    semver::Version::parse(&padded).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone() -> DeviceProfile {
        DeviceProfile {
            device_id: "d1".into(),
            app_id: "com.example.shop".into(),
            app_version: "5.2.0".into(),
            os: "android".into(),
            os_version: "14".into(),
            model: "Pixel 8".into(),
            hardware_tier: "high".into(),
            region: "eu".into(),
            tags: vec!["beta".into()],
        }
    }

    #[test]
    fn the_json_form_has_the_field_names_in_order() {
        let json = serde_json::to_string(&phone()).unwrap();
        assert_eq!(
            json,
            r#"{"device_id":"d1","app_id":"com.example.shop","app_version":"5.2.0","os":"android","os_version":"14","model":"Pixel 8","hardware_tier":"high","region":"eu","tags":["beta"]}"#
        );
        let value = serde_json::to_value(DeviceProfile::default()).unwrap();
        let mut names: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut fields = DeviceProfile::FIELDS.to_vec();
        names.sort_unstable();
        fields.sort_unstable();
        assert_eq!(names, fields);
        assert_eq!(
            serde_json::from_str::<DeviceProfile>(&json).unwrap(),
            phone()
        );
        let partial: DeviceProfile = serde_json::from_str(r#"{"region":"us"}"#).unwrap();
        assert_eq!(
            partial,
            DeviceProfile {
                region: "us".into(),
                ..DeviceProfile::default()
            }
        );
    }

    #[test]
    fn the_cloud_needs_a_device_id_and_the_device_a_comparable_app_version() {
        assert_eq!(phone().check_limits(), Ok(()));
        assert_eq!(phone().check(), Ok(()));
        let anonymous = DeviceProfile {
            device_id: String::new(),
            ..phone()
        };
        assert_eq!(anonymous.check(), Ok(()));
        assert_eq!(
            anonymous.check_limits().unwrap_err().to_string(),
            "profile.device_id: must not be empty"
        );
        let odd_version = DeviceProfile {
            app_version: "latest".into(),
            ..phone()
        };
        assert_eq!(odd_version.check_limits(), Ok(()));
        assert_eq!(odd_version.check().unwrap_err().field, "app_version");
        let crowded = DeviceProfile {
            tags: vec!["t".into(); MAX_TAGS + 1],
            ..phone()
        };
        assert_eq!(
            crowded.check_limits().unwrap_err().problem,
            ProfileValueError::TooManyTags(MAX_TAGS + 1)
        );
    }

    #[test]
    fn versions_read_leniently() {
        assert_eq!(lenient_version("14"), semver::Version::parse("14.0.0").ok());
        assert_eq!(
            lenient_version(" 17.4 "),
            semver::Version::parse("17.4.0").ok()
        );
        assert_eq!(
            lenient_version("5.2.0-beta"),
            semver::Version::parse("5.2.0-beta").ok()
        );
        assert_eq!(lenient_version("10.0.19045.3803"), None);
        assert_eq!(lenient_version("five"), None);
    }
}
