//! Small server-rendered SVG charts for the insights page: no scripts, no
//! front-end build, readable without colour (each chart has a title and
//! its points carry their values as `<title>` tooltips).

use maud::{Markup, html};

/// Chart size in CSS pixels (the SVG scales to its container).
const WIDTH: f64 = 320.0;
const HEIGHT: f64 = 80.0;
const PAD: f64 = 4.0;

/// A bar chart of `values` (one bar per point, oldest first) labelled by
/// `labels`, titled `title`; `format` writes a value for its tooltip.
pub fn bars(
    title: &str,
    labels: &[String],
    values: &[f64],
    format: impl Fn(f64) -> String,
) -> Markup {
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    let n = values.len().max(1) as f64;
    let slot = (WIDTH - 2.0 * PAD) / n;
    html! {
        svg.chart viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(title)
            preserveAspectRatio="none" {
            title { (title) }
            line x1=(PAD) y1=(HEIGHT - PAD) x2=(WIDTH - PAD) y2=(HEIGHT - PAD) class="axis" {}
            @for (i, v) in values.iter().enumerate() {
                @let h = if max > 0.0 { (v / max) * (HEIGHT - 2.0 * PAD) } else { 0.0 };
                rect x=(format!("{:.1}", PAD + i as f64 * slot + slot * 0.1))
                    y=(format!("{:.1}", HEIGHT - PAD - h))
                    width=(format!("{:.1}", slot * 0.8)) height=(format!("{:.1}", h)) {
                    title { (labels.get(i).map(String::as_str).unwrap_or("")) ": " (format(*v)) }
                }
            }
        }
    }
}

/// A line chart of `values` (0–1 shares, oldest first), e.g. success rates.
pub fn line(title: &str, labels: &[String], values: &[f64]) -> Markup {
    let n = values.len();
    let x = |i: usize| {
        if n <= 1 {
            WIDTH / 2.0
        } else {
            PAD + i as f64 * (WIDTH - 2.0 * PAD) / (n - 1) as f64
        }
    };
    let y = |v: f64| HEIGHT - PAD - v.clamp(0.0, 1.0) * (HEIGHT - 2.0 * PAD);
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
        .collect();
    html! {
        svg.chart viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(title)
            preserveAspectRatio="none" {
            title { (title) }
            line x1=(PAD) y1=(HEIGHT - PAD) x2=(WIDTH - PAD) y2=(HEIGHT - PAD) class="axis" {}
            polyline points=(points.join(" ")) fill="none" {}
            @for (i, v) in values.iter().enumerate() {
                circle cx=(format!("{:.1}", x(i))) cy=(format!("{:.1}", y(*v))) r="2" {
                    title { (labels.get(i).map(String::as_str).unwrap_or("")) ": "
                        (format!("{:.0} %", v * 100.0)) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_and_carry_their_values() {
        let svg = bars(
            "Runs per day",
            &["2026-12-01".into(), "2026-12-02".into()],
            &[2.0, 4.0],
            |v| format!("{v:.0} runs"),
        )
        .into_string();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("2026-12-02: 4 runs"));
        assert!(
            svg.contains(r#"height="72.0""#),
            "the largest fills the height: {svg}"
        );
        assert!(svg.contains(r#"height="36.0""#));
        // Nothing to show still draws (an empty axis), never divides by zero.
        assert!(
            !bars("x", &[], &[], |v| v.to_string())
                .into_string()
                .contains("NaN")
        );
    }

    #[test]
    fn a_line_of_shares_stays_inside() {
        let svg = line("Success", &["a".into(), "b".into()], &[0.0, 1.5]).into_string();
        assert!(svg.contains("polyline"));
        assert!(svg.contains("b: 150 %"));
        assert!(svg.contains(r#"cy="4.0""#), "clamped to the top: {svg}");
    }
}
