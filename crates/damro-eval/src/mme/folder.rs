//! The original MME release's folder layout: one folder per sub-task,
//! named as the sub-task (`existence`, `OCR`, ...), in one of two forms:
//!
//! - `images/` with the image files and `questions_answers_YN/` with one
//!   `.txt` per image, named after the image's stem;
//! - the image files and their same-stem `.txt` files side by side.
//!
//! Each line of a `.txt` is `question<TAB>answer` (`image<TAB>question<TAB>answer`
//! is accepted too; the image is always the one named like the file). The
//! answer is `Yes` or `No`. A UTF-8 byte-order mark and `\r\n` line ends
//! are accepted.
//!
//! Folders, files and lines are read in byte order of their names, so
//! positions (and therefore shards) do not depend on the file system.
//! Folders that are not sub-tasks, `.txt` files without an image, and bad
//! lines are reported in [`MmeSet::bad`] (without a line number: the
//! detail names the file and line) and skipped.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::{MmeImage, MmeQuestion, MmeSet, MmeTask};
use crate::pope::Label;
use crate::{BadRecord, BadRecordKind, Error, Result};

/// File extensions taken for images (letter case ignored).
const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "gif", "webp"];

/// The sorted entries of a folder.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io("listing", dir, e))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::io("listing", dir, e))?;
    entries.sort();
    Ok(entries)
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(OsStr::to_str)
        .is_some_and(|ext| extensions.iter().any(|e| e.eq_ignore_ascii_case(ext)))
}

fn problem(kind: BadRecordKind, detail: String) -> BadRecord {
    BadRecord {
        line: None,
        id: None,
        kind,
        detail,
    }
}

/// Reads an MME release folder (see the module docs). Only a folder that
/// cannot be listed or a file that cannot be read is an error.
pub fn read_folder(root: &Path) -> Result<MmeSet> {
    let mut set = MmeSet::default();
    for dir in sorted_entries(root)? {
        if !dir.is_dir() {
            continue;
        }
        let name = dir.file_name().and_then(OsStr::to_str).unwrap_or_default();
        match MmeTask::from_name(name) {
            Some(task) => read_task(&dir, task, &mut set)?,
            None => set.bad.push(problem(
                BadRecordKind::UnknownCategory,
                format!("`{}` is not an MME sub-task folder; skipped", dir.display()),
            )),
        }
    }
    super::drop_duplicates(&mut set);
    Ok(set)
}

/// Reads one sub-task folder, in either form.
fn read_task(dir: &Path, task: MmeTask, set: &mut MmeSet) -> Result<()> {
    let paired = (dir.join("images"), dir.join("questions_answers_YN"));
    let (image_dir, text_dir) = if paired.0.is_dir() && paired.1.is_dir() {
        paired
    } else {
        (dir.to_path_buf(), dir.to_path_buf())
    };
    let images: Vec<PathBuf> = sorted_entries(&image_dir)?
        .into_iter()
        .filter(|p| p.is_file() && has_extension(p, &IMAGE_EXTENSIONS))
        .collect();
    for text in sorted_entries(&text_dir)? {
        if !text.is_file() || !has_extension(&text, &["txt"]) {
            continue;
        }
        let image = images.iter().find(|i| i.file_stem() == text.file_stem());
        let image_name = image.and_then(|i| i.file_name()).and_then(OsStr::to_str);
        match (image, image_name) {
            (Some(image), Some(name)) => read_text(&text, task, image, name, set)?,
            (Some(image), None) => set.bad.push(problem(
                BadRecordKind::MalformedLine,
                format!("`{}`: the image's name is not UTF-8", image.display()),
            )),
            (None, _) => set.bad.push(problem(
                BadRecordKind::MissingImage,
                format!(
                    "`{}` has no image of the same name in `{}`",
                    text.display(),
                    image_dir.display()
                ),
            )),
        }
    }
    Ok(())
}

/// Reads the question lines of one image's `.txt`.
fn read_text(
    text: &Path,
    task: MmeTask,
    image: &Path,
    image_name: &str,
    set: &mut MmeSet,
) -> Result<()> {
    let bytes = std::fs::read(text).map_err(|e| Error::io("reading", text, e))?;
    let Ok(content) = std::str::from_utf8(&bytes) else {
        set.bad.push(problem(
            BadRecordKind::MalformedLine,
            format!("`{}` is not UTF-8 text", text.display()),
        ));
        return Ok(());
    };
    let content = content.strip_prefix('\u{feff}').unwrap_or(content);
    for (index, line) in content.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |kind, what: String| {
            problem(
                kind,
                format!("`{}` line {}: {what}", text.display(), index + 1),
            )
        };
        let fields: Vec<&str> = line.split('\t').collect();
        let (question, answer) = match fields.as_slice() {
            [question, answer] | [_, question, answer] => (*question, *answer),
            _ => {
                set.bad.push(at(
                    BadRecordKind::MalformedLine,
                    format!(
                        "expected `question<TAB>answer`, found {} field(s)",
                        fields.len()
                    ),
                ));
                continue;
            }
        };
        let Some(label) = Label::parse_label(answer) else {
            set.bad.push(at(
                BadRecordKind::UnknownLabel,
                format!("answer {answer:?} is neither \"Yes\" nor \"No\""),
            ));
            continue;
        };
        set.questions.push(MmeQuestion {
            question_id: format!("{}/{image_name}", task.name()),
            task,
            image_name: image_name.to_owned(),
            image: MmeImage::File(image.to_path_buf()),
            question: question.to_owned(),
            answer: label,
            position: set.questions.len(),
        });
    }
    Ok(())
}
