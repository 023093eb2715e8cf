//! A state-machine property test of the engine over the in-memory backend: random source edits,
//! destination tampering, destinations added and removed, injected faults and cut runs, lost
//! state databases. After every run it checks the rules docs/concepts.md states:
//!
//! - nothing without the job's tag is ever modified or deleted (after every run, faulty or not);
//! - after a successful run each active destination holds exactly one tagged copy per (filtered)
//!   source contact, equal to it in every managed field;
//! - a removed destination (known to the state) ends with no tagged copy and its own contacts in
//!   "My Contacts";
//! - a safety stop changes nothing at the destination it guards;
//! - a contact the provider refuses never blocks the others: the run fails, and every other copy
//!   is right;
//! - a fresh copy never gets a UID the group already has (the provider refuses it, as CardDAV
//!   servers do): a copy whose tag the user removed keeps its UID;
//! - a second job reading what the first writes (a chain, or a cycle back into the first's
//!   source) never makes either grow: a contact that came through a job is never its source;
//!   a few rounds of both settle, and then each holds one copy per contact it should;
//! - after faults stop, one run converges.
//!
//! Cases: 10,000 by default (`PROPTEST_CASES` overrides).

use calcard::vcard::VCard;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use groupsync::backend::memory::{DEFAULT_GROUP, Faults, MemoryBackend};
use groupsync::card::{self, ContactFilter, FieldSelection};
use groupsync::engine::{self, JobRun, Outcome, RunOptions};
use groupsync::plan::{JobSpec, Limits};
use groupsync::store::Store;

const TAG: &str = "gSync77";
const SOURCE: &str = "src";
const USERS: [&str; 3] = ["u0", "u1", "u2"];

/// A card holding this is refused by the provider (see `MemoryBackend::refuse_cards_with`).
const REFUSED: &str = "refused-by-provider";

#[derive(Debug, Clone)]
enum Action {
    SrcAdd(u16),
    /// A source contact the provider refuses to store at the destinations.
    SrcAddRefused(u16),
    SrcEdit(usize, u16),
    SrcRemove(usize),
    DestEdit(usize, usize, u16),
    DestDelete(usize, usize),
    DestDuplicate(usize, usize),
    DestStripTag(usize, usize),
    DestAddOwn(usize, u16),
    DestDropSourceId(usize, usize),
    AddDest(usize),
    RemoveDest(usize),
    Run {
        fail_write: Option<u64>,
        cut_at: Option<u64>,
        force: bool,
    },
    LoseState,
    /// The provider stops honouring every change token handed out so far.
    ExpireTokens,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => any::<u16>().prop_map(Action::SrcAdd),
        1 => any::<u16>().prop_map(Action::SrcAddRefused),
        2 => (any::<usize>(), any::<u16>()).prop_map(|(k, s)| Action::SrcEdit(k, s)),
        2 => any::<usize>().prop_map(Action::SrcRemove),
        2 => (0..3usize, any::<usize>(), any::<u16>()).prop_map(|(u, k, s)| Action::DestEdit(u, k, s)),
        1 => (0..3usize, any::<usize>()).prop_map(|(u, k)| Action::DestDelete(u, k)),
        1 => (0..3usize, any::<usize>()).prop_map(|(u, k)| Action::DestDuplicate(u, k)),
        1 => (0..3usize, any::<usize>()).prop_map(|(u, k)| Action::DestStripTag(u, k)),
        2 => (0..3usize, any::<u16>()).prop_map(|(u, s)| Action::DestAddOwn(u, s)),
        1 => (0..3usize, any::<usize>()).prop_map(|(u, k)| Action::DestDropSourceId(u, k)),
        2 => (0..3usize).prop_map(Action::AddDest),
        2 => (0..3usize).prop_map(Action::RemoveDest),
        4 => (proptest::option::weighted(0.3, 0..12u64), proptest::option::weighted(0.3, 0..12u64), proptest::bool::weighted(0.2))
            .prop_map(|(fail_write, cut_at, force)| Action::Run { fail_write, cut_at, force }),
        1 => Just(Action::LoseState),
        1 => Just(Action::ExpireTokens),
    ]
}

#[derive(Debug, Clone)]
struct Params {
    target_group: String,
    only_email: bool,
    filter_even: bool,
    tight_limit: bool,
    /// The provider stores cards in its own form (sorted properties), as CardDAV servers and
    /// Google do: copies never read back as written, yet reruns must not rewrite them.
    normalize: bool,
    /// The engine hands writes over in batches (as to Google) rather than one at a time.
    batched: bool,
    /// The provider hands out change tokens (as Google's sync tokens) instead of group versions.
    tokens: bool,
    /// A second job reading u0's target group (see `Second`).
    second: Second,
}

