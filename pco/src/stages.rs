//! The stage list of a run, defined once: the local runner executes it in order and the Slurm
//! submitter turns the same list into jobs with `afterok` dependencies. Each stage names the
//! settings that change its result (its key text), its input files, the binaries it runs and the
//! outputs later stages depend on.

use std::path::{Path, PathBuf};

use exports::run_layout::{IterLayout, RunLayout};

use crate::settings::{LaterSteps, NewPairs, Reward, SampleKvCache, SampleWeights, Settings};

/// A program of the workspace that a stage runs; its file's hash is part of the stage key, so a
/// rebuilt binary reruns what it computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bin {
    Exports,
    Engine,
    Training,
}

impl Bin {
    pub fn name(self) -> &'static str {
        match self {
            Bin::Exports => "exports",
            Bin::Engine => "engine",
            Bin::Training => "training",
        }
    }
}

/// One process a stage runs. `stdout` captures its standard output into a file (atomically).
#[derive(Debug, Clone, PartialEq)]
pub struct Cmd {
    pub bin: Bin,
    pub args: Vec<String>,
    pub stdout: Option<PathBuf>,
}

/// What a stage does.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// Commands run in order; each writes its outputs atomically, so a rerun just repeats them.
    Commands(Vec<Cmd>),
    /// Commands, then `scratch` (a folder only they use, e.g. the full-logits graph that verify
    /// checks) removed: it is worth hundreds of MB per iteration and nothing reads it later.
    CommandsThenRemove { cmds: Vec<Cmd>, scratch: PathBuf },
    /// `engine generate ARGS --out OUT`, resumable (`--resume` continues an interrupted file) and
    /// shardable (Slurm runs it as a job array over `--shard I/N`, then merges).
    Generate {
        args: Vec<String>,
        prompts: PathBuf,
        out: PathBuf,
    },
    /// `training fit ARGS --out OUT`, resumable from its last checkpoint.
    Fit { args: Vec<String>, out: PathBuf },
    /// Every `every`-th line of `input` into `heldout`, the rest into `rest` (the reward model's
    /// held-out PREF pairs).
    SplitLines {
        input: PathBuf,
        every: u32,
        rest: PathBuf,
        heldout: PathBuf,
    },
}

/// Where Slurm runs a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Training: a GPU job when the training device is CUDA.
    Train,
    /// Generation and scoring.
    Infer,
    /// Bookkeeping (dataset, pairing, splitting).
    Light,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub name: String,
    /// The settings that change this stage's result, as text (part of the key).
    pub settings: String,
    pub inputs: Vec<PathBuf>,
    pub bins: Vec<Bin>,
    pub outputs: Vec<PathBuf>,
    pub work: Work,
    pub resource: Resource,
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn args<const N: usize>(a: [&str; N]) -> Vec<String> {
    a.iter().map(|x| x.to_string()).collect()
}

/// Flags shared by every generation: settings that change outputs, then the resource-only ones
/// (batch size, threads; generation is identical for any of those), which stay out of keys.
fn generation_flags(st: &Settings) -> (Vec<String>, Vec<String>) {
    let result = vec![
        "--max-new-tokens".into(),
        st.generation.max_new_tokens.to_string(),
        "--seed".into(),
        st.generation.seed.to_string(),
        "--device".into(),
        st.devices.generate.clone(),
        "--no-timings".into(),
    ];
    let mut resources = vec![
        "--batch-size".into(),
        st.devices.generate_batch_size.to_string(),
    ];
    if st.devices.threads > 0 {
        resources.extend(["--threads".into(), st.devices.threads.to_string()]);
    }
    (result, resources)
}

/// Build a generation stage: the key holds the settings flags, never the resource ones.
pub fn generate_stage(
    st: &Settings,
    name: String,
    model: &Path,
    prompts: &Path,
    decoding: Vec<String>,
    out: PathBuf,
) -> Stage {
    let (result, resources) = generation_flags(st);
    let mut a = vec![
        "generate".into(),
        "--model".into(),
        s(model),
        "--prompts".into(),
        s(prompts),
    ];
    a.extend(decoding.iter().cloned());
    a.extend(result.iter().cloned());
    let settings = format!("generate {} {}", decoding.join(" "), result.join(" "));
    a.extend(resources);
    Stage {
        name,
        settings,
        inputs: vec![model.to_path_buf(), prompts.to_path_buf()],
        bins: vec![Bin::Engine],
        outputs: vec![out.clone()],
        work: Work::Generate {
            args: a,
            prompts: prompts.to_path_buf(),
            out,
        },
        resource: Resource::Infer,
    }
}

