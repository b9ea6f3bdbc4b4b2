//! SMILES -> Morgan fingerprint, bit-identical to RDKit.
//!
//! The reference is RDKit 2026.09's
//! `rdFingerprintGenerator.GetMorganGenerator(radius=r, fpSize=n, includeChirality=chirality)`
//! applied to `Chem.MolFromSmiles(smiles)` (default sanitization): `GetFingerprint` for bits,
//! `GetCountFingerprint` for counts. The computation is done by the pure-Rust `chematic-fp`
//! port (`rdkit_morgan_bitvec` / `rdkit_morgan_fingerprint`), which supports radius 0..=3 and
//! widths 128, 256, 512, 1024, 2048; other values are rejected, not approximated.
//! `tests/fingerprints.rs` compares every molecule in `data/molecules/` against RDKit itself.

use chematic_fp::{
    rdkit_morgan_bitvec, rdkit_morgan_fingerprint, RdkitMorganConfig, RdkitMorganFpSize,
    RdkitMorganRadius,
};

use crate::error::{Error, Result};

/// Morgan radii this crate computes bit-identically to RDKit.
pub const SUPPORTED_RADII: [u32; 4] = [0, 1, 2, 3];
/// Fingerprint widths this crate computes bit-identically to RDKit.
pub const SUPPORTED_N_BITS: [usize; 5] = [128, 256, 512, 1024, 2048];

/// An RDKit-compatible Morgan fingerprint generator. Cheap to copy; holds no state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MorganFeaturizer {
    radius: u32,
    n_bits: usize,
    counts: bool,
    chirality: bool,
    config: ConfigKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConfigKey(RdkitMorganRadius, RdkitMorganFpSize);

impl MorganFeaturizer {
    /// A bit fingerprint (`counts = false`, `chirality = false`) of the given radius and width.
    pub fn new(radius: u32, n_bits: usize) -> Result<Self> {
        let r = match radius {
            0 => RdkitMorganRadius::R0,
            1 => RdkitMorganRadius::R1,
            2 => RdkitMorganRadius::R2,
            3 => RdkitMorganRadius::R3,
            _ => {
                return Err(Error::UnsupportedFeaturizer {
                    field: "radius",
                    value: radius.to_string(),
                    supported: "radius must be 0, 1, 2 or 3 (the radii checked against RDKit)",
                });
            }
        };
        let n = match n_bits {
            128 => RdkitMorganFpSize::B128,
            256 => RdkitMorganFpSize::B256,
            512 => RdkitMorganFpSize::B512,
            1024 => RdkitMorganFpSize::B1024,
            2048 => RdkitMorganFpSize::B2048,
            _ => {
                return Err(Error::UnsupportedFeaturizer {
                    field: "n_bits",
                    value: n_bits.to_string(),
                    supported: "n_bits must be 128, 256, 512, 1024 or 2048 (the widths checked against RDKit)",
                });
            }
        };
        Ok(MorganFeaturizer {
            radius,
            n_bits,
            counts: false,
            chirality: false,
            config: ConfigKey(r, n),
        })
    }

    /// `true`: [`features_into`](Self::features_into) writes the number of environments folded
    /// onto each bit (RDKit `GetCountFingerprint`) instead of 0/1.
    pub fn with_counts(mut self, counts: bool) -> Self {
        self.counts = counts;
        self
    }

    /// RDKit's `includeChirality`.
    pub fn with_chirality(mut self, chirality: bool) -> Self {
        self.chirality = chirality;
        self
    }

    /// Morgan radius.
    pub fn radius(&self) -> u32 {
        self.radius
    }

    /// Fingerprint width (length of the dense vector).
    pub fn n_bits(&self) -> usize {
        self.n_bits
    }

    /// Whether features are counts.
    pub fn counts(&self) -> bool {
        self.counts
    }

    /// Whether chirality is included.
    pub fn chirality(&self) -> bool {
        self.chirality
    }

    fn rdkit_config(&self) -> RdkitMorganConfig {
        RdkitMorganConfig {
            radius: self.config.0,
            fp_size: self.config.1,
            include_chirality: self.chirality,
        }
    }