/// A second job, `TAG2`, whose source is u0's target group of the first job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Second {
    None,
    /// Into u2's "Relay": the first job's copies go on through it.
    Chain,
    /// Into the source user's "G", the first job's source group: the two feed each other.
    Cycle,
}

const TAG2: &str = "gSync78";

fn params() -> impl Strategy<Value = Params> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        proptest::bool::weighted(0.25),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![2 => Just(Second::None), 1 => Just(Second::Chain), 1 => Just(Second::Cycle)],
    )
        .prop_map(
            |(same, only_email, filter_even, tight_limit, normalize, batched, tokens, second)| {
                Params {
                    target_group: if same { "G".into() } else { "Copied".into() },
                    only_email,
                    filter_even,
                    tight_limit,
                    normalize,
                    batched,
                    tokens,
                    second,
                }
            },
        )
}

/// The managed content of a card, whatever the order of its properties.
fn content(card: &VCard, fields: &FieldSelection) -> String {
    let v4 = card::version(card) == calcard::vcard::VCardVersion::V4_0;
    let mut lines: Vec<String> = card::managed_entries(card, fields)
        .map(|e| {
            let mut t = String::new();
            e.write_to(&mut t, v4).unwrap();
            t
        })
        .collect();
    lines.sort();
    format!("{v4}:{}", lines.concat())
}

fn make_card(seed: u16, version4: bool) -> VCard {
    let v = if version4 { "4.0" } else { "3.0" };
    let text = format!(
        "BEGIN:VCARD\r\nVERSION:{v}\r\nUID:uid-{seed}\r\nFN:Person {seed}\r\nN:{seed};Person;;;\r\nEMAIL;TYPE=work:p{seed}@{}.example.com\r\nNOTE:note {seed}\r\nX-EXTRA:x{seed}\r\nEND:VCARD\r\n",
        if seed.is_multiple_of(2) {
            "even"
        } else {
            "odd"
        }
    );
    card::parse(&text).unwrap()
}

