//! The analysis reductions on small hand-made inputs, against values
//! worked out by hand: CHAIR word spans, sentences, the token marks at
//! sentence and object level, the per-group means of `H_i` and `F`, and
//! the records file (torn line, replaced records, inconsistent records).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::Write;

use damro_eval::analysis::marking::sentence_spans;
use damro_eval::analysis::{
    Aggregator, CaptionAnalysis, Group, Measures, RecordsFile, TokenRecord, mark_caption,
    read_records,
};
use damro_eval::chair::words::tokenize_spans;
use damro_eval::chair::{ChairEvaluator, Synonyms};

const SYNONYMS: &str = "person, man, people\ndog, puppy\ncat, kitten\nhot dog\n\
                        dining table, table\ntoilet\nchair, seat\n";

fn chair() -> ChairEvaluator {
    ChairEvaluator::new(Synonyms::parse(SYNONYMS))
}

fn truth(objects: &[&str]) -> BTreeSet<String> {
    objects.iter().map(|s| (*s).to_owned()).collect()
}

fn pieces(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn object_words_keep_their_place_in_the_caption() {
    let caption = "Two Men and a PUPPY eat hot dogs at the table.";
    let found: Vec<(String, String, &str)> = chair()
        .mention_spans(caption)
        .into_iter()
        .map(|m| (m.mention.word, m.mention.object, &caption[m.span]))
        .collect();
    let want = [
        ("man", "person", "Men"),
        ("puppy", "dog", "PUPPY"),
        ("hot dog", "hot dog", "hot dogs"),
        ("table", "dining table", "table"),
    ];
    let want: Vec<(String, String, &str)> = want
        .iter()
        .map(|(w, o, s)| ((*w).to_owned(), (*o).to_owned(), *s))
        .collect();
    assert_eq!(found, want);
    // The spans agree with the plain CHAIR words.
    let objects = chair().caption_objects(caption);
    assert_eq!(objects.mentions.len(), 4);
    // two, men, and, a, puppy, eat, "hot dog", at, the, table, "."
    assert_eq!(objects.words.len(), 11);
}

#[test]
fn spans_survive_lower_casing_that_changes_lengths() {
    // `İ` (2 bytes) lower-cases to `i̇` (3 bytes): later offsets shift.
    let caption = "İ saw a Dog and a toilet seat";
    let spans: Vec<&str> = chair()
        .mention_spans(caption)
        .into_iter()
        .map(|m| &caption[m.span])
        .collect();
    // `toilet seat` is one word (the toilet), not a chair.
    assert_eq!(spans, ["Dog", "toilet seat"]);
    let tokens = tokenize_spans("don't stop... 3.5 m");
    let shown: Vec<(&str, &str)> = tokens
        .iter()
        .map(|t| (t.text.as_str(), &"don't stop... 3.5 m"[t.span.clone()]))
        .collect();
    assert_eq!(
        shown,
        [
            ("do", "do"),
            ("n't", "n't"),
            ("stop", "stop"),
            ("...", "..."),
            ("3.5", "3.5"),
            ("m", "m")
        ]
    );
}

#[test]
fn sentences_end_at_stops_and_line_breaks() {
    let text = "A dog sits. It is 3.5 m long!\n\nA cat?";
    let found: Vec<&str> = sentence_spans(text).into_iter().map(|s| &text[s]).collect();
    assert_eq!(found, ["A dog sits.", " It is 3.5 m long!", "\n\nA cat?"]);
    let text = "One line\nsecond (\"quoted.\") end. ";
    let found: Vec<&str> = sentence_spans(text).into_iter().map(|s| &text[s]).collect();
    assert_eq!(found, ["One line\n", "second (\"quoted.\")", " end. "]);
    assert!(sentence_spans("  \n").is_empty());
}

/// Two sentences: the first mentions a hallucinated puppy (two tokens),
/// the second a cat that is in the image; a line break and an
/// end-of-sequence token add no visible text.
fn caption_pieces() -> Vec<String> {
    pieces(&[
        "Two", " men", " and", " a", " pupp", "y", ".", " The", " cat", " sleeps", ".", "\n", "",
    ])
}

#[test]
fn tokens_are_marked_at_both_levels() {
    let marks = mark_caption(&chair(), &truth(&["person", "cat"]), &caption_pieces());
    assert_eq!(marks.text, "Two men and a puppy. The cat sleeps.\n");
    let sentence: Vec<Option<usize>> = marks.tokens.iter().map(|t| t.sentence).collect();
    let s = |i| Some(i);
    assert_eq!(
        sentence,
        [
            s(0),
            s(0),
            s(0),
            s(0),
            s(0),
            s(0),
            s(0),
            s(1),
            s(1),
            s(1),
            s(1),
            None,
            None
        ]
    );
    let (ha, non) = (Some(Group::Hallucinatory), Some(Group::NonHallucinatory));
    let by_sentence: Vec<Option<Group>> = marks.tokens.iter().map(|t| t.sentence_group).collect();
    assert_eq!(
        by_sentence,
        [ha, ha, ha, ha, ha, ha, ha, non, non, non, non, None, None]
    );
    let by_object: Vec<Option<Group>> = marks.tokens.iter().map(|t| t.object_group).collect();
    assert_eq!(
        by_object,
        [
            None, non, None, None, ha, ha, None, None, non, None, None, None, None
        ]
    );
    let objects: Vec<(&str, bool, Vec<usize>)> = marks
        .objects
        .iter()
        .map(|o| (o.word.as_str(), o.hallucinated, o.tokens.clone()))
        .collect();
    assert_eq!(
        objects,
        [
            ("man", false, vec![1]),
            ("puppy", true, vec![4, 5]),
            ("cat", false, vec![8])
        ]
    );
}

fn overlap_tokens(pieces: &[String], h: &[[f64; 2]], f: &[f64]) -> Vec<TokenRecord> {
    pieces
        .iter()
        .zip(h.iter().zip(f))
        .map(|(p, (h, f))| TokenRecord::overlap(p.clone(), h.to_vec(), *f))
        .collect()
}

#[test]
fn means_per_level_and_group_by_hand() {
    let evaluator = chair();
    let first = caption_pieces();
    let h = [
        [1.0, 0.5],
        [0.0, 0.5],
        [1.0, 1.0],
        [0.0, 0.0],
        [1.0, 0.5],
        [0.0, 1.0],
        [1.0, 0.0],
        [0.0, 0.5],
        [1.0, 0.0],
        [0.0, 0.0],
        [1.0, 0.5],
        [1.0, 1.0],
        [0.0, 0.0],
    ];
    let f = [
        0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 0.05, 0.5, 0.0,
    ];
    let mut figures = Aggregator::new(2);
    let marks = mark_caption(&evaluator, &truth(&["person", "cat"]), &first);
    figures
        .add(&marks, &overlap_tokens(&first, &h, &f))
        .unwrap();
    // A second image without object words: all its tokens are non-HA.
    let second = pieces(&["Nothing", " here", "."]);
    let marks = mark_caption(&evaluator, &truth(&["dog"]), &second);
    let tokens = overlap_tokens(&second, &[[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]], &[0.3; 3]);
    figures.add(&marks, &tokens).unwrap();
    let s = figures.summary();
    assert_eq!(s.images, 2);
    // Sentence HA: tokens 0..=6 of the first caption.
    let sentence = &s.sentence.hallucinatory;
    assert_eq!(sentence.tokens, 7);
    assert_eq!(sentence.mean_h, [Some(4.0 / 7.0), Some(3.5 / 7.0)]);
    assert!((sentence.mean_f.unwrap() - 2.8 / 7.0).abs() < 1e-12);
    // Sentence non-HA: tokens 7..=10, then the second caption's three.
    let rest = &s.sentence.non_hallucinatory;
    assert_eq!(rest.tokens, 7);
    assert_eq!(rest.mean_h, [Some(3.0 / 7.0), Some(3.0 / 7.0)]);
    assert!((rest.mean_f.unwrap() - 3.65 / 7.0).abs() < 1e-12);
    // Object HA: " pupp", "y"; object non-HA: " men", " cat".
    assert_eq!(s.object.hallucinatory.mean_h, [Some(0.5), Some(0.75)]);
    assert!((s.object.hallucinatory.mean_f.unwrap() - 0.55).abs() < 1e-12);
    assert_eq!(s.object.non_hallucinatory.mean_h, [Some(0.5), Some(0.25)]);
    assert!((s.object.non_hallucinatory.mean_f.unwrap() - 0.55).abs() < 1e-12);

    let csv = s.figure4_csv();
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        rows[0],
        [
            "i",
            "sentence_hallucinatory",
            "sentence_non_hallucinatory",
            "object_hallucinatory",
            "object_non_hallucinatory"
        ]
    );
    let row = |i: usize| -> Vec<f64> { rows[i].iter().map(|v| v.parse().unwrap()).collect() };
    assert_eq!(row(1), [1.0, 4.0 / 7.0, 3.0 / 7.0, 0.5, 0.5]);
    assert_eq!(row(2), [2.0, 3.5 / 7.0, 3.0 / 7.0, 0.75, 0.25]);
    assert_eq!(rows.len(), 3);
    let table = s.figure5_markdown();
    assert!(table.contains("| sentence | 0.4000 (7 tokens) | 0.5214 (7 tokens) |"));
    assert!(table.contains("| object | 0.5500 (2 tokens) | 0.5500 (2 tokens) |"));
}