    /// Ascending indices of the set bits (RDKit `GetFingerprint(mol).GetOnBits()`).
    pub fn on_bits(&self, smiles: &str) -> Result<Vec<u32>> {
        let mol = parse(smiles)?;
        let fp = rdkit_morgan_bitvec(&mol, &self.rdkit_config())
            .map_err(|e| invalid(smiles, e.to_string()))?;
        let mut bits = Vec::new();
        for (byte_index, byte) in fp.to_le_bytes().into_iter().enumerate() {
            let mut b = byte;
            while b != 0 {
                let bit = b.trailing_zeros();
                bits.push(byte_index as u32 * 8 + bit);
                b &= b - 1;
            }
        }
        Ok(bits)
    }

    /// `(bit, count)` pairs, ascending by bit (RDKit `GetCountFingerprint(mol).GetNonzeroElements()`).
    pub fn bit_counts(&self, smiles: &str) -> Result<Vec<(u32, u32)>> {
        let mol = parse(smiles)?;
        let fp = rdkit_morgan_fingerprint(&mol, &self.rdkit_config())
            .map_err(|e| invalid(smiles, e.to_string()))?;
        let mut counts: Vec<(u32, u32)> = fp
            .folded_counts
            .into_iter()
            .map(|(bit, c)| (bit as u32, c))
            .collect();
        counts.sort_unstable();
        Ok(counts)
    }

    /// Writes the dense feature vector into `out` (`out.len()` must be [`n_bits`](Self::n_bits)):
    /// 0/1 per bit, or counts when [`counts`](Self::counts) is set.
    pub fn features_into(&self, smiles: &str, out: &mut [f32]) -> Result<()> {
        if out.len() != self.n_bits {
            return Err(Error::InvalidInput(format!(
                "features_into: output slice has {} elements, the featurizer makes {}",
                out.len(),
                self.n_bits
            )));
        }
        out.fill(0.0);
        if self.counts {
            for (bit, c) in self.bit_counts(smiles)? {
                out[bit as usize] = c as f32;
            }
        } else {
            for bit in self.on_bits(smiles)? {
                out[bit as usize] = 1.0;
            }
        }
        Ok(())
    }

    /// The dense feature vector, `n_bits` long.
    pub fn features(&self, smiles: &str) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.n_bits];
        self.features_into(smiles, &mut out)?;
        Ok(out)
    }
}

fn invalid(smiles: &str, reason: String) -> Error {
    Error::InvalidSmiles {
        smiles: smiles.to_string(),
        reason,
    }
}

/// Element symbols of the old IUPAC placeholder names RDKit still reads, and what they are now.
const PLACEHOLDER_SYMBOLS: [(&str, &str); 7] = [
    ("Uub", "Cn"),
    ("Uut", "Nh"),
    ("Uuq", "Fl"),
    ("Uup", "Mc"),
    ("Uuh", "Lv"),
    ("Uus", "Ts"),
    ("Uuo", "Og"),
];

/// The largest isotope number RDKit's SMILES parser reads (a larger one is a syntax error).
const MAX_ISOTOPE_DIGITS_VALUE: u64 = 2_147_483_639;

