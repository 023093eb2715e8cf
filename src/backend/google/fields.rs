//! The Person fields groupsync copies, the vCard properties that carry them, and the names a
//! job's `fields` may use for them (People field names, or vCard names such as `TEL`). A leaf:
//! it imports nothing, so the card module and the job files can use these tables without
//! depending on the Google backend.

/// The card property that carries a contact's photo: the source's photo URL (on a copy: the
/// source photo it was given, read from its `gSyncPhoto` clientData, while it still has it).
pub const PHOTO_PROPERTY: &str = "X-GOOGLE-PHOTOS";

/// Person fields copied from source to destination: every field `updatePersonFields` accepts
/// except `clientData` (other apps' data, and the tag) and `memberships` (groups are per user).
pub const COPIED_FIELDS: &[&str] = &[
    "names",
    "nicknames",
    "emailAddresses",
    "phoneNumbers",
    "addresses",
    "organizations",
    "birthdays",
    "events",
    "relations",
    "urls",
    "biographies",
    "calendarUrls",
    "externalIds",
    "genders",
    "imClients",
    "interests",
    "locales",
    "locations",
    "miscKeywords",
    "occupations",
    "sipAddresses",
    "userDefined",
];

/// The vCard property of each copied field (`property_of`), in the order of `COPIED_FIELDS`.
pub(super) const COPIED_PROPERTIES: &[&str] = &[
    "X-GOOGLE-NAMES",
    "X-GOOGLE-NICKNAMES",
    "X-GOOGLE-EMAILADDRESSES",
    "X-GOOGLE-PHONENUMBERS",
    "X-GOOGLE-ADDRESSES",
    "X-GOOGLE-ORGANIZATIONS",
    "X-GOOGLE-BIRTHDAYS",
    "X-GOOGLE-EVENTS",
    "X-GOOGLE-RELATIONS",
    "X-GOOGLE-URLS",
    "X-GOOGLE-BIOGRAPHIES",
    "X-GOOGLE-CALENDARURLS",
    "X-GOOGLE-EXTERNALIDS",
    "X-GOOGLE-GENDERS",
    "X-GOOGLE-IMCLIENTS",
    "X-GOOGLE-INTERESTS",
    "X-GOOGLE-LOCALES",
    "X-GOOGLE-LOCATIONS",
    "X-GOOGLE-MISCKEYWORDS",
    "X-GOOGLE-OCCUPATIONS",
    "X-GOOGLE-SIPADDRESSES",
    "X-GOOGLE-USERDEFINED",
];

/// The vCard property name that carries a Person field.
pub fn property_of(field: &str) -> String {
    format!("X-GOOGLE-{}", field.to_ascii_uppercase())
}

/// Plain vCard names an administrator may use in a job's `fields`, and the Person fields they
/// stand for.
const ALIASES: &[(&str, &str)] = &[
    ("FN", "names"),
    ("N", "names"),
    ("EMAIL", "emailAddresses"),
    ("TEL", "phoneNumbers"),
    ("ADR", "addresses"),
    ("ORG", "organizations"),
    ("TITLE", "organizations"),
    ("BDAY", "birthdays"),
    ("ANNIVERSARY", "events"),
    ("URL", "urls"),
    ("NOTE", "biographies"),
    ("NICKNAME", "nicknames"),
    ("RELATED", "relations"),
    ("IMPP", "imClients"),
    ("GENDER", "genders"),
    ("LANG", "locales"),
    ("CALURI", "calendarUrls"),
    ("PHOTO", "photos"),
];

/// Extends a job's field list with the `X-GOOGLE-*` properties its names stand for (see
/// `FieldSelection::from_list`).
pub fn expand_field_names(name: &str) -> Vec<String> {
    let upper = name.to_ascii_uppercase();
    let mut out = vec![];
    for (alias, field) in ALIASES {
        if *alias == upper {
            out.push(property_of(field));
        }
    }
    if let Some(f) = COPIED_FIELDS.iter().find(|f| f.eq_ignore_ascii_case(name)) {
        out.push(property_of(f));
    }
    if name.eq_ignore_ascii_case("photos") {
        out.push(PHOTO_PROPERTY.into());
    }
    out
}

/// The index in `COPIED_FIELDS` of the Person field a card property (any case) carries.
pub(super) fn field_index(property: &str) -> Option<usize> {
    const PREFIX: &str = "X-GOOGLE-";
    let head = property.get(..PREFIX.len())?;
    if !head.eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let rest = &property[PREFIX.len()..];
    COPIED_FIELDS
        .iter()
        .position(|f| f.eq_ignore_ascii_case(rest))
}
