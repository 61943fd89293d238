//! How phonenumber's patterns are compiled.
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

use std::collections::HashSet;
use std::sync::{LazyLock, RwLock};

use phonenumber::metadata::{DATABASE, Descriptor, Metadata};

/// Compiled phone-number patterns the cache may keep. phonenumber keeps 100 for the whole
/// metadata, fewer than the patterns a handful of regions use, so a mix of countries
/// recompiled regular expressions on nearly every number (a third of an import's CPU in
/// `perf`). A country code's patterns number a few dozen (a few hundred for +1's regions);
/// this holds those of the countries a deployment sees many times over while bounding memory
/// if numbers of every country come.
const PATTERNS_CACHED: usize = 1_000;

/// Country codes whose regions' patterns are in the cache, compiled here.
static PREPARED: LazyLock<RwLock<HashSet<u16>>> = LazyLock::new(|| {
    let cache = DATABASE.cache();
    if let Ok(mut cache) = cache.lock() {
        *cache = regex_cache::RegexCache::new(PATTERNS_CACHED);
    }
    RwLock::new(HashSet::new())
});

/// Makes sure the patterns of every region of country code `code` are compiled as this
/// module compiles them; cheap once done.
pub fn prepare_code(code: u16) {
    if PREPARED
        .read()
        .is_ok_and(|prepared| prepared.contains(&code))
    {
        return;
    }
    // Compiled holding no lock: numbers of other codes go on being read meanwhile. Two
    // threads may both compile a code the first time; one of them stores it.
    let compiled: Vec<(String, regex::Regex)> = DATABASE
        .by_code(&code)
        .unwrap_or_default()
        .into_iter()
        .flat_map(pattern_sources)
        .filter_map(|source| Some((source.to_owned(), compile(source).ok()?)))
        .collect();
    let Ok(mut prepared) = PREPARED.write() else {
        return;
    };
    if !prepared.insert(code) {
        return;
    }
    let cache = DATABASE.cache();
    let Ok(mut cache) = cache.lock() else {
        return;
    };
    for (source, regex) in compiled {
        cache.insert(source, regex);
    }
}

/// Makes sure the patterns of region `region`'s country code are prepared.
pub fn prepare_region(region: phonenumber::country::Id) {
    if let Some(metadata) = DATABASE.by_id(region.as_ref()) {
        prepare_code(metadata.country_code());
    }
}

/// Loads phonenumber's metadata and prepares the patterns of the country codes of `regions`,
/// then reads one number in each, so that the first leads after a start do not pay for it
/// (the metadata alone takes tens of milliseconds; a country code's patterns, more): capture
/// does this before it reports itself serving (B15). Returns how many country codes were
/// prepared.
pub fn warm(regions: impl IntoIterator<Item = phonenumber::country::Id>) -> usize {
    let mut codes = HashSet::new();
    for region in regions {
        let Some(metadata) = DATABASE.by_id(region.as_ref()) else {
            continue;
        };
        let code = metadata.country_code();
        if codes.insert(code) {
            prepare_code(code);
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
pub(crate) fn descriptors(metadata: &Metadata) -> impl Iterator<Item = &Descriptor> {
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
fn pattern_sources(metadata: &Metadata) -> Vec<&str> {
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
                let examples: Vec<&str> = descriptors(metadata)
                    .filter_map(|descriptor| descriptor.example())
                    .collect();
                let mut inputs: Vec<String> = Vec::new();
                for example in examples {
                    inputs.push(example.to_owned());
                    inputs.push(format!("{example}9"));
                    inputs.push(example[..example.len().saturating_sub(1)].to_owned());
                    inputs.push(format!("0{example}"));
                    inputs.push(format!("1{example}"));
                }
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
            prepare_code(code);
        }
        let cache = DATABASE.cache();
        let gb = DATABASE
            .by_id("GB")
            .map(pattern_sources)
            .unwrap_or_default();
        assert!(
            gb.iter().all(|source| cache
                .lock()
                .is_ok_and(|mut cache| cache.contains_key(*source))),
            "the GB patterns are cached"
        );
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
        assert!(done.contains(&1) && done.contains(&55), "{done:?}");
        let cache = DATABASE.cache();
        let brazil = DATABASE
            .by_id("BR")
            .map(pattern_sources)
            .unwrap_or_default();
        assert!(!brazil.is_empty());
        assert!(
            brazil.iter().all(|source| cache
                .lock()
                .is_ok_and(|mut cache| cache.contains_key(*source))),
            "the BR patterns are cached"
        );
    }
}
