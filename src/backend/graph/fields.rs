//! The Graph contact properties groupsync copies, the card properties that carry them
//! (`X-MSGRAPH-<PROPERTY>`), and the names a job's `fields` may use for them (Graph property
//! names, or vCard names such as `TEL`). A leaf: it imports nothing, so the card module and the
//! job files can use these tables without depending on the Graph backend.

/// Prefix of the card properties that carry a Graph contact property whole.
pub const PREFIX: &str = "X-MSGRAPH-";

/// Contact properties copied from a source contact to its copies: every writable property of
/// a Graph contact that describes the person (not `parentFolderId`, not the ids).
pub const COPIED: &[&str] = &[
    "displayName",
    "givenName",
    "middleName",
    "surname",
    "title",
    "generation",
    "initials",
    "nickName",
    "fileAs",
    "yomiGivenName",
    "yomiSurname",
    "yomiCompanyName",
    "emailAddresses",
    "imAddresses",
    "businessPhones",
    "homePhones",
    "mobilePhone",
    "businessAddress",
    "homeAddress",
    "otherAddress",
    "companyName",
    "department",
    "jobTitle",
    "officeLocation",
    "profession",
    "manager",
    "assistantName",
    "businessHomePage",
    "birthday",
    "personalNotes",
    "children",
    "spouseName",
    "categories",
];

/// Plain vCard names an administrator may use in a job's `fields`, and the contact properties
/// they stand for.
const ALIASES: &[(&str, &[&str])] = &[
    (
        "NAMES",
        &[
            "displayName",
            "givenName",
            "middleName",
            "surname",
            "title",
            "generation",
            "initials",
            "fileAs",
            "yomiGivenName",
            "yomiSurname",
        ],
    ),
    ("EMAIL", &["emailAddresses"]),
    ("TEL", &["businessPhones", "homePhones", "mobilePhone"]),
    ("ADR", &["businessAddress", "homeAddress", "otherAddress"]),
    (
        "ORG",
        &[
            "companyName",
            "department",
            "yomiCompanyName",
            "officeLocation",
        ],
    ),
    ("TITLE", &["jobTitle"]),
    ("ROLE", &["profession"]),
    ("BDAY", &["birthday"]),
    ("URL", &["businessHomePage"]),
    ("NOTE", &["personalNotes"]),
    ("NICKNAME", &["nickName"]),
    ("IMPP", &["imAddresses"]),
    (
        "RELATED",
        &["children", "spouseName", "manager", "assistantName"],
    ),
    ("CATEGORIES", &["categories"]),
];

/// The card property that says which photo a contact has (see `contact::PHOTO_PROPERTY`).
pub const PHOTO: &str = "X-MSGRAPH-PHOTO";

/// The card property that carries a contact property.
pub fn card_property(p: &str) -> String {
    format!("{PREFIX}{}", p.to_ascii_uppercase())
}

/// Extends a job's field list with the `X-MSGRAPH-*` properties its names stand for (see
/// `FieldSelection::from_list`); `FN`, `N` and `names` stand for the name properties.
pub fn expand_field_names(name: &str) -> Vec<String> {
    let upper = name.to_ascii_uppercase();
    let key = if matches!(upper.as_str(), "FN" | "N") {
        "NAMES"
    } else {
        upper.as_str()
    };
    let mut out = vec![];
    for (alias, props) in ALIASES {
        if *alias == key {
            out.extend(props.iter().map(|p| card_property(p)));
        }
    }
    if let Some(p) = COPIED.iter().find(|p| p.eq_ignore_ascii_case(name)) {
        out.push(card_property(p));
    }
    if upper == "PHOTO" {
        out.push(PHOTO.into());
    }
    out
}
