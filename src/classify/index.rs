//! Builds the inverted indexes from the embedded reference tables and scores
//! queries against them. Everything here is computed once per process (see
//! [`DATA`]) and is read-only afterwards, so scoring needs no locking.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use super::text::{self, Term};

const NAICS_2022_TITLES: &str = include_str!("data/naics-2022-titles.csv");
const NAICS_2017_DESCRIPTIONS: &str = include_str!("data/naics-2017-descriptions.csv");
const MCC_ISO: &str = include_str!("data/mcc-iso18245.csv");
const MCC_VISA: &str = include_str!("data/mcc-visa.csv");

// Source weights. The title is the authoritative name of the class; the
// illustrative examples are short, concrete business names written by the
// Census ("Pizzerias", "Truck stops") and are nearly as precise; the body prose
// is long and mentions adjacent activities, so it only nudges. Parent titles
// (4/5-digit) describe the family and help when a query uses the family word
// ("eating places") rather than the leaf word.
const W_TITLE: f32 = 3.0;
const W_EXAMPLE: f32 = 2.0;
const W_PARENT: f32 = 1.0;
const W_BODY: f32 = 1.0;

/// Repeated occurrences add a little (log-damped) so that a description that
/// is *about* hotels beats one that mentions a hotel once.
const TF_DAMP: f32 = 0.3;

/// Matching a word by prefix ("gas" -> "gasoline", "dentistry" -> "dentist")
/// is much weaker evidence than an exact stem match.
const PREFIX_FACTOR: f32 = 0.5;
/// Forward prefix expansion: the query stem must be at least this long and the
/// index term may be at most this many bytes longer. One-byte extensions are
/// skipped: after plural stripping they are nearly always different words
/// ("car" -> "card", "care", "cart").
const FWD_MIN_LEN: usize = 3;
const FWD_MIN_EXTRA: usize = 2;
const FWD_MAX_EXTRA: usize = 5;
/// Reverse expansion: a prefix of the query stem found in the index
/// ("truckload" -> "truck"). Same reasoning for the one-byte minimum cut
/// ("bella" must not become "bell").
const REV_MIN_LEN: usize = 4;
const REV_MIN_CUT: usize = 2;
const REV_MAX_CUT: usize = 4;

/// A title bigram seen in the query adds this share of the two terms'
/// contributions: phrase matches ("software publisher", "gasoline station")
/// separate codes that share both words only loosely.
const BIGRAM_BONUS: f32 = 0.5;
/// Exponent on the idf-weighted share of query terms a code explains (a
/// Lucene-style coordination factor). It stops a single very rare word in a
/// long title from beating a code that explains most of the query.
const COVERAGE_EXP: f32 = 1.0;
/// Candidates carried from the cheap first pass into exact re-scoring.
const RERANK_POOL: usize = 40;

#[derive(Debug, Clone, Copy)]
pub struct Posting {
    pub doc: u32,
    pub weight: f32,
}

/// One classifiable entry: a 6-digit NAICS code or an MCC.
#[derive(Debug)]
pub struct Doc {
    pub code: String,
    pub title: String,
    /// Stems of the title in order, for phrase (bigram) bonuses.
    pub title_stems: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Corpus {
    /// Sorted by code so that "lower doc index" means "lower code string",
    /// which is the documented tie-break.
    pub docs: Vec<Doc>,
    /// Sorted, so prefix expansion is a range scan.
    terms: Vec<String>,
    postings: Vec<Vec<Posting>>,
    idf: Vec<f32>,
    lookup: HashMap<String, u32>,
}

/// Where a piece of indexed text came from; each kind gets its own weight
/// and its own average length for length normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Title,
    Parent,
    Body,
    Example,
}

impl Source {
    const ALL: [Source; 4] = [Source::Title, Source::Parent, Source::Body, Source::Example];

    fn weight(self) -> f32 {
        match self {
            Source::Title => W_TITLE,
            Source::Parent => W_PARENT,
            Source::Body => W_BODY,
            Source::Example => W_EXAMPLE,
        }
    }
}

/// BM25-style length normalisation strength. A word in a two-word title
/// ("Commercial Bakeries") says more about the class than the same word in a
/// five-word title listing several products, and long descriptions match
/// stray query words by sheer size.
const LENGTH_B: f32 = 0.5;

