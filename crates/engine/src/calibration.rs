//! A probability-like score beside the raw one. The raw pair score (the sum of match
//! confidences) grows with the keypoint count and the chip size, so a threshold means nothing
//! across configurations; a calibration maps it to P(same individual) for one configuration,
//! fitted by `wbia-lightglue evaluate --calibrate` on a labelled set and saved in that
//! configuration's file.
//!
//! The map is Platt's logistic on the log of the raw score,
//! `p = 1 / (1 + exp(-(slope · ln(1 + s) + intercept)))`, with `slope > 0`, so it is strictly
//! increasing in the raw score: it never reorders candidates, it only says how sure a score
//! is. The log keeps the very large genuine scores (hundreds) from dominating the fit. Platt's
//! smoothed targets (`(n₊ + 1)/(n₊ + 2)` and `1/(n₋ + 2)`) keep the fit finite when the
//! labelled set is perfectly separated, as small sets often are. The probability reflects the
//! share of genuine pairs in the fitting set (the prior); fit on a set drawn like the queries
//! it will serve.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The calibration method; the only one is Platt's logistic on `ln(1 + score)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CalibrationMethod {
    LogisticLog1p,
}

/// A fitted calibration, as saved in a configuration file under `calibration`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    pub method: CalibrationMethod,
    pub slope: f64,
    pub intercept: f64,
    /// Same-identity pairs it was fitted on.
    pub genuine_pairs: usize,
    /// Different-identity pairs it was fitted on.
    pub impostor_pairs: usize,
}

/// Newton steps at most; the fit converges in well under 20 on any set tried.
const MAX_STEPS: usize = 100;

impl Calibration {
    /// Fits the calibration on labelled pair scores (`true`: same identity). Needs at least
    /// one pair of each kind, and scores that rise with identity (a slope ≤ 0 is refused: such
    /// a map would reverse the ranking).
    pub fn fit(pairs: &[(f32, bool)]) -> Result<Self> {
        let genuine = pairs.iter().filter(|p| p.1).count();
        let impostor = pairs.len() - genuine;
        if genuine == 0 || impostor == 0 {
            return Err(Error::Config(format!(
                "calibration needs same- and different-identity pairs; got {genuine} and {impostor}"
            )));
        }
        if let Some((s, _)) = pairs.iter().find(|(s, _)| !s.is_finite()) {
            return Err(Error::Config(format!(
                "calibration: score {s} is not finite"
            )));
        }
        let hi = (genuine as f64 + 1.0) / (genuine as f64 + 2.0);
        let lo = 1.0 / (impostor as f64 + 2.0);
        let data: Vec<(f64, f64)> = pairs
            .iter()
            .map(|&(s, same)| (feature(s), if same { hi } else { lo }))
            .collect();
        // Start from the prior (slope 0), then Newton's method on the cross-entropy, halving
        // a step that does not lower it.
        let prior = genuine as f64 / pairs.len() as f64;
        let (mut a, mut b) = (0.0f64, (prior / (1.0 - prior)).ln());
        let mut loss = cross_entropy(&data, a, b);
        for _ in 0..MAX_STEPS {
            let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for &(x, t) in &data {
                let p = sigmoid(a * x + b);
                let w = (p * (1.0 - p)).max(1e-12);
                ga += (p - t) * x;
                gb += p - t;
                haa += w * x * x;
                hab += w * x;
                hbb += w;
            }
            let det = haa * hbb - hab * hab;
            if det.abs() < 1e-18 {
                break;
            }
            let da = (hbb * ga - hab * gb) / det;
            let db = (haa * gb - hab * ga) / det;
            let mut step = 1.0;
            let mut improved = false;
            while step > 1e-10 {
                let (na, nb) = (a - step * da, b - step * db);
                let l = cross_entropy(&data, na, nb);
                if l.is_finite() && l <= loss {
                    improved = (loss - l) > 1e-12 * loss.abs().max(1.0);
                    (a, b, loss) = (na, nb, l);
                    break;
                }
                step /= 2.0;
            }
            if !improved {
                break;
            }
        }
        let fitted = Self {
            method: CalibrationMethod::LogisticLog1p,
            slope: a,
            intercept: b,
            genuine_pairs: genuine,
            impostor_pairs: impostor,
        };
        fitted.validate().map_err(|_| {
            Error::Config(format!(
                "calibration: scores do not rise with identity on this set (slope {a:.4}); \
                 same-identity pairs must score higher than others"
            ))
        })?;
        Ok(fitted)
    }

    /// A saved calibration must keep the ranking: finite parameters, a positive slope.
    pub fn validate(&self) -> Result<()> {
        if !(self.slope.is_finite() && self.slope > 0.0 && self.intercept.is_finite()) {
            return Err(Error::Config(format!(
                "calibration: slope must be positive and both parameters finite, got slope {} \
                 and intercept {}",
                self.slope, self.intercept
            )));
        }
        Ok(())
    }

    /// P(same individual) for a raw pair score; increasing in the score.
    pub fn probability(&self, score: f32) -> f64 {
        sigmoid(self.slope * feature(score) + self.intercept)
    }
}

