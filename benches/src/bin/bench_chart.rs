//! Draws a benchmark result file as an SVG chart a person can read: one panel per metric in a
//! grid, one bar per contender (colours in the legend), each panel scaled to its own best value,
//! each bar labelled with its value and its ratio to the reference contender (haproxy for the
//! TLS results, fanout for the split results, when present).
//!
//! Usage: bench_chart RESULTS.json CHART.svg
//!
//! RESULTS.json, as the peer scripts in benches/peers write it:
//! `{"title": "…", "machine": "…", "metrics": [{"name": "…", "unit": "…", "higher_is_better":
//! true, "values": {"fastedge": 1.0, "haproxy": 2.0}}]}`

use plotters::prelude::*;
use serde_json::Value;

const COLORS: [RGBColor; 7] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0x7f, 0x7f, 0x7f),
];
/// Panels per row of the grid, and each panel's size in pixels.
const COLUMNS: usize = 4;
const PANEL: (u32, u32) = (380, 300);
/// Contenders the ratios refer to, the first present wins.
const REFERENCES: [&str; 2] = ["haproxy", "fanout"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output] = args.as_slice() else {
        return Err("usage: bench_chart RESULTS.json CHART.svg".into());
    };
    let results: Value = serde_json::from_str(&std::fs::read_to_string(input)?)?;
    let metrics = results["metrics"]
        .as_array()
        .ok_or("results: no \"metrics\" array")?;
    // Contenders in order of first appearance.
    let mut contenders: Vec<String> = Vec::new();
    for metric in metrics {
        for name in metric["values"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            if !contenders.contains(name) {
                contenders.push(name.clone());
            }
        }
    }
    let reference = REFERENCES
        .iter()
        .find(|r| contenders.iter().any(|c| c == *r))
        .map(|r| r.to_string());
    let rows = metrics.len().max(1).div_ceil(COLUMNS);
    let header = 90u32;
    let (width, height) = (PANEL.0 * COLUMNS as u32, header + PANEL.1 * rows as u32);
    let root = SVGBackend::new(output, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = results["title"].as_str().unwrap_or("benchmark");
    let (top, rest) = root.split_vertically(header);
    top.draw_text(title, &("sans-serif", 22).into_text_style(&top), (10, 8))?;
    if let Some(machine) = results["machine"].as_str() {
        top.draw_text(machine, &("sans-serif", 12).into_text_style(&top), (10, 38))?;
    }
    // Legend: a colour per contender.
    let mut x = 10;
    for (i, contender) in contenders.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        top.draw(&Rectangle::new([(x, 62), (x + 14, 76)], color.filled()))?;
        top.draw_text(
            contender,
            &("sans-serif", 14).into_text_style(&top),
            (x + 20, 62),
        )?;
        x += 30 + 9 * contender.len() as i32;
    }
    if let Some(reference) = &reference {
        top.draw_text(
            &format!("(×: ratio to {reference})"),
            &("sans-serif", 12).into_text_style(&top),
            (x + 10, 64),
        )?;
    }
    let panels = rest.split_evenly((rows, COLUMNS));
    for (area, metric) in panels.iter().zip(metrics) {
        let values = metric["values"].as_object().cloned().unwrap_or_default();
        let best = values
            .values()
            .filter_map(Value::as_f64)
            .fold(0.0f64, f64::max)
            .max(1e-12);
        let name = metric["name"].as_str().unwrap_or("?");
        let unit = metric["unit"].as_str().unwrap_or("");
        let lower = metric["higher_is_better"] == false;
        let base = reference
            .as_ref()
            .and_then(|r| values.get(r))
            .and_then(Value::as_f64)
            .filter(|b| *b > 0.0);
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{name}{}", if lower { " (lower is better)" } else { "" }),
                ("sans-serif", 13),
            )
            .margin(12)
            .x_label_area_size(10)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..contenders.len() as f64, 0f64..best * 1.3)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_x_axis()
            .y_desc(unit)
            .y_labels(5)
            .draw()?;
        for (i, contender) in contenders.iter().enumerate() {
            let Some(v) = values.get(contender).and_then(Value::as_f64) else {
                continue;
            };
            let color = COLORS[i % COLORS.len()];
            let x = i as f64;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x + 0.1, 0.0), (x + 0.9, v)],
                color.filled(),
            )))?;
            let value = format!("{v:.3}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_owned();
            chart.draw_series(std::iter::once(Text::new(
                value,
                (x + 0.1, v + best * 0.13),
                ("sans-serif", 11),
            )))?;
            if let Some(base) = base {
                chart.draw_series(std::iter::once(Text::new(
                    format!("{:.2}×", v / base),
                    (x + 0.1, v + best * 0.06),
                    ("sans-serif", 11).into_font().style(FontStyle::Bold),
                )))?;
            }
        }
    }
    root.present()?;
    Ok(())
}
