//! BERT's encoder for the in-process model, on the CPU.
//!
//! candle-transformers' `BertModel` computes the same function, but outside
//! its matmuls and layer norms every step runs one element at a time on one
//! core, in a pass of its own (each dense layer's bias, the residual sums,
//! GELU, and over the `[batch, heads, tokens, tokens]` attention scores the
//! scaling, the mask and a softmax of five passes), every step allocates its
//! result, and attention's small batched matmuls (K = 32) run at a sixth of
//! the rate of the large ones. Here, with the weights read by
//! [`super::weights`] and candle only for the model's config:
//! - every dense layer is one call of the gemm crate (candle's own matmul)
//!   over all the batch's token rows, accumulating onto its bias (and, where
//!   one follows, the residual) written first into the output; over a few
//!   rows (a query), a kernel of its own that reads the weights in place;
//! - Q, K and V come from one such call (their weights side by side), with
//!   1/sqrt(head size) folded into Q's weights and bias at load;
//! - attention is one kernel, a task per sentence and head: two small
//!   matmuls and the softmax between them, over the unpadded tokens only;
//! - layer norm, GELU and the softmax run eight values at a time
//!   ([`super::simd`]), in passes over rows spread over the cores as the
//!   matmuls are (rayon's pool, which gemm uses; the whole pass runs on it);
//! - the buffers of a batch are kept for the next one.
//!
//! The weights and the arithmetic are the model's (GELU is the exact, erf
//! form the model's config names): tests/api/local.rs compares the vectors
//! with sentence-transformers' own.

use candle_core::Result;
use candle_transformers::models::bert::{Config, HiddenAct};
use rayon::prelude::*;

use super::simd;
use super::weights::Weights;

/// The weights under a name's prefix (`encoder.layer.0.` ...).
#[derive(Clone, Copy)]
struct At<'w> {
    weights: &'w Weights,
    prefix: &'w str,
}

impl At<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.weights
            .get(&format!("{}{name}", self.prefix), shape)
            .map_err(candle_core::Error::Msg)
    }
}

/// The encoder: token ids in, one vector a token out.
pub struct Bert {
    /// `[vocab, hidden]`, `[positions, hidden]`, `[types, hidden]`.
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    norm: Norm,
    layers: Vec<Layer>,
    hidden: usize,
    intermediate: usize,
    heads: usize,
    head_dim: usize,
    max_positions: usize,
}

struct Layer {
    /// `[3 * hidden, hidden]`: Q (scaled), K, V.
    qkv: Dense,
    out: Dense,
    out_norm: Norm,
    up: Dense,
    down: Dense,
    down_norm: Norm,
}

/// A dense layer: `y = x · Wᵀ + b`, `W` as stored, `[outputs, inputs]`.
struct Dense {
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

/// Layer norm's scale and shift.
struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

/// A batch's buffers, kept from one batch to the next.
#[derive(Default)]
pub struct Scratch {
    x: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    attended: Vec<f32>,
    up: Vec<f32>,
}

impl Scratch {
    /// Lets go of the buffers if they hold more than `max_bytes`: a batch of
    /// long inputs should not keep its 100 MB for the short queries after it.
    pub fn trim(&mut self, max_bytes: usize) {
        let held: usize = [&self.x, &self.qkv, &self.context, &self.attended, &self.up]
            .iter()
            .map(|v| v.capacity() * std::mem::size_of::<f32>())
            .sum();
        if held > max_bytes {
            *self = Self::default();
        }
    }
}

impl Dense {
    /// `{name}.weight` and `{name}.bias`.
    fn load(at: At, name: &str, inputs: usize, outputs: usize) -> Result<Self> {
        Ok(Self {
            weight: at.get(&format!("{name}.weight"), &[outputs, inputs])?,
            bias: at.get(&format!("{name}.bias"), &[outputs])?,
            inputs,
            outputs,
        })
    }

