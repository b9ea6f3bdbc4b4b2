//! Concentration encodings: a dose `c` in µM -> the molecule encoder's concentration features.
//!
//! | kind | features `n` | feature `i` |
//! |---|---|---|
//! | `none`, `implicit` | 0 (no ONNX input) | - (`c` is ignored) |
//! | `one_hot` `{edges_um}` | `len(edges_um) + 1` | `1` if `i` = number of edges `e <= c`, else `0` |
//! | `log` `{offset, scale}` | 1 | `(log10(c) - offset) / scale` |
//! | `sigmoid` `{centers_log10_um, slope}` | `len(centers_log10_um)` | `1 / (1 + exp(-slope * (log10(c) - centers_log10_um[i])))` |
//!
//! For every kind with features, `c` must be finite and `> 0`. Arithmetic is done in `f64` and
//! the result rounded to `f32` once.

use serde::{Deserialize, Serialize};

/// `molecule.concentration`, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ConcentrationEncoding {
    /// The model takes no concentration.
    None,
    /// The model was trained at one concentration that is implied; it takes no concentration input.
    Implicit,
    /// Bin index of `c` among ascending `edges_um`, one-hot.
    OneHot {
        /// Strictly ascending, finite, positive bin edges in µM.
        edges_um: Vec<f64>,
    },
    /// One feature, `(log10(c) - offset) / scale`.
    Log {
        /// Subtracted from `log10(c)`.
        offset: f64,
        /// Divides; finite and non-zero.
        scale: f64,
    },
    /// Soft bins: one logistic per centre.
    Sigmoid {
        /// Centres in log10(µM), finite, at least one.
        centers_log10_um: Vec<f64>,
        /// Logistic slope; finite and non-zero.
        slope: f64,
    },
}

