//! Choosing the next token from a position's logits.
//!
//! [`Sampling`] applies, in llama.cpp's default order:
//! 1. the **repetition penalty** (CTRL's): each distinct token among the last
//!    `penalty_window` tokens of the conversation has its logit divided by `penalty` if
//!    positive, multiplied by it if negative (1 = off);
//! 2. **greedy**: with `temperature <= 0`, the largest logit wins (the lowest id among equal
//!    ones), and the steps below are skipped;
//! 3. **top-k**: only the `top_k` largest logits stay (0 = all);
//! 4. **top-p** (nucleus): of those, by decreasing probability, the fewest whose
//!    probabilities (softmax of the logits) sum to at least `top_p` stay (1 = all);
//! 5. **temperature**: the remaining logits are divided by it and a token is drawn from
//!    their softmax.
//!
//! Ties are ordered by token id, so a [`Sampler`] with a given seed draws the same tokens
//! from the same logits on every machine. The generator is our own SplitMix64 (a
//! well-known 64-bit mixer that passes BigCrush): the engine has no `rand` dependency, and
//! its stream must not change under us.
//!
//! Logits that are NaN count as −∞; if every logit is −∞ the lowest id is returned. Nothing
//! here panics on any input.

/// How a token is chosen (see the module docs); `Default` is greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// Divides the logits before drawing; 0 or less: greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the most likely tokens whose probabilities sum to `top_p` (1: all).
    pub top_p: f32,
    /// The repetition penalty (1: off).
    pub repetition_penalty: f32,
    /// How many of the last tokens the penalty looks at.
    pub penalty_window: usize,
    /// The random generator's seed.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Sampling {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            penalty_window: 64,
            seed: 0,
        }
    }
}

/// SplitMix64: a 64-bit state advanced by a constant and mixed.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// [`Sampling`] with its random generator's state: one per generation.
#[derive(Debug, Clone)]
pub struct Sampler {
    options: Sampling,
    rng: SplitMix64,
}

impl Sampler {
    /// A sampler drawing with `options`, its generator seeded with `options.seed`.
    pub fn new(options: Sampling) -> Sampler {
        Sampler {
            rng: SplitMix64::new(options.seed),
            options,
        }
    }

    /// The options.
    pub fn options(&self) -> &Sampling {
        &self.options
    }

    /// Chooses a token from `logits`, the conversation so far being `history`.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let o = &self.options;
        let mut logits: Vec<f32> = logits
            .iter()
            .map(|&l| if l.is_nan() { f32::NEG_INFINITY } else { l })
            .collect();
        if o.repetition_penalty != 1.0 && o.repetition_penalty > 0.0 {
            let window = &history[history.len().saturating_sub(o.penalty_window)..];
            let mut seen: Vec<u32> = window.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / o.repetition_penalty
                    } else {
                        *l * o.repetition_penalty
                    };
                }
            }
        }
        if o.temperature <= 0.0 || o.temperature.is_nan() {
            return argmax(&logits);
        }
        // Candidates by decreasing logit, ties by increasing id.
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .filter(|&(_, l)| l > f32::NEG_INFINITY)
            .collect();
        if candidates.is_empty() {
            return 0;
        }
        if o.top_k > 0 && o.top_k < candidates.len() {
            candidates.select_nth_unstable_by(o.top_k - 1, order);
            candidates.truncate(o.top_k);
        }
        candidates.sort_unstable_by(order);
        if o.top_p < 1.0 {
            let max = candidates[0].1;
            let weights: Vec<f64> = candidates
                .iter()
                .map(|&(_, l)| f64::from(l - max).exp())
                .collect();
            let total: f64 = weights.iter().sum();
            let mut sum = 0.0;
            let mut keep = candidates.len();
            for (i, w) in weights.iter().enumerate() {
                sum += w / total;
                if sum >= f64::from(o.top_p) {
                    keep = i + 1;
                    break;
                }
            }
            candidates.truncate(keep.max(1));
        }
        let max = candidates[0].1;
        let temperature = f64::from(o.temperature);
        let weights: Vec<f64> = candidates
            .iter()
            .map(|&(_, l)| (f64::from(l - max) / temperature).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut target = self.rng.next_f64() * total;
        for (&(id, _), w) in candidates.iter().zip(&weights) {
            if target < *w {
                return id;
            }
            target -= w;
        }
        candidates.last().map_or(0, |c| c.0)
    }
}

