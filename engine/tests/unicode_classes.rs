//! The word splitter against Python's `re` over the whole code space: every code point Python's
//! Unicode database assigns must be `\w`, `\s` or punctuation exactly as Python says, and must
//! lowercase as `str.lower()` does. Code points unassigned in Python's (older) Unicode version are
//! skipped: they have no class there to compare with. Table: `fixtures/python_unicode_classes.json`,
//! written by `scripts/reference/metrics_reference.py`.

use engine::metrics::words::{char_class, CharClass};
use serde_json::Value;

fn ranges(v: &Value) -> Vec<(u32, u32)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_u64().unwrap() as u32, r[1].as_u64().unwrap() as u32))
        .collect()
}

fn in_ranges(r: &[(u32, u32)], cp: u32) -> bool {
    let i = r.partition_point(|(_, hi)| *hi < cp);
    r.get(i).is_some_and(|(lo, _)| *lo <= cp)
}

fn table() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/python_unicode_classes.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture exists"))
        .expect("fixture is JSON")
}

#[test]
fn every_assigned_code_point_has_pythons_class() {
    let t = table();
    let (word, space, unassigned) = (
        ranges(&t["word_ranges"]),
        ranges(&t["space_ranges"]),
        ranges(&t["unassigned_ranges"]),
    );
    let mut checked = 0usize;
    let mut wrong = Vec::new();
    for cp in 0..=0x10FFFFu32 {
        let Some(c) = char::from_u32(cp) else {
            continue;
        };
        if in_ranges(&unassigned, cp) {
            continue;
        }
        let want = if in_ranges(&word, cp) {
            CharClass::Word
        } else if in_ranges(&space, cp) {
            CharClass::Space
        } else {
            CharClass::Punctuation
        };
        checked += 1;
        let got = char_class(c);
        if got != want {
            wrong.push(format!("U+{cp:04X} {got:?} (Python {want:?})"));
        }
    }
    assert!(checked > 280_000, "{checked}");
    assert!(
        wrong.is_empty(),
        "{} differences, first: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(20)]
    );
}

#[test]
fn every_assigned_code_point_lowercases_like_python() {
    let t = table();
    let unassigned = ranges(&t["unassigned_ranges"]);
    let mut python: std::collections::HashMap<u32, String> = std::collections::HashMap::new();
    for e in t["lower"].as_array().unwrap() {
        let to: String = e[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| char::from_u32(x.as_u64().unwrap() as u32).unwrap())
            .collect();
        python.insert(e[0].as_u64().unwrap() as u32, to);
    }
    let mut wrong = Vec::new();
    for cp in 0..=0x10FFFFu32 {
        let Some(c) = char::from_u32(cp) else {
            continue;
        };
        if in_ranges(&unassigned, cp) {
            continue;
        }
        let want = python.get(&cp).cloned().unwrap_or_else(|| c.to_string());
        let got = c.to_string().to_lowercase();
        if got != want {
            wrong.push(format!("U+{cp:04X} {got:?} (Python {want:?})"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} differences, first: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(20)]
    );
}
