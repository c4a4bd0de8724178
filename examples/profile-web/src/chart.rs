//! The in-page monitor's latency chart as SVG text: one point per lookup,
//! oldest to newest across the whole width it is given, and a y axis whose
//! ticks are distinct and say their unit: a log scale (one tick per power of
//! ten) when the lookups span two orders of magnitude or more, else steps of
//! 1, 2 or 5. Plain Rust, so its tests run natively.

use std::fmt::Write as _;

/// One lookup: the tier that answered and how long the lookup took.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Point<'a> {
    pub(crate) tier: &'a str,
    pub(crate) ms: f64,
}

/// A y axis: the scale, its range (ms) and its ticks.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Axis {
    pub(crate) log: bool,
    pub(crate) lo: f64,
    pub(crate) hi: f64,
    /// Value (ms) and label.
    pub(crate) ticks: Vec<(f64, String)>,
}

/// The unit of a duration in ms, and its factor from ms.
fn unit(ms: f64) -> (&'static str, f64) {
    match ms.abs() {
        a if a < 1e-3 => ("ns", 1e6),
        a if a < 1.0 => ("µs", 1e3),
        a if a < 1e3 => ("ms", 1.0),
        _ => ("s", 1e-3),
    }
}

/// Steps of 1, 2 or 5 times a power of ten from 0 to at least `hi`, about
/// five, and the decimals that keep their labels distinct.
pub(crate) fn nice_ticks(hi: f64) -> (Vec<f64>, usize) {
    let hi = if hi > 0.0 && hi.is_finite() { hi } else { 1.0 };
    let raw = hi / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag);
    let decimals = (-(step.log10() + 1e-9).floor()).max(0.0) as usize;
    let last = (hi / step - 1e-9).ceil() as u32;
    let ticks = (0..=last).map(|k| f64::from(k) * step).collect();
    (ticks, decimals)
}

/// The y axis for lookups of `values` ms.
pub(crate) fn axis(values: &[f64]) -> Axis {
    let positive: Vec<f64> = values
        .iter()
        .copied()
        .filter(|v| *v > 0.0 && v.is_finite())
        .collect();
    let max = positive.iter().copied().fold(0.0, f64::max);
    let min = positive.iter().copied().fold(f64::INFINITY, f64::min);
    if positive.len() > 1 && max / min >= 100.0 {
        let (a, b) = (
            (min.log10() + 1e-9).floor() as i32,
            (max.log10() - 1e-9).ceil() as i32,
        );
        let every = usize::try_from((b - a + 1 + 6) / 7).unwrap_or(1).max(1);
        let ticks = (a..=b)
            .step_by(every)
            .map(|p| {
                // The double nearest to 10^p (powi can land just below it).
                let v: f64 = format!("1e{p}").parse().unwrap_or(0.0);
                let (u, f) = unit(v);
                (v, format!("{:.0} {u}", v * f))
            })
            .collect();
        return Axis {
            log: true,
            lo: format!("1e{a}").parse().unwrap_or(min),
            hi: format!("1e{b}").parse().unwrap_or(max),
            ticks,
        };
    }
    let top = if max > 0.0 { max } else { 1.0 };
    let (u, f) = unit(top);
    let (ticks, decimals) = nice_ticks(top * f);
    let hi = ticks.last().copied().unwrap_or(1.0) / f;
    Axis {
        log: false,
        lo: 0.0,
        hi,
        ticks: ticks
            .into_iter()
            .map(|v| {
                let label = if v == 0.0 {
                    "0".to_owned()
                } else {
                    format!("{v:.decimals$} {u}")
                };
                (v / f, label)
            })
            .collect(),
    }
}