/// The id of the largest value (the lowest among equal ones; 0 if there is none).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in values.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map_or(0, |(i, _)| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f32, top_k: usize, top_p: f32) -> Sampling {
        Sampling {
            temperature,
            top_k,
            top_p,
            seed: 42,
            ..Sampling::default()
        }
    }

    #[test]
    fn greedy_takes_the_largest_and_ignores_nan() {
        let mut s = Sampler::new(Sampling::default());
        assert_eq!(s.sample(&[0.5, f32::NAN, 2.0, 2.0, -1.0], &[]), 2);
        assert_eq!(s.sample(&[f32::NAN; 3], &[]), 0);
        assert_eq!(s.sample(&[], &[]), 0);
        let mut hot = Sampler::new(sampling(1.0, 0, 1.0));
        assert_eq!(hot.sample(&[f32::NEG_INFINITY, f32::NAN], &[]), 0);
    }

    #[test]
    fn top_k_of_one_is_greedy_and_top_p_keeps_the_nucleus() {
        let logits = [1.0, 3.0, 2.9, -4.0, 0.0];
        let mut one = Sampler::new(sampling(5.0, 1, 1.0));
        for _ in 0..100 {
            assert_eq!(one.sample(&logits, &[]), 1);
        }
        // p(1) ≈ 0.50, p(2) ≈ 0.45: a nucleus of 0.9 holds exactly those two.
        let mut nucleus = Sampler::new(sampling(1.0, 0, 0.9));
        let mut seen = [0usize; 5];
        for _ in 0..2000 {
            seen[nucleus.sample(&logits, &[]) as usize] += 1;
        }
        assert!(seen[1] > 800 && seen[2] > 700, "{seen:?}");
        assert_eq!(seen[0] + seen[3] + seen[4], 0, "{seen:?}");
    }

    #[test]
    fn draws_follow_the_tempered_distribution_and_repeat_with_the_seed() {
        let logits = [0.0, 1.0, 2.0];
        let mut s = Sampler::new(sampling(1.0, 0, 1.0));
        let draws: Vec<u32> = (0..30_000).map(|_| s.sample(&logits, &[])).collect();
        let total: f64 = logits.iter().map(|&l: &f32| f64::from(l).exp()).sum();
        for (t, &l) in logits.iter().enumerate() {
            let want = f64::from(l).exp() / total;
            let got = draws.iter().filter(|&&d| d == t as u32).count() as f64 / 30_000.0;
            assert!((got - want).abs() < 0.015, "token {t}: {got} vs {want}");
        }
        let mut again = Sampler::new(sampling(1.0, 0, 1.0));
        let replay: Vec<u32> = (0..30_000).map(|_| again.sample(&logits, &[])).collect();
        assert_eq!(draws, replay);
        let mut other = Sampler::new(Sampling {
            seed: 43,
            ..sampling(1.0, 0, 1.0)
        });
        let different: Vec<u32> = (0..100).map(|_| other.sample(&logits, &[])).collect();
        assert_ne!(&draws[..100], &different[..]);
    }

    #[test]
    fn the_repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let mut s = Sampler::new(Sampling {
            repetition_penalty: 2.0,
            penalty_window: 2,
            ..Sampling::default()
        });
        // Token 0 (3.0 → 1.5) loses to token 1 (2.0); token 0 outside the window keeps 3.0.
        assert_eq!(s.sample(&[3.0, 2.0, -1.0], &[0, 2]), 1);
        assert_eq!(s.sample(&[3.0, 2.0, -1.0], &[0, 2, 2]), 0);
        assert_eq!(s.sample(&[-1.0, -1.5], &[0]), 1);
    }
}