    /// `y += x · Wᵀ` for `rows` rows; `y` holds the bias (and residual) already.
    fn accumulate(&self, x: &[f32], rows: usize, y: &mut [f32]) {
        debug_assert_eq!(x.len(), rows * self.inputs);
        debug_assert_eq!(y.len(), rows * self.outputs);
        if rows <= FEW_ROWS && few_rows::fits(self.inputs, self.outputs) {
            few_rows::accumulate(x, rows, self, y);
            return;
        }
        // SAFETY: x is rows x inputs (row-major), y rows x outputs, and the
        // right side reads W [outputs, inputs] as its transpose: element
        // (i, j) of Wᵀ is W[j][i], at j * inputs + i.
        unsafe {
            matmul(
                (rows, self.outputs, self.inputs),
                (y.as_mut_ptr(), self.outputs, true),
                (x.as_ptr(), self.inputs),
                (self.weight.as_ptr(), 1, self.inputs as isize),
                gemm::Parallelism::Rayon(rayon::current_num_threads()),
            );
        }
    }

    /// Fills `y` (`rows` x outputs) with the bias, plus `residual` if given.
    fn start(&self, rows: usize, residual: Option<&[f32]>, y: &mut Vec<f32>) {
        y.clear();
        y.resize(rows * self.outputs, 0.0);
        let n = self.outputs;
        match residual {
            Some(r) => y
                .par_chunks_mut(n * ROWS_PER_TASK)
                .zip(r.par_chunks(n * ROWS_PER_TASK))
                .for_each(|(rows, res)| {
                    for (row, r) in rows.chunks_exact_mut(n).zip(res.chunks_exact(n)) {
                        for ((v, b), r) in row.iter_mut().zip(&self.bias).zip(r) {
                            *v = b + r;
                        }
                    }
                }),
            None => y.par_chunks_mut(n * ROWS_PER_TASK).for_each(|rows| {
                for row in rows.chunks_exact_mut(n) {
                    row.copy_from_slice(&self.bias);
                }
            }),
        }
    }
}

impl Norm {
    fn load(at: At, name: &str, n: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            gamma: at.get(&format!("{name}.weight"), &[n])?,
            beta: at.get(&format!("{name}.bias"), &[n])?,
            eps: eps as f32,
        })
    }

    /// In place over rows of `gamma.len()` values.
    fn apply(&self, x: &mut [f32]) {
        let n = self.gamma.len();
        x.par_chunks_mut(n * ROWS_PER_TASK).for_each(|rows| {
            for row in rows.chunks_exact_mut(n) {
                simd::layer_norm(row, &self.gamma, &self.beta, self.eps);
            }
        });
    }
}

/// Rows a parallel pass takes at a time: enough work to outweigh the
/// scheduling, few enough to keep both cores busy.
const ROWS_PER_TASK: usize = 32;

