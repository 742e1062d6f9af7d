//! `pco` (run through `scripts/pco`): the iteration loop, resumably, from one settings file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use exports::run_layout::RunLayout;
use pco::heldback;
use pco::runner::{log, Runner};
use pco::settings::{Settings, DEFAULT_TOML};
use pco::stages::{self, Bin, Cmd, Resource, Stage, Work};

/// Runs Pairwise Cringe Optimization (or Binary Cringe / DPO) for `iterations` iterations on the
/// repetition task, resumably. Settings: `--config FILE` (merged over the built-in defaults; see
/// `--print-default`), else the run folder's own run.toml, else the defaults; then the flags below.
/// The effective settings are written to RUN/run.toml.
///
/// Stages (see `--list`): data, sft-export, pref-beam, pref-greedy, pref-pairs, sft-test-gen,
/// sft-eval, [reward-split, reward-fit, reward-export, reward-accuracy], then per iteration k:
/// M-iterk-fit, -export (+ verify), -test-gen, -eval, and (before the last) -generate, -label.
/// Each stage records a key (settings, binaries, input contents) in RUN/.stages/; a rerun skips
/// finished stages, resumes an interrupted generation or training, and redoes a stage whose key
/// changed.
#[derive(Parser, Debug)]
#[command(name = "pco")]
struct Cli {
    /// Run folder.
    #[arg(long, default_value = "runs/default")]
    run: PathBuf,
    /// Settings file (TOML); only the keys it changes are needed.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override one setting, e.g. `--set iterations=3 --set train.lr=5e-5` (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// = --set method=M: pairwise-cringe | binary-cringe | dpo.
    #[arg(long)]
    method: Option<String>,
    /// = --set iterations=N.
    #[arg(long)]
    iterations: Option<u32>,
    /// = --set reward="model:DIR": label with this reward model (HF folder with a score head).
    #[arg(long, value_name = "DIR")]
    reward_model: Option<PathBuf>,
    /// = --set reward=SPEC: repetition:N | trained | model:DIR.
    #[arg(long, value_name = "SPEC")]
    reward: Option<String>,
    /// = --set scale=S: multiply data sizes and training epochs.
    #[arg(long)]
    scale: Option<f64>,
    /// = --set devices.threads=N.
    #[arg(long)]
    threads: Option<u32>,
    /// = --set model=DIR: the SFT model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// = --set data.text_dir=DIR: the corpus.
    #[arg(long)]
    text_dir: Option<PathBuf>,
    /// = --set devices.train=D (cpu, cuda:0).
    #[arg(long)]
    device: Option<String>,
    /// Submit the whole run to Slurm as jobs with afterok dependencies instead of running it here.
    #[arg(long)]
    slurm: bool,
    /// Run the stages up to and including STAGE, then stop.
    #[arg(long, value_name = "STAGE")]
    only: Option<String>,
    /// Run exactly this stage (what a Slurm job does); reads RUN/run.toml.
    #[arg(long, value_name = "NAME")]
    stage: Option<String>,
    /// With --stage: one shard I/N of a generation stage (a Slurm array task).
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    /// With --stage: merge the N finished shards of a generation stage.
    #[arg(long, value_name = "N")]
    merge: Option<u32>,
    /// Only write the report (engine report) of the run folder.
    #[arg(long)]
    report: bool,
    /// Evaluate every model of the run on held-back contexts (scripts/eval-heldback).
    #[arg(long)]
    heldback: bool,
    /// List the stages of the settings, with done/pending, and exit.
    #[arg(long)]
    list: bool,
    /// Print the built-in settings file, every key explained, and exit.
    #[arg(long)]
    print_default: bool,
    /// The project root that relative paths in settings refer to (default: PCO_ROOT, else two
    /// folders above this binary).
    #[arg(long)]
    root: Option<PathBuf>,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("pco: error: {e:#}");
        std::process::exit(1);
    }
}

