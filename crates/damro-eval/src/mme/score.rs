//! The MME scorer, following MME's `eval_tool/calculation.py`.
//!
//! # Answer rule ([`parse_mme_answer`])
//! The output is lower-cased; it is **yes** or **no** when it is exactly
//! that; otherwise **yes** when its first 4 characters contain `yes`, else
//! **no** when they contain `no`, else **other**, which is always wrong.
//! Nothing is stripped: `"Yes."` is yes (`"yes."` contains `yes`), `"  yes"`
//! is other.
//!
//! # Scores
//! Per sub-task: accuracy = right answers / answered questions; accuracy+ =
//! images whose questions (two per image) are all right / images; score =
//! 100 · accuracy + 100 · accuracy+ (max 200). Perception is the sum over
//! the ten perception sub-tasks (max 2000), cognition over the four
//! cognition ones (max 800), and the hallucination subset over existence,
//! count, position and color (max 800). Sub-tasks absent from the input
//! are listed in [`MmeReport::missing_tasks`] and add nothing.
//!
//! # Deviations from `calculation.py`
//! - Answers are matched to questions by `question_id` *and* prompt (the
//!   two questions of an image share the id), not by line order; the first
//!   answer of a question counts, later ones are counted as duplicates.
//! - Unanswered questions are counted ([`MmeCounts::unanswered`]) and left
//!   out of accuracy; an image with an unanswered question is left out of
//!   accuracy+ ([`MmeCounts::incomplete_images`]). The script needs every
//!   answer.
//! - A ratio whose denominator is 0 is 0.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{MmeSet, MmeTask};
use crate::pope::{AnswerRecord, AnswerSet, Label};
use crate::{QuestionId, RunInfo, RunSettings};

/// What an MME output counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MmeAnswer {
    /// Yes.
    Yes,
    /// No.
    No,
    /// Neither: always wrong.
    Other,
}

/// The MME answer rule (see the module docs).
///
/// ```
/// use damro_eval::mme::{MmeAnswer, parse_mme_answer};
/// assert_eq!(parse_mme_answer("Yes, it is."), MmeAnswer::Yes);
/// assert_eq!(parse_mme_answer("Not really"), MmeAnswer::No); // "not " contains "no"
/// assert_eq!(parse_mme_answer("There is no cat"), MmeAnswer::Other); // "ther"
/// ```
pub fn parse_mme_answer(output: &str) -> MmeAnswer {
    let lower = output.to_lowercase();
    match lower.as_str() {
        "yes" => return MmeAnswer::Yes,
        "no" => return MmeAnswer::No,
        _ => {}
    }
    let prefix: String = lower.chars().take(4).collect();
    if prefix.contains("yes") {
        MmeAnswer::Yes
    } else if prefix.contains("no") {
        MmeAnswer::No
    } else {
        MmeAnswer::Other
    }
}

/// How one answered question came out.
#[derive(Clone, Copy)]
struct Outcome {
    right: bool,
    other: bool,
}

fn judge(output: &str, truth: Label) -> Outcome {
    let answer = parse_mme_answer(output);
    Outcome {
        right: matches!(
            (answer, truth),
            (MmeAnswer::Yes, Label::Yes) | (MmeAnswer::No, Label::No)
        ),
        other: answer == MmeAnswer::Other,
    }
}

/// One sub-task's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmeTaskScore {
    /// The sub-task.
    pub task: MmeTask,
    /// Answered questions.
    pub questions: usize,
    /// Right answers.
    pub correct: usize,
    /// Answers that are neither yes nor no.
    pub other: usize,
    /// Images whose questions are all answered.
    pub images: usize,
    /// Of those, images whose questions are all right.
    pub images_all_right: usize,
    /// correct / questions.
    pub accuracy: f64,
    /// images_all_right / images.
    pub accuracy_plus: f64,
    /// 100 · accuracy + 100 · accuracy+.
    pub score: f64,
}

/// What was left out of the scores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmeCounts {
    /// Questions without an answer.
    pub unanswered: usize,
    /// Images with an unanswered question (left out of accuracy+).
    pub incomplete_images: usize,
    /// Answers that match no question.
    pub unmatched_answers: usize,
    /// Further answers to an already answered question.
    pub duplicate_answers: usize,
    /// Answer lines that did not parse.
    pub malformed_answers: usize,
    /// Answer records without a usable `gt_answer` or `category` (only
    /// when scoring answers on their own, [`score_answers`]).
    pub answers_without_truth: usize,
    /// Unusable question records of the input.
    pub bad_questions: usize,
}