#[derive(Default)]
struct CorpusBuilder {
    docs: Vec<Doc>,
    /// (doc, source, stems) in insertion order; weights are only computed in
    /// `finish`, once average lengths per source are known.
    texts: Vec<(u32, Source, Vec<String>)>,
}

impl CorpusBuilder {
    fn add_doc(&mut self, code: &str, title: &str) -> u32 {
        let title_stems = text::terms(&text::strip_exceptions(title))
            .into_iter()
            .map(|t| t.stem)
            .collect();
        self.docs.push(Doc {
            code: code.to_string(),
            title: title.trim().to_string(),
            title_stems,
        });
        u32::try_from(self.docs.len() - 1).expect("fewer than 2^32 documents")
    }

    fn add_text(&mut self, doc: u32, s: &str, source: Source) {
        let stems: Vec<String> = text::terms(&text::strip_exceptions(s))
            .into_iter()
            .map(|t| t.stem)
            .collect();
        if !stems.is_empty() {
            self.texts.push((doc, source, stems));
        }
    }

    fn finish(self) -> Corpus {
        let avg_len = |src: Source| {
            let (sum, n) = self
                .texts
                .iter()
                .filter(|t| t.1 == src)
                .fold((0usize, 0usize), |(s, n), t| (s + t.2.len(), n + 1));
            if n == 0 {
                1.0
            } else {
                sum as f32 / n as f32
            }
        };
        let avgs: Vec<(Source, f32)> = Source::ALL.iter().map(|&s| (s, avg_len(s))).collect();
        // term -> doc -> (max normalised source weight, occurrence count).
        // BTreeMaps keep the build deterministic regardless of hasher seeds.
        let mut acc: BTreeMap<&str, BTreeMap<u32, (f32, u32)>> = BTreeMap::new();
        for (doc, src, stems) in &self.texts {
            let avg = avgs.iter().find(|a| a.0 == *src).map_or(1.0, |a| a.1);
            let norm = 1.0 / (1.0 - LENGTH_B + LENGTH_B * stems.len() as f32 / avg);
            let w = src.weight() * norm;
            for st in stems {
                let e = acc
                    .entry(st.as_str())
                    .or_default()
                    .entry(*doc)
                    .or_insert((0.0, 0));
                e.0 = e.0.max(w);
                e.1 += 1;
            }
        }
        let n = self.docs.len() as f32;
        let mut c = Corpus {
            docs: Vec::new(),
            ..Corpus::default()
        };
        for (term, per_doc) in acc {
            let df = per_doc.len() as f32;
            let postings = per_doc
                .into_iter()
                .map(|(doc, (w, tf))| Posting {
                    doc,
                    weight: w * (1.0 + TF_DAMP * (tf as f32).ln()),
                })
                .collect();
            let id = u32::try_from(c.terms.len()).expect("fewer than 2^32 terms");
            c.lookup.insert(term.to_string(), id);
            c.terms.push(term.to_string());
            c.postings.push(postings);
            c.idf.push((1.0 + n / df).ln());
        }
        c.docs = self.docs;
        c
    }
}

/// A query term after de-duplication: first surface form seen, and its stem.
#[derive(Debug, Clone)]
pub struct QueryTerm {
    pub word: String,
    pub stem: String,
    /// Sum of the field weights of every occurrence (see [`Query::add_field`]).
    pub mass: f32,
}

impl QueryTerm {
    /// Square-root damping: a word in both the name and the description is
    /// clearly central, but repeating it five times should not drown the rest.
    fn weight(&self) -> f32 {
        self.mass.sqrt()
    }
}

/// A query ready for scoring: distinct terms, plus adjacent pairs (indices
/// into `terms`) that were next to each other within one input field.
#[derive(Debug, Default)]
pub struct Query {
    pub terms: Vec<QueryTerm>,
    pub bigrams: Vec<(usize, usize)>,
}