/// Greedy test-split generations of `onnx` and their metrics (with the win rate against SFT,
/// judged by the run's reward, for every model but SFT itself).
fn eval_stages(
    st: &Settings,
    run: &RunLayout,
    prefix: &str,
    onnx: &Path,
    eval_dir: &exports::run_layout::EvalLayout,
) -> Vec<Stage> {
    let gen = generate_stage(
        st,
        format!("{prefix}-test-gen"),
        onnx,
        &run.split("test"),
        args(["--decoding", "greedy"]),
        eval_dir.generations(),
    );
    let mut a = vec![
        "eval".into(),
        "--generations".into(),
        s(&eval_dir.generations()),
        "--metrics".into(),
        st.eval.metrics.clone(),
    ];
    let mut inputs = vec![eval_dir.generations()];
    if prefix != "sft" {
        let sft = run.sft_eval().generations();
        a.extend(judge_flags(st, run));
        a.extend([
            "--against".into(),
            s(&sft),
            "--bootstrap-resamples".into(),
            st.eval.bootstrap_resamples.to_string(),
        ]);
        inputs.push(sft);
        inputs.extend(judge_inputs(st, run));
    }
    a.push("--json".into());
    let eval = Stage {
        name: format!("{prefix}-eval"),
        settings: a[3..].join(" "),
        inputs,
        bins: vec![Bin::Engine],
        outputs: vec![eval_dir.metrics()],
        work: Work::Commands(vec![Cmd {
            bin: Bin::Engine,
            args: a,
            stdout: Some(eval_dir.metrics()),
        }]),
        resource: Resource::Infer,
    };
    vec![gen, eval]
}

/// `engine label`/`engine eval` flags of the run's reward.
fn judge_flags(st: &Settings, run: &RunLayout) -> Vec<String> {
    match &st.reward {
        Reward::Repetition(n) => vec!["--reward".into(), format!("repetition:{n}")],
        Reward::Trained | Reward::Model(_) => {
            vec!["--reward-model".into(), s(&run.reward_onnx())]
        }
    }
}

fn judge_inputs(st: &Settings, run: &RunLayout) -> Vec<PathBuf> {
    match st.reward {
        Reward::Repetition(_) => vec![],
        _ => vec![run.reward_onnx()],
    }
}

/// `model` is a model folder, or with `base` a LoRA adapter folder merged into `base` on export.
fn export_verify(name: String, model: &Path, base: Option<&Path>, onnx: &Path) -> Stage {
    let source = |mut args: Vec<String>| -> Vec<String> {
        match base {
            None => args.extend(["--model".into(), s(model)]),
            Some(b) => args.extend(["--model".into(), s(b), "--adapter".into(), s(model)]),
        }
        args
    };
    let mut inputs = vec![model.to_path_buf()];
    inputs.extend(base.map(Path::to_path_buf));
    // The probe holds full-sequence logits: verify the full-logits graph, keep the fast one.
    let verify = onnx.with_file_name(format!(
        "{}.verify",
        onnx.file_name().unwrap_or_default().to_string_lossy()
    ));
    Stage {
        name,
        settings: "onnx --last-logits-only; verify".into(),
        inputs,
        bins: vec![Bin::Exports, Bin::Engine],
        outputs: vec![onnx.to_path_buf()],
        work: Work::CommandsThenRemove {
            cmds: vec![
                Cmd {
                    bin: Bin::Exports,
                    args: source(vec!["onnx".into()])
                        .into_iter()
                        .chain(["--out".into(), s(&verify)])
                        .collect(),
                    stdout: None,
                },
                Cmd {
                    bin: Bin::Engine,
                    args: vec![
                        "verify".into(),
                        "--onnx".into(),
                        s(&verify),
                        "--probe".into(),
                        s(&model.join("probe.safetensors")),
                    ],
                    stdout: None,
                },
                Cmd {
                    bin: Bin::Exports,
                    args: source(vec!["onnx".into()])
                        .into_iter()
                        .chain(["--out".into(), s(onnx), "--last-logits-only".into()])
                        .collect(),
                    stdout: None,
                },
            ],
            scratch: verify,
        },
        resource: Resource::Light,
    }
}

/// Optimizer steps of iteration 1: `epochs` over PREF at `batch_size` (PREF's size is only known
/// once it exists, so later iterations get it at run time; see [`later_steps_flag`]).
pub fn iteration1_steps(pref_pairs: usize, st: &Settings) -> u64 {
    let epochs = st.scaled(st.train.epochs) as u64;
    let b = st.train.batch_size as u64;
    (pref_pairs as u64 * epochs).div_ceil(b).max(1)
}

/// The placeholder a fit's arguments carry for "as many steps as iteration 1"; the runner replaces
/// it with [`iteration1_steps`] once PREF exists (PREF is among the stage's inputs, so the key
/// covers it).
pub const STEPS_AS_ITERATION_1: &str = "{steps-as-iteration-1}";

