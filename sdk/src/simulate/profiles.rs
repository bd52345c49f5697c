//! The simulated fleet's device profiles: a realistic mix of app versions, operating systems,
//! models, hardware tiers and regions, drawn from each device's index and the run's seed, so the
//! same seed gives the same fleet (and a release's targeting picks the same devices) every run.

use walle_proto::v1::DeviceProfile;

/// App id every simulated device runs.
pub const APP_ID: &str = "com.example.shop";

/// Weighted choices: each entry is (value, weight in percent); weights add up to 100.
type Mix = &'static [(&'static str, u64)];

const APP_VERSIONS: Mix = &[("5.2.0", 40), ("5.1.3", 30), ("5.0.1", 20), ("4.9.0", 10)];
const ANDROID_VERSIONS: Mix = &[("15", 25), ("14", 35), ("13", 25), ("12", 15)];
const IOS_VERSIONS: Mix = &[("18.1", 45), ("17.4", 40), ("16.7", 15)];
const ANDROID_MODELS: Mix = &[
    ("Pixel 8", 20),
    ("Galaxy S23", 30),
    ("Redmi Note 12", 35),
    ("Moto G54", 15),
];
const IOS_MODELS: Mix = &[("iPhone 15", 40), ("iPhone 13", 40), ("iPhone SE", 20)];
const TIERS: Mix = &[("low", 30), ("mid", 50), ("high", 20)];
const REGIONS: Mix = &[
    ("eu-west", 30),
    ("us-east", 30),
    ("ap-south", 25),
    ("cn-north", 15),
];
/// Share of devices (percent) whose users opted into beta builds.
const BETA_PERCENT: u64 = 5;
/// Share of devices (percent) on Android; the rest run iOS.
const ANDROID_PERCENT: u64 = 70;

/// The id of simulated device `index`.
pub fn device_id(prefix: &str, index: usize) -> String {
    format!("{prefix}-{index:06}")
}

/// The profile of simulated device `index` in a fleet drawn with `seed`.
pub fn profile(prefix: &str, index: usize, seed: u64) -> DeviceProfile {
    let mut draw = Draw::new(seed, index as u64);
    let android = draw.percent() < ANDROID_PERCENT;
    let (os, versions, models) = if android {
        ("android", ANDROID_VERSIONS, ANDROID_MODELS)
    } else {
        ("ios", IOS_VERSIONS, IOS_MODELS)
    };
    DeviceProfile {
        device_id: device_id(prefix, index),
        app_id: APP_ID.to_owned(),
        app_version: draw.pick(APP_VERSIONS).to_owned(),
        os: os.to_owned(),
        os_version: draw.pick(versions).to_owned(),
        model: draw.pick(models).to_owned(),
        hardware_tier: draw.pick(TIERS).to_owned(),
        region: draw.pick(REGIONS).to_owned(),
        tags: if draw.percent() < BETA_PERCENT {
            vec!["beta-tester".to_owned()]
        } else {
            Vec::new()
        },
    }
}

/// Whether device `index` belongs to a share (0.0–1.0) of the fleet, stably for a `salt`: the
/// same devices fail installs in every run with the same seed.
pub fn in_share(seed: u64, index: usize, salt: u64, share: f64) -> bool {
    if share <= 0.0 {
        return false;
    }
    let unit =
        splitmix(seed ^ splitmix(index as u64 ^ salt.rotate_left(17))) as f64 / u64::MAX as f64;
    unit < share
}

/// A deterministic stream of draws for one device.
struct Draw {
    state: u64,
}

impl Draw {
    fn new(seed: u64, index: u64) -> Draw {
        Draw {
            state: splitmix(seed ^ splitmix(index)),
        }
    }

    fn next(&mut self) -> u64 {
        self.state = splitmix(self.state);
        self.state
    }

    fn percent(&mut self) -> u64 {
        self.next() % 100
    }

    fn pick(&mut self, mix: Mix) -> &'static str {
        let mut roll = self.percent();
        for (value, weight) in mix {
            if roll < *weight {
                return value;
            }
            roll -= weight;
        }
        mix.last().map(|(value, _)| *value).unwrap_or_default()
    }
}

/// SplitMix64: a well-mixed 64-bit hash, enough to draw profiles (not for secrets).
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mix_adds_up_to_one_hundred() {
        for mix in [
            APP_VERSIONS,
            ANDROID_VERSIONS,
            IOS_VERSIONS,
            ANDROID_MODELS,
            IOS_MODELS,
            TIERS,
            REGIONS,
        ] {
            assert_eq!(mix.iter().map(|(_, w)| w).sum::<u64>(), 100, "{mix:?}");
        }
    }

    #[test]
    fn the_same_seed_draws_the_same_fleet_and_the_mix_is_realistic() {
        let fleet: Vec<_> = (0..10_000).map(|i| profile("sim", i, 7)).collect();
        assert_eq!(fleet[42], profile("sim", 42, 7));
        assert_ne!(
            fleet.iter().map(|p| p.region.clone()).collect::<Vec<_>>(),
            (0..10_000)
                .map(|i| profile("sim", i, 8).region)
                .collect::<Vec<_>>()
        );
        let share = |f: &dyn Fn(&DeviceProfile) -> bool| {
            fleet.iter().filter(|p| f(p)).count() as f64 / fleet.len() as f64
        };
        let android = share(&|p| p.os == "android");
        assert!((0.67..0.73).contains(&android), "{android}");
        let newest = share(&|p| p.app_version == "5.2.0");
        assert!((0.37..0.43).contains(&newest), "{newest}");
        let beta = share(&|p| !p.tags.is_empty());
        assert!((0.03..0.07).contains(&beta), "{beta}");
        for p in &fleet {
            p.check().unwrap_or_else(|e| panic!("{p:?}: {e}"));
        }
    }

    #[test]
    fn a_share_picks_about_that_many_devices_stably() {
        let picked = (0..10_000).filter(|&i| in_share(1, i, 3, 0.1)).count();
        assert!((900..1100).contains(&picked), "{picked}");
        assert!(!(0..1000).any(|i| in_share(1, i, 3, 0.0)));
        assert!((0..1000).all(|i| in_share(1, i, 3, 1.0)));
        let again = (0..10_000).filter(|&i| in_share(1, i, 3, 0.1)).count();
        assert_eq!(picked, again);
    }
}