impl Bert {
    /// Loads the weights (with or without a `bert.` prefix, as
    /// sentence-transformers and Hugging Face save them).
    pub fn load(weights: &Weights, config: &Config) -> Result<Self> {
        let prefix = if weights.contains("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        if config.hidden_act != HiddenAct::Gelu {
            candle_core::bail!(
                "hidden_act {:?}: only BERT models with GELU (erf) are supported",
                config.hidden_act
            );
        }
        let h = config.hidden_size;
        let heads = config.num_attention_heads;
        if heads == 0 || h % heads != 0 {
            candle_core::bail!("hidden_size {h} is not a multiple of {heads} heads");
        }
        let head_dim = h / heads;
        let eps = config.layer_norm_eps;
        let e = format!("{prefix}embeddings.");
        let e = At {
            weights,
            prefix: &e,
        };
        let word = e.get("word_embeddings.weight", &[config.vocab_size, h])?;
        let scale = (1.0 / (head_dim as f64).sqrt()) as f32;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let name = format!("{prefix}encoder.layer.{i}.");
                let l = At {
                    weights,
                    prefix: &name,
                };
                // Q, K and V side by side, Q (weights and bias) scaled.
                let mut weight = Vec::with_capacity(3 * h * h);
                let mut bias = Vec::with_capacity(3 * h);
                for (part, s) in [("query", scale), ("key", 1.0), ("value", 1.0)] {
                    let w = l.get(&format!("attention.self.{part}.weight"), &[h, h])?;
                    let b = l.get(&format!("attention.self.{part}.bias"), &[h])?;
                    weight.extend(w.iter().map(|v| v * s));
                    bias.extend(b.iter().map(|v| v * s));
                }
                Ok(Layer {
                    qkv: Dense {
                        weight,
                        bias,
                        inputs: h,
                        outputs: 3 * h,
                    },
                    out: Dense::load(l, "attention.output.dense", h, h)?,
                    out_norm: Norm::load(l, "attention.output.LayerNorm", h, eps)?,
                    up: Dense::load(l, "intermediate.dense", h, config.intermediate_size)?,
                    down: Dense::load(l, "output.dense", config.intermediate_size, h)?,
                    down_norm: Norm::load(l, "output.LayerNorm", h, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            word,
            position: e.get(
                "position_embeddings.weight",
                &[config.max_position_embeddings, h],
            )?,
            token_type: e.get("token_type_embeddings.weight", &[config.type_vocab_size, h])?,
            norm: Norm::load(e, "LayerNorm", h, eps)?,
            layers,
            hidden: h,
            intermediate: config.intermediate_size,
            heads,
            head_dim,
            max_positions: config.max_position_embeddings,
        })
    }

    /// The hidden size: each token's vector.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// `ids`, `type_ids`, `mask`: `batch` rows of `tokens` each (the mask 1
    /// for a token, 0 for right padding). Returns the last layer's
    /// `[batch * tokens, hidden]` rows, in `scratch`.
    pub fn forward<'s>(
        &self,
        ids: &[u32],
        type_ids: &[u32],
        mask: &[f32],
        batch: usize,
        tokens: usize,
        scratch: &'s mut Scratch,
    ) -> Result<&'s [f32]> {
        // On a thread of rayon's pool: called from any other thread, each of
        // the forward pass's ~50 parallel steps would be handed to the pool
        // and waited for (a wake-up and a sleep each); from inside it, a
        // step's first task runs at once and the other core steals the rest.
        rayon::scope(|_| self.encode(ids, type_ids, mask, batch, tokens, scratch))
    }

    fn encode<'s>(
        &self,
        ids: &[u32],
        type_ids: &[u32],
        mask: &[f32],
        batch: usize,
        tokens: usize,
        scratch: &'s mut Scratch,
    ) -> Result<&'s [f32]> {
        let (h, rows) = (self.hidden, batch * tokens);
        if ids.len() != rows || type_ids.len() != rows || mask.len() != rows {
            candle_core::bail!("bert: ids, type ids and mask must be batch x tokens");
        }
        if tokens > self.max_positions {
            candle_core::bail!(
                "bert: {tokens} tokens, over the model's {}",
                self.max_positions
            );
        }
        let vocab = self.word.len() / h;
        let types = self.token_type.len() / h;
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            candle_core::bail!("bert: token id {bad} is outside the vocabulary");
        }
        if let Some(bad) = type_ids.iter().find(|&&i| i as usize >= types) {
            candle_core::bail!("bert: token type {bad} is unknown");
        }
        let Scratch {
            x,
            qkv,
            context,
            attended,
            up,
        } = scratch;
        x.clear();
        x.resize(rows * h, 0.0);
        x.par_chunks_mut(h).enumerate().for_each(|(r, row)| {
            let (id, ty, pos) = (ids[r] as usize, type_ids[r] as usize, r % tokens);
            let word = &self.word[id * h..(id + 1) * h];
            let ty = &self.token_type[ty * h..(ty + 1) * h];
            let pos = &self.position[pos * h..(pos + 1) * h];
            for (((v, w), t), p) in row.iter_mut().zip(word).zip(ty).zip(pos) {
                *v = w + t + p;
            }
        });
        self.norm.apply(x);
        for l in &self.layers {
            l.qkv.start(rows, None, qkv);
            l.qkv.accumulate(x, rows, qkv);
            context.clear();
            context.resize(rows * h, 0.0);
            attention(
                qkv,
                mask,
                context,
                Shape {
                    batch,
                    tokens,
                    heads: self.heads,
                    head_dim: self.head_dim,
                },
            );
            l.out.start(rows, Some(x), attended);
            l.out.accumulate(context, rows, attended);
            l.out_norm.apply(attended);
            l.up.start(rows, None, up);
            l.up.accumulate(attended, rows, up);
            up.par_chunks_mut(self.intermediate * ROWS_PER_TASK)
                .for_each(simd::gelu_erf);
            l.down.start(rows, Some(attended), x);
            l.down.accumulate(up, rows, x);
            l.down_norm.apply(x);
        }
        Ok(x)
    }
}