impl Query {
    /// Add one field's text with a weight per occurrence (the business name
    /// usually states the trade in one or two words, so callers weight it
    /// above the description). Bigrams never span fields, so a name ending in
    /// "gas" and a description starting "station" do not form a phrase.
    pub fn add_field(&mut self, field: &str, weight: f32) {
        let mut prev: Option<usize> = None;
        for Term { word, stem } in text::terms(field) {
            let idx = match self.terms.iter().position(|q| q.stem == stem) {
                Some(i) => {
                    self.terms[i].mass += weight;
                    i
                }
                None => {
                    self.terms.push(QueryTerm {
                        word,
                        stem,
                        mass: weight,
                    });
                    self.terms.len() - 1
                }
            };
            if let Some(p) = prev {
                if p != idx && !self.bigrams.contains(&(p, idx)) {
                    self.bigrams.push((p, idx));
                }
            }
            prev = Some(idx);
        }
    }
}

/// One scored candidate with the per-term evidence that produced its score.
#[derive(Debug, Clone)]
pub struct Hit {
    pub doc: u32,
    pub score: f32,
    /// (query term index, contribution), sorted by contribution descending.
    pub contributions: Vec<(usize, f32)>,
}

/// A query term resolved against one corpus: (term id, factor) pairs.
type Expansion = Vec<(u32, f32)>;

impl Corpus {
    fn expand(&self, stem: &str) -> Expansion {
        let mut out: Expansion = Vec::new();
        if let Some(&id) = self.lookup.get(stem) {
            out.push((id, 1.0));
        }
        if stem.is_ascii() {
            if stem.len() >= FWD_MIN_LEN {
                let start = self.terms.partition_point(|t| t.as_str() < stem);
                for (off, t) in self.terms[start..].iter().enumerate() {
                    if !t.starts_with(stem) {
                        break;
                    }
                    let extra = t.len() - stem.len();
                    if (FWD_MIN_EXTRA..=FWD_MAX_EXTRA).contains(&extra) {
                        let id = u32::try_from(start + off).expect("term id fits u32");
                        out.push((id, PREFIX_FACTOR));
                    }
                }
            }
            let min_keep = REV_MIN_LEN.max(stem.len().saturating_sub(REV_MAX_CUT));
            let max_keep = stem.len().saturating_sub(REV_MIN_CUT);
            for keep in min_keep..=max_keep {
                if let Some(&id) = self.lookup.get(&stem[..keep]) {
                    out.push((id, PREFIX_FACTOR));
                }
            }
        }
        out
    }

    fn posting_weight(&self, term: u32, doc: u32) -> Option<f32> {
        let list = &self.postings[term as usize];
        list.binary_search_by_key(&doc, |p| p.doc)
            .ok()
            .map(|i| list[i].weight)
    }

    /// Best contribution of one expanded query term to one document, and the
    /// idf-weighted coverage credit it earns there.
    fn term_doc_score(&self, exp: &Expansion, doc: u32) -> Option<(f32, f32)> {
        let mut best: Option<(f32, f32)> = None;
        for &(id, factor) in exp {
            if let Some(w) = self.posting_weight(id, doc) {
                let c = factor * w * self.idf[id as usize];
                if best.is_none_or(|(b, _)| c > b) {
                    best = Some((c, factor));
                }
            }
        }
        best
    }

    fn stems_match(query_stem: &str, title_stem: &str) -> bool {
        if query_stem == title_stem {
            return true;
        }
        let (q, t) = (query_stem.len(), title_stem.len());
        (q >= FWD_MIN_LEN
            && title_stem.starts_with(query_stem)
            && (FWD_MIN_EXTRA..=FWD_MAX_EXTRA).contains(&(t - q)))
            || (t >= REV_MIN_LEN
                && query_stem.starts_with(title_stem)
                && (REV_MIN_CUT..=REV_MAX_CUT).contains(&(q - t)))
    }