/// Every stage of a run, in execution order.
pub fn plan(st: &Settings, run: &RunLayout) -> Vec<Stage> {
    let mut out = Vec::new();
    let method = st.method.as_str();
    let data = &st.data;
    let (n_train, n_unl, n_test) = (
        st.scaled(data.train),
        st.scaled(data.unlabeled),
        st.scaled(data.test),
    );
    let split = format!("{},{},{}", data.split[0], data.split[1], data.split[2]);
    let ds_args = vec![
        "dataset".into(),
        "continuation".into(),
        "--text-dir".into(),
        s(&data.text_dir),
        "--out".into(),
        s(&run.data_dir()),
        "--context-sentences".into(),
        data.context_sentences.to_string(),
        "--split".into(),
        split.clone(),
        "--limit".into(),
        format!("train={n_train},unlabeled={n_unl},test={n_test}"),
        "--seed".into(),
        data.seed.to_string(),
    ];
    out.push(Stage {
        name: "data".into(),
        settings: ds_args[6..].join(" "),
        inputs: vec![data.text_dir.clone()],
        bins: vec![Bin::Exports],
        outputs: vec![run.data_dir()],
        work: Work::Commands(vec![Cmd {
            bin: Bin::Exports,
            args: ds_args,
            stdout: None,
        }]),
        resource: Resource::Light,
    });

    // The SFT model in ONNX, its PREF pairs and its evaluation.
    out.push(Stage {
        name: "sft-export".into(),
        settings: "onnx --last-logits-only".into(),
        inputs: vec![st.model.clone()],
        bins: vec![Bin::Exports],
        outputs: vec![run.sft_onnx()],
        work: Work::Commands(vec![Cmd {
            bin: Bin::Exports,
            args: vec![
                "onnx".into(),
                "--model".into(),
                s(&st.model),
                "--out".into(),
                s(&run.sft_onnx()),
                "--last-logits-only".into(),
            ],
            stdout: None,
        }]),
        resource: Resource::Light,
    });
    let p = &st.pref;
    out.push(generate_stage(
        st,
        "pref-beam".into(),
        &run.sft_onnx(),
        &run.split("train"),
        vec![
            "--decoding".into(),
            "beam".into(),
            "--beams".into(),
            p.beams.to_string(),
            "--no-repeat-ngram".into(),
            p.no_repeat_ngram.to_string(),
        ],
        run.pref("beam"),
    ));
    out.push(generate_stage(
        st,
        "pref-greedy".into(),
        &run.sft_onnx(),
        &run.split("train"),
        args(["--decoding", "greedy"]),
        run.pref("greedy"),
    ));
    let pair_args = vec![
        "pair".into(),
        "--chosen".into(),
        s(&run.pref("beam")),
        "--rejected".into(),
        s(&run.pref("greedy")),
        "--require-repeat".into(),
        p.require_repeat.to_string(),
        "--out".into(),
        s(&run.pref_pairs()),
    ];
    out.push(Stage {
        name: "pref-pairs".into(),
        settings: format!("pair --require-repeat {}", p.require_repeat),
        inputs: vec![run.pref("beam"), run.pref("greedy")],
        bins: vec![Bin::Engine],
        outputs: vec![run.pref_pairs()],
        work: Work::Commands(vec![Cmd {
            bin: Bin::Engine,
            args: pair_args,
            stdout: None,
        }]),
        resource: Resource::Light,
    });
    out.extend(eval_stages(
        st,
        run,
        "sft",
        &run.sft_onnx(),
        &run.sft_eval(),
    ));

    // The reward model, when the run trains one or is given one.
    match &st.reward {
        Reward::Repetition(_) => {}
        Reward::Trained => out.extend(reward_model_stages(st, run)),
        Reward::Model(dir) => out.push(reward_export_stage(run, dir)),
    }

    // The iterations.
    for k in 1..=st.iterations {
        let it = run.iter(method, k);
        out.push(fit_stage(st, run, &it));
        out.push(export_verify(
            format!("{}-export", it.stage_prefix()),
            &it.final_model(),
            (st.train.lora_r > 0).then_some(st.model.as_path()),
            &it.onnx(),
        ));
        out.extend(eval_stages(
            st,
            run,
            &it.stage_prefix(),
            &it.onnx(),
            &it.eval(),
        ));
        if k < st.iterations {
            out.extend(new_pair_stages(st, run, &it));
        }
    }
    out
}

/// The data iteration k trains on: PREF, plus the new pairs of earlier iterations, plus the
/// binary feedback of the settings and (with `feedback.from_samples`) of those iterations.
fn iteration_data(st: &Settings, run: &RunLayout, it: &IterLayout) -> Vec<PathBuf> {
    let mut files = vec![run.pref_pairs()];
    files.extend(st.feedback.binary.iter().cloned());
    let earlier: Vec<u32> = match st.new_pairs {
        NewPairs::All => (1..it.iteration).collect(),
        NewPairs::Latest => (it.iteration > 1)
            .then_some(it.iteration - 1)
            .into_iter()
            .collect(),
    };
    for j in earlier {
        let earlier_it = run.iter(&it.method, j);
        files.push(earlier_it.new_pairs());
        if st.feedback.from_samples {
            files.push(earlier_it.new_binary());
        }
    }
    files
}

