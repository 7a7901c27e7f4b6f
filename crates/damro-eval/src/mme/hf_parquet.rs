//! The parquet shards of the HF dataset `lmms-lab/MME`: columns
//! `question_id` (`category/image`), `image` (a struct of `bytes` and
//! `path`, as HF `datasets` stores images), `question`, `answer` (`Yes` /
//! `No`) and `category`. Other columns are ignored.
//!
//! Read with the `parquet` crate's row API, built with snappy support only
//! (what `datasets` and pyarrow write by default); a shard compressed
//! otherwise is refused with an error that names the codec. Rows are
//! numbered across the shards in the order given, and that number (1-based
//! in [`BadRecord::line`], 0-based in [`MmeQuestion::position`]) places a
//! row in a shard of a sharded run.

use std::fs::File;
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};

use super::{MmeImage, MmeQuestion, MmeSet, MmeTask, safe_file_name};
use crate::pope::Label;
use crate::{BadRecord, BadRecordKind, Error, QuestionId, Result};

/// The columns a shard must have.
const COLUMNS: [&str; 5] = ["question_id", "image", "question", "answer", "category"];

fn parquet_error(path: &Path, source: parquet::errors::ParquetError) -> Error {
    Error::Parquet {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the questions of `lmms-lab/MME` parquet shards, in the order
/// given (see the module docs). A file that cannot be opened or decoded,
/// or that lacks one of the columns, is an error; a row with a missing
/// or unusable field is a [`BadRecord`].
pub fn read_parquet(paths: &[PathBuf]) -> Result<MmeSet> {
    let mut set = MmeSet::default();
    let mut row_number = 0usize;
    for path in paths {
        let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
        let reader = SerializedFileReader::new(file).map_err(|e| parquet_error(path, e))?;
        let schema = reader.metadata().file_metadata().schema_descr();
        let names: Vec<&str> = schema
            .root_schema()
            .get_fields()
            .iter()
            .map(|f| f.name())
            .collect();
        if let Some(missing) = COLUMNS.iter().find(|c| !names.contains(c)) {
            return Err(Error::MmeInput {
                path: path.clone(),
                reason: format!(
                    "no `{missing}` column (found: {}); expected the columns of lmms-lab/MME",
                    names.join(", ")
                ),
            });
        }
        for row in reader {
            let row = row.map_err(|e| parquet_error(path, e))?;
            match question_from_row(&row, row_number) {
                Ok(question) => set.questions.push(question),
                Err((id, kind, detail)) => set.bad.push(BadRecord {
                    line: Some(row_number + 1),
                    id,
                    kind,
                    detail: format!("`{}` row {}: {detail}", path.display(), row_number + 1),
                }),
            }
            row_number += 1;
        }
    }
    super::drop_duplicates(&mut set);
    Ok(set)
}

type RowProblem = (Option<QuestionId>, BadRecordKind, String);

/// A field's kind, in words, for messages.
fn kind_of(field: &Field) -> &'static str {
    match field {
        Field::Null => "null",
        Field::Bool(_) => "boolean",
        Field::Str(_) => "string",
        Field::Bytes(_) => "binary value",
        Field::Group(_) => "struct",
        Field::ListInternal(_) => "list",
        Field::MapInternal(_) => "map",
        _ => "number or date",
    }
}

/// A string column's value.
fn text<'a>(row: &'a Row, column: &str) -> std::result::Result<&'a str, String> {
    match row
        .get_column_iter()
        .find(|(name, _)| name.as_str() == column)
    {
        Some((_, Field::Str(value))) => Ok(value),
        Some((_, Field::Null)) | None => Err(format!("`{column}` is null")),
        Some((_, other)) => Err(format!("`{column}` is a {}, not a string", kind_of(other))),
    }
}

/// The image column: `bytes` (required) and `path` (optional).
fn image(row: &Row) -> std::result::Result<(Vec<u8>, Option<String>), String> {
    let group = match row
        .get_column_iter()
        .find(|(name, _)| name.as_str() == "image")
    {
        Some((_, Field::Group(group))) => group,
        Some((_, Field::Bytes(bytes))) => return Ok((bytes.data().to_vec(), None)),
        Some((_, Field::Null)) | None => return Err("`image` is null".into()),
        Some((_, other)) => {
            return Err(format!(
                "`image` is a {}, not a struct of `bytes` and `path`",
                kind_of(other)
            ));
        }
    };
    let mut bytes = None;
    let mut path = None;
    for (name, field) in group.get_column_iter() {
        match (name.as_str(), field) {
            ("bytes", Field::Bytes(data)) => bytes = Some(data.data().to_vec()),
            ("path", Field::Str(value)) => path = Some(value.clone()),
            _ => {}
        }
    }
    let bytes =
        bytes.ok_or("`image.bytes` is null (images stored by path only are not supported)")?;
    Ok((bytes, path))
}

/// One row as a question, or what is wrong with it.
fn question_from_row(row: &Row, position: usize) -> std::result::Result<MmeQuestion, RowProblem> {
    let malformed =
        |id: Option<QuestionId>, detail: String| (id, BadRecordKind::MalformedLine, detail);
    let question_id = text(row, "question_id").map_err(|d| malformed(None, d))?;
    let id = Some(QuestionId::Text(question_id.to_owned()));
    let category = text(row, "category").map_err(|d| malformed(id.clone(), d))?;
    let task = MmeTask::from_name(category).ok_or_else(|| {
        (
            id.clone(),
            BadRecordKind::UnknownCategory,
            format!("category {category:?} is not an MME sub-task"),
        )
    })?;
    let question = text(row, "question").map_err(|d| malformed(id.clone(), d))?;
    let answer = text(row, "answer").map_err(|d| malformed(id.clone(), d))?;
    let label = Label::parse_label(answer).ok_or_else(|| {
        (
            id.clone(),
            BadRecordKind::UnknownLabel,
            format!("answer {answer:?} is neither \"Yes\" nor \"No\""),
        )
    })?;
    let (bytes, path) = image(row).map_err(|d| malformed(id.clone(), d))?;
    let image_name = safe_file_name(question_id)
        .filter(|_| question_id.contains('/'))
        .or_else(|| path.as_deref().and_then(safe_file_name))
        .ok_or_else(|| {
            malformed(
                id.clone(),
                "no image name in `question_id` (`category/image`) or `image.path`".into(),
            )
        })?;
    Ok(MmeQuestion {
        question_id: question_id.to_owned(),
        task,
        image_name: image_name.to_owned(),
        image: MmeImage::Bytes(bytes),
        question: question.to_owned(),
        answer: label,
        position,
    })
}