    /// Score `query` against every document and return the best `limit` hits,
    /// best first, ties by code ascending.
    ///
    /// Two passes: a cheap accumulation over the inverted index to find a
    /// candidate pool, then exact per-term scoring with the bigram bonus for
    /// the pool only. That keeps per-call work proportional to the postings
    /// touched rather than to the number of codes.
    pub fn search(&self, query: &Query, limit: usize) -> Vec<Hit> {
        let n_docs = self.docs.len();
        let expansions: Vec<Expansion> = query.terms.iter().map(|q| self.expand(&q.stem)).collect();
        // Each term's importance is the idf of its rarest exact-or-expanded
        // form; terms the corpus does not know cannot discriminate, so they
        // are left out of the coverage denominator.
        let importance: Vec<f32> = expansions
            .iter()
            .zip(&query.terms)
            .map(|(e, q)| {
                q.weight()
                    * e.iter()
                        .map(|&(id, _)| self.idf[id as usize])
                        .fold(0.0, f32::max)
            })
            .collect();
        let total_importance: f32 = importance.iter().sum();
        if total_importance <= 0.0 {
            return Vec::new();
        }

        let mut score = vec![0.0f32; n_docs];
        let mut cover = vec![0.0f32; n_docs];
        let mut term_best = vec![(0.0f32, 0.0f32); n_docs];
        let mut touched: Vec<u32> = Vec::new();
        for (qi, exp) in expansions.iter().enumerate() {
            let qw = query.terms[qi].weight();
            for &(id, factor) in exp {
                let idf = qw * self.idf[id as usize];
                for p in &self.postings[id as usize] {
                    let slot = &mut term_best[p.doc as usize];
                    if slot.0 == 0.0 {
                        touched.push(p.doc);
                    }
                    let c = factor * p.weight * idf;
                    if c > slot.0 {
                        *slot = (c, factor);
                    }
                }
            }
            for &d in &touched {
                let (c, f) = term_best[d as usize];
                score[d as usize] += c;
                cover[d as usize] += importance[qi] * f;
                term_best[d as usize] = (0.0, 0.0);
            }
            touched.clear();
        }

        let coverage = |d: usize| {
            (cover[d] / total_importance)
                .clamp(0.0, 1.0)
                .powf(COVERAGE_EXP)
        };
        let mut pool: Vec<(u32, f32)> = (0..n_docs)
            .filter(|&d| score[d] > 0.0)
            .map(|d| (d as u32, score[d] * coverage(d)))
            .collect();
        sort_by_score(&mut pool);
        pool.truncate(RERANK_POOL);

        let mut hits: Vec<Hit> = pool
            .into_iter()
            .map(|(doc, _)| self.rescore(query, &expansions, &importance, total_importance, doc))
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.doc.cmp(&b.doc)));
        hits.truncate(limit);
        hits
    }

    fn rescore(
        &self,
        query: &Query,
        expansions: &[Expansion],
        importance: &[f32],
        total_importance: f32,
        doc: u32,
    ) -> Hit {
        let mut contributions: Vec<(usize, f32)> = Vec::new();
        let mut cover = 0.0f32;
        for (qi, exp) in expansions.iter().enumerate() {
            if let Some((c, f)) = self.term_doc_score(exp, doc) {
                contributions.push((qi, c * query.terms[qi].weight()));
                cover += importance[qi] * f;
            }
        }
        let title = &self.docs[doc as usize].title_stems;
        for &(a, b) in &query.bigrams {
            let (sa, sb) = (&query.terms[a].stem, &query.terms[b].stem);
            let phrase = title
                .windows(2)
                .any(|w| Self::stems_match(sa, &w[0]) && Self::stems_match(sb, &w[1]));
            if phrase {
                // Credit the bonus to the two words so matched_terms still
                // explains the whole score.
                for slot in contributions.iter_mut() {
                    if slot.0 == a || slot.0 == b {
                        slot.1 *= 1.0 + BIGRAM_BONUS;
                    }
                }
            }
        }
        let coverage = (cover / total_importance)
            .clamp(0.0, 1.0)
            .powf(COVERAGE_EXP);
        for slot in contributions.iter_mut() {
            slot.1 *= coverage;
        }
        contributions.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
        Hit {
            doc,
            score: contributions.iter().map(|c| c.1).sum(),
            contributions,
        }
    }
}

fn sort_by_score(v: &mut [(u32, f32)]) {
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
}

/// All reference data, parsed once.
pub struct Data {
    pub naics: Corpus,
    pub mcc: Corpus,
    /// Every NAICS 2022 code (2- to 6-digit and ranges like "31-33").
    pub naics_titles: HashMap<String, String>,
    /// Every known MCC -> description (ISO 18245 wording preferred).
    pub mcc_descriptions: HashMap<String, String>,
}

pub static DATA: LazyLock<Data> = LazyLock::new(build);

fn read_rows(csv_text: &'static str, what: &str) -> Vec<csv::StringRecord> {
    csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(csv_text.as_bytes())
        .records()
        .map(|r| r.unwrap_or_else(|e| panic!("embedded {what} is malformed: {e}")))
        .collect()
}

