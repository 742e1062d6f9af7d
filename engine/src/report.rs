//! `engine report --run DIR`: the results of a `scripts/pco` run folder — `results.json`,
//! `results.md` (SFT / iteration 1 / iteration 2 per method, next to the paper's numbers) and PNG
//! plots (training curves of loss, gate and margin; Repeat@3 and F1 per method).
//!
//! Run-folder layout (written by `scripts/pco`):
//! `data/`, `sft/eval/metrics.json`, `pref/pairs.jsonl`,
//! `<method>/iter{1,2}/{train/metrics.jsonl, onnx/, eval/metrics.json}`, `<method>/iter1/new_pairs.jsonl`,
//! `.stages/times.tsv` (stage name, seconds).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use exports::records::{read_jsonl, TrainMetrics};
use plotters::prelude::*;
use serde_json::{json, Value};

pub const METHODS: [&str; 3] = ["pairwise-cringe", "binary-cringe", "dpo"];

/// The paper's repetition-task numbers (Section 3.1; GPT2-Medium on BASE data). Values only shown
/// in its Figure 3 are not in the text and are left out rather than guessed.
const PAPER: &[(&str, &str, &str)] = &[
    ("Human responses", "0.892", "–"),
    ("SFT (GPT2-Medium)", "15.21", "0.1165"),
    ("Binary Cringe, iteration 1", "1.18", "0.1125"),
    ("Pairwise Cringe, iteration 1", "1.39", "0.1236"),
];

fn read_json(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

fn count_lines(path: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.lines().filter(|l| !l.trim().is_empty()).count())
}

fn stage_times(run: &Path) -> BTreeMap<String, f64> {
    let text = std::fs::read_to_string(run.join(".stages/times.tsv")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (name, secs) = l.split_once('\t')?;
            Some((name.to_string(), secs.trim().parse().ok()?))
        })
        .collect()
}

/// One evaluated model of the run.
struct Row {
    label: String,
    method: Option<&'static str>,
    iteration: u32,
    metrics: Value,
    pairs: Option<usize>,
    model: Option<PathBuf>,
    seconds: BTreeMap<String, f64>,
    curve: Vec<TrainMetrics>,
}

fn collect(run: &Path) -> Result<Vec<Row>> {
    let times = stage_times(run);
    let pick = |prefix: &str| -> BTreeMap<String, f64> {
        times
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| {
                (
                    k.trim_start_matches(prefix)
                        .trim_start_matches('-')
                        .to_string(),
                    *v,
                )
            })
            .collect()
    };
    let mut rows = Vec::new();
    if let Some(m) = read_json(&run.join("sft/eval/metrics.json")) {
        let mut seconds = pick("sft");
        seconds.extend(
            pick("pref")
                .into_iter()
                .map(|(k, v)| (format!("pref-{k}"), v)),
        );
        rows.push(Row {
            label: "SFT".into(),
            method: None,
            iteration: 0,
            metrics: m,
            pairs: None,
            model: Some(run.join("sft/onnx")),
            seconds,
            curve: vec![],
        });
    }
    let pref = count_lines(&run.join("pref/pairs.jsonl"));
    for method in METHODS {
        let dir = run.join(method);
        for it in [1u32, 2] {
            let idir = dir.join(format!("iter{it}"));
            let Some(m) = read_json(&idir.join("eval/metrics.json")) else {
                continue;
            };
            let pairs = match it {
                1 => pref,
                _ => pref
                    .zip(count_lines(&dir.join("iter1/new_pairs.jsonl")))
                    .map(|(a, b)| a + b),
            };
            let curve_path = idir.join("train/metrics.jsonl");
            let curve = if curve_path.exists() {
                read_jsonl::<TrainMetrics>(&curve_path)?
            } else {
                vec![]
            };
            let mut seconds = pick(&format!("{method}-iter{it}"));
            if it == 1 {
                // The labeling stages belong to the data iteration 2 trains on.
                seconds.retain(|k, _| k != "generate" && k != "label");
            } else {
                let prev = pick(&format!("{method}-iter1"));
                for k in ["generate", "label"] {
                    if let Some(v) = prev.get(k) {
                        seconds.insert(k.to_string(), *v);
                    }
                }
            }
            rows.push(Row {
                label: format!("{method}, iteration {it}"),
                method: Some(method),
                iteration: it,
                metrics: m,
                pairs,
                model: Some(idir.join("onnx")),
                seconds,
                curve,
            });
        }
    }
    Ok(rows)
}