/// `dst = lhs · rhs` (or `dst += lhs · rhs` when `read_dst`), f32, through
/// the gemm crate: `(m, n, k)`; `dst` and `lhs` row-major with the given row
/// strides; `rhs` `k` x `n`, element (i, j) at `i * rhs_rs + j * rhs_cs`.
///
/// # Safety
/// Every element the shapes and strides name must lie inside its buffer, and
/// `dst`'s may be written by no one else meanwhile.
unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs, read_dst): (*mut f32, usize, bool),
    (lhs, lhs_rs): (*const f32, usize),
    (rhs, rhs_rs, rhs_cs): (*const f32, isize, isize),
    parallelism: gemm::Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        read_dst,
        lhs,
        1,
        lhs_rs as isize,
        rhs,
        rhs_cs,
        rhs_rs,
        1.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    );
}

/// Up to this many token rows (a query, a few short texts), a dense layer
/// runs in [`few_rows`], not in the gemm crate: gemm packs the whole weight
/// matrix into a layout of its own on every call, which for a 12-token query
/// took 43% of the time, more than the arithmetic did.
const FEW_ROWS: usize = 48;

/// A dense layer over a few rows, reading the weights where they lie: each
/// output is the dot product of an input row with a row of `W` (`[outputs,
/// inputs]`, contiguous), in AVX2 registers, 3 rows by 4 outputs at a time.
/// The outputs are split between the cores. Without AVX2 and FMA, a plain
/// loop computes the same.
mod few_rows {
    use super::{Dense, Out};
    use rayon::prelude::*;

    /// The kernel's steps: 8 inputs, 4 outputs.
    pub fn fits(inputs: usize, outputs: usize) -> bool {
        inputs % 8 == 0 && outputs % 4 == 0
    }

    /// `y += x · Wᵀ` over `rows` rows (see [`Dense::accumulate`]).
    pub fn accumulate(x: &[f32], rows: usize, d: &Dense, y: &mut [f32]) {
        accumulate_with(x, rows, d, y, super::simd::avx2());
    }

