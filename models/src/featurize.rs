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

/// Parses like `Chem.MolFromSmiles`: syntax errors and the sanitization failures RDKit reports
/// (valence, kekulization) are errors.
fn parse(smiles: &str) -> Result<chematic_core::Molecule> {
    // chematic accepts a bond symbol in front of a branch ("C=(C)C"); RDKit's SMILES grammar
    // does not (found by the random-edit test in tests/fingerprints.rs).
    let mut in_bracket = false;
    for (i, w) in smiles.as_bytes().windows(2).enumerate() {
        match w[0] {
            b'[' => in_bracket = true,
            b']' => in_bracket = false,
            c @ (b'-' | b'=' | b'#' | b'$' | b':' | b'/' | b'\\' | b'.')
                if !in_bracket && w[1] == b'(' =>
            {
                return Err(invalid(
                    smiles,
                    format!("bond symbol '{}' before a branch at position {i} (RDKit rejects this syntax)", c as char),
                ));
            }
            _ => {}
        }
    }
    let mol = chematic_smiles::parse(smiles).map_err(|e| invalid(smiles, e.to_string()))?;
    if mol.atom_count() == 0 {
        return Err(invalid(smiles, "no atoms".into()));
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
            smiles,
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
        // All rejected by RDKit 2026.09 Chem.MolFromSmiles: syntax, valence, kekulization.
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
