//! How phonenumber's patterns are compiled, and how a number's region and type are read.
//!
//! phonenumber keeps the regular expressions of its metadata in one shared LRU cache
//! (`regex_cache`), compiled on first use with the `regex` crate's defaults: Unicode-aware
//! classes and a lazy DFA of up to 2 MB. Every compiled pattern then carries search caches
//! sized for Unicode `\d`, and in an import across six countries those caches were most of
//! capture's heap (37 of 61 MB at the peak in `heaptrack`).
//!
//! The patterns only ever run against digits phonenumber has already normalized to ASCII, so
//! this module compiles them itself, ASCII-only and without a lazy DFA (numbers are at most a
//! few dozen bytes: the other engines are as fast on them), and puts them in the cache under
//! the same sources before phonenumber asks. It does so for every region of a country code
//! the first time a number of that code (or read in a region of that code) is parsed. A
//! pattern that does not compile so, or one evicted from the cache later, is compiled by
//! phonenumber as before: only memory differs, never a result.
//!
//! Each lookup in that cache locks it for the whole match and SipHashes the pattern's source
//! first, and telling a number's region and type takes a dozen lookups (twice the region for
//! +1's 25 regions): 11 % of capture's CPU under load in `perf`, phone numbers read one at a
//! time on both worker threads. So the same compiled patterns are also kept per country code
//! in [`CodePatterns`], and [`classify`] reads region and type from them exactly as
//! phonenumber's `source_for` and `number_type` do, with no lock held while matching.
//! Those are held for good, not evicted: every country code's type patterns at once come to
//! about 23 MB (all 207 codes prepared in one process; the ignored test
//! `every_codes_patterns_fit_in_a_bounded_memory` measures it), a few hundred kB per code.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, RwLock};

use phonenumber::Type;
use phonenumber::country::Id;
use phonenumber::metadata::{DATABASE, Descriptor, Metadata};

/// Compiled phone-number patterns the cache may keep. phonenumber keeps 100 for the whole
/// metadata, fewer than the patterns a handful of regions use, so a mix of countries
/// recompiled regular expressions on nearly every number (a third of an import's CPU in
/// `perf`). A country code's patterns number a few dozen (a few hundred for +1's regions);
/// this holds those of the countries a deployment sees many times over while bounding memory
/// if numbers of every country come.
const PATTERNS_CACHED: usize = 1_000;

/// The country codes prepared so far, with their regions' patterns (`None` when one of them
/// did not compile here: [`classify`] then leaves the code to phonenumber).
static PREPARED: LazyLock<RwLock<HashMap<u16, Option<Arc<CodePatterns>>>>> = LazyLock::new(|| {
    let cache = DATABASE.cache();
    if let Ok(mut cache) = cache.lock() {
        *cache = regex_cache::RegexCache::new(PATTERNS_CACHED);
    }
    RwLock::new(HashMap::new())
});

/// A number-type descriptor: the lengths it allows and its national-number pattern.
#[derive(Debug)]
struct TypePattern {
    possible_length: Vec<u16>,
    national_number: regex::Regex,
}

impl TypePattern {
    /// phonenumber's `Descriptor::is_match`: a possible length, and a match starting at the
    /// first digit (found as phonenumber finds it, leftmost-first and unanchored).
    fn is_match(&self, national: &str) -> bool {
        let length = u16::try_from(national.len()).unwrap_or(u16::MAX);
        if !self.possible_length.is_empty() && !self.possible_length.contains(&length) {
            return false;
        }
        self.national_number
            .find(national)
            .is_some_and(|found| found.start() == 0)
    }
}

/// One region's patterns, in the order phonenumber's `number_type` tries its types.
#[derive(Debug)]
struct RegionPatterns {
    /// `None` for the non-geographic "001" entries (as `Country::id`).
    id: Option<Id>,
    leading_digits: Option<regex::Regex>,
    general: TypePattern,
    /// Premium rate, toll free, shared cost, VoIP, personal number, pager, UAN, voicemail.
    special: Vec<(Type, TypePattern)>,
    fixed_line: Option<TypePattern>,
    mobile: Option<TypePattern>,
    /// Fixed-line and mobile numbers share one pattern: every fixed line may be a mobile.
    fixed_line_is_mobile: bool,
}