/// The MME result. Serialises to the metrics JSON; `Display` is the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmeReport {
    /// Settings, model ids, scored and unscored answers.
    #[serde(flatten)]
    pub info: RunInfo,
    /// One entry per sub-task present, in MME order.
    pub tasks: Vec<MmeTaskScore>,
    /// Sum of the perception sub-task scores present (max 2000).
    pub perception: f64,
    /// Sum of the cognition sub-task scores present (max 800).
    pub cognition: f64,
    /// Existence + count + position + color (max 800).
    pub hallucination: f64,
    /// Sub-tasks with no scored question.
    pub missing_tasks: Vec<MmeTask>,
    /// What was left out.
    pub counts: MmeCounts,
}

impl MmeReport {
    /// The report with the caller's run settings recorded.
    pub fn with_settings(mut self, settings: RunSettings) -> Self {
        self.info.settings = settings;
        self
    }

    /// Whether no answer was scored (see [`RunInfo::nothing_scored`]).
    pub fn nothing_scored(&self) -> bool {
        self.info.nothing_scored()
    }

    /// The score of one sub-task, if present.
    pub fn task(&self, task: MmeTask) -> Option<&MmeTaskScore> {
        self.tasks.iter().find(|t| t.task == task)
    }
}

/// Per image: how each question came out (`None`: unanswered).
type Images<'a> = BTreeMap<(MmeTask, &'a str), Vec<Option<Outcome>>>;

/// The first answer of each (id, prompt), and the number of later ones.
fn first_answers(answers: &AnswerSet) -> (HashMap<(&QuestionId, &str), &AnswerRecord>, usize) {
    let mut first = HashMap::with_capacity(answers.answers.len());
    let mut duplicates = 0;
    for (_, record) in &answers.answers {
        match first.entry((&record.question_id, record.prompt.as_str())) {
            std::collections::hash_map::Entry::Occupied(_) => duplicates += 1,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(record);
            }
        }
    }
    (first, duplicates)
}

/// Scores answers against the questions of `set`, matching them by
/// `question_id` and prompt (see the module docs).
pub fn score(set: &MmeSet, answers: &AnswerSet) -> MmeReport {
    let (first, duplicates) = first_answers(answers);
    let ids: Vec<QuestionId> = set
        .questions
        .iter()
        .map(|q| QuestionId::Text(q.question_id.clone()))
        .collect();
    let mut images: Images<'_> = BTreeMap::new();
    let mut counts = MmeCounts {
        duplicate_answers: duplicates,
        malformed_answers: answers.bad.len(),
        bad_questions: set.bad.len(),
        ..MmeCounts::default()
    };
    let mut matched = 0;
    for (question, id) in set.questions.iter().zip(&ids) {
        let right = first
            .get(&(id, question.question.as_str()))
            .map(|record| judge(&record.output, question.answer));
        matched += usize::from(right.is_some());
        counts.unanswered += usize::from(right.is_none());
        images
            .entry((question.task, question.question_id.as_str()))
            .or_default()
            .push(right);
    }
    counts.unmatched_answers = first.len() - matched;
    let model_ids = answers.answers.iter().map(|(_, r)| r.model_id.as_str());
    finish(&images, counts, model_ids)
}

/// Scores an answers file on its own, with the ground truth and sub-task
/// its records carry (`gt_answer`, `category`, as the authors' files do).
/// Records without them are counted in [`MmeCounts::answers_without_truth`].
pub fn score_answers(answers: &AnswerSet) -> MmeReport {
    let (first, duplicates) = first_answers(answers);
    let mut images: Images<'_> = BTreeMap::new();
    let mut counts = MmeCounts {
        duplicate_answers: duplicates,
        malformed_answers: answers.bad.len(),
        ..MmeCounts::default()
    };
    let mut ordered: Vec<&AnswerRecord> = first.values().copied().collect();
    ordered.sort_by(|a, b| (&a.question_id, &a.prompt).cmp(&(&b.question_id, &b.prompt)));
    for record in ordered {
        let task = record.category.as_deref().and_then(MmeTask::from_name);
        let truth = record.gt_answer.as_deref().and_then(Label::parse_label);
        let (Some(task), Some(truth), QuestionId::Text(id)) = (task, truth, &record.question_id)
        else {
            counts.answers_without_truth += 1;
            continue;
        };
        images
            .entry((task, id.as_str()))
            .or_default()
            .push(Some(judge(&record.output, truth)));
    }
    let model_ids = answers.answers.iter().map(|(_, r)| r.model_id.as_str());
    finish(&images, counts, model_ids)
}

