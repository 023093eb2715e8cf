//! Files that hold several vCards (a phone's export, a user's merge): each card is a contact of
//! its own, so each is told apart on its own (a copy, another job's, the user's), and a write to
//! one card leaves every other card of its file byte for byte as it was.
//!
//! Ids: a file with one card is the contact `<stem>` (its file name without `.vcf`); the cards of
//! a file with several are `<stem>/1`, `<stem>/2`, … (a `/` is never in a file name, so the two
//! forms cannot meet). Etags: a one-card file's is the digest of the file; a card's in a file of
//! several is the digest of its own bytes, so a write to one card of a file does not change the
//! others'. A card is found for a write by its number and its etag, or else by its etag alone
//! (the numbers shift when a card before it leaves the file).
//!
//! This module must not do I/O: it reads and rewrites texts the backend hands it.

use std::ops::Range;

use crate::backend::Contact;
use crate::card;

/// Where a contact is: a file, and a card in it when the file holds several.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc<'a> {
    pub stem: &'a str,
    /// 1-based.
    pub part: Option<usize>,
}

impl<'a> Loc<'a> {
    /// Reads a contact id; `None` if it is not one this backend hands out.
    pub fn parse(id: &'a str) -> Option<Loc<'a>> {
        match id.split_once('/') {
            None => Some(Loc {
                stem: id,
                part: None,
            }),
            Some((stem, n)) => {
                let ok =
                    !n.is_empty() && !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit());
                let part = n.parse::<usize>().ok().filter(|_| ok)?;
                Some(Loc {
                    stem,
                    part: Some(part),
                })
            }
        }
    }
}

/// The contact id of card `n` (1-based) of a file of several.
pub fn part_id(stem: &str, n: usize) -> String {
    format!("{stem}/{n}")
}

/// A card file's text, split into its cards.
pub struct CardFile<'a> {
    pub text: &'a str,
    pub parts: Vec<Range<usize>>,
}

/// Which bytes of a file a write is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The whole file (a file of one card).
    Whole,
    /// One card of a file of several (or of a file left with one card and other text).
    Part(Range<usize>),
}

impl<'a> CardFile<'a> {
    pub fn new(text: &'a str) -> Self {
        CardFile {
            text,
            parts: card::split_cards(text),
        }
    }

    /// The contacts of the file, as a read hands them over.
    pub fn contacts(&self, stem: &str) -> Vec<Contact> {
        if self.parts.len() <= 1 {
            return vec![Contact {
                id: stem.to_string(),
                etag: card::hex_digest(self.text.as_bytes()),
                card: card::parse(self.text),
            }];
        }
        self.parts
            .iter()
            .enumerate()
            .map(|(i, r)| self.part_contact(stem, i + 1, r))
            .collect()
    }

    fn part_contact(&self, stem: &str, n: usize, r: &Range<usize>) -> Contact {
        let text = &self.text[r.clone()];
        Contact {
            id: part_id(stem, n),
            etag: card::hex_digest(text.as_bytes()),
            card: card::parse(text),
        }
    }

    /// The contact `loc` names, as it is now (for the trash, before a delete): a card by its
    /// number, even if the file now holds only that one.
    pub fn get(&self, loc: Loc<'_>, id: &str) -> Option<Contact> {
        match loc.part {
            None if self.parts.len() <= 1 => self.contacts(loc.stem).pop(),
            None => None,
            Some(n) => self.parts.get(n - 1).map(|r| {
                let mut c = self.part_contact(loc.stem, n, r);
                c.id = id.to_string();
                c
            }),
        }
    }

