//! Property tests of the checkpoint readers on arbitrary input: no bytes
//! make the safetensors header reader or the shard-index parser panic, a
//! header they accept only names byte ranges inside the file, and the size
//! bounds of [`damro_nn::limits`] hold for every value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use damro_nn::checkpoint::parse_header;
use damro_nn::limits::SizeCheck;
use damro_nn::{Checkpoint, Error, KeyMap, ShardIndex};
use proptest::prelude::*;
use serde_json::{Value, json};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    }
}

const FILE: &str = "model.safetensors";

/// An accepted header's data starts inside the file and its shapes have a
/// representable element count.
fn header_is_sane(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok((start, infos)) = parse_header(Path::new(FILE), bytes) {
        prop_assert!(start <= bytes.len());
        for info in &infos {
            let elements = info.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            prop_assert!(
                elements.is_some(),
                "{} has an overflowing shape",
                info.disk_name
            );
        }
    }
    Ok(())
}

/// A file: 8-byte little-endian header length, the header, then `data`.
fn file_with(header: &[u8], claimed_len: Option<u64>, data: &[u8]) -> Vec<u8> {
    let len = claimed_len.unwrap_or(header.len() as u64);
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

/// One tensor entry of a header, with sizes and offsets that are often
/// wrong: huge dimensions, offsets past the data, reversed ranges.
fn tensor_entry() -> impl Strategy<Value = Value> {
    let dim = prop_oneof![0u64..8, Just(u64::MAX), Just(1u64 << 40), any::<u64>()];
    let dtype = prop::sample::select(vec!["F32", "F16", "BF16", "I64", "BOOL", "F8_E4M3", "XX"]);
    (dtype, prop::collection::vec(dim, 0..4), any::<u16>(), any::<u16>()).prop_map(
        |(dtype, shape, a, b)| {
            json!({"dtype": dtype, "shape": shape, "data_offsets": [u64::from(a), u64::from(b)]})
        },
    )
}

fn header() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::btree_map("[a-z.]{1,12}", tensor_entry(), 0..4).prop_map(|tensors| {
        let mut object: serde_json::Map<String, Value> = tensors.into_iter().collect();
        object.insert("__metadata__".into(), json!({"format": "pt"}));
        serde_json::to_vec(&Value::Object(object)).unwrap()
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_the_header_reader(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        header_is_sane(&bytes)?;
    }

    #[test]
    fn arbitrary_headers_never_panic_the_reader(
        header in header(),
        claimed in prop::option::of(prop_oneof![any::<u64>(), 0u64..512]),
        data in prop::collection::vec(any::<u8>(), 0..128),
    ) {
        header_is_sane(&file_with(&header, claimed, &data))?;
    }

    #[test]
    fn arbitrary_text_never_panics_the_index_parser(text in ".{0,200}") {
        let _ = ShardIndex::parse(Path::new("model.safetensors.index.json"), &text);
    }

    #[test]
    fn an_accepted_index_names_only_plain_shard_files(
        map in prop::collection::hash_map("[a-z.]{1,8}", "[a-z./\\\\]{0,12}", 0..6),
    ) {
        let text = json!({"metadata": {}, "weight_map": map}).to_string();
        match ShardIndex::parse(Path::new("index.json"), &text) {
            Ok(index) => {
                for shard in index.shards() {
                    prop_assert!(!shard.is_empty() && !shard.contains('/') && shard != "." && shard != "..");
                }
            }
            Err(e) => {
                let named = matches!(e, Error::BadShardName { .. });
                prop_assert!(named, "{}", e);
            }
        }
    }

    #[test]
    fn bounds_hold_for_every_value(value in any::<i64>(), max in 1i64..1_000_000) {
        let mut check = SizeCheck::new("config.json");
        let within = check.bounded("hidden_size", value, max);
        prop_assert_eq!(within, (1..=max).contains(&value));
        prop_assert_eq!(check.finish().is_ok(), within);
    }
}

/// A well-formed file: tensors of small shapes laid out back to back, with
/// the byte size of each dtype; returns the file and (name, shape) pairs.
fn well_formed() -> impl Strategy<Value = (Vec<u8>, Vec<(String, Vec<i64>)>)> {
    let dtype = prop::sample::select(vec![("F32", 4u64), ("F16", 2), ("BF16", 2), ("I64", 8)]);
    let tensor = (dtype, prop::collection::vec(0u64..4, 0..3));
    prop::collection::btree_map("[a-z]{1,6}", tensor, 1..4).prop_map(|tensors| {
        let mut header = serde_json::Map::new();
        let mut shapes = Vec::new();
        let mut offset = 0u64;
        for (name, ((dtype, size), shape)) in tensors {
            let end = offset + size * shape.iter().product::<u64>();
            header.insert(
                name.clone(),
                json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, end]}),
            );
            shapes.push((name, shape.iter().map(|&d| d as i64).collect()));
            offset = end;
        }
        let data: Vec<u8> = (0..offset).map(|i| i as u8).collect();
        (
            file_with(
                &serde_json::to_vec(&Value::Object(header)).unwrap(),
                None,
                &data,
            ),
            shapes,
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// A well-formed file opens and every tensor loads with its shape; the
    /// same file cut short anywhere in its data fails naming the file.
    #[test]
    fn well_formed_files_load_and_cut_ones_fail((file, shapes) in well_formed(), cut in 1usize..64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        std::fs::write(&path, &file).unwrap();
        let checkpoint = Checkpoint::open(dir.path(), &KeyMap::identity()).unwrap();
        for (name, shape) in &shapes {
            let tensor = checkpoint.load(name, Some(tch::Kind::Float), tch::Device::Cpu).unwrap();
            prop_assert_eq!(&tensor.size(), shape);
        }
        let data_len = checkpoint.total_bytes();
        if data_len > 0 {
            let keep = file.len() - cut.min(data_len);
            std::fs::write(&path, &file[..keep]).unwrap();
            let err = Checkpoint::open(dir.path(), &KeyMap::identity()).unwrap_err();
            prop_assert!(err.to_string().contains(FILE), "{}", err);
        }
    }

    /// Through the file system as a model directory holds them.
    #[test]
    fn arbitrary_weight_files_are_an_error_or_a_checkpoint(
        header in header(),
        data in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), file_with(&header, None, &data)).unwrap();
        match Checkpoint::open(dir.path(), &KeyMap::llava()) {
            Ok(checkpoint) => {
                prop_assert!(checkpoint.total_bytes() <= data.len());
                // Every tensor it accepted loads, or is refused by type.
                for (name, _) in checkpoint.tensors() {
                    if let Err(e) = checkpoint.load(name, None, tch::Device::Cpu) {
                        let typed = matches!(e, Error::WeightsMismatch { .. });
                        prop_assert!(typed, "{}", e);
                    }
                }
            }
            Err(e) => {
                let named = e.to_string().contains(FILE) || matches!(e, Error::DuplicateTensor { .. });
                prop_assert!(named, "{}", e);
            }
        }
    }
}
