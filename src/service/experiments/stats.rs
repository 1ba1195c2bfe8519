//! The statistics an experiment reports: Wilson score intervals for pass rates, Fisher's exact test (two-sided)
//! on two variants' pass counts with the difference in rates and Cohen's h, and the Mann-Whitney U test
//! (normal approximation with tie and continuity corrections) on their latencies with the rank-biserial
//! correlation as the effect size. Plain arithmetic, checked against published values in the tests.

/// z for a two-sided 95% interval.
const Z_95: f64 = 1.959_963_984_540_054;

/// The Wilson score interval (95%) of `successes` out of `n`; `(0, 1)` for no trials.
pub fn wilson(successes: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n = n as f64;
    let p = successes as f64 / n;
    let z2 = Z_95 * Z_95;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z_95 * ((p * (1.0 - p) + z2 / (4.0 * n)) / n).sqrt() / (1.0 + z2 / n);
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// ln(k!) for k = 0..=n.
fn log_factorials(n: u64) -> Vec<f64> {
    let mut table = Vec::with_capacity(usize::try_from(n).unwrap_or(0) + 1);
    table.push(0.0);
    let mut sum = 0.0;
    for k in 1..=n {
        sum += (k as f64).ln();
        table.push(sum);
    }
    table
}

/// Fisher's exact test, two-sided, of the 2×2 table `[[a, b], [c, d]]` (rows: variants; columns: pass,
/// fail): the probability, under independence with the margins fixed, of a table at most as probable as the
/// one observed.
pub fn fisher_exact(a: u64, b: u64, c: u64, d: u64) -> f64 {
    let n = a + b + c + d;
    if n == 0 {
        return 1.0;
    }
    let ln = log_factorials(n);
    let f = |k: u64| ln[usize::try_from(k).unwrap_or(0)];
    let (row1, row2, col1) = (a + b, c + d, a + c);
    let log_p = |x: u64| -> f64 {
        // P(top-left = x) for the hypergeometric with these margins.
        let (y, z) = (row1 - x, col1 - x);
        let w = row2 - z;
        f(row1) + f(row2) + f(col1) + f(n - col1) - f(n) - f(x) - f(y) - f(z) - f(w)
    };
    let low = col1.saturating_sub(row2);
    let high = row1.min(col1);
    let observed = log_p(a);
    // A relative tolerance, as R's fisher.test uses, so that tables as probable as the observed one count.
    let bound = observed + 1e-7_f64.ln_1p();
    let p: f64 = (low..=high)
        .map(log_p)
        .filter(|&lp| lp <= bound)
        .map(f64::exp)
        .sum();
    p.min(1.0)
}

/// Cohen's h for two proportions: 2·asin(√p1) − 2·asin(√p2).
pub fn cohens_h(p1: f64, p2: f64) -> f64 {
    2.0 * p1.sqrt().asin() - 2.0 * p2.sqrt().asin()
}

/// The complementary error function (Numerical Recipes' `erfcc`, a Chebyshev fit with fractional error below
/// 1.2e-7 everywhere).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// The outcome of a Mann-Whitney U test of sample `x` against sample `y`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MannWhitney {
    /// U of `x` (the number of pairs in which `x`'s value is the larger, ties counting one half).
    pub u: f64,
    /// Two-sided p-value (normal approximation, tie and continuity corrected); 1 when a sample is empty or
    /// every value is tied.
    pub p_value: f64,
    /// The rank-biserial correlation, 2·U/(n·m) − 1: +1 when every `x` is larger, −1 when every `y` is.
    pub rank_biserial: f64,
}

