//! BERT's encoder for the in-process model, on candle's tensors.
//!
//! candle-transformers' `BertModel` computes the same function, but outside
//! its matmuls and layer norms every step runs one element at a time on one
//! core, in a pass of its own: the bias of each dense layer, the residual
//! sums, GELU, and over the `[batch, heads, tokens, tokens]` attention scores
//! the scaling, the mask and a softmax of five passes. Here:
//! - Q, K and V come from one matmul (their weights side by side), with
//!   1/sqrt(head size) folded into Q's weights and bias at load;
//! - every dense layer is one matmul over all the batch's token rows, then one
//!   in-place pass that adds the bias and the activation or the residual;
//! - attention is one kernel, a task per sentence and head: two small
//!   matmuls and the softmax between them, over the unpadded tokens only;
//! - these passes are spread over the cores, as the matmuls are.
//!
//! The weights and the arithmetic are the model's (GELU is the exact, erf
//! form the model's config names): tests/api/local.rs compares the vectors
//! with sentence-transformers' own.

use candle_core::{
    CpuStorage, CustomOp2, DType, InplaceOp2, InplaceOp3, Layout, Module, Result, Shape, Tensor, D,
};
use candle_nn::{embedding, layer_norm, Embedding, LayerNorm, VarBuilder};
use candle_transformers::models::bert::{Config, HiddenAct};
use rayon::prelude::*;

/// The encoder: token ids in, one vector a token out.
pub struct Bert {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    head_dim: usize,
}

struct Layer {
    /// `[3 * hidden, hidden]`: Q (scaled), K, V.
    qkv: Dense,
    out: Dense,
    out_norm: LayerNorm,
    up: Dense,
    down: Dense,
    down_norm: LayerNorm,
}

/// A dense layer: `x · Wᵀ + b` over rows of `x`.
struct Dense {
    /// `[in, out]`, contiguous: the matmul's right side as gemm reads it best.
    weight_t: Tensor,
    bias: Tensor,
}

impl Dense {
    fn load(vb: &VarBuilder, inputs: usize, outputs: usize) -> Result<Self> {
        Self::new(
            vb.get((outputs, inputs), "weight")?,
            vb.get(outputs, "bias")?,
        )
    }

    fn new(weight: Tensor, bias: Tensor) -> Result<Self> {
        Ok(Self {
            weight_t: weight.t()?.contiguous()?,
            bias,
        })
    }

    /// `x · Wᵀ + b`, then `f` in the same pass.
    fn forward(&self, x: &Tensor, f: Epilogue) -> Result<Tensor> {
        let y = x.matmul(&self.weight_t)?;
        y.inplace_op2(&self.bias, &f)?;
        Ok(y)
    }

    /// `x · Wᵀ + b + residual`, in one pass after the matmul.
    fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.weight_t)?;
        y.inplace_op3(&self.bias, residual, &AddResidual)?;
        Ok(y)
    }
}

