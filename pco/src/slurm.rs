//! `scripts/pco --slurm`: the same stage list as the local run, submitted as Slurm jobs. Every job
//! runs `pco --run RUN --stage NAME` (scripts/slurm/stage.sbatch), so keys, resume and commands
//! are the local runner's; a generation stage is a job array over `slurm.shards` shards followed
//! by a merge job; each job waits (`afterok`) for the jobs whose outputs it reads.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use exports::run_layout::RunLayout;

use crate::runner::log;
use crate::settings::Settings;
use crate::stages::{dependencies, Resource, Stage, Work};

/// The `sbatch` flags of a stage's job: partition, GPUs, CPUs, memory and time from `[slurm]`.
pub fn resource_flags(st: &Settings, stage: &Stage) -> Vec<String> {
    let sl = &st.slurm;
    let gpu = match stage.resource {
        Resource::Train => st.devices.train.starts_with("cuda"),
        Resource::Infer => st.devices.generate.starts_with("cuda"),
        Resource::Light => false,
    };
    let mut f = vec![format!("--cpus-per-task={}", sl.cpus_per_task)];
    let partition = if gpu && !sl.gpu_partition.is_empty() {
        &sl.gpu_partition
    } else {
        &sl.partition
    };
    if !partition.is_empty() {
        f.push(format!("--partition={partition}"));
    }
    if gpu {
        f.push(format!("--gres={}", sl.gres));
    }
    let mem = if stage.resource == Resource::Train {
        &sl.train_mem
    } else {
        &sl.mem
    };
    f.push(format!("--mem={mem}"));
    f.push(format!("--time={}", sl.time));
    f
}

/// One job to submit: its stage and its sbatch arguments (before the script's own).
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub stage: String,
    pub sbatch: Vec<String>,
    pub script_args: Vec<String>,
    /// Indices (into the job list) of the jobs this one waits for.
    pub after: Vec<usize>,
}

/// The jobs of a plan, in submission order: every stage (arrays for generations when
/// `shards > 1`), then one report job after all of them.
pub fn jobs(st: &Settings, run: &RunLayout, plan: &[Stage]) -> Vec<Job> {
    let mut out: Vec<Job> = Vec::new();
    // Job index that completes each stage.
    let mut finishes: Vec<usize> = Vec::new();
    let logs = run.logs_dir();
    for (i, stage) in plan.iter().enumerate() {
        let after: Vec<usize> = dependencies(stage, &plan[..i])
            .iter()
            .map(|d| finishes[plan.iter().position(|p| p.name == d.name).unwrap()])
            .collect();
        let res = resource_flags(st, stage);
        let shards = st.slurm.shards;
        let name = format!("--job-name=pco-{}", stage.name);
        if matches!(stage.work, Work::Generate { .. }) && shards > 1 {
            let mut sb = vec![
                name.clone(),
                format!("--array=0-{}", shards - 1),
                format!("--output={}/{}-%A_%a.log", logs.display(), stage.name),
            ];
            sb.extend(res.clone());
            out.push(Job {
                stage: stage.name.clone(),
                sbatch: sb,
                script_args: vec![],
                after,
            });
            let array = out.len() - 1;
            let mut sb = vec![
                format!("--job-name=pco-{}-merge", stage.name),
                format!("--output={}/{}-merge-%j.log", logs.display(), stage.name),
                "--cpus-per-task=1".into(),
                format!("--time={}", st.slurm.time),
            ];
            if !st.slurm.partition.is_empty() {
                sb.push(format!("--partition={}", st.slurm.partition));
            }
            out.push(Job {
                stage: stage.name.clone(),
                sbatch: sb,
                script_args: vec!["--merge".into(), shards.to_string()],
                after: vec![array],
            });
        } else {
            let mut sb = vec![
                name,
                format!("--output={}/{}-%j.log", logs.display(), stage.name),
            ];
            sb.extend(res);
            out.push(Job {
                stage: stage.name.clone(),
                sbatch: sb,
                script_args: vec![],
                after,
            });
        }
        finishes.push(out.len() - 1);
    }
    let mut sb = vec![
        "--job-name=pco-report".to_string(),
        format!("--output={}/report-%j.log", logs.display()),
        "--cpus-per-task=1".into(),
        format!("--time={}", st.slurm.time),
    ];
    if !st.slurm.partition.is_empty() {
        sb.push(format!("--partition={}", st.slurm.partition));
    }
    out.push(Job {
        stage: "report".into(),
        sbatch: sb,
        script_args: vec!["--report".into()],
        after: finishes.clone(),
    });
    out
}

/// Submit every job with `sbatch --parsable`; returns the job ids in order.
pub fn submit(
    st: &Settings,
    run: &RunLayout,
    plan: &[Stage],
    script: &Path,
    driver: &Path,
) -> Result<Vec<String>> {
    if Command::new("sbatch").arg("--version").output().is_err() {
        bail!(
            "sbatch not found: run on a Slurm login node (or scripts/test-slurm for a local one)"
        );
    }
    std::fs::create_dir_all(run.logs_dir())?;
    let mut ids: Vec<String> = Vec::new();
    for job in jobs(st, run, plan) {
        let mut cmd = Command::new("sbatch");
        cmd.arg("--parsable")
            .arg(format!("--export=ALL,PCO_DRIVER={}", driver.display()))
            .args(&job.sbatch);
        if !job.after.is_empty() {
            let deps: Vec<&str> = job.after.iter().map(|&i| ids[i].as_str()).collect();
            cmd.arg(format!("--dependency=afterok:{}", deps.join(":")));
        }
        cmd.arg(script)
            .arg(&run.root)
            .arg(&job.stage)
            .args(&job.script_args);
        let out = cmd.output().context("running sbatch")?;
        if !out.status.success() {
            bail!(
                "sbatch for stage {} failed: {}",
                job.stage,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        // --parsable prints "id" or "id;cluster".
        let id = text.trim().split(';').next().unwrap_or("").to_string();
        if id.is_empty() {
            bail!("sbatch for stage {} printed no job id", job.stage);
        }
        log(format!("submitted {} as job {id}", job.stage));
        ids.push(id);
    }
    Ok(ids)
}
