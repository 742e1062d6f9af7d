//! Running stages resumably. Each stage's key is a SHA-256 over the settings that change it, the
//! hashes of the binaries it runs and the contents of its input files. `RUN/.stages/NAME.done`
//! holds the key of the finished stage (a rerun with the same key skips it);
//! `RUN/.stages/NAME.started` the key of an attempt in progress (a rerun with the same key resumes
//! it: generation continues its output, training its last checkpoint; a new key starts over).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use exports::run_layout::{relative_to, RunLayout, TrainData};
use sha2::{Digest, Sha256};

use crate::settings::Settings;
use crate::stages::{iteration1_steps, Bin, Cmd, Stage, Work, STEPS_AS_ITERATION_1};

pub fn log(msg: impl AsRef<str>) {
    eprintln!("\x1b[1mpco:\x1b[0m {}", msg.as_ref());
}

/// SHA-256 of a file's bytes, hex.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", h.finalize()))
}

/// Every regular file under `dir` (names starting with `.` skipped: temporaries), sorted.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

pub struct Runner<'a> {
    pub run: RunLayout,
    pub settings: &'a Settings,
    /// Folder of the exports, engine and training binaries.
    pub bins: PathBuf,
    /// Stop after this stage (`--only`).
    pub only: Option<String>,
    hashes: HashMap<PathBuf, String>,
}

/// What [`Runner::run_stage`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Skipped,
    Ran,
}

impl<'a> Runner<'a> {
    pub fn new(run: RunLayout, settings: &'a Settings, bins: PathBuf) -> Self {
        Runner {
            run,
            settings,
            bins,
            only: None,
            hashes: HashMap::new(),
        }
    }

    pub fn bin(&self, b: Bin) -> PathBuf {
        self.bins.join(b.name())
    }

    /// Content hash of a file or folder (memoized within this process: inputs do not change
    /// while a stage that reads them runs, and the outputs of a stage are hashed only later).
    fn hash_path(&mut self, p: &Path) -> Result<String> {
        if let Some(h) = self.hashes.get(p) {
            return Ok(h.clone());
        }
        let h = if p.is_dir() {
            let mut h = Sha256::new();
            for f in files_under(p)? {
                let rel = f.strip_prefix(p).unwrap_or(&f);
                writeln!(h, "{} {}", rel.display(), hash_file(&f)?)?;
            }
            format!("{:x}", h.finalize())
        } else if p.is_file() {
            hash_file(p)?
        } else {
            "missing".to_string()
        };
        self.hashes.insert(p.to_path_buf(), h.clone());
        Ok(h)
    }

    /// The stage's key: its settings text (with the run folder written as `RUN`, so a moved run
    /// keeps its keys), the binaries' hashes and the inputs' content hashes (not their paths).
    pub fn key(&mut self, stage: &Stage) -> Result<String> {
        let root = format!("{}/", self.run.root.display());
        let mut text = format!("settings {}\n", stage.settings.replace(&root, "RUN/"));
        for b in &stage.bins {
            let path = self.bin(*b);
            if !path.is_file() {
                bail!("{} is missing: run scripts/setup.sh first", path.display());
            }
            let h = self.hash_path(&path)?;
            text.push_str(&format!("bin {} {h}\n", b.name()));
        }
        for (i, input) in stage.inputs.iter().enumerate() {
            let h = self.hash_path(input)?;
            text.push_str(&format!("input {i} {h}\n"));
        }
        Ok(format!("{:x}", Sha256::digest(text.as_bytes())))
    }

    fn forget(&mut self, paths: &[PathBuf]) {
        self.hashes
            .retain(|k, _| !paths.iter().any(|p| k.starts_with(p)));
    }

    /// Whether the stage is done with its current key.
    pub fn is_done(&mut self, stage: &Stage) -> Result<bool> {
        let key = self.key(stage)?;
        Ok(read_key(&self.run.stage_done(&stage.name)).as_deref() == Some(key.as_str()))
    }

    /// Run one stage unless it is done with the same key.
    pub fn run_stage(&mut self, stage: &Stage) -> Result<Outcome> {
        let key = self.key(stage)?;
        let done = self.run.stage_done(&stage.name);
        let started = self.run.stage_started(&stage.name);
        if read_key(&done).as_deref() == Some(key.as_str()) {
            log(format!("{}: done (inputs unchanged)", stage.name));
            return Ok(Outcome::Skipped);
        }
        let resume = read_key(&started).as_deref() == Some(key.as_str());
        log(format!(
            "{}: {}",
            stage.name,
            if resume {
                "resuming an interrupted run"
            } else {
                "running"
            }
        ));
        std::fs::create_dir_all(self.run.stages_dir())?;
        let _ = std::fs::remove_file(&done);
        write_key(&started, &key)?;
        let t0 = Instant::now();
        self.execute(stage, resume, None)
            .with_context(|| format!("stage {}", stage.name))?;
        self.finish(stage, &key, t0.elapsed().as_secs_f64())?;
        Ok(Outcome::Ran)
    }