fn train_flags(st: &Settings) -> Vec<String> {
    let t = &st.train;
    let mut flags: Vec<String> = vec![
        "--batch-size".into(),
        t.batch_size.to_string(),
        "--micro-batch-size".into(),
        t.micro_batch_size.to_string(),
        "--lr".into(),
        t.lr.to_string(),
        "--warmup-steps".into(),
        t.warmup_steps.to_string(),
        "--max-length".into(),
        t.max_length.to_string(),
        "--seed".into(),
        t.seed.to_string(),
        "--device".into(),
        st.devices.train.clone(),
    ];
    if let Some(p) = t.precision.flag() {
        flags.extend(["--precision".into(), p.into()]);
    }
    if t.lora_r > 0 {
        flags.extend([
            "--lora-r".into(),
            t.lora_r.to_string(),
            "--lora-alpha".into(),
            t.lora_alpha.to_string(),
            "--lora-dropout".into(),
            t.lora_dropout.to_string(),
            "--lora-targets".into(),
            t.lora_targets.join(","),
        ]);
    }
    flags
}

fn fit_stage(st: &Settings, run: &RunLayout, it: &IterLayout) -> Stage {
    let data = iteration_data(st, run, it);
    let mut a = vec!["fit".into(), "--model".into(), s(&st.model)];
    for d in &data {
        a.extend(["--data".into(), s(d)]);
    }
    a.extend(["--objective".into(), st.method.as_str().into()]);
    a.extend(st.loss_flags.iter().cloned());
    a.extend(train_flags(st));
    a.extend(["--epochs".into(), st.scaled(st.train.epochs).to_string()]);
    if it.iteration > 1 && st.train.later_steps == LaterSteps::AsIteration1 {
        a.extend(["--max-steps".into(), STEPS_AS_ITERATION_1.into()]);
    }
    let settings = a[3 + 2 * data.len()..].join(" ");
    a.extend(["--save-every".into(), st.train.save_every.to_string()]);
    let mut inputs = vec![st.model.clone()];
    inputs.extend(data);
    Stage {
        name: format!("{}-fit", it.stage_prefix()),
        settings,
        inputs,
        bins: vec![Bin::Training],
        outputs: vec![it.train()],
        work: Work::Fit {
            args: a,
            out: it.train(),
        },
        resource: Resource::Train,
    }
}