    /// With the AVX2 kernel or (`avx` false) the plain loop.
    pub(super) fn accumulate_with(x: &[f32], rows: usize, d: &Dense, y: &mut [f32], avx: bool) {
        let (k, n) = (d.inputs, d.outputs);
        assert!(fits(k, n) && x.len() == rows * k && y.len() == rows * n);
        assert_eq!(d.weight.len(), n * k);
        // Two tasks a core, in whole steps of 4 outputs.
        let tasks = 2 * rayon::current_num_threads();
        let per_task = (n / 4).div_ceil(tasks) * 4;
        let dst = Out(y.as_mut_ptr());
        (0..n.div_ceil(per_task)).into_par_iter().for_each(|t| {
            let (j0, j1) = (t * per_task, ((t + 1) * per_task).min(n));
            if avx {
                // SAFETY: AVX2 and FMA are there; the shapes are asserted
                // above, and this task alone writes columns j0..j1 of y.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    avx2::columns(x, rows, k, &d.weight, (j0, j1), dst, n)
                };
                return;
            }
            for r in 0..rows {
                let xr = &x[r * k..(r + 1) * k];
                for j in j0..j1 {
                    let w = &d.weight[j * k..(j + 1) * k];
                    let s: f32 = xr.iter().zip(w).map(|(a, b)| a * b).sum();
                    // SAFETY: element (r, j) is inside y, in this task's columns.
                    unsafe { *dst.at(r * n + j) += s };
                }
            }
        });
    }

    #[cfg(target_arch = "x86_64")]
    mod avx2 {
        use super::Out;
        use std::arch::x86_64::*;

        /// Columns `j0..j1` of `y [rows, n] += x [rows, k] · Wᵀ`.
        ///
        /// # Safety
        /// AVX2 and FMA must be available; `x` is `rows x k`, `w` `n x k`,
        /// `k` a multiple of 8, `j0` and `j1` of 4, and no one else writes
        /// these columns of `y` meanwhile.
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn columns(
            x: &[f32],
            rows: usize,
            k: usize,
            w: &[f32],
            (j0, j1): (usize, usize),
            y: Out,
            n: usize,
        ) {
            for j in (j0..j1).step_by(4) {
                let wj = w.as_ptr().wrapping_add(j * k);
                let mut r = 0;
                while r < rows {
                    let (xr, yr) = (x.as_ptr().wrapping_add(r * k), y.at(r * n + j));
                    // SAFETY: rows r.. of x and y, outputs j..j + 4 (the caller's).
                    r += unsafe { tile(xr, rows - r, k, wj, yr, n) };
                }
            }
        }

        /// 3 rows by 4 outputs: 12 accumulators, the 3 input vectors and one
        /// of `W` fill the 16 registers. Written out by hand: the crate is
        /// optimized for size, and the compiler would not unroll loops over
        /// arrays of registers. Fewer than 3 rows left: the last row is read
        /// again in their place, and only the real ones are written. Returns
        /// the rows done.
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn tile(
            x: *const f32,
            rows: usize,
            k: usize,
            w: *const f32,
            y: *mut f32,
            n: usize,
        ) -> usize {
            let rows = rows.min(3);
            let (x0, x1, x2) = (x, x.add((rows - 1).min(1) * k), x.add((rows - 1) * k));
            let (w0, w1, w2, w3) = (w, w.add(k), w.add(2 * k), w.add(3 * k));
            let z = _mm256_setzero_ps();
            let (mut a00, mut a01, mut a02, mut a03) = (z, z, z, z);
            let (mut a10, mut a11, mut a12, mut a13) = (z, z, z, z);
            let (mut a20, mut a21, mut a22, mut a23) = (z, z, z, z);
            let mut i = 0;
            while i < k {
                let (v0, v1, v2) = (
                    _mm256_loadu_ps(x0.add(i)),
                    _mm256_loadu_ps(x1.add(i)),
                    _mm256_loadu_ps(x2.add(i)),
                );
                let c = _mm256_loadu_ps(w0.add(i));
                a00 = _mm256_fmadd_ps(v0, c, a00);
                a10 = _mm256_fmadd_ps(v1, c, a10);
                a20 = _mm256_fmadd_ps(v2, c, a20);
                let c = _mm256_loadu_ps(w1.add(i));
                a01 = _mm256_fmadd_ps(v0, c, a01);
                a11 = _mm256_fmadd_ps(v1, c, a11);
                a21 = _mm256_fmadd_ps(v2, c, a21);
                let c = _mm256_loadu_ps(w2.add(i));
                a02 = _mm256_fmadd_ps(v0, c, a02);
                a12 = _mm256_fmadd_ps(v1, c, a12);
                a22 = _mm256_fmadd_ps(v2, c, a22);
                let c = _mm256_loadu_ps(w3.add(i));
                a03 = _mm256_fmadd_ps(v0, c, a03);
                a13 = _mm256_fmadd_ps(v1, c, a13);
                a23 = _mm256_fmadd_ps(v2, c, a23);
                i += 8;
            }
            // Each row's 4 sums, [s0, s1, s2, s3]: the two halves of
            // hadd(hadd(a0, a1), hadd(a2, a3)) added, onto y.
            for (r, (a, b, c, d)) in [
                (a00, a01, a02, a03),
                (a10, a11, a12, a13),
                (a20, a21, a22, a23),
            ]
            .into_iter()
            .enumerate()
            .take(rows)
            {
                let h = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
                let s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
                let yp = y.add(r * n);
                _mm_storeu_ps(yp, _mm_add_ps(_mm_loadu_ps(yp), s));
            }
            rows
        }
    }
}