    fn finish(&mut self, stage: &Stage, key: &str, seconds: f64) -> Result<()> {
        self.forget(&stage.outputs);
        record_time(&self.run.stage_times(), &stage.name, seconds)?;
        write_key(&self.run.stage_done(&stage.name), key)?;
        let _ = std::fs::remove_file(self.run.stage_started(&stage.name));
        Ok(())
    }

    /// One shard `i` of `n` of a generation stage (a Slurm array task). Resumes its own shard
    /// file when an attempt with the same key was cut short.
    pub fn run_shard(&mut self, stage: &Stage, i: u32, n: u32) -> Result<Outcome> {
        let Work::Generate { out, .. } = &stage.work else {
            bail!("stage {} is not a generation; it has no shards", stage.name);
        };
        let key = self.key(stage)?;
        if read_key(&self.run.stage_done(&stage.name)).as_deref() == Some(key.as_str()) {
            log(format!("{}: done (inputs unchanged)", stage.name));
            return Ok(Outcome::Skipped);
        }
        let tag = format!("{}.shard-{i}-of-{n}", stage.name);
        let (started, done) = (self.run.stage_started(&tag), self.run.stage_done(&tag));
        if read_key(&done).as_deref() == Some(key.as_str()) {
            log(format!("{tag}: done"));
            return Ok(Outcome::Skipped);
        }
        let resume = read_key(&started).as_deref() == Some(key.as_str());
        std::fs::create_dir_all(self.run.stages_dir())?;
        write_key(&started, &key)?;
        log(format!(
            "{tag}: {}",
            if resume { "resuming" } else { "running" }
        ));
        self.execute(stage, resume, Some((i, n, shard_file(out, i, n))))
            .with_context(|| format!("stage {tag}"))?;
        write_key(&done, &key)?;
        let _ = std::fs::remove_file(&started);
        Ok(Outcome::Ran)
    }

    /// Join the `n` shards of a generation stage (after its array finished) and mark it done.
    pub fn merge_shards(&mut self, stage: &Stage, n: u32) -> Result<Outcome> {
        let Work::Generate { prompts, out, .. } = &stage.work else {
            bail!("stage {} is not a generation; it has no shards", stage.name);
        };
        let key = self.key(stage)?;
        if read_key(&self.run.stage_done(&stage.name)).as_deref() == Some(key.as_str()) {
            log(format!("{}: done (inputs unchanged)", stage.name));
            return Ok(Outcome::Skipped);
        }
        let shards: Vec<PathBuf> = (0..n).map(|i| shard_file(out, i, n)).collect();
        for i in 0..n {
            let tag = format!("{}.shard-{i}-of-{n}", stage.name);
            if read_key(&self.run.stage_done(&tag)).as_deref() != Some(key.as_str()) {
                bail!(
                    "stage {}: shard {i}/{n} is not finished with the current inputs",
                    stage.name
                );
            }
        }
        let t0 = Instant::now();
        let mut args = vec![
            "merge".to_string(),
            "--prompts".into(),
            prompts.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ];
        args.extend(shards.iter().map(|s| s.display().to_string()));
        self.spawn(&Cmd {
            bin: Bin::Engine,
            args,
            stdout: None,
        })?;
        for (i, s) in shards.iter().enumerate() {
            let _ = std::fs::remove_file(s);
            let _ = std::fs::remove_file(
                self.run
                    .stage_done(&format!("{}.shard-{i}-of-{n}", stage.name)),
            );
        }
        self.finish(stage, &key, t0.elapsed().as_secs_f64())?;
        log(format!("{}: merged {n} shards", stage.name));
        Ok(Outcome::Ran)
    }

