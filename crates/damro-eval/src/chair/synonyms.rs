//! The CHAIR object-synonyms file.
//!
//! Format (as the standard `synonyms.txt` of Rohrbach et al.): one line per
//! COCO object, synonyms separated by commas, the first being the canonical
//! COCO category name, e.g.
//!
//! ```text
//! dog, puppy, pup, doggie
//! dining table, table, desk
//! ```
//!
//! Every synonym, the canonical name included, maps to the canonical name.
//! If a synonym appears on several lines, the last line wins (as the
//! standard script's dict does). Blank lines are skipped.
//!
//! Deviation: entries are trimmed of surrounding whitespace. The standard
//! script splits on exactly `", "`, so an entry written after two spaces
//! (`"scooter,  motor bike"`, `"cake,  cheesecake"` in the standard file)
//! keeps a leading space there and can never match; here it matches.
//! Entries are *not* lower-cased, as in the standard script: an entry with
//! capitals (`iPhone`) never matches the lower-cased caption.

use std::collections::HashMap;
use std::path::Path;

use crate::{Error, Result, jsonl};

/// Synonym → canonical COCO object.
#[derive(Debug, Clone, Default)]
pub struct Synonyms {
    to_object: HashMap<String, String>,
    objects: Vec<String>,
}

impl Synonyms {
    /// Reads a synonyms file; fails if it cannot be read or has no entries.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = jsonl::read_file(path)?;
        let synonyms = Self::parse(&String::from_utf8_lossy(&bytes));
        if synonyms.objects.is_empty() {
            return Err(Error::EmptySynonyms {
                path: path.to_path_buf(),
            });
        }
        Ok(synonyms)
    }

    /// Parses the text of a synonyms file (see the module docs).
    pub fn parse(text: &str) -> Self {
        let mut synonyms = Self::default();
        for line in text.lines() {
            let mut entries = line.split(',').map(str::trim).filter(|s| !s.is_empty());
            let Some(object) = entries.next() else {
                continue;
            };
            if !synonyms.objects.iter().any(|o| o == object) {
                synonyms.objects.push(object.to_owned());
            }
            synonyms
                .to_object
                .insert(object.to_owned(), object.to_owned());
            for entry in entries {
                synonyms
                    .to_object
                    .insert(entry.to_owned(), object.to_owned());
            }
        }
        synonyms
    }

    /// The canonical object of a word or two-word phrase, if it is a synonym.
    pub fn object_of(&self, word: &str) -> Option<&str> {
        self.to_object.get(word).map(String::as_str)
    }

    /// The canonical objects, in file order.
    pub fn objects(&self) -> &[String] {
        &self.objects
    }

    /// Every synonym (canonical names included), in no particular order.
    pub fn words(&self) -> impl Iterator<Item = &str> {
        self.to_object.keys().map(String::as_str)
    }
}
