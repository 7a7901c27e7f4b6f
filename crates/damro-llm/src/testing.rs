//! Random LLaMA checkpoints for tests and benchmarks.
//!
//! Writes a `model.safetensors` with the tensor names and shapes of a
//! [`LlamaConfig`], filled from a seeded normal distribution, so tests and
//! benches exercise the real loader (memory-mapped safetensors, key map,
//! shape checks). Nothing here is used when loading a user's checkpoint.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::{LlamaConfig, Result};

/// The tensors of a random LLaMA under `prefix` (e.g. `"language_model"`;
/// empty for none), as `(name, tensor)` in f32 on the CPU.
///
/// Linear weights have standard deviation `0.5 / sqrt(fan_in)`; norm
/// weights are `1 + N(0, 0.1)`, so activations stay in a realistic range.
pub fn random_llama_tensors(
    cfg: &LlamaConfig,
    prefix: &str,
    seed: i64,
) -> Result<Vec<(String, Tensor)>> {
    tch::manual_seed(seed);
    let opts = (Kind::Float, Device::Cpu);
    let name = |n: &str| {
        if prefix.is_empty() {
            n.to_string()
        } else {
            format!("{prefix}.{n}")
        }
    };
    let linear = |out: i64, inp: i64| {
        Tensor::f_randn([out, inp], opts)?.f_mul_scalar(0.5 / (inp as f64).sqrt())
    };
    let norm = |dim: i64| {
        Tensor::f_randn([dim], opts)?
            .f_mul_scalar(0.1)?
            .f_add_scalar(1.0)
    };
    let bias = |dim: i64| Tensor::f_randn([dim], opts)?.f_mul_scalar(0.02);
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let mut out = vec![(
        name("model.embed_tokens.weight"),
        Tensor::f_randn([cfg.vocab_size, h], opts)?,
    )];
    for l in 0..cfg.num_hidden_layers {
        let p = |n: &str| name(&format!("model.layers.{l}.{n}"));
        for (proj, o, inp) in [
            ("q_proj", q, h),
            ("k_proj", kv, h),
            ("v_proj", kv, h),
            ("o_proj", h, q),
        ] {
            out.push((p(&format!("self_attn.{proj}.weight")), linear(o, inp)?));
            if cfg.attention_bias {
                out.push((p(&format!("self_attn.{proj}.bias")), bias(o)?));
            }
        }
        for (proj, o, inp) in [("gate_proj", i, h), ("up_proj", i, h), ("down_proj", h, i)] {
            out.push((p(&format!("mlp.{proj}.weight")), linear(o, inp)?));
            if cfg.mlp_bias {
                out.push((p(&format!("mlp.{proj}.bias")), bias(o)?));
            }
        }
        out.push((p("input_layernorm.weight"), norm(h)?));
        out.push((p("post_attention_layernorm.weight"), norm(h)?));
    }
    out.push((name("model.norm.weight"), norm(h)?));
    if !cfg.tie_word_embeddings {
        out.push((name("lm_head.weight"), linear(cfg.vocab_size, h)?));
    }
    Ok(out)
}

/// Writes [`random_llama_tensors`] to `dir/model.safetensors` (creating
/// `dir`).
pub fn write_random_llama(dir: &Path, cfg: &LlamaConfig, prefix: &str, seed: i64) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| damro_nn::Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let tensors = random_llama_tensors(cfg, prefix, seed)?;
    Tensor::write_safetensors(&tensors, dir.join("model.safetensors"))?;
    Ok(())
}