fn field(r: &csv::StringRecord, i: usize) -> &str {
    r.get(i).unwrap_or("").trim()
}

/// Split a Census description into (body prose, illustrative examples). The
/// cross-reference section lists *other* industries and is dropped.
fn split_description(desc: &str) -> (&str, &str) {
    let end = desc.find("Cross-References").unwrap_or(desc.len());
    let desc = &desc[..end];
    match desc.find("Illustrative Examples") {
        Some(i) => (&desc[..i], &desc[i + "Illustrative Examples".len()..]),
        None => (desc, ""),
    }
}

fn build() -> Data {
    let titles = read_rows(NAICS_2022_TITLES, "NAICS 2022 titles");
    let mut naics_titles = HashMap::new();
    for r in &titles {
        naics_titles.insert(field(r, 0).to_string(), field(r, 1).to_string());
    }

    // 2017 descriptions keyed by code, plus by title so that 2022 codes that
    // were merely renumbered (511210 -> 513210 "Software Publishers") still
    // get their description. 2017 titles carry stray footnote markers
    // ("Crop ProductionT"), which is why they are trimmed but not used as text.
    let desc_rows = read_rows(NAICS_2017_DESCRIPTIONS, "NAICS 2017 descriptions");
    let mut desc_by_code: HashMap<&str, &str> = HashMap::new();
    let mut desc_by_title: HashMap<String, &str> = HashMap::new();
    for r in &desc_rows {
        let code = field(r, 0);
        if code.len() != 6 {
            continue;
        }
        desc_by_code.insert(code, field(r, 2));
        desc_by_title
            .entry(field(r, 1).to_lowercase())
            .or_insert(field(r, 2));
    }

    let mut six: Vec<(&str, &str)> = titles
        .iter()
        .map(|r| (field(r, 0), field(r, 1)))
        .filter(|(c, _)| c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    six.sort_unstable();
    let mut nb = CorpusBuilder::default();
    for (code, title) in six {
        let doc = nb.add_doc(code, title);
        nb.add_text(doc, title, Source::Title);
        for parent_len in [4, 5] {
            if let Some(pt) = naics_titles.get(&code[..parent_len]) {
                // A 5-digit parent often repeats the leaf title; the max()
                // in add_text keeps that from inflating the weight.
                nb.add_text(doc, pt, Source::Parent);
            }
        }
        let desc = desc_by_code
            .get(code)
            .copied()
            .or_else(|| desc_by_title.get(&title.to_lowercase()).copied());
        if let Some(desc) = desc {
            let (body, examples) = split_description(desc);
            nb.add_text(doc, body, Source::Body);
            nb.add_text(doc, examples, Source::Example);
        }
    }

    let mut mcc_descriptions: HashMap<String, String> = HashMap::new();
    let mut mcc_text: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // ISO first so its wording wins for the public description; Visa fills
    // the codes ISO lacks and adds its wording as extra match text.
    for (src, what) in [(MCC_ISO, "ISO 18245 MCC list"), (MCC_VISA, "Visa MCC list")] {
        for r in read_rows(src, what) {
            let code = field(&r, 0);
            let desc = field(&r, 1);
            if code.len() != 4 || !code.bytes().all(|b| b.is_ascii_digit()) || desc.is_empty() {
                continue;
            }
            mcc_descriptions
                .entry(code.to_string())
                .or_insert_with(|| desc.to_string());
            mcc_text
                .entry(code.to_string())
                .or_default()
                .push(desc.to_string());
        }
    }
    let mut mb = CorpusBuilder::default();
    for (code, texts) in &mcc_text {
        // 3000-3999 are brand-specific codes (individual airlines, hotel
        // chains, car-rental firms). They stay valid for declared_mcc, but a
        // keyword match should land on the generic category instead.
        if code.as_str() >= "3000" && code.as_str() <= "3999" {
            continue;
        }
        let doc = mb.add_doc(code, &mcc_descriptions[code]);
        for t in texts {
            mb.add_text(doc, t, Source::Title);
        }
    }

    Data {
        naics: nb.finish(),
        mcc: mb.finish(),
        naics_titles,
        mcc_descriptions,
    }
}