    /// The bytes a write to `loc`, read with `etag`, is about; `None` if nothing in the file
    /// has that etag any more (it changed since it was read).
    pub fn find(&self, loc: Loc<'_>, etag: &str) -> Option<Target> {
        let digest = |r: &Range<usize>| card::hex_digest(self.text[r.clone()].as_bytes());
        if card::hex_digest(self.text.as_bytes()) == etag && self.parts.len() <= 1 {
            return Some(Target::Whole);
        }
        if let Some(r) = loc.part.and_then(|n| self.parts.get(n - 1))
            && digest(r) == etag
        {
            return Some(Target::Part(r.clone()));
        }
        // Numbers shift when an earlier card leaves the file: a card is also found by its etag.
        self.parts
            .iter()
            .find(|r| digest(r) == etag)
            .map(|r| Target::Part(r.clone()))
    }

    /// The file's text with `range` replaced by `with`; `None` when no card would be left in it
    /// (the file goes).
    pub fn splice(&self, range: &Range<usize>, with: &str) -> Option<String> {
        let out = format!(
            "{}{with}{}",
            &self.text[..range.start],
            &self.text[range.end..]
        );
        let left = self.parts.len() - 1 + usize::from(!with.is_empty());
        (left > 0).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:A\r\nX-GSYNC:gSync1\r\nEND:VCARD\r\n";
    const B: &str = "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:B\r\nEND:VCARD\r\n";
    const C: &str = "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:C\r\nEND:VCARD\r\n";

    #[test]
    fn ids_of_files_and_cards_never_meet() {
        assert_eq!(
            Loc::parse("x"),
            Some(Loc {
                stem: "x",
                part: None
            })
        );
        assert_eq!(
            Loc::parse("x/2"),
            Some(Loc {
                stem: "x",
                part: Some(2)
            })
        );
        for bad in ["x/0", "x/02", "x/", "x/a", "x/1/2"] {
            assert_eq!(Loc::parse(bad), None, "{bad}");
        }
        assert_eq!(Loc::parse(&part_id("x", 3)).unwrap().part, Some(3));
    }

    #[test]
    fn a_file_of_one_card_is_one_contact_with_the_files_etag() {
        let f = CardFile::new(A);
        let c = f.contacts("a");
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].id.as_str(), c[0].etag.clone()),
            ("a", card::hex_digest(A.as_bytes()))
        );
        assert_eq!(
            f.find(Loc::parse("a").unwrap(), &c[0].etag),
            Some(Target::Whole)
        );
    }

    /// Each card of a file of several is a contact; writing one leaves the others byte for byte;
    /// a card is still found by its etag after an earlier one left the file.
    #[test]
    fn cards_of_one_file_are_contacts_of_their_own() {
        let text = format!("{A}{B}\r\n{C}");
        let f = CardFile::new(&text);
        let c = f.contacts("x");
        let ids: Vec<&str> = c.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["x/1", "x/2", "x/3"]);
        assert_eq!(c[1].etag, card::hex_digest(B.as_bytes()));
        assert!(c.iter().all(|c| c.card.is_ok()));
        // B leaves: A and C are byte for byte where they were.
        let Some(Target::Part(r)) = f.find(Loc::parse("x/2").unwrap(), &c[1].etag) else {
            panic!()
        };
        let left = f.splice(&r, "").unwrap();
        assert_eq!(left, format!("{A}\r\n{C}"));
        // C is now card 2, found by its etag under its old number.
        let g = CardFile::new(&left);
        let Some(Target::Part(r)) = g.find(Loc::parse("x/3").unwrap(), &c[2].etag) else {
            panic!()
        };
        assert_eq!(&left[r.clone()], C);
        assert_eq!(
            g.get(Loc::parse("x/2").unwrap(), "x/2").unwrap().etag,
            c[2].etag
        );
        // A changed etag is found nowhere.
        assert_eq!(g.find(Loc::parse("x/1").unwrap(), &c[1].etag), None);
        // Replacing a card keeps the file; removing the last one drops it.
        assert_eq!(g.splice(&r, B).unwrap(), format!("{A}\r\n{B}"));
        let one = CardFile::new(A);
        assert_eq!(one.splice(&(0..A.len()), ""), None);
    }
}