fn metric(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

fn markdown(run: &Path, rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Pairwise Cringe Optimization: repetition task\n");
    let _ = writeln!(s, "Run folder: `{}`\n", run.display());
    let _ = writeln!(
        s,
        "| model | Repeat@3 ↓ | F1 ↑ | examples | pairs used | wall time per stage (s) |\n|---|---:|---:|---:|---:|---|"
    );
    for r in rows {
        let times: Vec<String> = r
            .seconds
            .iter()
            .map(|(k, v)| format!("{k} {v:.0}"))
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r.label,
            fmt_opt(metric(&r.metrics, "repeat@3"), 3),
            fmt_opt(metric(&r.metrics, "f1"), 4),
            r.metrics
                .get("examples")
                .and_then(Value::as_u64)
                .map(|n| n.to_string())
                .unwrap_or_default(),
            r.pairs.map(|n| n.to_string()).unwrap_or_else(|| "–".into()),
            times.join(", ")
        );
    }
    let sft = rows.iter().find(|r| r.method.is_none());
    for r in rows.iter().filter(|r| r.iteration == 2) {
        if let (Some(base), Some(rep), Some(f1)) = (
            sft.and_then(|b| metric(&b.metrics, "repeat@3")),
            metric(&r.metrics, "repeat@3"),
            metric(&r.metrics, "f1"),
        ) {
            let base_f1 = sft
                .and_then(|b| metric(&b.metrics, "f1"))
                .unwrap_or(f64::NAN);
            let _ = writeln!(
                s,
                "\n{}: Repeat@3 is {:.1}% of the SFT model's ({rep:.3} vs {base:.3}); F1 {f1:.4} vs {base_f1:.4}.",
                r.label,
                100.0 * rep / base.max(1e-12)
            );
        }
    }
    let _ = writeln!(
        s,
        "\n## The paper's numbers (GPT2-Medium, BASE data, Section 3.1)\n\n| model | Repeat@3 | F1 |\n|---|---:|---:|"
    );
    for (m, r, f) in PAPER {
        let _ = writeln!(s, "| {m} | {r} | {f} |");
    }
    let _ = writeln!(
        s,
        "\nThe paper's final (iteration 2) values for Binary Cringe, DPO and Pairwise Cringe appear only in its\n\
         Figure 3 (close to the human 0.892 for DPO and Pairwise Cringe). This run uses SmolLM2-135M-Instruct on\n\
         State of the Union text, so absolute numbers differ; compare each method with its own SFT row.\n"
    );
    let _ = writeln!(
        s,
        "Plots: `plots/metrics.png`, `plots/training-<method>.png`."
    );
    s
}

fn to_json(run: &Path, rows: &[Row]) -> Value {
    let entry = |r: &Row| {
        json!({
            "metrics": r.metrics,
            "pairs_used": r.pairs,
            "stage_seconds": r.seconds,
            "model": r.model.as_ref().map(|p| p.display().to_string()),
            "train_steps": r.curve.len(),
        })
    };
    let mut methods = serde_json::Map::new();
    for method in METHODS {
        let its: serde_json::Map<String, Value> = rows
            .iter()
            .filter(|r| r.method == Some(method))
            .map(|r| (format!("iter{}", r.iteration), entry(r)))
            .collect();
        if !its.is_empty() {
            methods.insert(method.to_string(), Value::Object(its));
        }
    }
    json!({
        "run": run.display().to_string(),
        "sft": rows.iter().find(|r| r.method.is_none()).map(entry),
        "methods": methods,
        "paper": PAPER.iter().map(|(m, r, f)| json!({"model": m, "repeat@3": r, "f1": f})).collect::<Vec<_>>(),
    })
}

/// Make plotters' text renderer use a font from the system (DejaVu Sans ships with the base image;
/// set-up installs it where missing). Registration needs `'static` bytes, so they are leaked once.
fn register_font() -> Result<()> {
    const CANDIDATES: &[&str] = &[
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    ];
    let path = CANDIDATES
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .context("no DejaVuSans.ttf font found for the plots (install fonts-dejavu-core)")?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{}: not a usable TrueType font", path.display()))
}

type Plot<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn curve_panel(area: &Plot, title: &str, series: &[(String, Vec<(f64, f64)>)]) -> Result<()> {
    let pts = series.iter().flat_map(|(_, s)| s.iter());
    let (mut x1, mut y0, mut y1) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts {
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.08).max(1e-6);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..x1, (y0 - pad)..(y1 + pad))?;
    chart.configure_mesh().x_desc("step").draw()?;
    for (i, (name, s)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(s.iter().copied(), color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn training_plot(path: &Path, method: &str, rows: &[&Row]) -> Result<()> {
    let root = BitMapBackend::new(path, (1500, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 3));
    type Field = fn(&TrainMetrics) -> Option<f64>;
    let fields: [(&str, Field); 3] = [
        ("loss", |m| Some(m.loss)),
        ("gate (mean)", |m| m.gate),
        ("margin (mean)", |m| m.margin),
    ];
    for (area, (title, get)) in panels.iter().zip(fields) {
        let series: Vec<(String, Vec<(f64, f64)>)> = rows
            .iter()
            .map(|r| {
                let pts = r
                    .curve
                    .iter()
                    .filter_map(|m| Some((m.step as f64, get(m)?)))
                    .collect();
                (format!("iteration {}", r.iteration), pts)
            })
            .collect();
        curve_panel(area, &format!("{method}: {title}"), &series)?;
    }
    root.present()?;
    Ok(())
}

fn metrics_plot(path: &Path, rows: &[Row]) -> Result<()> {
    let root = BitMapBackend::new(path, (1200, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    for (area, (key, title)) in panels.iter().zip([
        ("repeat@3", "Repeat@3 (lower is better)"),
        ("f1", "F1 (higher is better)"),
    ]) {
        let values: Vec<(String, f64)> = rows
            .iter()
            .filter_map(|r| Some((r.label.clone(), metric(&r.metrics, key)?)))
            .collect();
        let top = values.iter().map(|v| v.1).fold(0.0f64, f64::max).max(1e-6) * 1.15;
        let n = values.len().max(1);
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => values
                    .get(*i)
                    .map(|v| short_label(&v.0))
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .draw()?;
        chart.draw_series(values.iter().enumerate().map(|(i, (_, v))| {
            let color = Palette99::pick(i).to_rgba().filled();
            Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), *v),
                ],
                color,
            )
        }))?;
    }
    root.present()?;
    Ok(())
}