/// Samples of iteration k's model on the unlabeled prompts, labeled into new pairs.
fn new_pair_stages(st: &Settings, run: &RunLayout, it: &IterLayout) -> Vec<Stage> {
    let sm = &st.sample;
    let mut out = vec![];
    let sampler = if sm.weights == SampleWeights::Float && sm.kv_cache == SampleKvCache::Float {
        it.onnx()
    } else {
        let weights = match sm.weights {
            SampleWeights::Float => "float",
            SampleWeights::Int8 => "int8",
        };
        let mut flags: Vec<String> = vec![
            "--last-logits-only".into(),
            "--weights".into(),
            weights.into(),
        ];
        let mut inputs = vec![it.final_model()];
        let mut scales_flag = vec![];
        if sm.kv_cache == SampleKvCache::Int8 {
            // The scales cover what the fp32 model produces on the very prompts it will sample.
            let unlabeled = run.split("unlabeled");
            let mut a = vec![
                "kv-scales".into(),
                "--model".into(),
                s(&it.onnx()),
                "--prompts".into(),
                s(&unlabeled),
                "--out".into(),
                s(&it.kv_scales()),
                "--limit".into(),
                "64".into(),
            ];
            if st.devices.threads > 0 {
                a.extend(["--threads".into(), st.devices.threads.to_string()]);
            }
            out.push(Stage {
                name: format!("{}-kv-scales", it.stage_prefix()),
                settings: "kv-scales --limit 64".into(),
                inputs: vec![it.onnx(), unlabeled],
                bins: vec![Bin::Engine],
                outputs: vec![it.kv_scales()],
                work: Work::Commands(vec![Cmd {
                    bin: Bin::Engine,
                    args: a,
                    stdout: None,
                }]),
                resource: Resource::Infer,
            });
            flags.extend(["--kv-cache".into(), "int8".into()]);
            // The engine's int8-cache attention runs decode steps on CPU, where prompts go through
            // the folder's float twin; on a GPU every step runs ONNX Runtime's own operator.
            if st.devices.generate.starts_with("cuda") {
                flags.extend(["--kv-attention".into(), "ort".into()]);
            }
            // The scales file is an input (its contents are keyed), not a setting.
            scales_flag = vec!["--kv-scales".into(), s(&it.kv_scales())];
            inputs.push(it.kv_scales());
        }
        let mut args = vec![
            "onnx".into(),
            "--model".into(),
            s(&it.final_model()),
            "--out".into(),
            s(&it.onnx_int8()),
        ];
        args.extend(flags.iter().cloned());
        args.extend(scales_flag);
        out.push(Stage {
            name: format!("{}-export-int8", it.stage_prefix()),
            settings: format!("onnx {}", flags.join(" ")),
            inputs,
            bins: vec![Bin::Exports],
            outputs: vec![it.onnx_int8()],
            work: Work::Commands(vec![Cmd {
                bin: Bin::Exports,
                args,
                stdout: None,
            }]),
            resource: Resource::Light,
        });
        it.onnx_int8()
    };
    let gen = generate_stage(
        st,
        format!("{}-generate", it.stage_prefix()),
        &sampler,
        &run.split("unlabeled"),
        vec![
            "--n".into(),
            sm.n.to_string(),
            "--decoding".into(),
            "sample".into(),
            "--temperature".into(),
            sm.temperature.to_string(),
            "--top-k".into(),
            sm.top_k.to_string(),
            "--min-new-tokens".into(),
            sm.min_new_tokens.to_string(),
        ],
        it.unlabeled_generations(),
    );
    let mut a = vec![
        "label".into(),
        "--generations".into(),
        s(&it.unlabeled_generations()),
    ];
    a.extend(judge_flags(st, run));
    a.extend(["--min-gap".into(), st.label.min_gap.to_string()]);
    let mut outputs = vec![it.new_pairs()];
    if st.feedback.from_samples {
        a.extend([
            "--binary-threshold".into(),
            st.feedback.threshold.to_string(),
        ]);
    }
    let settings = a[3..].join(" ");
    a.extend([
        "--out".into(),
        s(&it.new_pairs()),
        "--scores-out".into(),
        s(&it.scores()),
    ]);
    if st.feedback.from_samples {
        a.extend(["--binary-out".into(), s(&it.new_binary())]);
        outputs.push(it.new_binary());
    }
    let mut inputs = vec![it.unlabeled_generations()];
    inputs.extend(judge_inputs(st, run));
    let label = Stage {
        name: format!("{}-label", it.stage_prefix()),
        settings,
        inputs,
        bins: vec![Bin::Engine],
        outputs,
        work: Work::Commands(vec![Cmd {
            bin: Bin::Engine,
            args: a,
            stdout: None,
        }]),
        resource: Resource::Infer,
    };
    out.extend([gen, label]);
    out
}

/// `exports onnx --head reward` of a reward model folder (given, or trained by the run).
fn reward_export_stage(run: &RunLayout, model: &Path) -> Stage {
    Stage {
        name: "reward-export".into(),
        settings: "onnx --head reward".into(),
        inputs: vec![model.to_path_buf()],
        bins: vec![Bin::Exports],
        outputs: vec![run.reward_onnx()],
        work: Work::Commands(vec![Cmd {
            bin: Bin::Exports,
            args: vec![
                "onnx".into(),
                "--model".into(),
                s(model),
                "--head".into(),
                "reward".into(),
                "--out".into(),
                s(&run.reward_onnx()),
            ],
            stdout: None,
        }]),
        resource: Resource::Light,
    }
}

/// `reward = "trained"`: a Bradley–Terry reward model on PREF (minus held-out pairs), exported, and
/// its accuracy on the held-out pairs.
fn reward_model_stages(st: &Settings, run: &RunLayout) -> Vec<Stage> {
    let r = &st.reward_model;
    let split = Stage {
        name: "reward-split".into(),
        settings: format!("every {}", r.heldout_every),
        inputs: vec![run.pref_pairs()],
        bins: vec![],
        outputs: vec![run.reward_train_pairs(), run.reward_heldout_pairs()],
        work: Work::SplitLines {
            input: run.pref_pairs(),
            every: r.heldout_every,
            rest: run.reward_train_pairs(),
            heldout: run.reward_heldout_pairs(),
        },
        resource: Resource::Light,
    };
    let fit_args = vec![
        "fit".into(),
        "--model".into(),
        s(&st.model),
        "--data".into(),
        s(&run.reward_train_pairs()),
        "--objective".into(),
        "reward".into(),
        "--epochs".into(),
        st.scaled(r.epochs).to_string(),
        "--batch-size".into(),
        r.batch_size.to_string(),
        "--micro-batch-size".into(),
        st.train.micro_batch_size.to_string(),
        "--lr".into(),
        r.lr.to_string(),
        "--warmup-steps".into(),
        r.warmup_steps.to_string(),
        "--max-length".into(),
        r.max_length.to_string(),
        "--seed".into(),
        r.seed.to_string(),
        "--device".into(),
        st.devices.train.clone(),
    ];
    let settings = fit_args[5..].join(" ");
    let mut fit_args = fit_args;
    fit_args.extend(["--save-every".into(), st.train.save_every.to_string()]);
    let fit = Stage {
        name: "reward-fit".into(),
        settings,
        inputs: vec![st.model.clone(), run.reward_train_pairs()],
        bins: vec![Bin::Training],
        outputs: vec![run.reward_train()],
        work: Work::Fit {
            args: fit_args,
            out: run.reward_train(),
        },
        resource: Resource::Train,
    };
    let final_model = run.reward_train().join("final");
    let export = reward_export_stage(run, &final_model);
    let accuracy = Stage {
        name: "reward-accuracy".into(),
        settings: format!("eval --objective reward --max-length {}", r.max_length),
        inputs: vec![final_model.clone(), run.reward_heldout_pairs()],
        bins: vec![Bin::Training],
        outputs: vec![run.reward_accuracy()],
        work: Work::Commands(vec![Cmd {
            bin: Bin::Training,
            args: vec![
                "eval".into(),
                "--model".into(),
                s(&final_model),
                "--data".into(),
                s(&run.reward_heldout_pairs()),
                "--objective".into(),
                "reward".into(),
                "--max-length".into(),
                r.max_length.to_string(),
                "--json".into(),
            ],
            stdout: Some(run.reward_accuracy()),
        }]),
        resource: Resource::Light,
    };
    vec![split, fit, export, accuracy]
}