/// Per-task scores, totals and the report from per-image results.
fn finish<'a>(
    images: &Images<'_>,
    mut counts: MmeCounts,
    model_ids: impl IntoIterator<Item = &'a str>,
) -> MmeReport {
    let mut tasks = Vec::new();
    for task in MmeTask::all() {
        let mut s = MmeTaskScore {
            task,
            questions: 0,
            correct: 0,
            other: 0,
            images: 0,
            images_all_right: 0,
            accuracy: 0.0,
            accuracy_plus: 0.0,
            score: 0.0,
        };
        for (_, results) in images.iter().filter(|((t, _), _)| *t == task) {
            let answered: Vec<Outcome> = results.iter().flatten().copied().collect();
            s.questions += answered.len();
            s.correct += answered.iter().filter(|o| o.right).count();
            s.other += answered.iter().filter(|o| o.other).count();
            if answered.len() < results.len() {
                counts.incomplete_images += 1;
            } else if !answered.is_empty() {
                s.images += 1;
                s.images_all_right += usize::from(answered.iter().all(|o| o.right));
            }
        }
        if s.questions == 0 {
            continue;
        }
        s.accuracy = s.correct as f64 / s.questions as f64;
        s.accuracy_plus = if s.images == 0 {
            0.0
        } else {
            s.images_all_right as f64 / s.images as f64
        };
        s.score = 100.0 * s.accuracy + 100.0 * s.accuracy_plus;
        tasks.push(s);
    }
    let sum = |set: &[MmeTask]| -> f64 {
        tasks
            .iter()
            .filter(|t| set.contains(&t.task))
            .map(|t| t.score)
            .sum()
    };
    let scored: usize = tasks.iter().map(|t| t.questions).sum();
    let unscored = counts.unmatched_answers
        + counts.duplicate_answers
        + counts.malformed_answers
        + counts.answers_without_truth;
    MmeReport {
        info: RunInfo::new(model_ids, scored, unscored),
        perception: sum(&MmeTask::PERCEPTION),
        cognition: sum(&MmeTask::COGNITION),
        hallucination: sum(&MmeTask::HALLUCINATION),
        missing_tasks: MmeTask::all()
            .filter(|t| !tasks.iter().any(|s| s.task == *t))
            .collect(),
        tasks,
        counts,
    }
}

impl fmt::Display for MmeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "MME")?;
        let info = self.info.describe();
        if !info.is_empty() {
            writeln!(f, "  {info}")?;
        }
        writeln!(
            f,
            "  {:<22} {:>7} {:>7} {:>7} {:>9}",
            "sub-task", "acc", "acc+", "score", "right"
        )?;
        for t in &self.tasks {
            writeln!(
                f,
                "  {:<22} {:>7.2} {:>7.2} {:>7.2} {:>9}",
                t.task.name(),
                100.0 * t.accuracy,
                100.0 * t.accuracy_plus,
                t.score,
                format!("{}/{}", t.correct, t.questions)
            )?;
        }
        writeln!(
            f,
            "  perception total       {:>8.2} / 2000",
            self.perception
        )?;
        writeln!(f, "  cognition total        {:>8.2} / 800", self.cognition)?;
        writeln!(
            f,
            "  hallucination subset   {:>8.2} / 800",
            self.hallucination
        )?;
        if !self.missing_tasks.is_empty() {
            let names: Vec<&str> = self.missing_tasks.iter().map(|t| t.name()).collect();
            writeln!(f, "  missing sub-tasks: {}", names.join(", "))?;
        }
        let c = &self.counts;
        write!(
            f,
            "  unanswered {}, incomplete images {}, unmatched {}, duplicate {}, malformed {}, without truth {}, bad questions {}",
            c.unanswered,
            c.incomplete_images,
            c.unmatched_answers,
            c.duplicate_answers,
            c.malformed_answers,
            c.answers_without_truth,
            c.bad_questions
        )
    }
}