/// Replaces a property's text value (used to tamper with copies).
fn with_prop(card: &VCard, name: &str, value: &str) -> VCard {
    let text = card::to_text(card);
    let mut out = String::new();
    let mut done = false;
    for line in text.split("\r\n") {
        if line.to_ascii_uppercase().starts_with(&format!("{name}:")) && !done {
            out.push_str(&format!("{name}:{value}\r\n"));
            done = true;
        } else if line == "END:VCARD" && !done {
            out.push_str(&format!("{name}:{value}\r\nEND:VCARD\r\n"));
            done = true;
        } else if !line.is_empty() {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    card::parse(&out).unwrap()
}

fn without_prop(card: &VCard, name: &str) -> VCard {
    let text = card::to_text(card);
    let out: Vec<&str> = text
        .split("\r\n")
        .filter(|l| !l.to_ascii_uppercase().starts_with(&format!("{name}:")))
        .collect();
    card::parse(&out.join("\r\n")).unwrap()
}

struct World {
    backend: Arc<MemoryBackend>,
    store: Arc<Mutex<Store>>,
    job: JobRun,
    fields: FieldSelection,
    filter: ContactFilter,
    source_ids: Vec<String>,
    dests: BTreeSet<usize>,
    /// Users the state database has seen in this job since it was last lost.
    known: BTreeSet<usize>,
    /// Removed users the state still has to clean up.
    removed_pending: BTreeSet<usize>,
    /// Contacts the users own: (user, id) → card. Never to be modified or deleted.
    own: BTreeMap<(usize, String), VCard>,
    /// Users removed while the state database did not know them (it was lost): copies may stay.
    unknown_leftovers: BTreeSet<usize>,
    /// The second job, its destination user and target group, and its last run's outcome.
    second: Option<(JobRun, &'static str, String)>,
    second_outcome: Option<Outcome>,
    /// The source contacts as the test wrote them: no job may change them.
    source_cards: BTreeMap<String, VCard>,
}

impl World {
    fn new(p: &Params) -> World {
        let backend = Arc::new(MemoryBackend::new());
        backend.add_user(SOURCE);
        for u in USERS {
            backend.add_user(u);
        }
        backend.group_id(SOURCE, "G", true);
        backend.set_normalize(p.normalize);
        backend.set_batch_size(if p.batched { 3 } else { 1 });
        backend.set_change_tokens(p.tokens);
        backend.refuse_cards_with(Some(REFUSED));
        let fields = if p.only_email {
            FieldSelection::from_list(Some(&["EMAIL".to_string()]))
        } else {
            FieldSelection::All
        };
        let filter = if p.filter_even {
            ContactFilter {
                email: Some(regex::Regex::new(r"@even\.").unwrap()),
                ..Default::default()
            }
        } else {
            ContactFilter::default()
        };
        let limits = if p.tight_limit {
            Limits {
                max_delete: 1,
                max_delete_percent: 0,
            }
        } else {
            Limits::default()
        };
        let mut own = BTreeMap::new();
        // Every user starts with a contact of their own in "My Contacts".
        for (i, u) in USERS.iter().enumerate() {
            let c = make_card(60000 + i as u16, false);
            let id = backend.put(u, DEFAULT_GROUP, c.clone());
            own.insert((i, id), c);
        }
        World {
            backend,
            store: Arc::new(Mutex::new(Store::open_in_memory().unwrap())),
            job: JobRun {
                spec: JobSpec {
                    name: "job".into(),
                    tag: TAG.into(),
                    target_group: p.target_group.clone(),
                    fields: fields.clone(),
                    filter: filter.clone(),
                    limits,
                },
                source: SOURCE.into(),
                group: "G".into(),
                destinations: vec![],
                exclude: vec![],
            },
            fields,
            filter,
            source_ids: vec![],
            dests: BTreeSet::new(),
            known: BTreeSet::new(),
            removed_pending: BTreeSet::new(),
            own: own.into_iter().collect(),
            unknown_leftovers: BTreeSet::new(),
            second: second_job(p),
            second_outcome: None,
            source_cards: BTreeMap::new(),
        }
    }

    /// Runs the second job (forced, no faults), if there is one; true when it changed anything.
    fn run_second(&mut self, rt: &tokio::runtime::Runtime) -> bool {
        let Some((job, _, _)) = &self.second else {
            return false;
        };
        let opts = RunOptions {
            force: true,
            concurrency: 1,
            default_group: DEFAULT_GROUP.into(),
            ..Default::default()
        };
        let report = rt.block_on(engine::run_job(&self.backend, &self.store, job, &opts));
        self.second_outcome = Some(report.outcome);
        let c = report.counts;
        c.created + c.updated + c.deleted + c.moved > 0
    }

    /// The source contacts the test wrote are as it wrote them.
    fn check_source(&self) -> Result<(), TestCaseError> {
        let now: BTreeMap<String, VCard> = self
            .backend
            .dump(SOURCE)
            .into_iter()
            .map(|(_, id, c)| (id, c))
            .collect();
        for (id, c) in &self.source_cards {
            prop_assert_eq!(now.get(id), Some(c), "source contact {} was changed", id);
        }
        Ok(())
    }

    /// After a successful run of the second job: its destination holds one copy of each contact
    /// of u0's group that did not come through it, equal to it.
    fn check_second_converged(&self) -> Result<(), TestCaseError> {
        let (Some((job, dest, target)), Some(Outcome::Ok)) = (&self.second, self.second_outcome)
        else {
            return Ok(());
        };
        let mut expected: BTreeMap<String, String> = BTreeMap::new();
        for (g, id, c) in self.backend.dump("u0") {
            if g == job.group && !card::came_through(&c).contains(&TAG2.to_string()) {
                expected.insert(id, content(&c, &FieldSelection::All));
            }
        }
        let mut got: BTreeMap<String, String> = BTreeMap::new();
        for (g, id, c) in self.backend.dump(dest) {
            if card::tag_of(&c).as_deref() != Some(TAG2) {
                continue;
            }
            prop_assert_eq!(
                &g,
                target,
                "copy {} of the second job outside its group",
                id
            );
            let prev = got.insert(
                card::source_of(&c).unwrap(),
                content(&c, &FieldSelection::All),
            );
            prop_assert!(prev.is_none(), "two copies of one contact at {}", dest);
        }
        prop_assert_eq!(got, expected, "the second job's copies at {}", dest);
        Ok(())
    }

    fn tagged(&self, u: usize) -> Vec<(String, String, VCard)> {
        self.backend
            .dump(USERS[u])
            .into_iter()
            .filter(|(_, _, c)| card::tag_of(c).as_deref() == Some(TAG))
            .collect()
    }

    fn run(
        &mut self,
        rt: &tokio::runtime::Runtime,
        faults: Faults,
        force: bool,
    ) -> engine::JobReport {
        self.job.destinations = self.dests.iter().map(|u| USERS[*u].to_string()).collect();
        self.backend.set_faults(faults);
        let opts = RunOptions {
            force,
            concurrency: 1,
            default_group: DEFAULT_GROUP.into(),
            ..Default::default()
        };
        let report = rt.block_on(engine::run_job(
            &self.backend,
            &self.store,
            &self.job,
            &opts,
        ));
        self.backend.set_faults(Faults::default());
        // The engine records a destination before writing to it.
        for d in &report.destinations {
            let u = USERS.iter().position(|x| *x == d.user).unwrap();
            if d.removal && d.error.is_none() && d.stopped.is_none() {
                self.removed_pending.remove(&u);
                self.known.remove(&u);
            } else if !d.removal && d.plan.is_some() && d.stopped.is_none() {
                self.known.insert(u);
            }
        }
        report
    }

    /// Nothing the users own was modified or deleted.
    fn check_own(&self) -> Result<(), TestCaseError> {
        for ((u, id), c) in &self.own {
            let found = self
                .backend
                .dump(USERS[*u])
                .into_iter()
                .find(|(_, i, _)| i == id);
            prop_assert!(
                found.is_some(),
                "own contact {id} of {} was deleted",
                USERS[*u]
            );
            prop_assert_eq!(
                &found.unwrap().2,
                c,
                "own contact {} of {} was modified",
                id,
                USERS[*u]
            );
        }
        Ok(())
    }

    /// The state after a successful run.
    fn check_converged(&self) -> Result<(), TestCaseError> {
        self.check_own()?;
        let mut expected: BTreeMap<String, String> = BTreeMap::new();
        for (gname, id, c) in self.backend.dump(SOURCE) {
            if gname == "G"
                && self.filter.keeps(&c)
                && !is_refused(&c, &self.fields)
                && !card::came_through(&c).contains(&TAG.to_string())
            {
                expected.insert(id, content(&c, &self.fields));
            }
        }
        for (u, name) in USERS.iter().enumerate() {
            let tagged = self.tagged(u);
            if self.dests.contains(&u) {
                prop_assert!(
                    self.backend
                        .group_names(name)
                        .contains(&self.job.spec.target_group),
                    "group missing at {}",
                    *name
                );
                let mut got: BTreeMap<String, String> = BTreeMap::new();
                for (g, id, c) in &tagged {
                    prop_assert_eq!(
                        g,
                        &self.job.spec.target_group,
                        "copy {} of {} outside the target group",
                        id,
                        *name
                    );
                    let src = card::source_of(c);
                    prop_assert!(src.is_some(), "copy {} of {} has no source id", id, *name);
                    let prev = got.insert(src.unwrap(), content(c, &self.fields));
                    prop_assert!(
                        prev.is_none(),
                        "two copies of one source contact at {}",
                        *name
                    );
                }
                prop_assert_eq!(
                    &got,
                    &expected,
                    "copies at {} differ from the source",
                    *name
                );
                // The ledger remembers exactly the copies there are: source id → contact id.
                let ledger: BTreeMap<String, String> = self
                    .store
                    .lock()
                    .unwrap()
                    .ledger(&self.job.spec.name, name)
                    .unwrap()
                    .rows()
                    .map(|r| (r.source_id().to_string(), r.contact_id().to_string()))
                    .collect();
                let present: BTreeMap<String, String> = tagged
                    .iter()
                    .filter_map(|(_, id, c)| Some((card::source_of(c)?, id.clone())))
                    .collect();
                prop_assert_eq!(
                    &ledger,
                    &present,
                    "ledger of {} is not what it holds",
                    *name
                );
                // Own contacts added to the group are still in it.
                for (ou, id) in self.own.keys() {
                    if *ou == u
                        && let Some((g, _, _)) = self
                            .backend
                            .dump(name)
                            .into_iter()
                            .find(|(_, i, _)| i == id)
                    {
                        prop_assert!(
                            g == self.job.spec.target_group || g == DEFAULT_GROUP,
                            "own contact moved to {g}"
                        );
                    }
                }
            } else if !self.removed_pending.contains(&u) && self.known_was_cleaned(u) {
                prop_assert!(
                    tagged.is_empty(),
                    "removed destination {} still has {} copies",
                    *name,
                    tagged.len()
                );
                if self.job.spec.target_group != DEFAULT_GROUP {
                    prop_assert!(
                        !self
                            .backend
                            .group_names(name)
                            .contains(&self.job.spec.target_group),
                        "group left at removed {}",
                        *name
                    );
                }
            }
        }
        Ok(())
    }

    fn known_was_cleaned(&self, u: usize) -> bool {
        !self.unknown_leftovers.contains(&u)
    }

    /// How a run without faults ends: failed when the source holds a contact the provider
    /// refuses and some destination must get it, else ok.
    fn clean_outcome(&self) -> Outcome {
        let refused = self
            .backend
            .dump(SOURCE)
            .iter()
            .any(|(g, _, c)| g == "G" && self.filter.keeps(c) && is_refused(c, &self.fields));
        if refused && !self.dests.is_empty() {
            Outcome::Failed
        } else {
            Outcome::Ok
        }
    }

    /// A run that failed only for refused contacts: every failing destination says so.
    fn check_only_refusals(&self, report: &engine::JobReport) -> Result<(), TestCaseError> {
        for d in &report.destinations {
            if let Some(e) = &d.error {
                prop_assert!(
                    e.contains("refused") && !d.refused.is_empty(),
                    "{} failed for another reason: {e}",
                    d.user
                );
            }
        }
        Ok(())
    }
}

/// True when the copy of this source card holds the refused marker (it is in a managed field).
/// The second job of these parameters: its run, destination user and target group.
fn second_job(p: &Params) -> Option<(JobRun, &'static str, String)> {
    let (dest, target) = match p.second {
        Second::None => return None,
        Second::Chain => ("u2", "Relay"),
        Second::Cycle => (SOURCE, "G"),
    };
    let run = JobRun {
        spec: JobSpec {
            name: "second".into(),
            tag: TAG2.into(),
            target_group: target.into(),
            fields: FieldSelection::All,
            filter: ContactFilter::default(),
            limits: Limits::default(),
        },
        source: "u0".into(),
        group: p.target_group.clone(),
        destinations: vec![dest.into()],
        exclude: vec![],
    };
    Some((run, dest, target.to_string()))
}

fn is_refused(c: &VCard, fields: &FieldSelection) -> bool {
    content(c, fields).contains(REFUSED)
}

fn run_case(
    p: Params,
    actions: Vec<Action>,
    rt: &tokio::runtime::Runtime,
) -> Result<(), TestCaseError> {
    let mut w = World::new(&p);
    let mut leftovers: BTreeSet<usize> = BTreeSet::new();
    let mut seed_counter = 0u16;
    for a in actions {
        match a {
            Action::SrcAdd(s) => {
                seed_counter = seed_counter.wrapping_add(1);
                let c = make_card(s, s % 3 == 0);
                let id = w.backend.put(SOURCE, "G", c.clone());
                w.source_cards.insert(id.clone(), c);
                w.source_ids.push(id);
            }
            Action::SrcAddRefused(s) => {
                let c = with_prop(&make_card(s, false), "NOTE", REFUSED);
                let id = w.backend.put(SOURCE, "G", c.clone());
                w.source_cards.insert(id.clone(), c);
                w.source_ids.push(id);
            }
            Action::SrcEdit(k, s) if !w.source_ids.is_empty() => {
                let id = w.source_ids[k % w.source_ids.len()].clone();
                let c = make_card(s, s % 3 == 0);
                w.backend.replace(SOURCE, &id, c.clone());
                w.source_cards.insert(id, c);
            }
            Action::SrcRemove(k) if !w.source_ids.is_empty() => {
                let id = w.source_ids.remove(k % w.source_ids.len());
                w.backend.remove(SOURCE, &id);
                w.source_cards.remove(&id);
            }
            Action::DestEdit(u, k, s) => {
                let t = w.tagged(u);
                if !t.is_empty() {
                    let (_, id, c) = &t[k % t.len()];
                    let edited = with_prop(
                        &with_prop(c, "NOTE", &format!("edited {s}")),
                        "EMAIL",
                        &format!("x{s}@tampered.example"),
                    );
                    w.backend.replace(USERS[u], id, edited);
                }
            }
            Action::DestDelete(u, k) => {
                let t = w.tagged(u);
                if !t.is_empty() {
                    w.backend.remove(USERS[u], &t[k % t.len()].1);
                }
            }
            Action::DestDuplicate(u, k) => {
                let t = w.tagged(u);
                if !t.is_empty() {
                    let (g, _, c) = &t[k % t.len()];
                    w.backend.put(USERS[u], g, c.clone());
                }
            }
            Action::DestDropSourceId(u, k) => {
                let t = w.tagged(u);
                if !t.is_empty() {
                    let (_, id, c) = &t[k % t.len()];
                    w.backend
                        .replace(USERS[u], id, without_prop(c, card::SOURCE_PROPERTY));
                }
            }
            Action::DestStripTag(u, k) => {
                let t = w.tagged(u);
                if !t.is_empty() {
                    let (_, id, c) = &t[k % t.len()];
                    let mine = with_prop(&without_prop(c, card::TAG_PROPERTY), "NOTE", "mine now");
                    w.backend.replace(USERS[u], id, mine.clone());
                    w.own.insert((u, id.clone()), mine);
                }
            }
            Action::DestAddOwn(u, s) => {
                let g = w.job.spec.target_group.clone();
                if w.backend.group_names(USERS[u]).contains(&g) {
                    let c = make_card(s, false);
                    let id = w.backend.put(USERS[u], &g, c.clone());
                    w.own.insert((u, id), c);
                }
            }
            Action::AddDest(u) => {
                w.dests.insert(u);
                w.removed_pending.remove(&u);
                leftovers.remove(&u);
            }
            Action::RemoveDest(u) if w.dests.remove(&u) => {
                if w.known.contains(&u) {
                    w.removed_pending.insert(u);
                } else {
                    leftovers.insert(u);
                }
            }
            Action::ExpireTokens => w.backend.expire_change_tokens(),
            Action::LoseState => {
                *w.store.lock().unwrap() = Store::open_in_memory().unwrap();
                for u in std::mem::take(&mut w.removed_pending) {
                    leftovers.insert(u);
                }
                w.known.clear();
            }
            Action::Run {
                fail_write,
                cut_at,
                force,
            } => {
                w.unknown_leftovers = leftovers.clone();
                let faulty = fail_write.is_some() || cut_at.is_some();
                let before: Vec<_> = USERS.iter().map(|u| w.backend.dump(u)).collect();
                let report = w.run(
                    rt,
                    Faults {
                        fail_write,
                        cut_at_write: cut_at,
                    },
                    force,
                );
                w.check_own()?;
                w.check_source()?;
                if faulty {
                    second_round(&mut w, rt)?;
                    continue;
                }
                match report.outcome {
                    o if o == w.clean_outcome() => {
                        w.check_only_refusals(&report)?;
                        w.check_converged()?
                    }
                    Outcome::Stopped => {
                        check_stop_is_legit(&w, &report, &before)?;
                        let report = w.run(rt, Faults::default(), true);
                        prop_assert_eq!(
                            report.outcome,
                            w.clean_outcome(),
                            "forced run after a stop: {:?}",
                            report
                        );
                        w.check_only_refusals(&report)?;
                        w.check_converged()?;
                    }
                    other => {
                        prop_assert!(false, "a run without faults ended {other:?}: {report:?}")
                    }
                }
                second_round(&mut w, rt)?;
            }
            _ => {}
        }
    }
    // With a second job, a few rounds of both settle: each contact goes around a cycle once.
    if w.second.is_some() {
        let mut rounds = 0;
        loop {
            let report = w.run(rt, Faults::default(), true);
            let c = report.counts;
            let first = c.created + c.updated + c.deleted + c.moved > 0;
            let second = w.run_second(rt);
            w.check_own()?;
            w.check_source()?;
            if !first && !second {
                break;
            }
            rounds += 1;
            prop_assert!(
                rounds < 6,
                "two jobs still change things after {rounds} rounds"
            );
        }
        w.check_second_converged()?;
    }
    // After the faults stop, one run converges.
    w.unknown_leftovers = leftovers.clone();
    let report = w.run(rt, Faults::default(), true);
    prop_assert_eq!(report.outcome, w.clean_outcome(), "final run: {:?}", report);
    w.check_only_refusals(&report)?;
    w.check_converged()?;
    // And a second run changes nothing.
    let report = w.run(rt, Faults::default(), false);
    prop_assert_eq!(
        report.outcome,
        w.clean_outcome(),
        "idempotent run: {:?}",
        report
    );
    prop_assert_eq!(
        report.counts.created + report.counts.updated + report.counts.deleted + report.counts.moved,
        0,
        "second run changed something: {:?}",
        report
    );
    Ok(())
}

/// The second job runs after the first (if there is one): nothing the users own, nor the
/// source, is changed by it.
fn second_round(w: &mut World, rt: &tokio::runtime::Runtime) -> Result<(), TestCaseError> {
    w.run_second(rt);
    w.check_own()?;
    w.check_source()
}

fn check_stop_is_legit(
    w: &World,
    report: &engine::JobReport,
    before: &[Vec<(String, String, VCard)>],
) -> Result<(), TestCaseError> {
    let stopped: Vec<_> = report
        .destinations
        .iter()
        .filter(|d| d.stopped.is_some())
        .collect();
    if stopped.is_empty() {
        // The empty-source guard: nothing may have been written anywhere.
        prop_assert_eq!(
            report.source_contacts,
            0,
            "stop without a stopped destination: {:?}",
            report
        );
        prop_assert_eq!(w.backend.writes(), 0);
        return Ok(());
    }
    for d in stopped {
        let u = USERS.iter().position(|x| *x == d.user).unwrap();
        prop_assert_eq!(
            &w.backend.dump(USERS[u]),
            &before[u],
            "stopped destination {} was changed",
            d.user
        );
        if let Some(p) = &d.plan {
            prop_assert!(
                p.limit_exceeded.is_some()
                    || d.stopped.as_deref().unwrap_or("").starts_with("not run")
            );
        }
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn engine_keeps_the_rules(p in params(), actions in proptest::collection::vec(action(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        run_case(p, actions, &rt)?;
    }
}

/// The job of the fixed cases below: all fields of every contact of `SOURCE`'s group "G", into
/// "Team", to `destinations`.
fn fixed_job(destinations: &[&str]) -> JobRun {
    JobRun {
        spec: JobSpec {
            name: "job".into(),
            tag: TAG.into(),
            target_group: "Team".into(),
            fields: FieldSelection::All,
            filter: ContactFilter::default(),
            limits: Limits::default(),
        },
        source: SOURCE.into(),
        group: "G".into(),
        destinations: destinations.iter().map(|d| d.to_string()).collect(),
        exclude: vec![],
    }
}

/// A provider with the source user, `n` contacts in its group "G", and one destination user u0.
fn source_and_u0(n: u16) -> Arc<MemoryBackend> {
    let backend = Arc::new(MemoryBackend::new());
    backend.add_user(SOURCE);
    backend.add_user("u0");
    for i in 0..n {
        backend.put(SOURCE, "G", make_card(i, false));
    }
    backend
}

/// A batch that fails part way: the copies written before the failure are in the ledger and in
/// the change log. (A batch's records are written while the next call is in flight, or when the
/// destination ends; a failure must not drop them.)
#[test]
fn writes_before_a_failure_are_recorded() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let backend = source_and_u0(7);
    backend.set_batch_size(3);
    // The group is the first write, then batches of 3 creates: the sixth write, in the second
    // batch, fails after one create of that batch went through.
    backend.set_faults(Faults {
        fail_write: Some(backend.writes() + 5),
        cut_at_write: None,
    });
    let store = Arc::new(Mutex::new(Store::open_in_memory().unwrap()));
    let job = fixed_job(&["u0"]);
    let opts = RunOptions {
        concurrency: 1,
        default_group: DEFAULT_GROUP.into(),
        ..Default::default()
    };
    let report = rt.block_on(engine::run_job(&backend, &store, &job, &opts));
    assert_eq!(report.outcome, Outcome::Failed, "{report:?}");
    let written: BTreeSet<String> = backend
        .dump("u0")
        .into_iter()
        .filter(|(_, _, c)| card::tag_of(c).as_deref() == Some(TAG))
        .map(|(_, id, _)| id)
        .collect();
    assert_eq!(
        written.len(),
        4,
        "3 creates of the first batch and 1 of the second: {report:?}"
    );
    assert_eq!(report.destinations[0].applied.created, 4);
    let s = store.lock().unwrap();
    assert_eq!(s.ledger("job", "u0").unwrap().len(), 4);
    let logged: BTreeSet<String> = s
        .changes("job", Some("u0"), None, 100)
        .unwrap()
        .into_iter()
        .filter(|c| c.action == "create")
        .filter_map(|c| c.contact_id)
        .collect();
    assert_eq!(logged, written);
}

/// A destination whose task panics (a bug in a provider) is reported as failed, with the reason;
/// the others are synced, and the job fails.
#[test]
fn a_panicking_destination_fails_alone() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let backend = Arc::new(MemoryBackend::new());
    backend.add_user(SOURCE);
    for u in USERS {
        backend.add_user(u);
    }
    for i in 0..5 {
        backend.put(SOURCE, "G", make_card(i, false));
    }
    backend.panic_for("u1");
    let store = Arc::new(Mutex::new(Store::open_in_memory().unwrap()));
    let job = fixed_job(&USERS);
    let opts = RunOptions {
        concurrency: 2,
        default_group: DEFAULT_GROUP.into(),
        ..Default::default()
    };
    let report = rt.block_on(engine::run_job(&backend, &store, &job, &opts));
    assert_eq!(report.outcome, Outcome::Failed, "{report:?}");
    let names: Vec<&str> = report
        .destinations
        .iter()
        .map(|d| d.user.as_str())
        .collect();
    assert_eq!(names, USERS, "every destination reported, in job order");
    for d in &report.destinations {
        let tagged = backend
            .dump(&d.user)
            .into_iter()
            .filter(|(_, _, c)| card::tag_of(c).as_deref() == Some(TAG))
            .count();
        if d.user == "u1" {
            let e = d.error.as_deref().unwrap_or_default();
            assert!(e.contains("panicked"), "{d:?}");
            assert_eq!(tagged, 0);
        } else {
            assert_eq!(d.error, None, "{d:?}");
            assert_eq!(tagged, 5, "{} synced", d.user);
        }
    }
}

/// u0 synced with `n` copies on a two-thread runtime, for the removal tests: its copies and its
/// trash entries as they are, and a run of the job without u0.
struct RemovalRig {
    rt: tokio::runtime::Runtime,
    backend: Arc<MemoryBackend>,
    store: Arc<Mutex<Store>>,
    opts: RunOptions,
}

impl RemovalRig {
    fn synced(n: u16, batch: usize) -> RemovalRig {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let backend = source_and_u0(n);
        backend.set_batch_size(batch);
        let rig = RemovalRig {
            rt,
            backend,
            store: Arc::new(Mutex::new(Store::open_in_memory().unwrap())),
            opts: RunOptions {
                concurrency: 1,
                default_group: DEFAULT_GROUP.into(),
                ..Default::default()
            },
        };
        let job = fixed_job(&["u0"]);
        let report = rig
            .rt
            .block_on(engine::run_job(&rig.backend, &rig.store, &job, &rig.opts));
        assert_eq!(report.outcome, Outcome::Ok, "{report:?}");
        assert_eq!(rig.copies().len(), n as usize);
        rig
    }

    /// The ids of u0's tagged copies.
    fn copies(&self) -> BTreeSet<String> {
        self.backend
            .dump("u0")
            .into_iter()
            .filter(|(_, _, c)| card::tag_of(c).as_deref() == Some(TAG))
            .map(|(_, id, _)| id)
            .collect()
    }

    /// The contact ids in u0's trash entries, one per entry.
    fn trashed(&self) -> Vec<String> {
        self.store
            .lock()
            .unwrap()
            .trash_list(Some("job"), Some("u0"), None)
            .unwrap()
            .into_iter()
            .map(|t| t.contact_id)
            .collect()
    }

    /// A run of the job with u0 removed.
    fn remove(&self) -> Outcome {
        let job = fixed_job(&[]);
        let report = self.rt.block_on(engine::run_job(
            &self.backend,
            &self.store,
            &job,
            &self.opts,
        ));
        report.outcome
    }
}

/// A removed destination's copies are trashed as its group is read, then deleted in the
/// provider's batches. When a delete fails part way, the copies not deleted are taken back out
/// of the trash: the trash holds exactly what was deleted (a restore never makes a second copy
/// of a contact still there), and the rerun finishes the cleanup, trashing the rest.
#[test]
fn a_removal_trashes_what_it_reads_and_keeps_only_what_it_deleted() {
    let r = RemovalRig::synced(450, 100);
    // The provider stops answering at the 251st contact delete: in the third batch of 100.
    r.backend.set_faults(Faults {
        fail_write: None,
        cut_at_write: Some(250),
    });
    assert_eq!(r.remove(), Outcome::Failed);
    let left = r.copies();
    let trashed_now = r.trashed();
    let deleted = 450 - left.len();
    assert!((250..=300).contains(&deleted), "{deleted} deleted");
    // Trashed: exactly the copies deleted, none of those still there.
    assert_eq!(trashed_now.len(), deleted);
    assert!(trashed_now.iter().all(|id| !left.contains(id)));
    // The rerun finishes: every copy gone, each trashed before it went.
    r.backend.set_faults(Faults::default());
    assert_eq!(r.remove(), Outcome::Ok);
    assert!(r.copies().is_empty());
    assert_eq!(r.trashed().into_iter().collect::<BTreeSet<_>>().len(), 450);
}

/// A removal whose read is cut part way, after some of the copies it read were written to the
/// trash, takes them back out: nothing was deleted, so nothing is in the trash. The rerun reads
/// the group again and removes every copy, each trashed once.
#[test]
fn a_removal_cut_mid_read_leaves_nothing_in_the_trash() {
    let r = RemovalRig::synced(450, 1);
    // Cut after two chunks of the read were trashed.
    r.backend.cut_reads_of(Some(("u0", 420)));
    assert_eq!(r.remove(), Outcome::Failed);
    assert_eq!(r.copies().len(), 450);
    assert_eq!(r.trashed(), Vec::<String>::new());
    r.backend.cut_reads_of(None);
    assert_eq!(r.remove(), Outcome::Ok);
    assert!(r.copies().is_empty());
    let t = r.trashed();
    assert_eq!(t.len(), 450);
    assert_eq!(t.iter().collect::<BTreeSet<_>>().len(), 450);
}

/// What the destinations' provider cannot hold of a source contact is named in the report (a
/// dry run's plan and a real run alike), once per contact, never dropped silently.
#[test]
fn what_a_provider_cannot_hold_is_named_in_plan_and_report() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let backend = source_and_u0(3);
    let many = card::parse(
        "BEGIN:VCARD\r\nVERSION:4.0\r\nFN:Bo Ek\r\nEMAIL:a@x.se\r\nEMAIL:b@x.se\r\nEMAIL:c@x.se\r\nEND:VCARD\r\n",
    )
    .unwrap();
    backend.put(SOURCE, "G", many);
    backend.hold_emails(2);
    let store = Arc::new(Mutex::new(Store::open_in_memory().unwrap()));
    let job = fixed_job(&["u0"]);
    for dry_run in [true, false] {
        let opts = RunOptions {
            dry_run,
            default_group: DEFAULT_GROUP.into(),
            ..Default::default()
        };
        let report = rt.block_on(engine::run_job(&backend, &store, &job, &opts));
        assert_eq!(report.outcome, Outcome::Ok, "{report:?}");
        assert_eq!(
            report.not_held,
            ["Bo Ek: EMAIL: 2 of 3 kept"],
            "dry run {dry_run}"
        );
    }
    backend.hold_emails(0);
    let opts = RunOptions {
        default_group: DEFAULT_GROUP.into(),
        ..Default::default()
    };
    let report = rt.block_on(engine::run_job(&backend, &store, &job, &opts));
    assert!(report.not_held.is_empty(), "{report:?}");
}