impl Bert {
    /// Loads the weights (with or without a `bert.` prefix, as
    /// sentence-transformers and Hugging Face save them).
    pub fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        if config.hidden_act != HiddenAct::Gelu {
            candle_core::bail!(
                "hidden_act {:?}: only BERT models with GELU (erf) are supported",
                config.hidden_act
            );
        }
        let h = config.hidden_size;
        let heads = config.num_attention_heads;
        let head_dim = h / heads;
        let eps = config.layer_norm_eps;
        let e = vb.pp("embeddings");
        let scale = 1.0 / (head_dim as f64).sqrt();
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = vb.pp(format!("encoder.layer.{i}"));
                let a = l.pp("attention.self");
                let part = |name: &str| -> Result<(Tensor, Tensor)> {
                    Ok((
                        a.pp(name).get((h, h), "weight")?,
                        a.pp(name).get(h, "bias")?,
                    ))
                };
                let (qw, qb) = part("query")?;
                let (kw, kb) = part("key")?;
                let (vw, vb_) = part("value")?;
                let qkv = Dense::new(
                    Tensor::cat(&[(qw * scale)?, kw, vw], 0)?,
                    Tensor::cat(&[(qb * scale)?, kb, vb_], 0)?,
                )?;
                Ok(Layer {
                    qkv,
                    out: Dense::load(&l.pp("attention.output.dense"), h, h)?,
                    out_norm: layer_norm(h, eps, l.pp("attention.output.LayerNorm"))?,
                    up: Dense::load(&l.pp("intermediate.dense"), h, config.intermediate_size)?,
                    down: Dense::load(&l.pp("output.dense"), config.intermediate_size, h)?,
                    down_norm: layer_norm(h, eps, l.pp("output.LayerNorm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            word: embedding(config.vocab_size, h, e.pp("word_embeddings"))?,
            position: embedding(
                config.max_position_embeddings,
                h,
                e.pp("position_embeddings"),
            )?,
            token_type: embedding(config.type_vocab_size, h, e.pp("token_type_embeddings"))?,
            norm: layer_norm(h, eps, e.pp("LayerNorm"))?,
            layers,
            heads,
            head_dim,
        })
    }

    /// `ids`, `type_ids`: `[batch, tokens]` u32; `mask`: `[batch, tokens]` f32,
    /// 1 for a token and 0 for padding. Returns `[batch, tokens, hidden]`.
    pub fn forward(&self, ids: &Tensor, type_ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let positions = Tensor::arange(0u32, t as u32, ids.device())?;
        let x = (self.word.forward(ids)? + self.token_type.forward(type_ids)?)?
            .broadcast_add(&self.position.forward(&positions)?)?;
        let h = x.dim(D::Minus1)?;
        // Every dense layer runs over all the batch's token rows at once.
        let mut x = self.norm.forward(&x)?.reshape((b * t, h))?;
        let mask = mask.to_dtype(DType::F32)?.contiguous()?;
        for layer in &self.layers {
            x = self.layer(layer, &x, &mask, b, t)?;
        }
        x.reshape((b, t, h))
    }

    fn layer(&self, l: &Layer, x: &Tensor, mask: &Tensor, b: usize, t: usize) -> Result<Tensor> {
        let qkv = l.qkv.forward(x, Epilogue::Bias)?;
        let context = qkv.apply_op2_no_bwd(
            mask,
            &Attention {
                batch: b,
                tokens: t,
                heads: self.heads,
                head_dim: self.head_dim,
            },
        )?;
        let attended = l.out_norm.forward(&l.out.forward_residual(&context, x)?)?;
        let up = l.up.forward(&attended, Epilogue::BiasGelu)?;
        l.down_norm
            .forward(&l.down.forward_residual(&up, &attended)?)
    }
}

/// The contiguous f32 data of a layout, or an error naming the op.
fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((from, to))) => Ok(&v[from..to]),
        _ => candle_core::bail!("{op}: a contiguous f32 tensor is expected"),
    }
}

fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout, op: &str) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((from, to))) => Ok(&mut v[from..to]),
        _ => candle_core::bail!("{op}: a contiguous f32 tensor is expected"),
    }
}

/// Rows a parallel pass takes at a time: enough work to outweigh the
/// scheduling, few enough to keep both cores busy.
const ROWS_PER_TASK: usize = 64;

/// What follows a dense layer's matmul, in place on `[rows, n]` with the
/// bias `[n]`.
#[derive(Clone, Copy)]
enum Epilogue {
    Bias,
    BiasGelu,
}

impl InplaceOp2 for Epilogue {
    fn name(&self) -> &'static str {
        "bias-epilogue"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let bias = slice(s2, l2, self.name())?;
        let n = bias.len();
        let y = slice_mut(s1, l1, self.name())?;
        let gelu = matches!(self, Epilogue::BiasGelu);
        y.par_chunks_mut(n * ROWS_PER_TASK).for_each(|rows| {
            for row in rows.chunks_exact_mut(n) {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v += b;
                    if gelu {
                        *v = gelu_erf(*v);
                    }
                }
            }
        });
        Ok(())
    }
}

/// `y += bias + residual`, in place on `[rows, n]`.
struct AddResidual;

impl InplaceOp3 for AddResidual {
    fn name(&self) -> &'static str {
        "bias-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let bias = slice(s2, l2, self.name())?;
        let residual = slice(s3, l3, self.name())?;
        let n = bias.len();
        let y = slice_mut(s1, l1, self.name())?;
        if residual.len() != y.len() {
            candle_core::bail!("bias-residual: shapes differ");
        }
        y.par_chunks_mut(n * ROWS_PER_TASK)
            .zip(residual.par_chunks(n * ROWS_PER_TASK))
            .for_each(|(rows, res)| {
                for (row, r) in rows.chunks_exact_mut(n).zip(res.chunks_exact(n)) {
                    for ((v, b), r) in row.iter_mut().zip(bias).zip(r) {
                        *v += b + r;
                    }
                }
            });
        Ok(())
    }
}

