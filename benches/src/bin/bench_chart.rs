//! Draws a benchmark result file as an SVG bar chart: one group per metric, one bar per
//! contender, each group scaled to its own best value (the bar is labelled with the value).
//!
//! Usage: bench_chart RESULTS.json CHART.svg
//!
//! RESULTS.json, as the peer scripts in benches/peers write it:
//! `{"title": "…", "machine": "…", "metrics": [{"name": "…", "unit": "…", "higher_is_better":
//! true, "values": {"fastedge": 1.0, "haproxy": 2.0}}]}`

use plotters::prelude::*;
use serde_json::Value;

const COLORS: [RGBColor; 5] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
];

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
    let width = 220 * metrics.len().max(1) as u32 + 120;
    let root = SVGBackend::new(output, (width, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = results["title"].as_str().unwrap_or("benchmark");
    let (top, rest) = root.split_vertically(60);
    top.titled(title, ("sans-serif", 22))?;
    if let Some(machine) = results["machine"].as_str() {
        top.draw_text(machine, &("sans-serif", 12).into_text_style(&top), (10, 40))?;
    }
    let groups = rest.split_evenly((1, metrics.len().max(1)));
    for (area, metric) in groups.iter().zip(metrics) {
        let values = metric["values"].as_object().cloned().unwrap_or_default();
        let best = values
            .values()
            .filter_map(Value::as_f64)
            .fold(0.0f64, f64::max)
            .max(1e-12);
        let name = metric["name"].as_str().unwrap_or("?");
        let unit = metric["unit"].as_str().unwrap_or("");
        let lower = metric["higher_is_better"] == false;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{name}{}", if lower { " (lower is better)" } else { "" }),
                ("sans-serif", 13),
            )
            .margin(10)
            .x_label_area_size(20)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..contenders.len() as f64, 0f64..best * 1.2)?;
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
                [(x + 0.15, 0.0), (x + 0.85, v)],
                color.filled(),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("{v:.3}")
                    .trim_end_matches('0')
                    .trim_end_matches('.')
                    .to_owned(),
                (x + 0.2, v * 1.02 + best * 0.08),
                ("sans-serif", 11),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                contender.clone(),
                (x + 0.15, best * 0.06),
                ("sans-serif", 11).into_font().color(&WHITE),
            )))?;
        }
    }
    root.present()?;
    Ok(())
}
