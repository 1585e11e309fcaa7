//! The encoder's element-wise passes (GELU, softmax, layer norm), eight
//! values at a time with AVX2 and FMA where the CPU has them, else one at a
//! time. The crate is optimized for size (`opt-level = "s"`), under which
//! the compiler neither vectorizes these loops nor inlines libm's `expf`:
//! written one value at a time they took a third of a batch's time, as
//! much as half of the matmuls. The vector forms use the same formulas (exp
//! by range reduction and a degree-5 polynomial, erf by Abramowitz and
//! Stegun 7.1.26), to within a few units in the last place of the scalar
//! ones; the tests compare both.

/// Whether the AVX2 and FMA forms run, here and in the encoder's few-rows
/// kernel: checked once (the standard library caches it).
pub fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// GELU in its exact form, `x/2 · (1 + erf(x/√2))`, in place.
pub fn gelu_erf(values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: AVX2 and FMA are there.
        unsafe { avx2::gelu_erf(values) };
        return;
    }
    values.iter_mut().for_each(|v| *v = gelu_erf_one(*v));
}

/// Softmax of a row, in place.
pub fn softmax(row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: AVX2 and FMA are there.
        unsafe { avx2::softmax(row) };
        return;
    }
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for s in row.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|s| *s *= inv);
}

/// Layer norm of a row, in place: `(x - mean) / sqrt(var + eps) · gamma + beta`.
pub fn layer_norm(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    assert!(gamma.len() == row.len() && beta.len() == row.len());
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: AVX2 and FMA are there; the lengths are checked above.
        unsafe { avx2::layer_norm(row, gamma, beta, eps) };
        return;
    }
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
        *v = (*v - mean) * inv * g + b;
    }
}

/// GELU of one value.
pub fn gelu_erf_one(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf to within 1.5e-7, before f32's rounding (Abramowitz and Stegun 7.1.26).
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + ERF_P * a);
    let poly = t * (ERF_A[0] + t * (ERF_A[1] + t * (ERF_A[2] + t * (ERF_A[3] + t * ERF_A[4]))));
    let y = 1.0 - poly * (-a * a).exp();
    y.copysign(x)
}

