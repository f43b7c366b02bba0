//! Images ended per minute over the last minutes, as an SVG bar chart: done and failed
//! stacked.

use leptos::prelude::*;

use crate::{api::Minute, format};

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 160.0;
const AXIS: f64 = 18.0;

/// The bar heights of `minutes` for a chart `height` tall: `(done, failed)` per minute,
/// scaled so the busiest minute fills it.
pub fn bars(minutes: &[Minute], height: f64) -> Vec<(f64, f64)> {
    let peak = minutes
        .iter()
        .map(|m| m.done + m.failed)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    minutes
        .iter()
        .map(|m| {
            (
                m.done as f64 / peak * height,
                m.failed as f64 / peak * height,
            )
        })
        .collect()
}

/// What the chart says in words: its caption and its label for screen readers.
pub fn summary(minutes: &[Minute]) -> String {
    if minutes.is_empty() {
        return "loading the last minutes…".into();
    }
    let done: u64 = minutes.iter().map(|m| m.done).sum();
    let failed: u64 = minutes.iter().map(|m| m.failed).sum();
    let span = minutes.len();
    if done + failed == 0 {
        return format!("no work yet: no image ended in the last {span} minutes");
    }
    let images = if done == 1 { "image" } else { "images" };
    format!("{done} {images} done and {failed} failed in the last {span} minutes (UTC)")
}

#[component]
pub fn ThroughputChart(minutes: Signal<Vec<Minute>>) -> impl IntoView {
    let summary = move || minutes.with(|m| summary(m));
    view! {
        <figure class="chart">
            <svg
                viewBox=format!("0 0 {WIDTH} {}", HEIGHT + AXIS)
                role="img"
                aria-label=summary
                preserveAspectRatio="none"
            >
                {move || {
                    let list = minutes.get();
                    let slot = WIDTH / list.len().max(1) as f64;
                    bars(&list, HEIGHT)
                        .into_iter()
                        .zip(&list)
                        .enumerate()
                        .map(|(i, ((done, failed), minute))| {
                            let x = i as f64 * slot + 2.0;
                            let w = (slot - 4.0).max(1.0);
                            let label = (i % 5 == 0 || i + 1 == list.len())
                                .then(|| format::clock(minute.at_ms)[..5].to_string());
                            view! {
                                <g>
                                    <title>{format!("{}: {} done, {} failed", format::clock(minute.at_ms), minute.done, minute.failed)}</title>
                                    <rect class="done" x=x y=HEIGHT - done width=w height=done></rect>
                                    <rect class="failed" x=x y=HEIGHT - done - failed width=w height=failed></rect>
                                    {label.map(|text| view! {
                                        <text x=x y=HEIGHT + AXIS - 4.0 class="axis">{text}</text>
                                    })}
                                </g>
                            }
                        })
                        .collect_view()
                }}
            </svg>
            <figcaption>{summary}</figcaption>
        </figure>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_minute_fills_the_chart() {
        let minute = |done, failed| Minute {
            at_ms: 0,
            done,
            failed,
        };
        assert_eq!(
            bars(&[minute(0, 0), minute(30, 10), minute(10, 0)], 100.0),
            [(0.0, 0.0), (75.0, 25.0), (25.0, 0.0)]
        );
        // An idle window draws nothing rather than dividing by zero.
        assert_eq!(bars(&[minute(0, 0)], 100.0), [(0.0, 0.0)]);
        assert!(bars(&[], 100.0).is_empty());
    }

    #[test]
    fn the_caption_says_what_there_is() {
        let minute = |done, failed| Minute {
            at_ms: 0,
            done,
            failed,
        };
        assert_eq!(summary(&[]), "loading the last minutes…");
        assert_eq!(
            summary(&[minute(0, 0), minute(0, 0)]),
            "no work yet: no image ended in the last 2 minutes"
        );
        assert_eq!(
            summary(&[minute(1, 0), minute(0, 0)]),
            "1 image done and 0 failed in the last 2 minutes (UTC)"
        );
        assert_eq!(
            summary(&[minute(7, 1), minute(2, 0)]),
            "9 images done and 1 failed in the last 2 minutes (UTC)"
        );
    }
}