    fn execute(
        &mut self,
        stage: &Stage,
        resume: bool,
        shard: Option<(u32, u32, PathBuf)>,
    ) -> Result<()> {
        match &stage.work {
            Work::Commands(cmds) => {
                for c in cmds {
                    self.spawn(c)?;
                }
            }
            Work::CommandsThenRemove { cmds, scratch } => {
                for c in cmds {
                    self.spawn(c)?;
                }
                if scratch.exists() {
                    std::fs::remove_dir_all(scratch)
                        .with_context(|| format!("removing {}", scratch.display()))?;
                }
            }
            Work::Generate { args, out, .. } => {
                let mut a = args.clone();
                let target = match &shard {
                    Some((i, n, file)) => {
                        a.extend(["--shard".into(), format!("{i}/{n}")]);
                        file.clone()
                    }
                    None => out.clone(),
                };
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                // Inside a Slurm job, use the cores it was given unless the settings name a count.
                if !a.iter().any(|x| x == "--threads") {
                    if let Ok(n) = std::env::var("SLURM_CPUS_PER_TASK") {
                        a.extend(["--threads".into(), n]);
                    }
                }
                a.extend(["--out".into(), target.display().to_string()]);
                if resume && target.exists() {
                    a.push("--resume".into());
                } else {
                    let _ = std::fs::remove_file(&target);
                }
                self.spawn(&Cmd {
                    bin: Bin::Engine,
                    args: a,
                    stdout: None,
                })?;
            }
            Work::Fit { args, out } => {
                let mut a = args.clone();
                if let Some(pos) = a.iter().position(|x| x == STEPS_AS_ITERATION_1) {
                    let pref = count_lines(&self.run.pref_pairs())?;
                    a[pos] = iteration1_steps(pref, self.settings).to_string();
                }
                // Disk only: a checkpoint is weights + optimizer state, so keep just the newest.
                a.extend(["--save-total-limit".into(), "1".into()]);
                a.extend(["--out".into(), out.display().to_string()]);
                if resume && out.is_dir() {
                    a.push("--resume".into());
                } else if out.exists() {
                    std::fs::remove_dir_all(out)
                        .with_context(|| format!("removing {}", out.display()))?;
                }
                self.spawn(&Cmd {
                    bin: Bin::Training,
                    args: a,
                    stdout: None,
                })?;
                for e in std::fs::read_dir(out)?.flatten() {
                    if e.file_name().to_string_lossy().starts_with("checkpoint-") {
                        std::fs::remove_dir_all(e.path())?;
                    }
                }
                // What the fit trained on, for the report.
                let mut files = Vec::new();
                let mut records = 0;
                for w in args.windows(2).filter(|w| w[0] == "--data") {
                    let p = Path::new(&w[1]);
                    records += count_lines(p)?;
                    files.push(relative_to(p, &self.run.root).display().to_string());
                }
                let data = TrainData { files, records };
                exports::fsutil::write_atomic(
                    &out.join("data.json"),
                    serde_json::to_string(&data)?.as_bytes(),
                )?;
            }
            Work::SplitLines {
                input,
                every,
                rest,
                heldout,
            } => {
                let text = std::fs::read_to_string(input)
                    .with_context(|| format!("reading {}", input.display()))?;
                let (mut keep, mut held) = (String::new(), String::new());
                for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
                    let target = if (i + 1) % *every as usize == 0 {
                        &mut held
                    } else {
                        &mut keep
                    };
                    target.push_str(line);
                    target.push('\n');
                }
                if held.is_empty() || keep.is_empty() {
                    bail!(
                        "{}: too few pairs to hold out every {every}-th for the reward model",
                        input.display()
                    );
                }
                exports::fsutil::write_atomic(rest, keep.as_bytes())?;
                exports::fsutil::write_atomic(heldout, held.as_bytes())?;
            }
        }
        Ok(())
    }

    pub fn spawn(&self, c: &Cmd) -> Result<()> {
        let bin = self.bin(c.bin);
        let mut cmd = Command::new(&bin);
        cmd.args(&c.args);
        die_with_parent(&mut cmd);
        let shown = format!("{} {}", c.bin.name(), c.args.join(" "));
        let output = if let Some(path) = &c.stdout {
            let out = cmd
                .stderr(std::process::Stdio::inherit())
                .output()
                .with_context(|| format!("starting {}", bin.display()))?;
            if out.status.success() {
                exports::fsutil::write_atomic(path, &out.stdout)?;
            }
            out.status
        } else {
            cmd.status()
                .with_context(|| format!("starting {}", bin.display()))?
        };
        if !output.success() {
            bail!("`{shown}` failed ({output})");
        }
        Ok(())
    }
}

/// Make the child die when the driver dies (Linux), so that `kill -9` of the driver leaves no
/// orphan still writing the stage's outputs while a rerun resumes them.
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

pub fn shard_file(out: &Path, i: u32, n: u32) -> PathBuf {
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    out.with_file_name(format!("{name}.shard-{i}-of-{n}.jsonl"))
}