fn short_label(label: &str) -> String {
    label
        .replace("pairwise-cringe", "PCO")
        .replace("binary-cringe", "BinCr")
        .replace("dpo", "DPO")
        .replace(", iteration ", " it")
}

/// Write `results.json`, `results.md` and `plots/` into `run`; returns the markdown.
pub fn run(run: &Path) -> Result<String> {
    let rows = collect(run).with_context(|| format!("reading the run folder {}", run.display()))?;
    anyhow::ensure!(
        !rows.is_empty(),
        "{}: no evaluated model yet (expected sft/eval/metrics.json or <method>/iter*/eval/metrics.json)",
        run.display()
    );
    let json = serde_json::to_string_pretty(&to_json(run, &rows))?;
    exports::fsutil::write_atomic(&run.join("results.json"), json.as_bytes())?;
    let md = markdown(run, &rows);
    exports::fsutil::write_atomic(&run.join("results.md"), md.as_bytes())?;
    let plots = run.join("plots");
    std::fs::create_dir_all(&plots)?;
    register_font()?;
    metrics_plot(&plots.join("metrics.png"), &rows)?;
    for method in METHODS {
        let its: Vec<&Row> = rows
            .iter()
            .filter(|r| r.method == Some(method) && !r.curve.is_empty())
            .collect();
        if !its.is_empty() {
            training_plot(&plots.join(format!("training-{method}.png")), method, &its)?;
        }
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn report_collects_metrics_pairs_and_times_and_draws_plots() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(
            &r.join("sft/eval/metrics.json"),
            r#"{"examples": 4, "repeat@3": 8.0, "f1": 0.1}"#,
        );
        write(&r.join("pref/pairs.jsonl"), "{}\n{}\n{}\n");
        let m = r.join("pairwise-cringe");
        write(
            &m.join("iter1/eval/metrics.json"),
            r#"{"examples": 4, "repeat@3": 3.0, "f1": 0.11}"#,
        );
        write(
            &m.join("iter2/eval/metrics.json"),
            r#"{"examples": 4, "repeat@3": 1.5, "f1": 0.12}"#,
        );
        write(&m.join("iter1/new_pairs.jsonl"), "{}\n{}\n");
        let line = |step: u64, loss: f64| {
            format!(
                "{{\"step\":{step},\"epoch\":0.5,\"examples\":8,\"tokens\":900,\"loss\":{loss},\"ce\":1.0,\"cringe\":0.5,\"gate\":0.9,\"margin\":-3.0,\"chosen_logp\":-20.0,\"rejected_logp\":-17.0,\"accuracy\":0.25,\"lr\":1e-5,\"grad_norm\":2.0,\"tokens_per_s\":100.0}}\n"
            )
        };
        write(
            &m.join("iter2/train/metrics.jsonl"),
            &(line(1, 2.0) + &line(2, 1.5)),
        );
        write(
            &r.join(".stages/times.tsv"),
            "sft-eval\t12.5\npairwise-cringe-iter1-label\t3.0\npairwise-cringe-iter2-fit\t100.0\n",
        );
        let md = run(r).unwrap();
        // Iteration 1 trains on the 3 PREF pairs; iteration 2 on PREF + 2 new pairs.
        assert!(
            md.contains("| pairwise-cringe, iteration 1 | 3.000 | 0.1100 | 4 | 3 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| pairwise-cringe, iteration 2 | 1.500 | 0.1200 | 4 | 5 | fit 100, label 3 |"
            ),
            "{md}"
        );
        assert!(md.contains("18.8% of the SFT model's"), "{md}");
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(r.join("results.json")).unwrap())
                .unwrap();
        assert_eq!(json["methods"]["pairwise-cringe"]["iter2"]["pairs_used"], 5);
        assert_eq!(
            json["methods"]["pairwise-cringe"]["iter2"]["train_steps"],
            2
        );
        assert_eq!(json["sft"]["metrics"]["repeat@3"], 8.0);
        for png in ["plots/metrics.png", "plots/training-pairwise-cringe.png"] {
            let bytes = std::fs::read(r.join(png)).unwrap();
            assert_eq!(&bytes[1..4], b"PNG", "{png}");
        }
    }

    #[test]
    fn an_empty_run_folder_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = run(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no evaluated model yet"), "{e}");
    }
}