/// `ln(1 + s)`, with negative scores (there are none: confidences are ≥ 0) taken as 0.
fn feature(score: f32) -> f64 {
    (score.max(0.0) as f64).ln_1p()
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Mean cross-entropy of targets `t` against `sigmoid(a·x + b)`, computed stably.
fn cross_entropy(data: &[(f64, f64)], a: f64, b: f64) -> f64 {
    let total: f64 = data
        .iter()
        .map(|&(x, t)| {
            let z = a * x + b;
            // -[t·ln σ(z) + (1 - t)·ln(1 - σ(z))] = softplus(z) - t·z
            let softplus = z.max(0.0) + (-z.abs()).exp().ln_1p();
            softplus - t * z
        })
        .sum();
    total / data.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic scores shaped like real ones: impostors a few units (log-normal around
    /// 3), genuine pairs tens to hundreds (log-normal around 60), `genuine_share` of them.
    fn labelled(n: usize, genuine_share: f64, seed: u64) -> Vec<(f32, bool)> {
        let mut state = seed;
        let mut uniform = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let normal =
                    (-2.0 * uniform().ln()).sqrt() * (2.0 * std::f64::consts::PI * uniform()).cos();
                let same = uniform() < genuine_share;
                let (centre, spread) = if same { (60f64, 0.9) } else { (3.0, 0.6) };
                ((centre.ln() + spread * normal).exp() as f32, same)
            })
            .collect()
    }

    fn brier(c: &Calibration, pairs: &[(f32, bool)]) -> f64 {
        pairs
            .iter()
            .map(|&(s, same)| (c.probability(s) - f64::from(u8::from(same))).powi(2))
            .sum::<f64>()
            / pairs.len() as f64
    }

    /// Fitted on one set, applied to another drawn independently (2,000 pairs each, 10%
    /// genuine): the held-out Brier score beats the best constant guess (the prior) by a wide
    /// margin, and the mean probability in each score decile follows that decile's genuine
    /// share within 0.1.
    #[test]
    fn fitted_on_one_set_it_predicts_another() {
        let train = labelled(2_000, 0.1, 7);
        let test = labelled(2_000, 0.1, 8);
        let c = Calibration::fit(&train).unwrap();
        assert!(c.slope > 0.0);
        let share = test.iter().filter(|p| p.1).count() as f64 / test.len() as f64;
        let constant = share * (1.0 - share);
        let held_out = brier(&c, &test);
        assert!(
            held_out < 0.5 * constant,
            "Brier {held_out:.4} vs {constant:.4} for the prior"
        );
        let mut sorted = test.clone();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        for decile in sorted.chunks(sorted.len() / 10) {
            let observed = decile.iter().filter(|p| p.1).count() as f64 / decile.len() as f64;
            let predicted =
                decile.iter().map(|p| c.probability(p.0)).sum::<f64>() / decile.len() as f64;
            assert!(
                (observed - predicted).abs() < 0.1,
                "decile from {}: observed {observed:.3}, predicted {predicted:.3}",
                decile[0].0
            );
        }
    }

    /// Over raw scores from 0 to 10,000 (every 0.25): inside [0, 1], never decreasing, and
    /// strictly increasing until f64 can no longer tell the probability from 1 (within 1e-9).
    #[test]
    fn probability_is_monotonic_in_the_raw_score() {
        let c = Calibration::fit(&labelled(500, 0.2, 3)).unwrap();
        let mut last = -1.0;
        for i in 0..40_000 {
            let s = i as f32 * 0.25;
            let p = c.probability(s);
            assert!((0.0..=1.0).contains(&p));
            assert!(p >= last, "p({s}) = {p} after {last}");
            assert!(p > last || last > 1.0 - 1e-9, "p({s}) = {p} after {last}");
            last = p;
        }
    }

    /// Perfectly separated small sets (the usual labelled folder) still give a finite fit
    /// that puts every genuine pair above one half and every impostor below.
    #[test]
    fn separated_sets_fit_finitely() {
        let pairs = [
            (566.7, true),
            (120.0, true),
            (6.2, false),
            (3.6, false),
            (2.9, false),
            (1.9, false),
        ];
        let c = Calibration::fit(&pairs).unwrap();
        assert!(c.slope.is_finite() && c.intercept.is_finite());
        for (s, same) in pairs {
            assert_eq!(c.probability(s) > 0.5, same, "{s}");
        }
    }

    #[test]
    fn unusable_sets_are_refused() {
        assert!(Calibration::fit(&[(5.0, true), (6.0, true)]).is_err());
        assert!(Calibration::fit(&[(5.0, false)]).is_err());
        assert!(Calibration::fit(&[(f32::NAN, true), (1.0, false)]).is_err());
        // Genuine pairs scoring lower than impostors: a map would reverse the ranking.
        let reversed = [(1.0, true), (2.0, true), (50.0, false), (80.0, false)];
        let e = Calibration::fit(&reversed).unwrap_err().to_string();
        assert!(e.contains("do not rise"), "{e}");
        let bad = Calibration {
            slope: -1.0,
            ..Calibration::fit(&[(5.0, true), (1.0, false)]).unwrap()
        };
        assert!(bad.validate().is_err());
    }
}