impl ConcentrationEncoding {
    /// The `kind` string as written in the manifest.
    pub fn kind(&self) -> &'static str {
        match self {
            ConcentrationEncoding::None => "none",
            ConcentrationEncoding::Implicit => "implicit",
            ConcentrationEncoding::OneHot { .. } => "one_hot",
            ConcentrationEncoding::Log { .. } => "log",
            ConcentrationEncoding::Sigmoid { .. } => "sigmoid",
        }
    }

    /// Number of features per molecule (the ONNX input's width); 0 means no input.
    pub fn n_features(&self) -> usize {
        match self {
            ConcentrationEncoding::None | ConcentrationEncoding::Implicit => 0,
            ConcentrationEncoding::OneHot { edges_um } => edges_um.len() + 1,
            ConcentrationEncoding::Log { .. } => 1,
            ConcentrationEncoding::Sigmoid {
                centers_log10_um, ..
            } => centers_log10_um.len(),
        }
    }

    /// Whether the concentration value is used (false for `none` and `implicit`).
    pub fn uses_concentration(&self) -> bool {
        self.n_features() > 0
    }

    /// Checks the parameters; the message names the bad field.
    pub fn validate(&self) -> Result<(), String> {
        let finite_nonzero = |name: &str, v: f64| {
            if v.is_finite() && v != 0.0 {
                Ok(())
            } else {
                Err(format!("`{name}` is {v}, must be finite and non-zero"))
            }
        };
        match self {
            ConcentrationEncoding::None | ConcentrationEncoding::Implicit => Ok(()),
            ConcentrationEncoding::OneHot { edges_um } => {
                if edges_um.is_empty() {
                    return Err("`edges_um` is empty; give at least one bin edge in µM".into());
                }
                if let Some(i) = edges_um.iter().position(|e| !(e.is_finite() && *e > 0.0)) {
                    return Err(format!(
                        "`edges_um[{i}]` is {}, must be finite and > 0 (µM)",
                        edges_um[i]
                    ));
                }
                if let Some(i) = edges_um.windows(2).position(|w| w[0] >= w[1]) {
                    return Err(format!(
                        "`edges_um` must be strictly ascending, but edges_um[{i}] = {} >= edges_um[{}] = {}",
                        edges_um[i],
                        i + 1,
                        edges_um[i + 1]
                    ));
                }
                Ok(())
            }
            ConcentrationEncoding::Log { offset, scale } => {
                if !offset.is_finite() {
                    return Err(format!("`offset` is {offset}, must be finite"));
                }
                finite_nonzero("scale", *scale)
            }
            ConcentrationEncoding::Sigmoid {
                centers_log10_um,
                slope,
            } => {
                if centers_log10_um.is_empty() {
                    return Err("`centers_log10_um` is empty; give at least one centre".into());
                }
                if let Some(i) = centers_log10_um.iter().position(|m| !m.is_finite()) {
                    return Err(format!(
                        "`centers_log10_um[{i}]` is {}, must be finite",
                        centers_log10_um[i]
                    ));
                }
                finite_nonzero("slope", *slope)
            }
        }
    }

    /// Writes the features of concentration `c_um` into `out` (`out.len()` must be
    /// [`n_features`](Self::n_features)). Returns `false`, writing nothing, when the encoding
    /// uses the concentration and `c_um` is not finite and `> 0`.
    pub fn encode_into(&self, c_um: f64, out: &mut [f32]) -> bool {
        debug_assert_eq!(out.len(), self.n_features());
        if !self.uses_concentration() {
            return true;
        }
        if !(c_um.is_finite() && c_um > 0.0) {
            return false;
        }
        match self {
            ConcentrationEncoding::None | ConcentrationEncoding::Implicit => {}
            ConcentrationEncoding::OneHot { edges_um } => {
                let bin = edges_um.iter().filter(|&&e| e <= c_um).count();
                out.fill(0.0);
                out[bin] = 1.0;
            }
            ConcentrationEncoding::Log { offset, scale } => {
                out[0] = ((c_um.log10() - offset) / scale) as f32;
            }
            ConcentrationEncoding::Sigmoid {
                centers_log10_um,
                slope,
            } => {
                let x = c_um.log10();
                for (o, m) in out.iter_mut().zip(centers_log10_um) {
                    *o = (1.0 / (1.0 + (-slope * (x - m)).exp())) as f32;
                }
            }
        }
        true
    }

    /// [`encode_into`](Self::encode_into) into a new vector; `None` for an invalid concentration.
    pub fn encode(&self, c_um: f64) -> Option<Vec<f32>> {
        let mut out = vec![0.0; self.n_features()];
        self.encode_into(c_um, &mut out).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_hot_bins_count_edges_at_or_below() {
        let e = ConcentrationEncoding::OneHot {
            edges_um: vec![0.1, 1.0, 10.0],
        };
        assert_eq!(e.n_features(), 4);
        assert_eq!(e.encode(0.05).unwrap(), [1.0, 0.0, 0.0, 0.0]);
        assert_eq!(e.encode(0.1).unwrap(), [0.0, 1.0, 0.0, 0.0]);
        assert_eq!(e.encode(5.0).unwrap(), [0.0, 0.0, 1.0, 0.0]);
        assert_eq!(e.encode(10.0).unwrap(), [0.0, 0.0, 0.0, 1.0]);
        assert_eq!(e.encode(1e6).unwrap(), [0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn log_and_sigmoid_values() {
        let e = ConcentrationEncoding::Log {
            offset: 1.0,
            scale: 2.0,
        };
        assert_eq!(e.encode(1000.0).unwrap(), [1.0]);
        let s = ConcentrationEncoding::Sigmoid {
            centers_log10_um: vec![0.0, 1.0],
            slope: 2.0,
        };
        let v = s.encode(10.0).unwrap();
        assert!((v[0] - (1.0 / (1.0 + (-2.0f64).exp())) as f32).abs() < 1e-7);
        assert_eq!(v[1], 0.5);
    }

    #[test]
    fn invalid_concentrations_are_rejected_only_when_used() {
        let e = ConcentrationEncoding::Log {
            offset: 0.0,
            scale: 1.0,
        };
        for c in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(e.encode(c), None, "{c}");
        }
        assert_eq!(ConcentrationEncoding::None.encode(f64::NAN), Some(vec![]));
        assert_eq!(ConcentrationEncoding::Implicit.encode(-1.0), Some(vec![]));
    }

    #[test]
    fn validate_names_the_bad_field() {
        let bad = [
            (
                ConcentrationEncoding::OneHot { edges_um: vec![] },
                "edges_um",
            ),
            (
                ConcentrationEncoding::OneHot {
                    edges_um: vec![1.0, 1.0],
                },
                "ascending",
            ),
            (
                ConcentrationEncoding::OneHot {
                    edges_um: vec![-1.0],
                },
                "edges_um[0]",
            ),
            (
                ConcentrationEncoding::Log {
                    offset: 0.0,
                    scale: 0.0,
                },
                "scale",
            ),
            (
                ConcentrationEncoding::Sigmoid {
                    centers_log10_um: vec![0.0],
                    slope: 0.0,
                },
                "slope",
            ),
            (
                ConcentrationEncoding::Sigmoid {
                    centers_log10_um: vec![],
                    slope: 1.0,
                },
                "centers_log10_um",
            ),
        ];
        for (e, needle) in bad {
            let msg = e.validate().unwrap_err();
            assert!(msg.contains(needle), "{msg}");
        }
    }

    #[test]
    fn manifest_json_round_trips() {
        let e: ConcentrationEncoding =
            serde_json::from_str(r#"{"kind":"sigmoid","centers_log10_um":[-1,0,1],"slope":3}"#)
                .unwrap();
        assert_eq!(e.n_features(), 3);
        let e: ConcentrationEncoding = serde_json::from_str(r#"{"kind":"implicit"}"#).unwrap();
        assert_eq!(e, ConcentrationEncoding::Implicit);
        assert!(
            serde_json::from_str::<ConcentrationEncoding>(r#"{"kind":"log","offset":0}"#).is_err()
        );
    }
}