#[test]
fn groups_without_tokens_have_no_mean() {
    let marks = mark_caption(&chair(), &truth(&["dog"]), &pieces(&["A", " dog", "."]));
    let tokens = overlap_tokens(&pieces(&["A", " dog", "."]), &[[1.0, 1.0]; 3], &[0.5; 3]);
    let mut figures = Aggregator::new(2);
    figures.add(&marks, &tokens).unwrap();
    assert!(figures.add(&marks, &tokens[..2]).is_err());
    let s = figures.summary();
    assert_eq!(s.images, 1);
    assert_eq!(s.object.hallucinatory.tokens, 0);
    assert_eq!(s.object.hallucinatory.mean_h, [None, None]);
    assert_eq!(s.object.hallucinatory.mean_f, None);
    assert!(
        s.figure4_csv()
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("1,,1,,1")
    );
    assert!(
        s.figure5_markdown()
            .contains("| object | - (0 tokens) | 0.5000 (1 tokens) |")
    );
}

fn record(image_id: u64, caption: &str) -> CaptionAnalysis {
    let mut record = CaptionAnalysis::new(
        image_id,
        format!("COCO_val2014_{image_id:012}.jpg"),
        "What can you see in this image?".into(),
        Measures::Overlap,
    );
    record.caption = caption.into();
    record.push_token(
        7,
        TokenRecord::overlap(caption.into(), vec![1.0, 0.5], 0.25),
    );
    record
}