#[derive(Clone, Copy)]
struct Shape {
    batch: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
}

/// A pointer the attention tasks write through, each into its own rows and
/// columns.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every task writes a disjoint set of elements (its sentence's rows,
// its head's columns), and the buffer outlives the parallel loop.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The element `i` places on (a method, so that a closure takes the
    /// whole `Out`, which is `Sync`, and not its raw pointer).
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// Self-attention of every head of every sentence, from the Q, K and V side
/// by side in `[batch * tokens, 3 * hidden]` rows (Q already scaled) into
/// the context's `[batch * tokens, hidden]` rows, the layout the output layer
/// reads. One task a (sentence, head): the scores of its unpadded tokens (a
/// matmul), the softmax in place, their weighted sum of V (a matmul),
/// written straight into the context. Padding takes no part: a padded
/// query's row of the context stays 0 (the mean pooling ignores it), and no
/// token attends to padding.
fn attention(qkv: &[f32], mask: &[f32], context: &mut [f32], shape: Shape) {
    let Shape {
        batch,
        tokens: t,
        heads,
        head_dim: hd,
    } = shape;
    let h = heads * hd;
    assert!(
        qkv.len() == batch * t * 3 * h && mask.len() == batch * t && context.len() == batch * t * h
    );
    let dst = Out(context.as_mut_ptr());
    (0..batch * heads).into_par_iter().for_each(|task| {
        let (b, head) = (task / heads, task % heads);
        // Right padding: the sentence is its first `n` tokens.
        let n = mask[b * t..(b + 1) * t]
            .iter()
            .rposition(|&m| m != 0.0)
            .map_or(0, |i| i + 1);
        if n == 0 {
            return;
        }
        let keep = &mask[b * t..b * t + n];
        let row0 = b * t * 3 * h;
        let q = qkv[row0 + head * hd..].as_ptr();
        let k = qkv[row0 + h + head * hd..].as_ptr();
        let v = qkv[row0 + 2 * h + head * hd..].as_ptr();
        let stride = (3 * h) as isize;
        let mut scores = vec![0f32; n * n];
        // SAFETY: the strides walk `n` rows of `hd` values inside `qkv`
        // (its size is asserted above), and `scores` is n x n. Kᵀ's element
        // (i, j) is K[j][i].
        unsafe {
            matmul(
                (n, n, hd),
                (scores.as_mut_ptr(), n, false),
                (q, 3 * h),
                (k, 1, stride),
                gemm::Parallelism::None,
            );
        }
        if keep.iter().all(|&m| m != 0.0) {
            scores.chunks_exact_mut(n).for_each(simd::softmax);
        } else {
            masked_softmax(&mut scores, keep);
        }
        // SAFETY: this task's rows of the context (sentence b, n of them)
        // and columns (its head's hd), written by no other task.
        unsafe {
            matmul(
                (n, hd, n),
                (dst.at(b * t * h + head * hd), h, false),
                (scores.as_ptr(), n),
                (v, stride, 1),
                gemm::Parallelism::None,
            );
        }
    });
}

