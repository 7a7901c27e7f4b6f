//! CHAIR on small synthetic COCO files (`tests/data/`), with every expected
//! number worked out by hand in the comments.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use damro_eval::Error;
use damro_eval::chair::{self, ChairEvaluator, GroundTruth, Mention, Synonyms};

fn evaluator() -> ChairEvaluator {
    ChairEvaluator::from_synonyms_file(&common::data("synonyms.txt")).unwrap()
}

fn ground_truth(ev: &ChairEvaluator) -> GroundTruth {
    GroundTruth::from_coco(
        ev,
        &[common::data("instances_synth.json")],
        &[common::data("captions_synth.json")],
        None,
    )
    .unwrap()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn mention(word: &str, object: &str) -> Mention {
    Mention {
        word: word.into(),
        object: object.into(),
    }
}

#[test]
fn synonyms_map_to_the_first_entry_and_are_trimmed() {
    let synonyms = Synonyms::read(&common::data("synonyms.txt")).unwrap();
    assert_eq!(synonyms.object_of("puppy"), Some("dog"));
    assert_eq!(synonyms.object_of("table"), Some("dining table"));
    // written after two spaces in the file; trimmed here (the standard script
    // keeps the leading space and never matches it)
    assert_eq!(synonyms.object_of("motor bike"), Some("motorcycle"));
    assert_eq!(synonyms.objects().len(), 15);
    // a later line wins for a repeated synonym
    let later = Synonyms::parse("a, x\nb, x\n");
    assert_eq!(later.object_of("x"), Some("b"));
}

#[test]
fn ground_truth_joins_instances_and_reference_captions() {
    let ev = evaluator();
    let gt = ground_truth(&ev);
    // image 1: instances person, person, dog, bicycle; captions add person
    // ("man", "children"), dog, bicycle ("bikes") -> {bicycle, dog, person}
    assert_eq!(gt.objects(1), Some(&set(&["bicycle", "dog", "person"])));
    // image 2: instances dining table, toilet; caption adds cat, chair, and
    // "table" -> dining table
    assert_eq!(
        gt.objects(2),
        Some(&set(&["cat", "chair", "dining table", "toilet"]))
    );
    // image 3: teddy bear (instance and caption); "bed" is no object here
    assert_eq!(gt.objects(3), Some(&set(&["teddy bear"])));
    // image 4: motorcycle; the caption's "scooter" is a motorcycle too
    assert_eq!(gt.objects(4), Some(&set(&["motorcycle"])));
    assert_eq!(gt.objects(5), None);
    // `only` keeps just the requested images, with the same objects
    let only = [2u64].into_iter().collect();
    let gt2 = GroundTruth::from_coco(
        &ev,
        &[common::data("instances_synth.json")],
        &[common::data("captions_synth.json")],
        Some(&only),
    )
    .unwrap();
    assert_eq!(gt2.objects(2), gt.objects(2));
    assert_eq!(gt2.objects(1), None);
}

#[test]
fn caption_words_follow_the_chair_rules() {
    let ev = evaluator();
    // plural -> singular, repeats counted
    let found = ev.caption_objects("Two Dogs and a dog.");
    assert_eq!(found.words, ["two", "dog", "and", "a", "dog", "."]);
    assert_eq!(
        found.mentions,
        [mention("dog", "dog"), mention("dog", "dog")]
    );
    // two-word objects are one word and hide their parts ("bear", "dog")
    let found = ev.caption_objects("teddy bears near a hot dog");
    assert_eq!(
        found.mentions,
        [
            mention("teddy bear", "teddy bear"),
            mention("hot dog", "hot dog")
        ]
    );
    // "baby X" is the animal, not a person; "passenger train" is not a person
    assert_eq!(
        ev.caption_objects("a baby dog").mentions,
        [mention("dog", "dog")]
    );
    assert!(ev.caption_objects("a passenger train").mentions.is_empty()); // train is not in this synonyms file
    // toilet and seat together: the seat is not a chair
    assert_eq!(
        ev.caption_objects("the seat of the toilet").mentions,
        [mention("toilet", "toilet")]
    );
    assert_eq!(
        ev.caption_objects("a seat").mentions,
        [mention("seat", "chair")]
    );
    // irregular plurals and vocabulary-checked suffix rules
    assert_eq!(
        ev.caption_objects("children").mentions,
        [mention("child", "person")]
    );
    assert_eq!(
        ev.caption_objects("women").mentions,
        [mention("woman", "person")]
    );
    assert_eq!(
        ev.caption_objects("knives").mentions,
        [mention("knife", "knife")]
    );
    assert_eq!(
        ev.caption_objects("buses").mentions,
        [mention("bus", "bus")]
    );
    assert_eq!(
        ev.caption_objects("skis").mentions,
        [mention("ski", "skis")]
    );
    assert_eq!(
        ev.caption_objects("a bus").mentions,
        [mention("bus", "bus")]
    );
    // hyphenated words stay whole, as with NLTK's tokenizer
    assert!(ev.caption_objects("a hot-dog stand").mentions.is_empty());
    // clitics split off: "dog's" -> "dog", "'s"
    assert_eq!(
        ev.caption_objects("the dog's ball").words,
        ["the", "dog", "'s", "ball"]
    );
}

#[test]
fn tokenizer_and_singulars() {
    use damro_eval::chair::words::{singularize, tokenize};
    assert_eq!(
        tokenize("don't stop... 3.5 m, ok!"),
        ["do", "n't", "stop", "...", "3.5", "m", ",", "ok", "!"]
    );
    let vocab = ["bus", "glass", "horse", "bench", "lady"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(singularize("buses", &vocab), "bus");
    assert_eq!(singularize("glasses", &vocab), "glass");
    assert_eq!(singularize("horses", &vocab), "horse");
    assert_eq!(singularize("benches", &vocab), "bench");
    assert_eq!(singularize("ladies", &vocab), "lady");
    assert_eq!(singularize("glass", &vocab), "glass");
    // outside the vocabulary: rule-based
    assert_eq!(singularize("boxes", &vocab), "box");
    assert_eq!(singularize("policemen", &vocab), "policeman");
    assert_eq!(singularize("is", &vocab), "is");
}

#[test]
fn scores_the_synthetic_captions() {
    let ev = evaluator();
    let gt = ground_truth(&ev);
    let captions = chair::read_captions(&common::data("captions_generated.jsonl")).unwrap();
    // lines 7 ("abc" id) and 8 (not JSON) are bad; 7 captions remain
    assert_eq!(captions.captions.len(), 7);
    assert_eq!(
        captions.bad.iter().map(|b| b.line).collect::<Vec<_>>(),
        [Some(7), Some(8)]
    );
    let report = chair::score(&ev, &gt, &captions);

    // c1 image 1 "A man and a woman walk two dogs past a cat."
    //    words: a man and a woman walk two dog past a cat .      -> 12
    //    mentions man(person) woman(person) dog cat               -> 4
    //    gt {bicycle, dog, person}: cat hallucinated              -> 1; recalled {person, dog} 2 / 3
    // c2 image 2 "A toilet seat and a wooden table, no chairs."
    //    words: a "toilet seat"->toilet and a wooden table , no chair .  -> 10
    //    mentions toilet, table(dining table), chair              -> 3, none hallucinated
    //    gt {cat, chair, dining table, toilet}: recalled 3 / 4
    // c3 image 2 "The seat of the toilet is up."
    //    words: the seat of the toilet is up .                    -> 8
    //    toilet + seat -> seat dropped; mentions toilet           -> 1, recalled 1 / 4
    // c4 image 3 "Two teddy bears and a hot dog on a bed."
    //    words: two "teddy bear" and a "hot dog" on a bed .      -> 9
    //    mentions teddy bear, hot dog; gt {teddy bear}: hot dog hallucinated -> 1; recalled 1 / 1
    // c5 image "4" "A motor bike and a hot-dog stand."
    //    words: a "motor bike" and a hot-dog stand .             -> 7
    //    mentions motor bike(motorcycle); "hot-dog" is no word of the list; recalled 1 / 1
    // c6 image 5 (no annotations) "A knife and a ball."
    //    words: a knife and a ball .                              -> 6
    //    mentions knife, ball(sports ball), both hallucinated     -> 2; gt 0
    // c7 image 1 (runner record) "A boy on a bike."
    //    words: a boy on a bike .                                 -> 6
    //    mentions boy(person), bike(bicycle), none hallucinated; recalled 2 / 3
    //
    // CHAIR_s = captions with a hallucination / captions = 3 (c1 c4 c6) / 7
    // CHAIR_i = hallucinated / mentions = (1+0+0+1+0+2+0) / (4+3+1+2+1+2+2) = 4 / 15
    // recall  = (2+3+1+1+1+0+2) / (3+4+4+1+1+0+3) = 10 / 16 = 0.625
    // avg_len = (12+10+8+9+7+6+6) / 7 = 58 / 7
    let c = report.counts;
    assert_eq!(c.captions, 7);
    assert_eq!(c.hallucinated_captions, 3);
    assert_eq!(c.mentions, 15);
    assert_eq!(c.hallucinated_mentions, 4);
    assert_eq!(c.recalled_objects, 10);
    assert_eq!(c.ground_truth_objects, 16);
    assert_eq!(c.words, 58);
    assert_eq!(c.captions_without_ground_truth, 1);
    assert_eq!(c.bad_captions, 2);
    let m = report.metrics;
    assert!((m.chair_s - 3.0 / 7.0).abs() < 1e-12, "{m:?}");
    assert!((m.chair_i - 4.0 / 15.0).abs() < 1e-12, "{m:?}");
    assert!((m.recall - 0.625).abs() < 1e-12, "{m:?}");
    assert!((m.avg_len - 58.0 / 7.0).abs() < 1e-12, "{m:?}");

    // per-caption details
    let d1 = &report.captions[0];
    assert_eq!(d1.image_id, 1);
    assert_eq!(
        d1.mentioned,
        [
            mention("man", "person"),
            mention("woman", "person"),
            mention("dog", "dog"),
            mention("cat", "cat")
        ]
    );
    assert_eq!(d1.hallucinated, [mention("cat", "cat")]);
    assert_eq!(d1.ground_truth, ["bicycle", "dog", "person"]);
    assert_eq!(d1.recalled, ["dog", "person"]);
    assert!(d1.chair_s);
    assert!((d1.chair_i - 0.25).abs() < 1e-12); // 1 / 4
    assert!((d1.recall - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(d1.len, 12);
    let d4 = &report.captions[3];
    assert_eq!(d4.hallucinated, [mention("hot dog", "hot dog")]);
    let d6 = &report.captions[5];
    assert!(d6.no_ground_truth);
    assert_eq!(d6.hallucinated.len(), 2);
    assert_eq!(d6.recall, 0.0); // 0 / 0 -> 0
    assert_eq!(report.captions[6].image_id, 1); // `question_id` read as the image id

    // where the numbers come from: 7 readable captions (lines 1-6 and 9),
    // 2 unreadable lines ("abc" and the non-JSON line); only line 9 has a
    // model id
    assert_eq!(report.info.model_ids, ["fake"]);
    assert_eq!(
        (report.info.scored_answers, report.info.unscored_answers),
        (7, 2)
    );
    let report = report.with_settings(damro_eval::RunSettings::new().with("mode", "damro"));

    // JSON round trip and the table
    let json = damro_eval::to_json_pretty(&report).unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["settings"]["mode"], "damro");
    assert_eq!(value["model_ids"][0], "fake");
    assert_eq!(value["unscored_answers"], 2);
    let back: chair::ChairReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back, report);
    assert!(report.to_string().contains("CHAIR_i"));
    assert!(report.to_string().contains("mode=damro"));
    let mut report = report;
    let details = report.take_details();
    assert_eq!(details.len(), 7);
    assert!(
        !to_json_pretty_contains(&report, "\"captions\": ["),
        "details left out of the summary JSON"
    );
}

fn to_json_pretty_contains(report: &chair::ChairReport, needle: &str) -> bool {
    damro_eval::to_json_pretty(report).unwrap().contains(needle)
}

#[test]
fn a_json_array_of_captions_reads_like_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("captions.json");
    std::fs::write(
        &path,
        r#"[{"image_id": 3, "caption": "a teddy bear"}, {"caption": "no id"}]"#,
    )
    .unwrap();
    let captions = chair::read_captions(&path).unwrap();
    assert_eq!(captions.captions.len(), 1);
    assert_eq!(captions.captions[0].image_id, 3);
    assert_eq!(captions.bad.len(), 1);
}

#[test]
fn a_category_missing_from_the_synonyms_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("instances.json");
    std::fs::write(
        &path,
        r#"{"annotations": [{"image_id": 1, "category_id": 1}], "categories": [{"id": 1, "name": "giraffe"}]}"#,
    )
    .unwrap();
    let err =
        GroundTruth::from_coco(&evaluator(), std::slice::from_ref(&path), &[], None).unwrap_err();
    assert!(
        matches!(err, Error::CategoryNotInSynonyms { ref name, .. } if name == "giraffe"),
        "{err}"
    );
    std::fs::write(
        &path,
        r#"{"annotations": [{"image_id": 1, "category_id": 2}], "categories": []}"#,
    )
    .unwrap();
    let err =
        GroundTruth::from_coco(&evaluator(), std::slice::from_ref(&path), &[], None).unwrap_err();
    assert!(
        matches!(err, Error::UnknownCategoryId { category_id: 2, .. }),
        "{err}"
    );
    std::fs::write(&path, "{ not json").unwrap();
    let err = GroundTruth::from_coco(&evaluator(), &[path], &[], None).unwrap_err();
    assert!(matches!(err, Error::Json { .. }), "{err}");
    let err = ChairEvaluator::from_synonyms_file(&dir.path().join("missing.txt")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

#[test]
fn coco_image_ids_from_file_names() {
    assert_eq!(
        chair::coco_image_id("COCO_val2014_000000397133.jpg"),
        Some(397133)
    );
    assert_eq!(chair::coco_image_id("val2014/000000000042.png"), Some(42));
    assert_eq!(chair::coco_image_id("cat.jpg"), None);
}