fn count_lines(path: &Path) -> Result<usize> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().filter(|l| !l.trim().is_empty()).count())
}

fn read_key(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn write_key(path: &Path, key: &str) -> Result<()> {
    exports::fsutil::write_atomic(path, format!("{key}\n").as_bytes())?;
    Ok(())
}

/// Replace the line of `name` in the times file (name, tab, seconds).
fn record_time(path: &Path, name: &str, seconds: f64) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let mut text: String = old
        .lines()
        .filter(|l| l.split('\t').next() != Some(name))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("{name}\t{seconds:.1}\n"));
    exports::fsutil::write_atomic(path, text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::Resource;

    fn stage(settings: &str, input: &Path) -> Stage {
        Stage {
            name: "s".into(),
            settings: settings.into(),
            inputs: vec![input.to_path_buf()],
            bins: vec![Bin::Engine],
            outputs: vec![],
            work: Work::Commands(vec![]),
            resource: Resource::Light,
        }
    }

    #[test]
    fn keys_cover_settings_binaries_and_input_contents_not_locations() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let st = Settings::load(None, &[], d).unwrap().0;
        std::fs::create_dir_all(d.join("bin")).unwrap();
        std::fs::write(d.join("bin/engine"), "v1").unwrap();
        std::fs::create_dir_all(d.join("a/run/in")).unwrap();
        std::fs::write(d.join("a/run/in/x.txt"), "hello").unwrap();
        let key = |root: &Path, settings: &str| {
            let mut r = Runner::new(RunLayout::new(root), &st, d.join("bin"));
            r.key(&stage(settings, &root.join("in"))).unwrap()
        };
        let k0 = key(
            &d.join("a/run"),
            &format!("x --out {}/f", d.join("a/run").display()),
        );
        assert_ne!(
            k0,
            key(
                &d.join("a/run"),
                &format!("x --out {}/g", d.join("a/run").display())
            )
        );
        // A copy of the run folder elsewhere has the same keys (paths are written RUN).
        std::fs::create_dir_all(d.join("b/run/in")).unwrap();
        std::fs::write(d.join("b/run/in/x.txt"), "hello").unwrap();
        assert_eq!(
            k0,
            key(
                &d.join("b/run"),
                &format!("x --out {}/f", d.join("b/run").display())
            )
        );
        // Settings, input contents and the binary each change it.
        let run = d.join("a/run");
        let plain = key(&run, "x");
        assert_ne!(plain, key(&run, "y"));
        std::fs::write(run.join("in/x.txt"), "hellO").unwrap();
        let changed_input = key(&run, "x");
        assert_ne!(plain, changed_input);
        std::fs::write(run.join("in/y.txt"), "").unwrap();
        assert_ne!(
            changed_input,
            key(&run, "x"),
            "a new file in an input folder"
        );
        let before = key(&run, "x");
        std::fs::write(d.join("bin/engine"), "v2").unwrap();
        assert_ne!(before, key(&run, "x"), "a rebuilt binary");
        // Temporaries (dot files) are not inputs.
        let before = key(&run, "x");
        std::fs::write(run.join("in/.x.tmp.1"), "partial").unwrap();
        assert_eq!(before, key(&run, "x"));
    }

    #[test]
    fn a_finished_stage_is_skipped_and_an_interrupted_one_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let st = Settings::load(None, &[], d).unwrap().0;
        std::fs::create_dir_all(d.join("bin")).unwrap();
        std::fs::write(d.join("bin/engine"), "v1").unwrap();
        std::fs::write(d.join("input"), "x").unwrap();
        let run = RunLayout::new(d.join("run"));
        let mut r = Runner::new(run.clone(), &st, d.join("bin"));
        let s = stage("x", &d.join("input"));
        assert_eq!(r.run_stage(&s).unwrap(), Outcome::Ran);
        assert_eq!(r.run_stage(&s).unwrap(), Outcome::Skipped);
        let times = std::fs::read_to_string(run.stage_times()).unwrap();
        assert!(times.starts_with("s\t"), "{times}");
        // An input changed: it runs again.
        std::fs::write(d.join("input"), "y").unwrap();
        let mut r = Runner::new(run.clone(), &st, d.join("bin"));
        assert!(!r.is_done(&s).unwrap());
        assert_eq!(r.run_stage(&s).unwrap(), Outcome::Ran);
        assert!(!run.stage_started("s").exists());
        assert_eq!(
            std::fs::read_to_string(run.stage_times())
                .unwrap()
                .lines()
                .count(),
            1
        );
    }
}