const ERF_P: f32 = 0.327_591_1;
const ERF_A: [f32; 5] = [
    0.254_829_6,
    -0.284_496_74,
    1.421_413_7,
    -1.453_152_1,
    1.061_405_4,
];

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{gelu_erf_one, ERF_A, ERF_P};
    use std::arch::x86_64::*;

    /// e^x, eight at a time: x = n·ln 2 + r, |r| <= ln 2 / 2, e^r by
    /// Cephes' polynomial, 2^n put into the exponent. Inputs are clamped to
    /// ±88.38 (e^x stays finite; below, it is at f32's smallest normals).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn exp(x: __m256) -> __m256 {
        let x = _mm256_min_ps(x, _mm256_set1_ps(88.376_26));
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.336_55));
        let n = _mm256_floor_ps(_mm256_fmadd_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
            _mm256_set1_ps(0.5),
        ));
        // ln 2 in two parts, so that r loses nothing.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        // Written out: under opt-level "s" a loop over the coefficients stays a loop.
        let p = _mm256_set1_ps(1.987_569_1e-4);
        let p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.398_199_9e-3));
        let p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.333_452e-3));
        let p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166_579_6e-2));
        let p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.166_666_65));
        let p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
        let rr = _mm256_mul_ps(r, r);
        let e = _mm256_add_ps(_mm256_fmadd_ps(p, rr, r), _mm256_set1_ps(1.0));
        let pow2n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvttps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        _mm256_mul_ps(e, pow2n)
    }

    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gelu_erf(values: &mut [f32]) {
        let mut chunks = values.chunks_exact_mut(8);
        let sign = _mm256_set1_ps(-0.0);
        let one = _mm256_set1_ps(1.0);
        for c in &mut chunks {
            let x = _mm256_loadu_ps(c.as_ptr());
            // erf(z) at z = x/√2.
            let z = _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
            let a = _mm256_andnot_ps(sign, z);
            let t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(ERF_P), a, one));
            let p = _mm256_set1_ps(ERF_A[4]);
            let p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(ERF_A[3]));
            let p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(ERF_A[2]));
            let p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(ERF_A[1]));
            let p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(ERF_A[0]));
            let poly = _mm256_mul_ps(p, t);
            let e = exp(_mm256_mul_ps(_mm256_xor_ps(a, sign), a));
            let y = _mm256_fnmadd_ps(poly, e, one);
            let erf = _mm256_or_ps(y, _mm256_and_ps(z, sign));
            let g = _mm256_mul_ps(
                _mm256_mul_ps(_mm256_set1_ps(0.5), x),
                _mm256_add_ps(one, erf),
            );
            _mm256_storeu_ps(c.as_mut_ptr(), g);
        }
        for v in chunks.into_remainder() {
            *v = gelu_erf_one(*v);
        }
    }

    /// The largest of 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn max_of(v: __m256) -> f32 {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
        _mm_cvtss_f32(m)
    }

    /// The sum of 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn sum_of(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softmax(row: &mut [f32]) {
        let whole = row.len() / 8 * 8;
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        for c in row[..whole].chunks_exact(8) {
            m = _mm256_max_ps(m, _mm256_loadu_ps(c.as_ptr()));
        }
        let max = row[whole..].iter().copied().fold(max_of(m), f32::max);
        let mv = _mm256_set1_ps(max);
        let mut s = _mm256_setzero_ps();
        for c in row[..whole].chunks_exact_mut(8) {
            let e = exp(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), mv));
            s = _mm256_add_ps(s, e);
            _mm256_storeu_ps(c.as_mut_ptr(), e);
        }
        let mut sum = sum_of(s);
        for v in &mut row[whole..] {
            *v = (*v - max).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        let iv = _mm256_set1_ps(inv);
        for c in row[..whole].chunks_exact_mut(8) {
            _mm256_storeu_ps(
                c.as_mut_ptr(),
                _mm256_mul_ps(_mm256_loadu_ps(c.as_ptr()), iv),
            );
        }
        row[whole..].iter_mut().for_each(|v| *v *= inv);
    }

    /// # Safety
    /// AVX2 and FMA must be available; `gamma` and `beta` as long as `row`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn layer_norm(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
        let n = row.len();
        let whole = n / 8 * 8;
        let mut s = _mm256_setzero_ps();
        for c in row[..whole].chunks_exact(8) {
            s = _mm256_add_ps(s, _mm256_loadu_ps(c.as_ptr()));
        }
        let mean = (sum_of(s) + row[whole..].iter().sum::<f32>()) / n as f32;
        let mv = _mm256_set1_ps(mean);
        let mut q = _mm256_setzero_ps();
        for c in row[..whole].chunks_exact(8) {
            let d = _mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), mv);
            q = _mm256_fmadd_ps(d, d, q);
        }
        let var = (sum_of(q)
            + row[whole..]
                .iter()
                .map(|v| (v - mean) * (v - mean))
                .sum::<f32>())
            / n as f32;
        let inv = 1.0 / (var + eps).sqrt();
        let iv = _mm256_set1_ps(inv);
        for ((c, g), b) in row[..whole]
            .chunks_exact_mut(8)
            .zip(gamma.chunks_exact(8))
            .zip(beta.chunks_exact(8))
        {
            let d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), mv), iv);
            let y = _mm256_fmadd_ps(d, _mm256_loadu_ps(g.as_ptr()), _mm256_loadu_ps(b.as_ptr()));
            _mm256_storeu_ps(c.as_mut_ptr(), y);
        }
        for ((v, g), b) in row[whole..]
            .iter_mut()
            .zip(&gamma[whole..])
            .zip(&beta[whole..])
        {
            *v = (*v - mean) * inv * g + b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values across the ranges the model produces, and past them.
    fn inputs(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 24.0)
            .collect()
    }

    #[test]
    fn erf_is_within_its_bound_of_the_exact_one() {
        // erf's values at a few points (Abramowitz and Stegun, table 7.1).
        for (x, want) in [
            (0.0f32, 0.0f64),
            (0.1, 0.112_462_916),
            (0.5, 0.520_499_878),
            (1.0, 0.842_700_793),
            (2.0, 0.995_322_265),
            (3.0, 0.999_977_910),
        ] {
            // 1.5e-7 of the approximation, and f32's rounding.
            assert!((erf(x) as f64 - want).abs() < 5e-7, "erf({x}) = {}", erf(x));
            assert!((erf(-x) as f64 + want).abs() < 5e-7);
        }
        assert_eq!(gelu_erf_one(0.0), 0.0);
        assert!((gelu_erf_one(1.0) - 0.841_344_7).abs() < 1e-6);
    }

    /// The vector forms against the scalar ones, over lengths with and
    /// without a remainder of 8 (on a CPU without AVX2 both are scalar).
    #[test]
    fn the_vector_passes_equal_the_scalar_ones() {
        for n in [1, 7, 8, 19, 384] {
            let x = inputs(n);
            let mut got = x.clone();
            gelu_erf(&mut got);
            for (i, (g, v)) in got.iter().zip(&x).enumerate() {
                let want = gelu_erf_one(*v);
                assert!(
                    (g - want).abs() <= 2e-6 * want.abs().max(1.0),
                    "gelu, n {n}, element {i}: {g} != {want}"
                );
            }

            let mut got = x.clone();
            softmax(&mut got);
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = x.iter().map(|v| ((v - max) as f64).exp()).sum();
            for (i, (g, v)) in got.iter().zip(&x).enumerate() {
                let want = (((v - max) as f64).exp() / sum) as f32;
                assert!(
                    (g - want).abs() <= 1e-6 * want.max(1e-3),
                    "softmax, n {n}, element {i}: {g} != {want}"
                );
            }

            let gamma: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 / n as f32).collect();
            let beta: Vec<f32> = (0..n).map(|i| i as f32 / 10.0).collect();
            let mut got = x.clone();
            layer_norm(&mut got, &gamma, &beta, 1e-12);
            let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
            for (i, g) in got.iter().enumerate() {
                let want = ((x[i] as f64 - mean) / (var + 1e-12).sqrt() * gamma[i] as f64
                    + beta[i] as f64) as f32;
                assert!(
                    (g - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "layer norm, n {n}, element {i}: {g} != {want}"
                );
            }
        }
    }
}