/// Softmax of each row of `scores` over the tokens `keep` marks (a mask
/// with holes: the tokenizer pads on the right only, so this is a guard).
fn masked_softmax(scores: &mut [f32], keep: &[f32]) {
    for row in scores.chunks_exact_mut(keep.len()) {
        let max = row
            .iter()
            .zip(keep)
            .filter(|(_, &m)| m != 0.0)
            .fold(f32::NEG_INFINITY, |acc, (&s, _)| acc.max(s));
        let mut sum = 0.0f32;
        for (s, &m) in row.iter_mut().zip(keep) {
            *s = if m != 0.0 { (*s - max).exp() } else { 0.0 };
            sum += *s;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|s| *s *= inv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    fn values(t: Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// A dense layer over a few rows, both ways (the AVX2 kernel where the
    /// CPU has it, and the plain loop), against the sums written out, for
    /// every remainder of the kernel's 3 rows, and against the gemm crate.
    #[test]
    fn few_rows_equals_the_plain_product_and_gemm() {
        let (k, n) = (40, 24);
        let dev = candle_core::Device::Cpu;
        let d = Dense {
            weight: values(Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap()),
            bias: values(Tensor::randn(0f32, 1.0, n, &dev).unwrap()),
            inputs: k,
            outputs: n,
        };
        for rows in 1..=7 {
            let x = values(Tensor::randn(0f32, 1.0, (rows, k), &dev).unwrap());
            let mut want = Vec::new();
            d.start(rows, None, &mut want);
            for r in 0..rows {
                for j in 0..n {
                    want[r * n + j] += (0..k)
                        .map(|i| x[r * k + i] * d.weight[j * k + i])
                        .sum::<f32>();
                }
            }
            let mut by_gemm = Vec::new();
            d.start(rows, None, &mut by_gemm);
            // SAFETY: the shapes of Dense::accumulate's call.
            unsafe {
                matmul(
                    (rows, n, k),
                    (by_gemm.as_mut_ptr(), n, true),
                    (x.as_ptr(), k),
                    (d.weight.as_ptr(), 1, k as isize),
                    gemm::Parallelism::None,
                );
            }
            let mut ways = vec![("plain", false)];
            if simd::avx2() {
                ways.push(("avx2", true));
            }
            for (way, avx) in ways {
                let mut got = Vec::new();
                d.start(rows, None, &mut got);
                few_rows::accumulate_with(&x, rows, &d, &mut got, avx);
                for (i, ((g, w), m)) in got.iter().zip(&want).zip(&by_gemm).enumerate() {
                    assert!(
                        (g - w).abs() < 1e-4,
                        "{way}, {rows} rows, element {i}: {g} != {w}"
                    );
                    assert!(
                        (g - m).abs() < 1e-4,
                        "{way}, {rows} rows, element {i}: {g}, gemm {m}"
                    );
                }
            }
        }
    }

    /// The attention kernel against the plain tensor computation, with a
    /// padded sentence beside a full one.
    #[test]
    fn attention_is_softmax_of_the_scores_times_v_and_ignores_padding() {
        let dev = candle_core::Device::Cpu;
        let (b, t, heads, hd) = (2, 5, 3, 4);
        let h = heads * hd;
        let qkv = Tensor::randn(0f32, 1.0, (b * t, 3 * h), &dev).unwrap();
        let mask = Tensor::new(&[[1f32, 1., 1., 1., 1.], [1., 1., 1., 0., 0.]], &dev).unwrap();
        let mut got = vec![0f32; b * t * h];
        attention(
            &values(qkv.clone()),
            &values(mask.clone()),
            &mut got,
            Shape {
                batch: b,
                tokens: t,
                heads,
                head_dim: hd,
            },
        );
        let split = |i: usize| {
            qkv.narrow(1, i * h, h)
                .unwrap()
                .reshape((b, t, heads, hd))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let bias = ((mask.ones_like().unwrap() - &mask).unwrap() * -1e9f64)
            .unwrap()
            .reshape((b, 1, 1, t))
            .unwrap();
        let scores = q
            .matmul(&k.t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        let probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        let want = values(
            probs
                .matmul(&v)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap(),
        );
        for (row, (g, w)) in got.chunks(h).zip(want.chunks(h)).enumerate() {
            if row >= t + 3 {
                assert!(g.iter().all(|&x| x == 0.0), "a padded query's row is 0");
                continue;
            }
            for (x, y) in g.iter().zip(w) {
                assert!((x - y).abs() < 1e-5, "row {row}: {g:?} {w:?}");
            }
        }
    }
}