/// The chart: `points` oldest first, drawn `width` pixels wide (the panel's
/// width), one series per tier of `tiers` (name, colour).
pub(crate) fn latency_chart(points: &[Point<'_>], tiers: &[(&str, &str)], width: f64) -> String {
    let w = width.max(240.0).round();
    const H: f64 = 200.0;
    const LEFT: f64 = 56.0;
    const RIGHT: f64 = 10.0;
    const TOP: f64 = 8.0;
    const BOTTOM: f64 = 26.0;
    let ax = axis(&points.iter().map(|p| p.ms).collect::<Vec<_>>());
    let n = points.len();
    let x = |i: usize| {
        if n <= 1 {
            LEFT + (w - LEFT - RIGHT) / 2.0
        } else {
            LEFT + i as f64 / (n - 1) as f64 * (w - LEFT - RIGHT)
        }
    };
    let f = |v: f64| {
        if ax.log {
            v.max(ax.lo).log10()
        } else {
            v
        }
    };
    let y = |v: f64| {
        let t = (f(v.min(ax.hi)) - f(ax.lo)) / (f(ax.hi) - f(ax.lo));
        TOP + (1.0 - t) * (H - TOP - BOTTOM)
    };
    let mut svg = format!(
        "<svg id=\"latency-chart\" viewBox=\"0 0 {w} {H}\" width=\"100%\" height=\"{H}\" \
         data-scale=\"{}\" role=\"img\" aria-label=\"lookup time per tier, each lookup oldest to newest\">",
        if ax.log { "log" } else { "linear" }
    );
    for (v, label) in &ax.ticks {
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e3e3e3\"/>\
             <text class=\"tick y\" x=\"{}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{label}</text>",
            w - RIGHT,
            LEFT - 4.0,
            y(*v) + 3.0,
            y = y(*v),
        );
    }
    // x: lookup numbers, 1 to n.
    if n > 0 {
        let (ticks, _) = nice_ticks(n as f64);
        for k in ticks
            .iter()
            .map(|t| *t as usize)
            .filter(|k| *k >= 1 && *k <= n)
        {
            let _ = write!(
                svg,
                "<text class=\"tick x\" x=\"{:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{k}</text>",
                x(k - 1),
                H - 12.0,
            );
        }
    }
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">lookup, oldest to newest</text>",
        w - RIGHT,
        H - 1.0,
    );
    for (tier, colour) in tiers {
        let mine: Vec<(f64, f64)> = points
            .iter()
            .enumerate()
            .filter(|(_, p)| p.tier == *tier)
            .map(|(i, p)| (x(i), y(p.ms)))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let r = if n > 300 { 1.5 } else { 2.5 };
        let _ = write!(svg, "<g class=\"series\" data-tier=\"{tier}\">");
        for (a, b) in &mine {
            let _ = write!(
                svg,
                "<circle cx=\"{a:.1}\" cy=\"{b:.1}\" r=\"{r}\" fill=\"{colour}\"/>"
            );
        }
        svg.push_str("</g>");
    }
    if n == 0 {
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\" fill=\"#999\">no lookups yet</text>",
            (LEFT + w - RIGHT) / 2.0,
            H / 2.0
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn labels(a: &Axis) -> Vec<&str> {
        a.ticks.iter().map(|(_, l)| l.as_str()).collect()
    }

    fn distinct(a: &Axis) {
        let mut l = labels(a);
        l.sort_unstable();
        l.dedup();
        assert_eq!(l.len(), a.ticks.len(), "{:?}", labels(a));
    }

    #[test]
    fn close_values_get_distinct_labels_in_their_unit() {
        // The server dashboard once showed "0.002, 0.002, 0.001, 0.001".
        let a = axis(&[0.0012, 0.0021, 0.0017]);
        assert!(!a.log);
        assert_eq!(
            labels(&a),
            ["0", "0.5 µs", "1.0 µs", "1.5 µs", "2.0 µs", "2.5 µs"]
        );
        distinct(&a);
        let a = axis(&[3.0, 41.0, 12.5]);
        assert_eq!(
            labels(&a),
            ["0", "10 ms", "20 ms", "30 ms", "40 ms", "50 ms"]
        );
        assert!(a.hi >= 41.0);
        distinct(&axis(&[0.07, 0.09]));
        distinct(&axis(&[1_234.0, 2_000.0]));
        assert_eq!(axis(&[]).ticks.len(), 6);
    }

    #[test]
    fn orders_of_magnitude_get_a_log_scale() {
        let a = axis(&[0.004, 0.3, 180.0, 2.0]);
        assert!(a.log);
        assert_eq!(
            labels(&a),
            ["1 µs", "10 µs", "100 µs", "1 ms", "10 ms", "100 ms", "1 s"]
        );
        assert!(a.lo <= 0.004 && a.hi >= 180.0);
        // Many decades: every other one, still distinct.
        let a = axis(&[1e-6, 1e5]);
        assert!(a.ticks.len() <= 7);
        distinct(&a);
    }

    #[test]
    fn points_use_the_whole_width() {
        let points: Vec<Point<'_>> = (0..100)
            .map(|i| Point {
                tier: if i < 50 { "network" } else { "memory" },
                ms: if i < 50 { 40.0 } else { 0.02 },
            })
            .collect();
        let svg = latency_chart(
            &points,
            &[("memory", "#2e7d32"), ("network", "#c62828")],
            800.0,
        );
        let xs: Vec<f64> = svg
            .split("<circle cx=\"")
            .skip(1)
            .map(|s| s[..s.find('"').unwrap()].parse().unwrap())
            .collect();
        assert_eq!(xs.len(), 100);
        let (min, max) = xs
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
        assert_eq!((min, max), (56.0, 790.0), "from the axis to the right edge");
        assert!(svg.contains("viewBox=\"0 0 800 200\""));
        assert!(svg.contains("data-scale=\"log\""));
    }
}