/// Self-attention of every head of every sentence, from the Q, K and V
/// side by side in `[batch * tokens, 3 * hidden]` rows (Q already scaled) to
/// the context in `[batch * tokens, hidden]` rows, the layout the output
/// layer reads. One task a (sentence, head), spread over the cores: the
/// scores of its unpadded tokens (a matmul), the softmax in place, their
/// weighted sum of V (a matmul), written straight into the context rows.
/// candle's batched matmul ran these small products (K = 32) at a sixth of
/// the rate of the large ones, and the scores of the whole batch were a
/// `[batch, heads, tokens, tokens]` tensor, 100 MB for 32 x 256 tokens.
/// Padding takes no part: a padded query's row of the context is 0 (the
/// mean pooling ignores it), and no token attends to padding.
struct Attention {
    batch: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
}

/// A pointer the tasks write through, each into its own rows and columns.
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

impl CustomOp2 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let Attention {
            batch,
            tokens: t,
            heads,
            head_dim: hd,
        } = *self;
        let h = heads * hd;
        let qkv = slice(s1, l1, self.name())?;
        let mask = slice(s2, l2, self.name())?;
        if qkv.len() != batch * t * 3 * h || mask.len() != batch * t {
            candle_core::bail!("attention: qkv or mask of the wrong size");
        }
        let mut out = vec![0f32; batch * t * h];
        let dst = Out(out.as_mut_ptr());
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
            // (checked above), and `scores` is n x n.
            unsafe {
                gemm::gemm(
                    n,
                    n,
                    hd,
                    scores.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    q,
                    1,
                    stride,
                    // Kᵀ: element (i, j) is K[j][i].
                    k,
                    stride,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            for row in scores.chunks_exact_mut(n) {
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
            // SAFETY: this task's rows of `out` (sentence b, n of them) and
            // columns (head's hd), written by no other task.
            unsafe {
                gemm::gemm(
                    n,
                    hd,
                    n,
                    dst.at(b * t * h + head * hd),
                    1,
                    h as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    n as isize,
                    v,
                    1,
                    stride,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((batch * t, h))))
    }
}

/// GELU in its exact form, `x/2 · (1 + erf(x/√2))`.
fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf to within 1.5e-7, before f32's rounding (Abramowitz and Stegun 7.1.26).
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * (-a * a).exp();
    y.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(gelu_erf(0.0), 0.0);
        assert!((gelu_erf(1.0) - 0.841_344_7).abs() < 1e-6);
    }

    /// The fused attention against the plain tensor computation, with a
    /// padded sentence beside a full one.
    #[test]
    fn attention_is_softmax_of_the_scores_times_v_and_ignores_padding() {
        let dev = candle_core::Device::Cpu;
        let (b, t, heads, hd) = (2, 5, 3, 4);
        let h = heads * hd;
        let qkv = Tensor::randn(0f32, 1.0, (b * t, 3 * h), &dev).unwrap();
        let mask = Tensor::new(&[[1f32, 1., 1., 1., 1.], [1., 1., 1., 0., 0.]], &dev).unwrap();
        let got = qkv
            .apply_op2_no_bwd(
                &mask,
                &Attention {
                    batch: b,
                    tokens: t,
                    heads,
                    head_dim: hd,
                },
            )
            .unwrap()
            .reshape((b, t, h))
            .unwrap();
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
        let want = probs
            .matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, t, h))
            .unwrap();
        let got: Vec<Vec<Vec<f32>>> = got.to_vec3().unwrap();
        let want: Vec<Vec<Vec<f32>>> = want.to_vec3().unwrap();
        for (s, (g, w)) in got.iter().zip(&want).enumerate() {
            for (i, (gr, wr)) in g.iter().zip(w).enumerate() {
                if s == 1 && i >= 3 {
                    assert!(gr.iter().all(|&x| x == 0.0), "a padded query's row is 0");
                    continue;
                }
                for (x, y) in gr.iter().zip(wr) {
                    assert!(
                        (x - y).abs() < 1e-5,
                        "sentence {s} token {i}: {gr:?} {wr:?}"
                    );
                }
            }
        }
    }
}
