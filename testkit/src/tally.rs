//! What a fault test counts against what reached the queue or the worker:
//! the figures every fault test prints, computed one way.

use std::collections::BTreeMap;

/// The promise, counted. `accepted` are the 202s; `processed` the distinct
/// ids seen (in the queue or by the worker); `lost` accepted ids never seen;
/// `false_503s` refusals whose job was seen anyway; `unknown` the `504
/// outcome_unknown` answers, of which `unknown_queued` were seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Answers of 202.
    pub accepted: usize,
    /// Distinct ids seen.
    pub processed: usize,
    /// Accepted ids never seen.
    pub lost: usize,
    /// Extra sightings of ids seen more than once.
    pub duplicated: usize,
    /// 503s whose job was seen anyway.
    pub false_503s: usize,
    /// Answers of 504.
    pub unknown: usize,
    /// 504s whose job was seen.
    pub unknown_queued: usize,
}

impl Tally {
    /// Counts `answers` (id, status) against `seen` (how many times each id
    /// reached the queue or the worker).
    pub fn of<'a>(
        answers: impl IntoIterator<Item = (&'a str, u16)>,
        seen: &BTreeMap<String, usize>,
    ) -> Self {
        let mut tally = Self {
            accepted: 0,
            processed: seen.len(),
            lost: 0,
            duplicated: seen.values().map(|n| n.saturating_sub(1)).sum(),
            false_503s: 0,
            unknown: 0,
            unknown_queued: 0,
        };
        for (id, status) in answers {
            let was_seen = seen.contains_key(id);
            match status {
                202 => {
                    tally.accepted += 1;
                    tally.lost += usize::from(!was_seen);
                }
                503 => tally.false_503s += usize::from(was_seen),
                504 => {
                    tally.unknown += 1;
                    tally.unknown_queued += usize::from(was_seen);
                }
                _ => {}
            }
        }
        tally
    }

    /// How many times each id occurs in `ids` (a queue's contents, say).
    pub fn sightings(ids: &[String]) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for id in ids {
            *seen.entry(id.clone()).or_default() += 1;
        }
        seen
    }

    /// The figures, as one line's worth of text.
    pub fn summary(&self) -> String {
        format!(
            "accepted {}, processed {}, lost {}, duplicated {}, false 503s {}, \
             outcome unknown {} (of which queued {})",
            self.accepted,
            self.processed,
            self.lost,
            self.duplicated,
            self.false_503s,
            self.unknown,
            self.unknown_queued
        )
    }

    /// Nothing accepted lost, and no refusal false.
    pub fn assert_honest(&self) {
        assert_eq!(self.lost, 0, "accepted jobs never seen");
        assert_eq!(self.false_503s, 0, "a 503 whose job was queued anyway");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_answer_is_held_against_what_was_seen() {
        let seen = Tally::sightings(&["a".into(), "b".into(), "b".into(), "u".into()]);
        let answers = [
            ("a", 202),
            ("lost", 202),
            ("b", 503),
            ("no", 503),
            ("u", 504),
            ("v", 504),
        ];
        let tally = Tally::of(answers, &seen);
        assert_eq!(
            tally,
            Tally {
                accepted: 2,
                processed: 3,
                lost: 1,
                duplicated: 1,
                false_503s: 1,
                unknown: 2,
                unknown_queued: 1,
            }
        );
    }
}