impl RegionPatterns {
    /// phonenumber's `validator::number_type`.
    fn number_type(&self, national: &str) -> Type {
        if !self.general.is_match(national) {
            return Type::Unknown;
        }
        if let Some((kind, _)) = self
            .special
            .iter()
            .find(|(_, pattern)| pattern.is_match(national))
        {
            return *kind;
        }
        let mobile = |national: &str| {
            self.mobile
                .as_ref()
                .is_some_and(|pattern| pattern.is_match(national))
        };
        if self
            .fixed_line
            .as_ref()
            .is_some_and(|pattern| pattern.is_match(national))
        {
            return if self.fixed_line_is_mobile || mobile(national) {
                Type::FixedLineOrMobile
            } else {
                Type::FixedLine
            };
        }
        if mobile(national) {
            return Type::Mobile;
        }
        Type::Unknown
    }
}

/// The patterns of a country code's regions, in phonenumber's order for the code.
#[derive(Debug)]
pub struct CodePatterns {
    regions: Vec<RegionPatterns>,
}

impl CodePatterns {
    /// phonenumber's `validator::source_for`: the region a national number of this code
    /// belongs to.
    fn region_of(&self, national: &str) -> Option<&RegionPatterns> {
        // A code of one region (or a non-geographic one): that region, whatever the number.
        if self.regions.len() <= 1 {
            return self.regions.first();
        }
        self.regions
            .iter()
            .find(|region| match &region.leading_digits {
                Some(pattern) => pattern
                    .find(national)
                    .is_some_and(|found| found.start() == 0),
                None => region.number_type(national) != Type::Unknown,
            })
    }
}

/// Returns the region (`None`: no region, or a non-geographic code) and the type of the
/// national number `national` (its digits as phonenumber writes `national().value()`) of
/// country code `code`, as phonenumber's `Country::id` and `PhoneNumber::number_type` would;
/// `None` when the code's patterns are not prepared here, for phonenumber to answer.
pub fn classify(code: u16, national: &str) -> Option<(Option<Id>, Type)> {
    let patterns = prepare_code(code)?;
    Some(match patterns.region_of(national) {
        Some(region) => (region.id, region.number_type(national)),
        None => (None, Type::Unknown),
    })
}

/// Makes sure the patterns of every region of country code `code` are compiled as this
/// module compiles them (and in phonenumber's cache); cheap once done. Returns them, or
/// `None` when one of them does not compile here.
pub fn prepare_code(code: u16) -> Option<Arc<CodePatterns>> {
    if let Ok(prepared) = PREPARED.read()
        && let Some(patterns) = prepared.get(&code)
    {
        return patterns.clone();
    }
    // Compiled holding no lock: numbers of other codes go on being read meanwhile. Two
    // threads may both compile a code the first time; one of them stores it.
    let regions = regions_of(code);
    let mut compiled: HashMap<&'static str, Option<regex::Regex>> = HashMap::new();
    for metadata in &regions {
        for source in pattern_sources(metadata) {
            compiled
                .entry(source)
                .or_insert_with(|| compile(source).ok());
        }
    }
    let patterns = code_patterns(&regions, &compiled).map(Arc::new);
    let cache = DATABASE.cache();
    if let Ok(mut cache) = cache.lock() {
        for (source, regex) in compiled {
            if let Some(regex) = regex {
                cache.insert(source.to_owned(), regex);
            }
        }
    }
    let Ok(mut prepared) = PREPARED.write() else {
        return patterns;
    };
    prepared.entry(code).or_insert(patterns).clone()
}

/// The metadata of a country code's regions, in the order phonenumber's `source_for` tries
/// them; a non-geographic code ("001") has the code's own entry, as there.
fn regions_of(code: u16) -> Vec<&'static Metadata> {
    let by_code = DATABASE.by_code(&code).unwrap_or_default();
    DATABASE
        .region(&code)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|id| match id {
            "001" => by_code.first().copied(),
            id => DATABASE.by_id(id),
        })
        .collect()
}