fn exe_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the pco binary")?;
    Ok(exe.parent().context("pco binary folder")?.to_path_buf())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn run(cli: Cli) -> Result<()> {
    if cli.print_default {
        print!("{DEFAULT_TOML}");
        return Ok(());
    }
    let bins = match std::env::var_os("PCO_BIN") {
        Some(b) => PathBuf::from(b),
        None => exe_dir()?,
    };
    let root = match (&cli.root, std::env::var_os("PCO_ROOT")) {
        (Some(r), _) => absolute(r)?,
        (None, Some(r)) => PathBuf::from(r),
        (None, None) => exe_dir()?
            .parent()
            .and_then(Path::parent)
            .context("project root")?
            .to_path_buf(),
    };
    std::fs::create_dir_all(&cli.run)
        .with_context(|| format!("creating the run folder {}", cli.run.display()))?;
    let run = RunLayout::new(
        std::fs::canonicalize(&cli.run)
            .with_context(|| format!("run folder {}", cli.run.display()))?,
    );

    // A job of a submitted run, the report and the held-back evaluation use the run's own settings.
    let job = cli.stage.is_some() || cli.report || cli.heldback;
    let mut overrides = Vec::new();
    let flag = |k: &str, v: String| format!("{k}={v}");
    if let Some(m) = &cli.method {
        overrides.push(flag("method", toml_str(m)));
    }
    if let Some(n) = cli.iterations {
        overrides.push(flag("iterations", n.to_string()));
    }
    if let Some(d) = &cli.reward_model {
        overrides.push(flag(
            "reward",
            toml_str(&format!("model:{}", absolute(d)?.display())),
        ));
    }
    if let Some(r) = &cli.reward {
        overrides.push(flag("reward", toml_str(r)));
    }
    if let Some(s) = cli.scale {
        overrides.push(flag("scale", format!("{s:?}")));
    }
    if let Some(t) = cli.threads {
        overrides.push(flag("devices.threads", t.to_string()));
    }
    if let Some(m) = &cli.model {
        overrides.push(flag("model", toml_str(&absolute(m)?.display().to_string())));
    }
    if let Some(t) = &cli.text_dir {
        overrides.push(flag(
            "data.text_dir",
            toml_str(&absolute(t)?.display().to_string()),
        ));
    }
    if let Some(d) = &cli.device {
        overrides.push(flag("devices.train", toml_str(d)));
    }
    overrides.extend(cli.set.iter().cloned());
    let file = match &cli.config {
        Some(f) => Some(f.clone()),
        None if run.settings().is_file() => Some(run.settings()),
        None if job => bail!(
            "{}: no run.toml (start the run with scripts/pco first)",
            run.root.display()
        ),
        None => None,
    };
    let (st, unknown) = Settings::load(file.as_deref(), &overrides, &root)?;
    for k in &unknown {
        log(format!(
            "settings: unknown key `{k}` (kept in run.toml, not used)"
        ));
    }
    // The report, a job and the held-back evaluation never rewrite the run's settings (a held-back
    // `--set eval.heldback_text_dir=…` must not change what the next local run trains on).
    if !job {
        exports::fsutil::write_atomic(&run.settings(), st.to_toml().as_bytes())?;
    }

    let plan = stages::plan(&st, &run);
    let mut runner = Runner::new(run.clone(), &st, bins.clone());

    if cli.list {
        for s in &plan {
            let state = if runner.is_done(s).unwrap_or(false) {
                "done"
            } else {
                "pending"
            };
            println!("{}\t{state}", s.name);
        }
        return Ok(());
    }
    if cli.report {
        return report(&runner);
    }
    if cli.heldback {
        return run_heldback(&mut runner, &st, &run);
    }
    if let Some(name) = &cli.stage {
        let stage = plan
            .iter()
            .find(|s| &s.name == name)
            .with_context(|| format!("no stage {name} in this run's plan (see --list)"))?;
        match (&cli.shard, cli.merge) {
            (Some(sh), _) => {
                let (i, n) = sh
                    .split_once('/')
                    .and_then(|(i, n)| Some((i.parse().ok()?, n.parse().ok()?)))
                    .with_context(|| format!("--shard {sh}: expected I/N"))?;
                runner.run_shard(stage, i, n)?;
            }
            (None, Some(n)) => {
                runner.merge_shards(stage, n)?;
            }
            (None, None) => {
                runner.run_stage(stage)?;
            }
        }
        return Ok(());
    }
    for b in [Bin::Exports, Bin::Engine, Bin::Training] {
        let p = runner.bin(b);
        if !p.is_file() {
            bail!("{} is missing: run scripts/setup.sh first", p.display());
        }
    }
    if !st.model.join("config.json").is_file() {
        bail!(
            "no model at {} (no config.json): run scripts/setup.sh first, or set `model`",
            st.model.display()
        );
    }
    if !st.data.text_dir.is_dir() {
        bail!(
            "no corpus at {}: run scripts/setup.sh first, or set `data.text_dir`",
            st.data.text_dir.display()
        );
    }
    if let Some(only) = &cli.only {
        if !plan.iter().any(|s| &s.name == only) {
            bail!("--only {only}: no such stage (see --list)");
        }
    }
    if cli.slurm {
        let script = root.join("scripts/slurm/stage.sbatch");
        let driver = exe_dir()?.join("pco");
        let ids = pco::slurm::submit(&st, &run, &plan, &script, &driver)?;
        log(format!(
            "submitted {} jobs; the last ({}) writes {}",
            ids.len(),
            ids.last().map(String::as_str).unwrap_or("-"),
            run.root.join("results.md").display()
        ));
        return Ok(());
    }
    for s in &plan {
        runner.run_stage(s)?;
        if cli.only.as_deref() == Some(s.name.as_str()) {
            log(format!("stopping after {} (--only)", s.name));
            return Ok(());
        }
    }
    report(&runner)?;
    log(format!("done: {}", run.root.join("results.md").display()));
    Ok(())
}