/// The Mann-Whitney U test of `x` against `y`.
pub fn mann_whitney(x: &[f64], y: &[f64]) -> MannWhitney {
    let (n, m) = (x.len() as f64, y.len() as f64);
    if x.is_empty() || y.is_empty() {
        return MannWhitney {
            u: 0.0,
            p_value: 1.0,
            rank_biserial: 0.0,
        };
    }
    let mut all: Vec<(f64, bool)> = x
        .iter()
        .map(|&v| (v, true))
        .chain(y.iter().map(|&v| (v, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Mid-ranks, and the tie correction's sum of t³ − t.
    let mut rank_sum_x = 0.0;
    let mut ties = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        let t = (j - i + 1) as f64;
        ties += t * t * t - t;
        rank_sum_x += all[i..=j].iter().filter(|(_, from_x)| *from_x).count() as f64 * rank;
        i = j + 1;
    }
    let u = rank_sum_x - n * (n + 1.0) / 2.0;
    let mean = n * m / 2.0;
    let total = n + m;
    let variance = n * m / 12.0 * ((total + 1.0) - ties / (total * (total - 1.0)));
    let p_value = if variance <= 0.0 {
        1.0
    } else {
        let z = ((u - mean).abs() - 0.5).max(0.0) / variance.sqrt();
        erfc(z / std::f64::consts::SQRT_2).min(1.0)
    };
    MannWhitney {
        u,
        p_value,
        rank_biserial: 2.0 * u / (n * m) - 1.0,
    }
}

/// The value at quantile `q` (0..=1) of `sorted` (nearest rank), `None` when empty.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance
    }

    #[test]
    fn wilson_intervals_match_published_values() {
        // Newcombe (1998), table I: 81/263 -> 0.2553 to 0.3662.
        let (low, high) = wilson(81, 263);
        assert!(
            close(low, 0.2553, 5e-4) && close(high, 0.3662, 5e-4),
            "{low} {high}"
        );
        // 8/10 -> 0.4902 to 0.9433; 0/10 -> 0 to 0.2775; 10/10 -> 0.7225 to 1.
        let (low, high) = wilson(8, 10);
        assert!(
            close(low, 0.4902, 5e-4) && close(high, 0.9433, 5e-4),
            "{low} {high}"
        );
        let (low, high) = wilson(0, 10);
        assert!(
            close(low, 0.0, 1e-12) && close(high, 0.2775, 5e-4),
            "{low} {high}"
        );
        assert_eq!(wilson(0, 0), (0.0, 1.0));
    }

    #[test]
    fn fisher_exact_matches_r() {
        // R: fisher.test(matrix(c(3, 1, 1, 3), 2))$p.value = 0.4857 (the tea-tasting table).
        assert!(close(fisher_exact(3, 1, 1, 3), 0.485_714, 1e-5));
        // R: fisher.test(matrix(c(8, 1, 2, 9), 2))$p.value = 0.005477.
        assert!(
            close(fisher_exact(8, 2, 1, 9), 0.005_477, 1e-5),
            "{}",
            fisher_exact(8, 2, 1, 9)
        );
        // All pass against all fail, 4 each: 2/70 = 0.02857.
        assert!(close(fisher_exact(4, 0, 0, 4), 0.028_571, 1e-5));
        assert!(close(fisher_exact(2, 2, 2, 2), 1.0, 1e-9));
    }

    #[test]
    fn cohens_h_is_zero_for_equal_rates_and_pi_for_the_extremes() {
        assert_eq!(cohens_h(0.3, 0.3), 0.0);
        assert!(close(cohens_h(1.0, 0.0), std::f64::consts::PI, 1e-12));
    }

    #[test]
    fn mann_whitney_matches_scipy() {
        // scipy.stats.mannwhitneyu([1, 2, 3, 4, 5], [6, 7, 8, 9, 10], method="asymptotic") -> U 0, p 0.012186.
        let test = mann_whitney(&[1.0, 2.0, 3.0, 4.0, 5.0], &[6.0, 7.0, 8.0, 9.0, 10.0]);
        assert_eq!(test.u, 0.0);
        assert!(close(test.p_value, 0.012_186, 5e-6), "{test:?}");
        assert_eq!(test.rank_biserial, -1.0);
        // With ties: x = [1, 2, 2, 3], y = [2, 3, 3, 4] -> U 3, p 0.17203 (asymptotic, tie and continuity
        // corrected, as scipy computes it).
        let tied = mann_whitney(&[1.0, 2.0, 2.0, 3.0], &[2.0, 3.0, 3.0, 4.0]);
        assert_eq!(tied.u, 3.0);
        assert!(close(tied.p_value, 0.172_034, 5e-6), "{tied:?}");
        assert_eq!(mann_whitney(&[], &[1.0]).p_value, 1.0);
        assert_eq!(mann_whitney(&[1.0, 1.0], &[1.0]).p_value, 1.0);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let sorted = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        assert_eq!(quantile(&sorted, 0.5), Some(5.0));
        assert_eq!(quantile(&sorted, 0.95), Some(10.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
