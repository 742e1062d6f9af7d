//! `engine report --run DIR`: the results of a `scripts/pco` run folder — `results.json`,
//! `results.md` (SFT and every iteration of every method, next to the paper's numbers; the
//! reward model's held-out pair accuracy and each iteration's win rate against SFT when the run
//! has them) and PNG plots (training curves of loss, gate and margin; Repeat@3 and F1 per
//! iteration). The folder layout is `exports::run_layout`, the one the driver writes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use exports::records::{read_jsonl, TrainMetrics};
use exports::run_layout::{RunLayout, TrainData};
use plotters::prelude::*;
use serde_json::{json, Value};

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

fn stage_times(run: &RunLayout) -> BTreeMap<String, f64> {
    let text = std::fs::read_to_string(run.stage_times()).unwrap_or_default();
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
    method: Option<String>,
    iteration: u32,
    metrics: Value,
    pairs: Option<usize>,
    model: Option<PathBuf>,
    seconds: BTreeMap<String, f64>,
    curve: Vec<TrainMetrics>,
}

fn collect(run: &RunLayout) -> Result<Vec<Row>> {
    let times = stage_times(run);
    let pick = |prefix: &str| -> BTreeMap<String, f64> {
        times
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.strip_prefix('-')?.to_string(), *v)))
            .collect()
    };
    let mut rows = Vec::new();
    if let Some(m) = read_json(&run.sft_eval().metrics()) {
        let mut seconds = pick("sft");
        seconds.extend(
            pick("pref")
                .into_iter()
                .map(|(k, v)| (format!("pref-{k}"), v)),
        );
        if let Some(v) = times.get("data") {
            seconds.insert("data".into(), *v);
        }
        rows.push(Row {
            label: "SFT".into(),
            method: None,
            iteration: 0,
            metrics: m,
            pairs: None,
            model: Some(run.sft_onnx()),
            seconds,
            curve: vec![],
        });
    }
    for (method, its) in run.evaluated() {
        for it in its {
            let Some(m) = read_json(&it.eval().metrics()) else {
                continue;
            };
            let pairs = std::fs::read_to_string(it.train_data())
                .ok()
                .and_then(|t| serde_json::from_str::<TrainData>(&t).ok())
                .map(|d| d.records);
            let curve = if it.train_metrics().exists() {
                read_jsonl::<TrainMetrics>(&it.train_metrics())?
            } else {
                vec![]
            };
            let mut seconds = pick(&it.stage_prefix());
            // The labeling stages of iteration k-1 made the data iteration k trains on.
            seconds.retain(|k, _| k != "generate" && k != "label");
            if it.iteration > 1 {
                let prev = pick(&run.iter(&method, it.iteration - 1).stage_prefix());
                for k in ["generate", "label"] {
                    if let Some(v) = prev.get(k) {
                        seconds.insert(k.to_string(), *v);
                    }
                }
            }
            rows.push(Row {
                label: format!("{method}, iteration {}", it.iteration),
                method: Some(method.clone()),
                iteration: it.iteration,
                metrics: m,
                pairs,
                model: Some(it.onnx()),
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

/// `engine eval`'s win rate of a row against SFT, as "52.0 [45.1, 58.9]".
fn win_rate(m: &Value) -> Option<String> {
    let w = metric(m, "win_rate")?;
    let ci = m.get("win_rate_ci").and_then(Value::as_array);
    Some(match ci.map(|c| (c[0].as_f64(), c[1].as_f64())) {
        Some((Some(lo), Some(hi))) => format!("{w:.1} [{lo:.1}, {hi:.1}]"),
        _ => format!("{w:.1}"),
    })
}

/// The reward model's held-out pair accuracy (`training eval --objective reward --json`).
fn reward_model(run: &RunLayout) -> Option<Value> {
    let acc = read_json(&run.reward_accuracy())?;
    let trained_on = std::fs::read_to_string(run.reward_train().join("data.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<TrainData>(&t).ok())
        .map(|d| d.records);
    Some(json!({
        "heldout_accuracy": acc.get("accuracy"),
        "heldout_pairs": acc.get("examples"),
        "trained_on_pairs": trained_on,
    }))
}

fn markdown(run: &RunLayout, rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Pairwise Cringe Optimization: repetition task\n");
    let _ = writeln!(s, "Run folder: `{}`\n", run.root.display());
    let iterations = rows.iter().map(|r| r.iteration).max().unwrap_or(0);
    let methods: Vec<&str> = {
        let mut m: Vec<&str> = rows.iter().filter_map(|r| r.method.as_deref()).collect();
        m.dedup();
        m
    };
    let _ = writeln!(
        s,
        "{} method(s), up to {iterations} iteration(s). Win rate: % of test prompts where the model's greedy response beats SFT's under the run's reward (ties count half), with its 95% bootstrap interval.\n",
        methods.len()
    );
    let _ = writeln!(
        s,
        "| model | Repeat@3 ↓ | F1 ↑ | win rate vs SFT | examples | pairs used | wall time per stage (s) |\n|---|---:|---:|---:|---:|---:|---|"
    );
    for r in rows {
        let times: Vec<String> = r
            .seconds
            .iter()
            .map(|(k, v)| format!("{k} {v:.0}"))
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            fmt_opt(metric(&r.metrics, "repeat@3"), 3),
            fmt_opt(metric(&r.metrics, "f1"), 4),
            win_rate(&r.metrics).unwrap_or_else(|| "–".into()),
            r.metrics
                .get("examples")
                .and_then(Value::as_u64)
                .map(|n| n.to_string())
                .unwrap_or_default(),
            r.pairs.map(|n| n.to_string()).unwrap_or_else(|| "–".into()),
            times.join(", ")
        );
    }
    if let Some(rm) = reward_model(run) {
        let _ = writeln!(
            s,
            "\nReward model (Bradley–Terry, trained on {} PREF pairs): held-out pair accuracy {} on {} held-out PREF pairs.",
            rm["trained_on_pairs"].as_u64().map(|n| n.to_string()).unwrap_or_else(|| "–".into()),
            rm["heldout_accuracy"].as_f64().map(|a| format!("{:.3}", a)).unwrap_or_else(|| "–".into()),
            rm["heldout_pairs"].as_u64().map(|n| n.to_string()).unwrap_or_else(|| "–".into()),
        );
    }
    let sft = rows.iter().find(|r| r.method.is_none());
    for m in &methods {
        let Some(r) = rows.iter().rfind(|r| r.method.as_deref() == Some(*m)) else {
            continue;
        };
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
                "\n{} (final): Repeat@3 is {:.1}% of the SFT model's ({rep:.3} vs {base:.3}); F1 {f1:.4} vs {base_f1:.4}.",
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
        "Plots: `plots/metrics.png` (per iteration), `plots/training-<method>.png`."
    );
    s
}

fn to_json(run: &RunLayout, rows: &[Row]) -> Value {
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
    for r in rows {
        let Some(m) = &r.method else { continue };
        let e = methods
            .entry(m.clone())
            .or_insert_with(|| Value::Object(Default::default()));
        e.as_object_mut()
            .expect("an object")
            .insert(format!("iter{}", r.iteration), entry(r));
    }
    json!({
        "run": run.root.display().to_string(),
        "sft": rows.iter().find(|r| r.method.is_none()).map(entry),
        "methods": methods,
        "reward_model": reward_model(run),
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
    let sft = rows.iter().find(|r| r.method.is_none());
    let mut methods: Vec<&str> = rows.iter().filter_map(|r| r.method.as_deref()).collect();
    methods.dedup();
    let last = rows.iter().map(|r| r.iteration).max().unwrap_or(1).max(1);
    for (area, (key, title)) in panels.iter().zip([
        ("repeat@3", "Repeat@3 per iteration (lower is better)"),
        ("f1", "F1 per iteration (higher is better)"),
    ]) {
        // One line per method, starting from SFT at iteration 0.
        let series: Vec<(String, Vec<(f64, f64)>)> = methods
            .iter()
            .map(|m| {
                let pts = sft
                    .into_iter()
                    .chain(rows.iter().filter(|r| r.method.as_deref() == Some(*m)))
                    .filter_map(|r| Some((r.iteration as f64, metric(&r.metrics, key)?)))
                    .collect();
                (short_label(m), pts)
            })
            .collect();
        let top = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|v| v.1))
            .chain(sft.and_then(|r| metric(&r.metrics, key)))
            .fold(0.0f64, f64::max)
            .max(1e-6)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(-0.2f64..(last as f64 + 0.2), 0f64..top)?;
        chart
            .configure_mesh()
            .x_desc("iteration (0 = SFT)")
            .x_labels(last as usize + 1)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
        if !series.is_empty() {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
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
    let layout = RunLayout::new(run);
    let rows =
        collect(&layout).with_context(|| format!("reading the run folder {}", run.display()))?;
    anyhow::ensure!(
        !rows.is_empty(),
        "{}: no evaluated model yet (expected sft/eval/metrics.json or <method>/iter*/eval/metrics.json)",
        run.display()
    );
    let json = serde_json::to_string_pretty(&to_json(&layout, &rows))?;
    exports::fsutil::write_atomic(&run.join("results.json"), json.as_bytes())?;
    let md = markdown(&layout, &rows);
    exports::fsutil::write_atomic(&run.join("results.md"), md.as_bytes())?;
    let plots = run.join("plots");
    std::fs::create_dir_all(&plots)?;
    register_font()?;
    metrics_plot(&plots.join("metrics.png"), &rows)?;
    let mut methods: Vec<&str> = rows.iter().filter_map(|r| r.method.as_deref()).collect();
    methods.dedup();
    for method in methods {
        let its: Vec<&Row> = rows
            .iter()
            .filter(|r| r.method.as_deref() == Some(method) && !r.curve.is_empty())
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
    fn report_collects_any_number_of_iterations_pairs_times_and_draws_plots() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(
            &r.join("sft/eval/metrics.json"),
            r#"{"examples": 4, "repeat@3": 8.0, "f1": 0.1}"#,
        );
        let m = r.join("pairwise-cringe");
        for (k, rep, pairs) in [(1, 3.0, 3), (2, 1.5, 5), (3, 1.0, 9)] {
            write(
                &m.join(format!("iter{k}/eval/metrics.json")),
                &format!(
                    r#"{{"examples": 4, "repeat@3": {rep}, "f1": 0.1{k}, "win_rate": 62.5, "win_rate_ci": [37.5, 87.5], "win_rate_prompts": 4}}"#
                ),
            );
            write(
                &m.join(format!("iter{k}/train/data.json")),
                &format!(r#"{{"files": ["pref/pairs.jsonl"], "records": {pairs}}}"#),
            );
        }
        // A method folder with an iteration not evaluated yet is not a row.
        std::fs::create_dir_all(r.join("dpo/iter1/train")).unwrap();
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
            "sft-eval\t12.5\npairwise-cringe-iter1-label\t3.0\npairwise-cringe-iter1-generate\t7.0\npairwise-cringe-iter2-fit\t100.0\n",
        );
        write(
            &r.join("reward/accuracy.json"),
            r#"{"examples": 10, "loss": 0.4, "accuracy": 0.8}"#,
        );
        write(
            &r.join("reward/train/data.json"),
            r#"{"files": ["reward/train.jsonl"], "records": 40}"#,
        );
        let md = run(r).unwrap();
        assert!(
            md.contains(
                "| pairwise-cringe, iteration 1 | 3.000 | 0.1100 | 62.5 [37.5, 87.5] | 4 | 3 |"
            ),
            "{md}"
        );
        // Iteration 2's times include the labeling of iteration 1's samples it trains on.
        assert!(
            md.contains(
                "| pairwise-cringe, iteration 2 | 1.500 | 0.1200 | 62.5 [37.5, 87.5] | 4 | 5 | fit 100, generate 7, label 3 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| pairwise-cringe, iteration 3 | 1.000 | 0.1300 |"),
            "{md}"
        );
        assert!(!md.contains("dpo, iteration"), "{md}");
        // 1.0 / 8.0 for the final (third) iteration.
        assert!(
            md.contains("iteration 3 (final): Repeat@3 is 12.5% of the SFT model's"),
            "{md}"
        );
        assert!(
            md.contains("trained on 40 PREF pairs): held-out pair accuracy 0.800 on 10 held-out"),
            "{md}"
        );
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(r.join("results.json")).unwrap())
                .unwrap();
        assert_eq!(json["methods"]["pairwise-cringe"]["iter2"]["pairs_used"], 5);
        assert_eq!(json["methods"]["pairwise-cringe"]["iter3"]["pairs_used"], 9);
        assert_eq!(
            json["methods"]["pairwise-cringe"]["iter2"]["train_steps"],
            2
        );
        assert_eq!(json["sft"]["metrics"]["repeat@3"], 8.0);
        assert_eq!(json["reward_model"]["heldout_accuracy"], 0.8);
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