/// The stages whose outputs `stage` reads: its Slurm `afterok` dependencies.
pub fn dependencies<'a>(stage: &Stage, earlier: &'a [Stage]) -> Vec<&'a Stage> {
    earlier
        .iter()
        .filter(|e| {
            e.outputs
                .iter()
                .any(|o| stage.inputs.iter().any(|i| i.starts_with(o)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(overrides: &[&str]) -> Settings {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        Settings::load(None, &o, Path::new("/p")).unwrap().0
    }

    /// The names of the stages `stage` depends on in `plan`.
    fn dependency_names<'a>(stage: &Stage, plan: &'a [Stage]) -> Vec<&'a str> {
        dependencies(stage, plan)
            .iter()
            .map(|s| s.name.as_str())
            .collect()
    }

    fn names(plan: &[Stage]) -> Vec<String> {
        plan.iter().map(|s| s.name.clone()).collect()
    }

    #[test]
    fn three_iterations_are_planned_from_one_list() {
        let run = RunLayout::new("/r");
        let plan = plan(&settings(&["iterations=3"]), &run);
        let mut want: Vec<String> = [
            "data",
            "sft-export",
            "pref-beam",
            "pref-greedy",
            "pref-pairs",
            "sft-test-gen",
            "sft-eval",
        ]
        .map(String::from)
        .into();
        for k in 1..=3 {
            for s in ["fit", "export", "test-gen", "eval"] {
                want.push(format!("pairwise-cringe-iter{k}-{s}"));
            }
            if k < 3 {
                want.push(format!("pairwise-cringe-iter{k}-generate"));
                want.push(format!("pairwise-cringe-iter{k}-label"));
            }
        }
        assert_eq!(names(&plan), want);
        // Iteration k generates with iteration k-1's model...
        let gen2 = plan
            .iter()
            .find(|s| s.name == "pairwise-cringe-iter2-generate")
            .unwrap();
        assert_eq!(gen2.inputs[0], Path::new("/r/pairwise-cringe/iter2/onnx"));
        assert!(
            gen2.settings.contains("--min-new-tokens 8"),
            "{}",
            gen2.settings
        );
        // ...and trains from the SFT model on PREF + the new pairs of every earlier iteration.
        let fit3 = plan
            .iter()
            .find(|s| s.name == "pairwise-cringe-iter3-fit")
            .unwrap();
        assert_eq!(
            fit3.inputs,
            [
                "/p/models/smollm2-135m-instruct",
                "/r/pref/pairs.jsonl",
                "/r/pairwise-cringe/iter1/new_pairs.jsonl",
                "/r/pairwise-cringe/iter2/new_pairs.jsonl"
            ]
            .map(PathBuf::from)
        );
        let deps = dependency_names(fit3, &plan);
        assert_eq!(
            deps,
            [
                "pref-pairs",
                "pairwise-cringe-iter1-label",
                "pairwise-cringe-iter2-label"
            ]
        );
        let latest = plan_of(&["iterations=3", "new_pairs=\"latest\""]);
        let fit3 = latest
            .iter()
            .find(|s| s.name == "pairwise-cringe-iter3-fit")
            .unwrap();
        assert_eq!(
            &fit3.inputs[1..],
            [
                "/r/pref/pairs.jsonl",
                "/r/pairwise-cringe/iter2/new_pairs.jsonl"
            ]
            .map(PathBuf::from)
        );
    }

    fn plan_of(o: &[&str]) -> Vec<Stage> {
        plan(&settings(o), &RunLayout::new("/r"))
    }

    /// The stages whose key text differs between two settings.
    fn changed(a: &[&str], b: &[&str]) -> Vec<String> {
        let (pa, pb) = (plan_of(a), plan_of(b));
        assert_eq!(names(&pa), names(&pb));
        pa.iter()
            .zip(&pb)
            .filter(|(x, y)| x.settings != y.settings || x.inputs != y.inputs || x.bins != y.bins)
            .map(|(x, _)| x.name.clone())
            .collect()
    }

    #[test]
    fn a_setting_reaches_exactly_the_stages_it_affects() {
        let base = ["iterations=3"];
        assert_eq!(
            changed(&base, &["iterations=3", "sample.temperature=0.9"]),
            [
                "pairwise-cringe-iter1-generate",
                "pairwise-cringe-iter2-generate"
            ]
        );
        assert_eq!(
            changed(&base, &["iterations=3", "train.lr=5e-5"]),
            [
                "pairwise-cringe-iter1-fit",
                "pairwise-cringe-iter2-fit",
                "pairwise-cringe-iter3-fit"
            ]
        );
        // "auto" passes no flag; a precision changes exactly the fits.
        assert_eq!(
            changed(&base, &["iterations=3", "train.precision=\"bf16\""]),
            [
                "pairwise-cringe-iter1-fit",
                "pairwise-cringe-iter2-fit",
                "pairwise-cringe-iter3-fit"
            ]
        );
        assert!(
            changed(&base, &["iterations=3", "train.precision=\"auto\""]).is_empty(),
            "auto is the default"
        );
        assert_eq!(
            changed(&base, &["iterations=3", "pref.require_repeat=2"]),
            ["pref-pairs"]
        );
        // Resource-only settings change no key.
        for o in [
            "devices.threads=1",
            "devices.generate_batch_size=3",
            "train.save_every=1",
            "slurm.shards=3",
        ] {
            assert!(changed(&base, &["iterations=3", o]).is_empty(), "{o}");
        }
        // Generation settings reach every generation.
        assert_eq!(
            changed(&base, &["iterations=3", "generation.max_new_tokens=48"]).len(),
            3 + 3 + 2
        );
    }

    #[test]
    fn mixed_feedback_reaches_label_and_every_later_fit() {
        let plan = plan_of(&[
            "iterations=3",
            "feedback.from_samples=true",
            "feedback.threshold=-1.0",
            "feedback.binary=[\"/f/thumbs.jsonl\"]",
        ]);
        let find = |n: &str| plan.iter().find(|s| s.name == n).unwrap();
        let label = find("pairwise-cringe-iter1-label");
        assert_eq!(
            label.outputs,
            [
                "/r/pairwise-cringe/iter1/new_pairs.jsonl",
                "/r/pairwise-cringe/iter1/new_binary.jsonl"
            ]
            .map(PathBuf::from)
        );
        let Work::Commands(cmds) = &label.work else {
            panic!("label runs commands")
        };
        let args = cmds[0].args.join(" ");
        assert!(
            args.contains("--binary-threshold -1 ")
                && args.ends_with("--binary-out /r/pairwise-cringe/iter1/new_binary.jsonl"),
            "{args}"
        );
        assert_eq!(
            &find("pairwise-cringe-iter1-fit").inputs[1..],
            ["/r/pref/pairs.jsonl", "/f/thumbs.jsonl"].map(PathBuf::from)
        );
        assert_eq!(
            &find("pairwise-cringe-iter3-fit").inputs[1..],
            [
                "/r/pref/pairs.jsonl",
                "/f/thumbs.jsonl",
                "/r/pairwise-cringe/iter1/new_pairs.jsonl",
                "/r/pairwise-cringe/iter1/new_binary.jsonl",
                "/r/pairwise-cringe/iter2/new_pairs.jsonl",
                "/r/pairwise-cringe/iter2/new_binary.jsonl"
            ]
            .map(PathBuf::from)
        );
        // The threshold reaches the labels and, through their outputs, the fits after them.
        assert_eq!(
            changed(
                &["iterations=3", "feedback.from_samples=true"],
                &[
                    "iterations=3",
                    "feedback.from_samples=true",
                    "feedback.threshold=-2.0"
                ]
            ),
            ["pairwise-cringe-iter1-label", "pairwise-cringe-iter2-label"]
        );
    }

    #[test]
    fn int8_sampling_exports_its_own_graph_and_nothing_else_changes() {
        let plan = plan_of(&["sample.weights=\"int8\""]);
        let export = plan
            .iter()
            .find(|s| s.name == "pairwise-cringe-iter1-export-int8")
            .expect("an int8 export stage");
        assert_eq!(
            export.outputs,
            [PathBuf::from("/r/pairwise-cringe/iter1/onnx-int8")]
        );
        let gen = plan
            .iter()
            .find(|s| s.name == "pairwise-cringe-iter1-generate")
            .unwrap();
        assert_eq!(
            gen.inputs[0],
            PathBuf::from("/r/pairwise-cringe/iter1/onnx-int8")
        );
        let deps = dependency_names(gen, &plan);
        assert!(
            deps.contains(&"pairwise-cringe-iter1-export-int8"),
            "{deps:?}"
        );
        // Evaluation, PREF and training read the fp32 graphs as before.
        let float = plan_of(&[]);
        for st in float.iter().filter(|s| !s.name.ends_with("-generate")) {
            let same = plan.iter().find(|x| x.name == st.name).unwrap();
            assert_eq!(
                (&same.settings, &same.inputs),
                (&st.settings, &st.inputs),
                "{}",
                st.name
            );
        }
        // One int8 export for each model that samples: those of iterations 1 to N-1.
        let sampling_models = settings(&[]).iterations as usize - 1;
        assert_eq!(names(&plan).len(), names(&float).len() + sampling_models);
    }

    #[test]
    fn an_int8_kv_cache_measures_its_scales_on_the_fp32_graph_before_the_export() {
        let plan = plan_of(&["sample.weights=\"int8\"", "sample.kv_cache=\"int8\""]);
        let scales = plan
            .iter()
            .find(|s| s.name == "pairwise-cringe-iter1-kv-scales")
            .expect("a kv-scales stage");
        assert_eq!(
            scales.inputs,
            [
                PathBuf::from("/r/pairwise-cringe/iter1/onnx"),
                PathBuf::from("/r/data/unlabeled.jsonl")
            ]
        );
        let export = plan
            .iter()
            .find(|s| s.name == "pairwise-cringe-iter1-export-int8")
            .unwrap();
        let Work::Commands(cmds) = &export.work else {
            panic!("the export runs a command")
        };
        let args = cmds[0].args.join(" ");
        assert!(
            args.ends_with(
                "--weights int8 --kv-cache int8 --kv-scales /r/pairwise-cringe/iter1/kv-scales.safetensors"
            ),
            "{args}"
        );
        // The key holds the setting, not the path; the file's contents come in as an input.
        assert_eq!(
            export.settings,
            "onnx --last-logits-only --weights int8 --kv-cache int8"
        );
        let deps = dependency_names(export, &plan);
        assert!(
            deps.contains(&"pairwise-cringe-iter1-kv-scales"),
            "{deps:?}"
        );
        // Sampling on a GPU: ONNX Runtime's own int8-cache attention (the engine's is CPU only).
        let gpu = plan_of(&[
            "sample.weights=\"int8\"",
            "sample.kv_cache=\"int8\"",
            "devices.generate=\"cuda:0\"",
        ]);
        let export = gpu
            .iter()
            .find(|s| s.name == "pairwise-cringe-iter1-export-int8")
            .unwrap();
        assert_eq!(
            export.settings,
            "onnx --last-logits-only --weights int8 --kv-cache int8 --kv-attention ort"
        );
        // Int8 weights alone keep the key they had before the setting existed.
        let int8 = plan_of(&["sample.weights=\"int8\""]);
        let before = int8
            .iter()
            .find(|s| s.name == "pairwise-cringe-iter1-export-int8")
            .unwrap();
        assert_eq!(before.settings, "onnx --last-logits-only --weights int8");
        assert!(!names(&int8).iter().any(|n| n.ends_with("-kv-scales")));
    }

    #[test]
    fn a_trained_reward_model_labels_and_judges() {
        let plan = plan_of(&["reward=\"trained\""]);
        let n = names(&plan);
        for s in [
            "reward-split",
            "reward-fit",
            "reward-export",
            "reward-accuracy",
        ] {
            assert!(n.contains(&s.to_string()), "{n:?}");
        }
        let label = plan
            .iter()
            .find(|s| s.name == "pairwise-cringe-iter1-label")
            .unwrap();
        assert!(
            label.settings.contains("--reward-model RUN/reward/onnx")
                || label.settings.contains("--reward-model /r/reward/onnx"),
            "{}",
            label.settings
        );
        let deps = dependency_names(label, &plan);
        assert_eq!(deps, ["reward-export", "pairwise-cringe-iter1-generate"]);
        let Work::Commands(c) = &plan
            .iter()
            .find(|s| s.name == "pairwise-cringe-iter2-eval")
            .unwrap()
            .work
        else {
            panic!()
        };
        let a = c[0].args.join(" ");
        assert!(
            a.contains("--reward-model /r/reward/onnx --against /r/sft/eval/test.gen.jsonl"),
            "{a}"
        );
        let Work::Fit { args, .. } = &plan.iter().find(|s| s.name == "reward-fit").unwrap().work
        else {
            panic!()
        };
        assert!(args
            .join(" ")
            .contains("--data /r/reward/train.jsonl --objective reward"));
    }
}