#[test]
fn records_file_cuts_a_torn_line_and_keeps_the_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.jsonl");
    let (mut file, torn) = RecordsFile::open(&path, true).unwrap();
    assert_eq!(torn, 0);
    file.append(&record(1, "first")).unwrap();
    file.append(&record(2, "other")).unwrap();
    file.append(&record(1, "again")).unwrap();
    drop(file);
    // An inconsistent record (two h lengths) and a torn write.
    let mut bad = record(3, "bad");
    bad.push_token(8, TokenRecord::overlap("x".into(), vec![1.0], 0.1));
    let mut raw = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    writeln!(raw, "{}", serde_json::to_string(&bad).unwrap()).unwrap();
    write!(raw, "{{\"image_id\": 4, \"capt").unwrap();
    drop(raw);

    let set = read_records(std::slice::from_ref(&path)).unwrap();
    let kept: Vec<(u64, &str)> = set
        .records
        .iter()
        .map(|r| (r.image_id, r.caption.as_str()))
        .collect();
    assert_eq!(kept, [(1, "again"), (2, "other")]);
    assert_eq!(set.replaced, 1);
    assert_eq!(set.bad.len(), 2);
    assert!(set.bad[0].detail.contains("token 1 has 1 `h` values"));
    assert_eq!(set.bad[1].line, Some(5));
    assert!(set.bad[1].detail.contains("torn"));

    let (_, torn) = RecordsFile::open(&path, true).unwrap();
    assert_eq!(torn, "{\"image_id\": 4, \"capt".len());
    assert_eq!(read_records(&[path]).unwrap().bad.len(), 1);
}
