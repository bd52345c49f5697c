//! The vector instructions the packed kernels ([`super::packed`]) are written over: which of
//! them this CPU has ([`Isa`]), and the few operations a tile needs ([`Simd`]), for AVX-512
//! (16 lanes, 32 registers) and AVX2 + FMA (8 lanes, 16 registers).
//!
//! A kernel is written once, generic over [`Simd`] and `#[inline(always)]`, and instantiated
//! inside a function that enables the instruction set, so every operation below inlines into
//! straight-line vector code.

/// An instruction set the packed kernels run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F: a tile is 8 filters × 3 vectors of 16 pixels.
    Avx512,
    /// AVX2 and FMA: a tile is 8 filters × 3 vectors of 8 pixels, one vector at a time.
    Avx2,
}

/// The environment variable that caps the instruction set the engine's own kernels use:
/// `avx2` (AVX-512 unused) or `none` (the portable kernels and the `gemm` crate only). It makes
/// a server behave like a CPU without AVX-512, to reproduce or measure what such devices see.
pub const ISA_CAP_ENV: &str = "WALLE_ENGINE_ISA";

/// Every instruction set the kernels are written for, widest first.
const WIDEST: [Isa; 2] = [Isa::Avx512, Isa::Avx2];

impl Isa {
    /// The widest instruction set this CPU has, if it has one of them, under the cap of
    /// [`ISA_CAP_ENV`] (read once per process).
    pub fn detect() -> Option<Isa> {
        static DETECTED: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            let cap = std::env::var(ISA_CAP_ENV).ok();
            let allowed = Isa::allowed(cap.as_deref()).unwrap_or_else(|e| {
                eprintln!("walle-engine: ignoring {ISA_CAP_ENV}: {e}");
                &WIDEST
            });
            allowed.iter().copied().find(|isa| isa.supported())
        })
    }

    /// The instruction sets a cap (the value of [`ISA_CAP_ENV`], if set) allows, widest first.
    fn allowed(cap: Option<&str>) -> Result<&'static [Isa], String> {
        match cap {
            None | Some("avx512") => Ok(&WIDEST),
            Some("avx2") => Ok(&WIDEST[1..]),
            Some("none") => Ok(&[]),
            Some(other) => Err(format!("{other:?} is none of avx512, avx2, none")),
        }
    }

    /// Whether this CPU can run kernels written for `self` (whatever the cap).
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                // Every AVX-512 CPU has AVX2 and FMA too; the AVX2 paths may rely on it.
                Isa::Avx512 => {
                    std::arch::is_x86_feature_detected!("avx512f") && Isa::Avx2.supported()
                }
                Isa::Avx2 => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// f32 lanes of one vector.
    pub fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512, Simd, multiply_add};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::packed::ROWS;
    use std::arch::x86_64::*;

    /// The operations of a packed tile on one instruction set. Every method must be called
    /// only where the CPU has that instruction set (inside a function that enables it).
    pub(crate) trait Simd {
        type Vector: Copy;
        /// f32 lanes of a vector.
        const LANES: usize;
        /// Which lanes of a vector a load or store touches.
        type Mask: Copy;

        /// The mask of the lanes whose bits are set in `bits`.
        unsafe fn mask(bits: u16) -> Self::Mask;
        unsafe fn splat(value: f32) -> Self::Vector;
        /// Loads the masked lanes from `at` (the others are zero and read nothing).
        unsafe fn load(mask: Self::Mask, at: *const f32) -> Self::Vector;
        /// `a · b + c`.
        unsafe fn fmadd(a: Self::Vector, b: Self::Vector, c: Self::Vector) -> Self::Vector;
        unsafe fn relu(value: Self::Vector) -> Self::Vector;
        /// Stores the masked lanes to `at`; `full` says the mask holds every lane.
        unsafe fn store(at: *mut f32, mask: Self::Mask, full: bool, value: Self::Vector);
    }

    #[derive(Clone, Copy)]
    pub(crate) struct Avx512;

    impl Simd for Avx512 {
        type Vector = __m512;
        type Mask = u16;
        const LANES: usize = 16;

        #[inline(always)]
        unsafe fn mask(bits: u16) -> u16 {
            bits
        }
        #[inline(always)]
        unsafe fn splat(value: f32) -> __m512 {
            // SAFETY: the caller enabled AVX-512F.
            unsafe { _mm512_set1_ps(value) }
        }
        #[inline(always)]
        unsafe fn load(mask: u16, at: *const f32) -> __m512 {
            // SAFETY: as the trait's contract; masked lanes read nothing.
            unsafe { _mm512_maskz_loadu_ps(mask, at) }
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
            // SAFETY: the caller enabled AVX-512F.
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn relu(value: __m512) -> __m512 {
            // SAFETY: the caller enabled AVX-512F.
            unsafe { _mm512_max_ps(value, _mm512_setzero_ps()) }
        }
        #[inline(always)]
        unsafe fn store(at: *mut f32, mask: u16, _: bool, value: __m512) {
            // SAFETY: as the trait's contract; masked lanes write nothing.
            unsafe { _mm512_mask_storeu_ps(at, mask, value) }
        }
    }

    #[derive(Clone, Copy)]
    pub(crate) struct Avx2;

    impl Simd for Avx2 {
        type Vector = __m256;
        type Mask = __m256i;
        const LANES: usize = 8;

        #[inline(always)]
        unsafe fn mask(bits: u16) -> __m256i {
            // SAFETY: the caller enabled AVX2.
            unsafe {
                let lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
                let set = _mm256_and_si256(_mm256_set1_epi32(i32::from(bits)), lane_bits);
                _mm256_cmpeq_epi32(set, lane_bits)
            }
        }
        #[inline(always)]
        unsafe fn splat(value: f32) -> __m256 {
            // SAFETY: the caller enabled AVX.
            unsafe { _mm256_set1_ps(value) }
        }
        #[inline(always)]
        unsafe fn load(mask: __m256i, at: *const f32) -> __m256 {
            // SAFETY: as the trait's contract; masked lanes read nothing.
            unsafe { _mm256_maskload_ps(at, mask) }
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
            // SAFETY: the caller enabled FMA.
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn relu(value: __m256) -> __m256 {
            // SAFETY: the caller enabled AVX.
            unsafe { _mm256_max_ps(value, _mm256_setzero_ps()) }
        }
        #[inline(always)]
        unsafe fn store(at: *mut f32, mask: __m256i, full: bool, value: __m256) {
            // SAFETY: as the trait's contract. A masked store is slow on some CPUs, so whole
            // vectors are stored plainly.
            unsafe {
                if full {
                    _mm256_storeu_ps(at, value)
                } else {
                    _mm256_maskstore_ps(at, mask, value)
                }
            }
        }
    }

    /// `acc[r][v] += Σ_kk panel[kk·ROWS + r] · base[v][kk·step ..][..lanes]` over `depth`
    /// steps, the loads of vector `v` masked by `masks[v]` (masked lanes read nothing and add
    /// zero).
    ///
    /// # Safety
    /// The CPU must have `S`'s instruction set, enabled in the caller; the unmasked lanes of
    /// every step must be readable, and the panel must hold `depth · ROWS` values.
    #[inline(always)]
    pub(crate) unsafe fn multiply_add<S: Simd, const V: usize>(
        acc: &mut [[S::Vector; V]; ROWS],
        panel: *const f32,
        depth: usize,
        base: [*const f32; V],
        masks: [S::Mask; V],
        step: usize,
    ) {
        for kk in 0..depth {
            // SAFETY: as this function's contract.
            unsafe {
                let x: [S::Vector; V] =
                    std::array::from_fn(|v| S::load(masks[v], base[v].wrapping_add(kk * step)));
                let weights = panel.add(kk * ROWS);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let weight = S::splat(*weights.add(r));
                    for v in 0..V {
                        acc[v] = S::fmadd(weight, x[v], acc[v]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_allows_the_instruction_sets_up_to_it() {
        assert_eq!(Isa::allowed(None), Ok(&[Isa::Avx512, Isa::Avx2][..]));
        assert_eq!(Isa::allowed(Some("avx512")), Isa::allowed(None));
        assert_eq!(Isa::allowed(Some("avx2")), Ok(&[Isa::Avx2][..]));
        assert_eq!(Isa::allowed(Some("none")), Ok(&[][..]));
        let refused = Isa::allowed(Some("sse9")).unwrap_err();
        assert!(refused.contains("\"sse9\""), "{refused}");
    }
}