/// Builds the code's [`CodePatterns`] from the regexes compiled for its sources; `None` when
/// one of them did not compile.
fn code_patterns(
    regions: &[&'static Metadata],
    compiled: &HashMap<&'static str, Option<regex::Regex>>,
) -> Option<CodePatterns> {
    let regex = |source: &str| compiled.get(source).cloned().flatten();
    let pattern = |descriptor: &Descriptor| {
        Some(TypePattern {
            possible_length: descriptor.possible_length().to_vec(),
            national_number: regex(descriptor.national_number().as_str())?,
        })
    };
    let optional = |descriptor: Option<&Descriptor>| match descriptor {
        Some(descriptor) => pattern(descriptor).map(Some),
        None => Some(None),
    };
    let mut built = Vec::with_capacity(regions.len());
    for metadata in regions {
        let descriptors = metadata.descriptors();
        let mut special = Vec::new();
        for (kind, descriptor) in [
            (Type::PremiumRate, descriptors.premium_rate()),
            (Type::TollFree, descriptors.toll_free()),
            (Type::SharedCost, descriptors.shared_cost()),
            (Type::Voip, descriptors.voip()),
            (Type::PersonalNumber, descriptors.personal_number()),
            (Type::Pager, descriptors.pager()),
            (Type::Uan, descriptors.uan()),
            (Type::Voicemail, descriptors.voicemail()),
        ] {
            if let Some(descriptor) = descriptor {
                special.push((kind, pattern(descriptor)?));
            }
        }
        let leading_digits = match metadata.leading_digits() {
            Some(pattern) => Some(regex(pattern.as_str())?),
            None => None,
        };
        built.push(RegionPatterns {
            id: metadata.id().parse().ok(),
            leading_digits,
            general: pattern(descriptors.general())?,
            special,
            fixed_line: optional(descriptors.fixed_line())?,
            mobile: optional(descriptors.mobile())?,
            fixed_line_is_mobile: descriptors
                .fixed_line()
                .map(|descriptor| descriptor.national_number().as_str())
                == descriptors
                    .mobile()
                    .map(|descriptor| descriptor.national_number().as_str()),
        });
    }
    Some(CodePatterns { regions: built })
}

/// Makes sure the patterns of region `region`'s country code are prepared.
pub fn prepare_region(region: Id) {
    if let Some(metadata) = DATABASE.by_id(region.as_ref()) {
        let _prepared = prepare_code(metadata.country_code());
    }
}

/// Loads phonenumber's metadata and prepares the patterns of the country codes of `regions`,
/// then reads one number in each, so that the first leads after a start do not pay for it
/// (the metadata alone takes tens of milliseconds; a country code's patterns, more): capture
/// does this before it reports itself serving (B15). Returns how many country codes were
/// prepared.
pub fn warm(regions: impl IntoIterator<Item = Id>) -> usize {
    let mut codes = HashSet::new();
    for region in regions {
        let Some(metadata) = DATABASE.by_id(region.as_ref()) else {
            continue;
        };
        let code = metadata.country_code();
        if codes.insert(code) {
            let _prepared = prepare_code(code);
            // Any string reaches the parser's own lazily built state; whether it is a number
            // does not matter.
            let _read = phonenumber::parse(Some(region), "2015550123");
        }
    }
    codes.len()
}

/// Compiles `source` as phonenumber does (its patterns are written with spaces), but
/// ASCII-only and without a lazy DFA.
fn compile(source: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(source)
        .ignore_whitespace(true)
        .unicode(false)
        .dfa_size_limit(0)
        .build()
}

/// Every number-type descriptor of a region's metadata.
pub(crate) fn descriptors(
    metadata: &'static Metadata,
) -> impl Iterator<Item = &'static Descriptor> {
    let descriptors = metadata.descriptors();
    [
        Some(descriptors.general()),
        descriptors.fixed_line(),
        descriptors.mobile(),
        descriptors.toll_free(),
        descriptors.premium_rate(),
        descriptors.shared_cost(),
        descriptors.personal_number(),
        descriptors.voip(),
        descriptors.pager(),
        descriptors.uan(),
        descriptors.voicemail(),
        descriptors.emergency(),
        descriptors.short_code(),
        descriptors.standard_rate(),
        descriptors.carrier(),
        descriptors.no_international(),
    ]
    .into_iter()
    .flatten()
}