fn report(runner: &Runner) -> Result<()> {
    runner.spawn(&Cmd {
        bin: Bin::Engine,
        args: vec![
            "report".into(),
            "--run".into(),
            runner.run.root.display().to_string(),
        ],
        stdout: None,
    })
}

fn run_heldback(runner: &mut Runner, st: &Settings, run: &RunLayout) -> Result<()> {
    let mut st = st.clone();
    if st.eval.heldback_max_new_tokens > 0 {
        st.generation.max_new_tokens = st.eval.heldback_max_new_tokens;
    }
    let st = &st;
    let out = &st.eval.heldback_out;
    if !run.split("test").is_file() {
        bail!(
            "{}: no data/test.jsonl (run scripts/pco first)",
            run.root.display()
        );
    }
    let h = heldback::layout(run, st);
    runner.run_stage(&heldback::split_stage(st, &h))?;
    let n = heldback::select_prompts(
        &h.split_dir.join("test.jsonl"),
        &run.split("test"),
        st.eval.heldback_every,
        st.eval.heldback_count,
        &h.prompts,
    )?;
    log(format!("{out}: {n} held-back contexts"));
    if n == 0 {
        bail!(
            "{}: no test context is left outside the run's own test split (lower eval.heldback_every, or use a larger corpus)",
            h.split_dir.join("test.jsonl").display()
        );
    }
    for (name, onnx, gen, metrics) in &h.models {
        if !onnx.join("model.onnx").is_file() {
            continue;
        }
        let g = stages::generate_stage(
            st,
            format!("{out}-{name}-gen"),
            onnx,
            &h.prompts,
            vec!["--decoding".into(), "greedy".into()],
            gen.clone(),
        );
        runner.run_stage(&g)?;
        let args = vec![
            "eval".to_string(),
            "--generations".into(),
            gen.display().to_string(),
            "--metrics".into(),
            st.eval.metrics.clone(),
            "--json".into(),
        ];
        runner.run_stage(&Stage {
            name: format!("{out}-{name}-eval"),
            settings: args[3..].join(" "),
            inputs: vec![gen.clone()],
            bins: vec![Bin::Engine],
            outputs: vec![metrics.clone()],
            work: Work::Commands(vec![Cmd {
                bin: Bin::Engine,
                args,
                stdout: Some(metrics.clone()),
            }]),
            resource: Resource::Infer,
        })?;
    }
    let md = heldback::results_md(run, st, &h, n)?;
    exports::fsutil::write_atomic(&h.prompts.with_file_name("results.md"), md.as_bytes())?;
    print!("{md}");
    Ok(())
}
