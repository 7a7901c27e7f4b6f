//! The one place where checkpoint key layouts are reconciled.
//!
//! Checkpoints of the same model come with different tensor names: the
//! HuggingFace hub layout, what transformers 5 writes with `save_pretrained`,
//! and transformers 5's in-memory names. A [`KeyMap`] rewrites every name
//! found on disk into the canonical (hub) layout once, when a checkpoint is
//! opened, so model code only ever sees one layout.

/// Prefix rewrite rules, tried in order; the first rule whose prefix matches
/// a name rewrites it, names that match no rule are kept as they are.
#[derive(Debug, Clone, Default)]
pub struct KeyMap {
    rules: Vec<(&'static str, &'static str)>,
}

impl KeyMap {
    /// Names are used as they are on disk (InstructBLIP: hub and
    /// transformers 5 use the same names).
    pub fn identity() -> Self {
        Self::default()
    }

    /// LLaVA-1.5: maps the transformers 5 file and in-memory layouts onto the
    /// hub layout (`language_model.model.*`, `language_model.lm_head.*`,
    /// `vision_tower.vision_model.*`, `multi_modal_projector.*`).
    pub fn llava() -> Self {
        Self {
            rules: vec![
                // transformers 5 in-memory names
                ("model.language_model.", "language_model.model."),
                (
                    "model.vision_tower.vision_model.",
                    "vision_tower.vision_model.",
                ),
                ("model.vision_tower.", "vision_tower.vision_model."),
                ("model.multi_modal_projector.", "multi_modal_projector."),
                // LLaVA-NeXT's row separator, in memory under `model.`
                ("model.image_newline", "image_newline"),
                ("lm_head.", "language_model.lm_head."),
                // hub names stay as they are
                ("language_model.model.", "language_model.model."),
                ("language_model.lm_head.", "language_model.lm_head."),
                ("vision_tower.vision_model.", "vision_tower.vision_model."),
                // transformers 5 files: no `vision_model.` / `model.` segment
                ("language_model.", "language_model.model."),
                ("vision_tower.", "vision_tower.vision_model."),
            ],
        }
    }

    /// The canonical name of a name found on disk.
    pub fn canonical(&self, name: &str) -> String {
        for (from, to) in &self.rules {
            if let Some(rest) = name.strip_prefix(from) {
                return format!("{to}{rest}");
            }
        }
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llava_layouts_meet_in_the_hub_layout() {
        let map = KeyMap::llava();
        let cases = [
            (
                "language_model.model.layers.0.self_attn.q_proj.weight",
                "language_model.model.layers.0.self_attn.q_proj.weight",
            ),
            (
                "model.language_model.layers.0.self_attn.q_proj.weight",
                "language_model.model.layers.0.self_attn.q_proj.weight",
            ),
            ("lm_head.weight", "language_model.lm_head.weight"),
            ("model.image_newline", "image_newline"),
            ("image_newline", "image_newline"),
            (
                "language_model.lm_head.weight",
                "language_model.lm_head.weight",
            ),
            (
                "vision_tower.encoder.layers.1.mlp.fc1.bias",
                "vision_tower.vision_model.encoder.layers.1.mlp.fc1.bias",
            ),
            (
                "model.vision_tower.embeddings.class_embedding",
                "vision_tower.vision_model.embeddings.class_embedding",
            ),
            (
                "vision_tower.vision_model.pre_layrnorm.weight",
                "vision_tower.vision_model.pre_layrnorm.weight",
            ),
            (
                "model.multi_modal_projector.linear_1.weight",
                "multi_modal_projector.linear_1.weight",
            ),
        ];
        for (disk, hub) in cases {
            assert_eq!(map.canonical(disk), hub, "{disk}");
        }
    }

    #[test]
    fn identity_keeps_names() {
        assert_eq!(
            KeyMap::identity().canonical("vision_model.encoder.layers.0.self_attn.qkv.weight"),
            "vision_model.encoder.layers.0.self_attn.qkv.weight"
        );
    }
}