/// Every pattern of a region's metadata phonenumber matches numbers against.
fn pattern_sources(metadata: &'static Metadata) -> Vec<&'static str> {
    let mut sources: Vec<&str> = descriptors(metadata)
        .map(|descriptor| descriptor.national_number().as_str())
        .collect();
    sources.extend(
        [
            metadata.national_prefix_for_parsing(),
            metadata.international_prefix(),
            metadata.leading_digits(),
        ]
        .into_iter()
        .flatten()
        .map(|pattern| pattern.as_str()),
    );
    for format in metadata
        .formats()
        .iter()
        .chain(metadata.international_formats())
    {
        sources.push(format.pattern().as_str());
        sources.extend(
            format
                .leading_digits()
                .iter()
                .map(|pattern| pattern.as_str()),
        );
    }
    sources
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The regions whose patterns are held for `code`.
    fn regions_prepared(code: u16) -> Vec<Option<Id>> {
        let prepared = PREPARED.read().expect("not poisoned");
        prepared
            .get(&code)
            .cloned()
            .flatten()
            .map(|patterns| patterns.regions.iter().map(|region| region.id).collect())
            .unwrap_or_default()
    }

    /// Every example number of a region's metadata and near misses of it: a digit more, a
    /// digit less, a leading 0 or 1.
    fn examples_and_near_misses(metadata: &'static Metadata) -> Vec<String> {
        descriptors(metadata)
            .filter_map(|descriptor| descriptor.example())
            .flat_map(|example| {
                [
                    example.to_owned(),
                    format!("{example}9"),
                    example[..example.len().saturating_sub(1)].to_owned(),
                    format!("0{example}"),
                    format!("1{example}"),
                ]
            })
            .collect()
    }

    /// phonenumber's own compilation of `source`.
    fn phonenumbers_own(source: &str) -> regex::Regex {
        regex::RegexBuilder::new(source)
            .ignore_whitespace(true)
            .build()
            .unwrap_or_else(|err| panic!("{source}: {err}"))
    }

    #[test]
    fn every_pattern_of_the_metadata_compiles_ascii_only() {
        let mut failed = Vec::new();
        let mut count = 0;
        for metadata in DATABASE.iter() {
            for source in pattern_sources(metadata) {
                count += 1;
                if compile(source).is_err() {
                    failed.push((metadata.id().to_owned(), source.to_owned()));
                }
            }
        }
        assert!(count > 3_000, "only {count} patterns found");
        assert!(
            failed.is_empty(),
            "{} do not compile: {failed:?}",
            failed.len()
        );
    }

    #[test]
    fn patterns_compiled_here_find_what_phonenumbers_own_find() {
        // Every pattern of these countries' regions, against every example number of the
        // region and near misses of it (a digit more, a digit less, a leading 0 or 1).
        let mut compared = 0;
        for code in [1, 7, 33, 44, 49, 55, 61, 81, 86, 91, 234, 971] {
            for metadata in DATABASE.by_code(&code).unwrap_or_default() {
                let inputs = examples_and_near_misses(metadata);
                for source in pattern_sources(metadata) {
                    let (ours, theirs) =
                        (compile(source).expect("compiles"), phonenumbers_own(source));
                    for input in &inputs {
                        assert_eq!(
                            ours.find(input).map(|found| found.range()),
                            theirs.find(input).map(|found| found.range()),
                            "{} pattern {source} on {input}",
                            metadata.id()
                        );
                        compared += 1;
                    }
                }
            }
        }
        assert!(compared > 10_000, "only {compared} comparisons");
    }

    #[test]
    fn classify_reads_region_and_type_as_phonenumber_does() {
        // +1 has 25 regions told apart by type (US, CA, …) or leading digits (the Caribbean);
        // +39 numbers keep a leading zero; +7 is two regions; +800 and +882 have no region.
        let mut compared = 0;
        let mut kinds = HashSet::new();
        for code in [1, 7, 39, 44, 49, 55, 61, 262, 800, 882] {
            let inputs: Vec<String> = DATABASE
                .by_code(&code)
                .unwrap_or_default()
                .into_iter()
                .flat_map(examples_and_near_misses)
                .collect();
            for input in inputs {
                let Ok(number) = phonenumber::parse(None, format!("+{code} {input}")) else {
                    continue;
                };
                let national = number.national().value().to_string();
                let theirs = (number.country().id(), number.number_type(&DATABASE));
                let ours = classify(number.code().value(), &national)
                    .unwrap_or_else(|| panic!("+{code}'s patterns are prepared here"));
                assert_eq!(ours, theirs, "+{code} {input}");
                kinds.insert(format!("{:?}", ours.1));
                compared += 1;
            }
        }
        assert!(compared > 1_000, "only {compared} numbers compared");
        // The comparison reached every branch: special types, both fixed-line answers, none.
        for kind in [
            "TollFree",
            "PremiumRate",
            "FixedLine",
            "FixedLineOrMobile",
            "Mobile",
            "Unknown",
        ] {
            assert!(kinds.contains(kind), "no {kind} among {kinds:?}");
        }
    }

    #[test]
    fn a_code_of_no_region_has_no_region_and_no_type() {
        // 999 is no country code: the metadata lists no region for it, and phonenumber's
        // `source_for` (private) then finds none, so no metadata and no type.
        assert_eq!(DATABASE.region(&999), None);
        assert_eq!(classify(999, "2015550123"), Some((None, Type::Unknown)));
    }

    /// The figure in the module's documentation: what holding every country code's patterns
    /// costs. Run alone, as it reads the process's RSS:
    /// `cargo test -p leadflow-capture --lib every_codes_patterns -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement: run alone, see above"]
    fn every_codes_patterns_fit_in_a_bounded_memory() {
        fn rss_kib() -> u64 {
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|status| {
                    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
                    line.split_whitespace().nth(1)?.parse().ok()
                })
                .expect("VmRSS in /proc/self/status")
        }
        // The metadata itself loaded first: only the patterns are measured.
        assert!(prepare_code(1).is_some());
        let before = rss_kib();
        let mut codes: Vec<u16> = DATABASE.iter().map(Metadata::country_code).collect();
        codes.sort_unstable();
        codes.dedup();
        for code in &codes {
            let _prepared = prepare_code(*code);
        }
        let grown_mib = rss_kib().saturating_sub(before) as f64 / 1024.0;
        eprintln!(
            "{} country codes prepared: RSS grew {grown_mib:.1} MiB",
            codes.len()
        );
        assert!(codes.len() > 200, "only {} codes", codes.len());
        assert!(grown_mib < 48.0, "{grown_mib:.1} MiB");
    }

    #[test]
    fn numbers_are_read_as_before_once_their_patterns_are_prepared() {
        // What phonenumber's own compilation gives for each (checked with it, unprepared).
        let numbers = [
            (
                "+1 (415) 555-0132",
                "US",
                Some(("+14155550132", phonenumber::Type::FixedLineOrMobile)),
            ),
            (
                "+44 7911 123456",
                "US",
                Some(("+447911123456", phonenumber::Type::Mobile)),
            ),
            (
                "07911 123456",
                "GB",
                Some(("+447911123456", phonenumber::Type::Mobile)),
            ),
            // Ofcom's range for drama: a number, of no type.
            ("07700 900123", "GB", None),
            (
                "+49 151 23456789",
                "DE",
                Some(("+4915123456789", phonenumber::Type::Mobile)),
            ),
            // phonenumber 0.3 reads no digits of other scripts, before or after.
            ("０７９１１ １２３４５６", "GB", None),
            ("+٩١ ٩٨٧٦٥ ٤٣٢١٠", "IN", None),
            ("12", "US", None),
        ];
        for code in [1, 44, 49, 91] {
            assert!(prepare_code(code).is_some(), "+{code} compiles here");
        }
        // Held here whatever phonenumber's cache has evicted since (other tests of this
        // process fill it too).
        assert_eq!(regions_prepared(44).first(), Some(&"GB".parse().ok()));
        for (raw, region, expected) in numbers {
            let region: phonenumber::country::Id = region.parse().expect("a region");
            let international = raw.starts_with('+');
            let read = phonenumber::parse((!international).then_some(region), raw)
                .ok()
                .map(|number| {
                    let kind = number.number_type(&DATABASE);
                    (
                        number.format().mode(phonenumber::Mode::E164).to_string(),
                        kind,
                    )
                })
                .filter(|(_, kind)| *kind != phonenumber::Type::Unknown);
            let expected = expected.map(|(e164, kind)| (e164.to_owned(), kind));
            assert_eq!(read, expected, "{raw}");
        }
    }

    #[test]
    fn warming_prepares_each_country_code_of_the_regions_once() {
        let regions = ["US", "CA", "BR"].map(|region| region.parse().expect("a region"));
        // US and CA share +1; BR is +55.
        assert_eq!(warm(regions), 2);
        let done = PREPARED.read().expect("not poisoned");
        assert!(
            done.get(&1).is_some_and(Option::is_some) && done.get(&55).is_some_and(Option::is_some),
            "{:?}",
            done.keys()
        );
        assert_eq!(regions_prepared(55), [Some(Id::BR)]);
        assert!(regions_prepared(1).len() > 20, "+1's regions");
    }
}