/// Brings `smiles` to the text chematic must parse to agree with RDKit's `MolFromSmiles`, or
/// rejects it where RDKit does and chematic alone would not:
///
/// * RDKit reads the SMILES up to the first space or tab (not at the start) and takes the rest
///   as the molecule's name (`CCO ethanol`); leading spaces, tabs and line breaks and trailing line
///   breaks are ignored. A CXSMILES extension (`CC |$a;b$|`) and any other whitespace or control
///   character are refused here (RDKit reads some of them; docs/models.md lists the differences).
/// * Empty components and branches are syntax errors in RDKit: `C..C`, `.C`, `C.`, `C()C`,
///   `C(=)C`, `C(.C)C`, `C((C))C`.
/// * Isotopes: RDKit refuses leading zeros (`[013C]`) and numbers above 2147483639, and keeps
///   the number modulo 65536 (`[65537C]` is `[1C]`, `[65536C]` is `[C]`); chematic saturates
///   at 65535, so the number is rewritten.
/// * `[Uuo]`, `[Uup]`, … (placeholder names of elements 112–118) are the elements' symbols.
fn rdkit_smiles(smiles: &str) -> Result<std::borrow::Cow<'_, str>> {
    use std::borrow::Cow;
    let mut s = smiles;
    if let Some(i) = s.find([' ', '\t']).filter(|&i| i > 0) {
        if s[i + 1..].trim_start().starts_with('|') {
            return Err(invalid(
                smiles,
                "CXSMILES extensions ('|...|' after the SMILES) are not supported; remove them"
                    .into(),
            ));
        }
        s = &s[..i];
    }
    let s = s
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .trim_end_matches(['\n', '\r']);
    if let Some((i, c)) = s
        .char_indices()
        .find(|(_, c)| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            smiles,
            format!(
                "{c:?} at position {i} inside the SMILES; a SMILES is one line without spaces (a name may follow after a space or tab)"
            ),
        ));
    }
    let b = s.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'[' => {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                let digits = &s[start..j];
                let mut replacement: Option<String> = None;
                if !digits.is_empty() {
                    let value = digits
                        .parse::<u64>()
                        .ok()
                        .filter(|v| *v <= MAX_ISOTOPE_DIGITS_VALUE);
                    let Some(value) = value.filter(|_| digits == "0" || !digits.starts_with('0'))
                    else {
                        return Err(invalid(
                            smiles,
                            format!(
                                "isotope {digits} at position {start}: RDKit reads isotope numbers without leading zeros, up to {MAX_ISOTOPE_DIGITS_VALUE}"
                            ),
                        ));
                    };
                    let kept = value % 65_536;
                    if kept.to_string() != digits || kept == 0 {
                        replacement = Some(if kept == 0 {
                            String::new()
                        } else {
                            kept.to_string()
                        });
                    }
                }
                let mut end = j;
                let mut symbol: Option<&str> = None;
                if let Some((old, new)) = PLACEHOLDER_SYMBOLS
                    .iter()
                    .find(|(old, _)| s[j..].starts_with(old))
                {
                    symbol = Some(new);
                    end = j + old.len();
                }
                if replacement.is_some() || symbol.is_some() {
                    let o = out.get_or_insert_with(String::new);
                    o.push_str(&s[copied..start]);
                    o.push_str(replacement.as_deref().unwrap_or(digits));
                    o.push_str(symbol.unwrap_or(&s[j..end]));
                    copied = end;
                }
                // The rest of a bracket atom holds no '.', '(' or ')'.
                i = s[end..].find(']').map_or(b.len(), |k| end + k + 1);
                continue;
            }
            b'.' => {
                let prev = if i == 0 { None } else { Some(b[i - 1]) };
                let next = b.get(i + 1).copied();
                if prev.is_none() || next.is_none() || next == Some(b'.') || prev == Some(b'(') {
                    return Err(invalid(
                        smiles,
                        format!(
                            "empty component at position {i} ('.' must separate two molecules)"
                        ),
                    ));
                }
            }
            b'(' => {
                // chematic accepts a bond symbol in front of a branch ("C=(C)C"); RDKit's SMILES
                // grammar does not (found by the random-edit test in tests/fingerprints.rs).
                if let Some(&c) = i.checked_sub(1).and_then(|p| b.get(p)) {
                    if matches!(c, b'-' | b'=' | b'#' | b'$' | b':' | b'/' | b'\\' | b'.') {
                        return Err(invalid(
                            smiles,
                            format!(
                                "bond symbol '{}' before a branch at position {} (RDKit rejects this syntax)",
                                c as char,
                                i - 1
                            ),
                        ));
                    }
                }
                // A branch holds an atom: '(' followed by bonds only and then ')' or '(' is empty.
                let mut j = i + 1;
                while j < b.len() && matches!(b[j], b'-' | b'=' | b'#' | b'$' | b':' | b'/' | b'\\')
                {
                    j += 1;
                }
                if matches!(b.get(j), Some(b')' | b'(' | b'.') | None) {
                    return Err(invalid(
                        smiles,
                        format!("empty branch at position {i} (a branch must hold an atom)"),
                    ));
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(match out {
        None => Cow::Borrowed(s),
        Some(mut o) => {
            o.push_str(&s[copied..]);
            Cow::Owned(o)
        }
    })
}

/// Parses like `Chem.MolFromSmiles`: syntax errors and the sanitization failures RDKit reports
/// (valence, kekulization) are errors. Error messages quote the SMILES as given.
fn parse(given: &str) -> Result<chematic_core::Molecule> {
    let text = rdkit_smiles(given)?;
    let mol = chematic_smiles::parse(&text).map_err(|e| invalid(given, e.to_string()))?;
    if mol.atom_count() == 0 {
        return Err(invalid(given, "no atoms".into()));
    }
    // chematic parses some molecules RDKit's sanitization rejects (e.g. pentavalent carbon,
    // non-kekulizable aromatic rings) and would fingerprint them; RDKit's MolFromSmiles
    // returns None for them, so they are errors here too. The check is the port's emulation
    // of MolFromSmiles' sanitization (DetectChemistryProblems on the unsanitized molecule is
    // cheaper but misses e.g. the five-valent carbon in `[O-]n1cccc=c1=S`). `Unsupported`
    // means the port cannot model the molecule, not that RDKit rejects it: those go on to the
    // fingerprint, which reports its own errors.
    if let Err(chematic_smiles::RdkitSmilesError::Sanitization(msg)) =
        chematic_smiles::rdkit_sanitized_model(&mol)
    {
        return Err(invalid(
            given,
            format!("RDKit sanitization rejects it: {msg}"),
        ));
    }
    Ok(mol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_settings_are_rejected() {
        assert!(matches!(
            MorganFeaturizer::new(4, 2048),
            Err(Error::UnsupportedFeaturizer {
                field: "radius",
                ..
            })
        ));
        let e = MorganFeaturizer::new(2, 1000).unwrap_err();
        assert!(e.to_string().contains("n_bits = 1000"), "{e}");
    }

    #[test]
    fn ethanol_r2_2048() {
        // RDKit 2026.09: GetMorganGenerator(radius=2, fpSize=2048).GetFingerprint(CCO).GetOnBits()
        let f = MorganFeaturizer::new(2, 2048).unwrap();
        assert_eq!(f.on_bits("CCO").unwrap(), [80, 222, 294, 807, 1057, 1410]);
        let dense = f.features("CCO").unwrap();
        assert_eq!(dense.iter().filter(|&&x| x == 1.0).count(), 6);
        assert_eq!(dense[1057], 1.0);
    }

    #[test]
    fn invalid_smiles_error_names_smiles_and_reason() {
        let f = MorganFeaturizer::new(2, 2048).unwrap();
        // All rejected by RDKit 2026.09 Chem.MolFromSmiles (syntax, valence, kekulization), except
        // "": RDKit returns an empty molecule, phenix refuses a SMILES without atoms.
        for s in [
            "C1CC",
            "C(C",
            "",
            "[Xx]",
            "C(C)(C)(C)(C)C",
            "c1cccc1",
            "CO(C)C",
            "N(=O)(=O)=O",
            "[NH4]",
            "Cl(Cl)Cl",
            "FC(F)(F)(F)F",
            "n1cccc1",
            "B(C)(C)(C)C",
            "C=(C)C",
            "CC.(C)",
        ] {
            let e = f.on_bits(s).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, Error::InvalidSmiles { .. }), "{msg}");
            assert!(msg.contains(&format!("{s:?}")), "{msg}");
        }
        // ... and accepted by it.
        for s in [
            "[Na+].[Cl-]",
            "c1ccncc1C(=O)",
            "[NH4+]",
            "c1cc[nH]c1",
            "[2H]C",
        ] {
            f.on_bits(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }
}
