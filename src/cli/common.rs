//! What several commands share: the network flags (`NetArgs`), the host's
//! threads and progress bar (`HostArgs`), the count and input-file
//! parsers, the name of an enumerated flag's value, the compute thread
//! pool, the rows per image of a crop mode, the demo's temporary data
//! folders, and how soon a second signal is the first one again.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use tempfile::TempDir;
use tracing::info;

use alexnet_cuda::data::packed::{is_store_or_prepared, read_meta};
use alexnet_cuda::data::{images_under, is_hidden};
use alexnet_cuda::fsutil;
use alexnet_cuda::model::spec::NetSpec;
use alexnet_cuda::model::topology::Topology;
use alexnet_cuda::run_state::is_checkpoint_interval;

/// A signal this soon after the first is the same request delivered twice:
/// GNU `timeout` sends its signal to the command and then to the command's
/// process group, which holds the command too (coreutils' timeout.c), and
/// a second Ctrl-C from a person comes later than this.
pub const SAME_REQUEST: Duration = Duration::from_secs(1);

#[derive(Args, Clone)]
pub struct NetArgs {
    /// Network: alexnet (the paper), alexnet-half (its one-GPU ablation), cifar (small, 32x32 images).
    // A string, not a ValueEnum: the library resolves the name (and lists
    // the configs in its error), and checkpoints store it as written.
    #[arg(long)]
    pub config: Option<String>,
    /// Ablation: no local response normalisation.
    #[arg(long)]
    pub no_lrn: bool,
    /// Pooling window: 3 (overlapping, the paper) or 2 (non-overlapping ablation).
    #[arg(long, value_name = "SIZE")]
    pub pool: Option<usize>,
}

/// The host's share of the work: loader threads, compute threads, the bar.
#[derive(Args, Clone)]
pub struct HostArgs {
    /// Loader threads; 0 decodes on the compute thread (default: the cores the compute threads leave free, at least 1; on a GPU, every core but one).
    #[arg(long, value_parser = thread_count)]
    pub workers: Option<usize>,
    /// Compute threads (default: all cores; for each of several processes of a run on one machine, LOCAL_WORLD_SIZE, its share of them).
    #[arg(long, value_parser = thread_count)]
    pub threads: Option<usize>,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

impl HostArgs {
    /// Sizes the compute thread pool (before any compute starts).
    pub fn apply(&self) -> Result<()> {
        set_threads(self.threads)
    }

    /// [`apply`](Self::apply) for one of `processes` of a run on this
    /// machine (LOCAL_WORLD_SIZE): without --threads (or RAYON_NUM_THREADS),
    /// its share of the cores, not all of them: each process starting one
    /// thread a core would run `processes` threads on every core.
    pub fn apply_shared(&self, processes: usize) -> Result<()> {
        // rayon takes an empty or 0 RAYON_NUM_THREADS for one a core.
        let own = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .is_some_and(|n| n > 0);
        let threads = match (self.threads, processes) {
            (None, p) if p > 1 && !own => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                let n = (cores / p).max(1);
                tracing::info!(
                    "compute: {n} thread{} ({cores} cores shared by {p} processes; --threads sets it)",
                    if n == 1 { "" } else { "s" }
                );
                Some(n)
            }
            (t, _) => t,
        };
        set_threads(threads)
    }

    /// The loader threads for a run on a GPU (`gpu`) or the CPU.
    pub fn workers(&self, gpu: bool) -> usize {
        alexnet_cuda::data::workers_for(self.workers, gpu, 1)
    }

    pub fn progress(&self) -> bool {
        !self.no_progress
    }
}

impl NetArgs {
    /// The network the flags name, `default` where --config is absent.
    pub fn spec(&self, default: &str) -> NetSpec {
        NetSpec {
            config: self.config.clone().unwrap_or_else(|| default.to_string()),
            no_lrn: self.no_lrn,
            pool: self.pool,
            classes: None,
        }
    }

    /// `spec`'s layer table.
    pub fn topology(&self, default: &str) -> Result<Topology> {
        Ok(self.spec(default).topology()?)
    }

    /// The flags for another command to name the same network.
    pub fn flags(&self, default: &str) -> String {
        let s = self.spec(default);
        let mut f = format!("--config {}", s.config);
        if s.no_lrn {
            f += " --no-lrn";
        }
        if let Some(p) = s.pool {
            f += &format!(" --pool {p}");
        }
        f
    }
}

/// Flag parser for counts that must be at least 1.
pub fn positive(s: &str) -> std::result::Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Err(_) if s.parse::<i64>().is_ok() => Err("must be at least 1".into()),
        Ok(v) => Ok(v),
        Err(_) => Err(format!("'{s}' is not a whole number")),
    }
}

/// Most images in one batch `summary` and `scaling` work figures for: far
/// past any device's memory, and small enough that bytes per step, batch
/// times a layer's bytes per image, cannot wrap a u64.
pub const MAX_FIGURED_BATCH: u64 = 1 << 24;

/// Flag parser for `summary`'s and `scaling`'s --batch: [`positive`], at
/// most [`MAX_FIGURED_BATCH`].
pub fn figured_batch(s: &str) -> std::result::Result<u64, String> {
    match positive(s)? {
        v if v <= MAX_FIGURED_BATCH => Ok(v),
        _ => Err(format!("pass at most {MAX_FIGURED_BATCH} images")),
    }
}

/// Flag parser for a seed: any whole number a u64 holds.
pub fn seed_value(s: &str) -> std::result::Result<u64, String> {
    s.parse::<u64>()
        .map_err(|_| format!("a seed is a whole number from 0 to {}", u64::MAX))
}

/// Flag parser for a positive, finite number (a rate, a duration).
pub fn positive_number(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        Ok(_) => Err("must be a positive number".into()),
        Err(_) => Err(format!("'{s}' is not a number")),
    }
}

/// [`positive_number`] as an f32, still finite there.
pub fn positive_f32(s: &str) -> std::result::Result<f32, String> {
    let v = positive_number(s)? as f32;
    match v > 0.0 && v.is_finite() {
        true => Ok(v),
        false => Err(format!("{s} is out of single precision's range")),
    }
}

/// Flag parser for a positive length of time: seconds (`4800`), a number
/// and a unit (`4800s`, `80m`, `1.5h`, `2d`), or a time as Slurm writes
/// one (`sbatch --time`: `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`,
/// `D-HH:MM:SS`), so that a job's limit can be given as it was asked for.
pub fn length_of_time(s: &str) -> std::result::Result<Duration, String> {
    let not_a_time = || {
        format!("'{s}' is not a time: seconds (4800), a number and a unit (80m, 1.5h, 2d), or [D-]HH:MM:SS")
    };
    // Slurm's day field is digits before a '-' (not an exponent's 1e-3).
    let day = s
        .split_once('-')
        .is_some_and(|(d, _)| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
    let v = match s.contains(':') || day {
        true => slurm_seconds(s).ok_or_else(not_a_time)?,
        false => {
            let (number, unit) = match s.strip_suffix(['s', 'm', 'h', 'd']) {
                Some(n) => (n, &s[n.len()..]),
                None => (s, "s"),
            };
            let scale = match unit {
                "m" => 60.0,
                "h" => 3600.0,
                "d" => 86400.0,
                _ => 1.0,
            };
            let n: f64 = number.parse().map_err(|_| not_a_time())?;
            if !(n > 0.0 && n.is_finite()) {
                return Err("must be a positive length of time".into());
            }
            n * scale
        }
    };
    if v <= 0.0 {
        return Err("must be a positive length of time".into());
    }
    match Duration::try_from_secs_f64(v) {
        // Below a nanosecond: a limit of 0, which no command takes back.
        Ok(d) if d.is_zero() => Err(format!(
            "{s} is shorter than a nanosecond; must be a positive length of time"
        )),
        Ok(d) => Ok(d),
        Err(_) => Err(format!("{s} is longer than a clock can count")),
    }
}

/// Slurm's time formats in seconds: `MM:SS`, `HH:MM:SS`, `D-HH`,
/// `D-HH:MM`, `D-HH:MM:SS`, each field a whole number.
fn slurm_seconds(s: &str) -> Option<f64> {
    let (days, clock) = match s.split_once('-') {
        Some((d, c)) => (Some(whole(d)?), c),
        None => (None, s),
    };
    let f: Vec<u64> = clock.split(':').map(whole).collect::<Option<_>>()?;
    let (h, m, sec) = match (days, f.as_slice()) {
        (None, [m, s]) => (0, *m, *s),
        (None, [h, m, s]) => (*h, *m, *s),
        (Some(_), [h]) => (*h, 0, 0),
        (Some(_), [h, m]) => (*h, *m, 0),
        (Some(_), [h, m, s]) => (*h, *m, *s),
        _ => return None,
    };
    // In f64: the fields may be any number of digits, and u64 would wrap
    // (a huge limit read as a second); too long for a clock is refused later.
    let [d, h, m, sec] = [days.unwrap_or(0), h, m, sec].map(|v| v as f64);
    Some(((d * 24.0 + h) * 60.0 + m) * 60.0 + sec)
}

/// A field of digits only.
fn whole(s: &str) -> Option<u64> {
    match !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        true => s.parse().ok(),
        false => None,
    }
}

/// Flag parser for minutes: 0 (off) or a positive number that a clock
/// can count in seconds.
pub fn minutes_or_off(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(0.0) => Ok(0.0),
        _ => {
            let m = positive_number(s).map_err(|e| format!("{e}, or 0 for off"))?;
            match is_checkpoint_interval(m) {
                true => Ok(m),
                false => Err(format!("{s} minutes is longer than a clock can count")),
            }
        }
    }
}

/// Refuse an output file whose extension is not `ext` (any case): the
/// command writes `what`, and a viewer or a program opening the file goes
/// by its name.
pub fn named_as(flag: &str, out: &Path, ext: &str, what: &str) -> Result<()> {
    let has = out.extension().and_then(|e| e.to_str());
    // A folder is no file name at all: the write's own check says so.
    if has.is_some_and(|e| e.eq_ignore_ascii_case(ext)) || out.is_dir() {
        return Ok(());
    }
    bail!(
        "{flag} {}: the command writes {what}; name the file .{ext}, e.g. {}",
        out.display(),
        out.with_extension(ext).display()
    )
}

/// Refuse an output path that holds one of our training checkpoints (the
/// command would replace it, and a run resumes from it), a file in a
/// store's folder (its meta.json or data replaced would ruin the store), or
/// a name a run gives its own files inside a run's folder: a checkpoint's
/// name would be taken for one by --resume, eval and the run itself, and
/// the run's logs (epochs.csv, steps.csv, ...) would be lost.
pub fn not_a_run_file(flag: &str, out: &Path) -> Result<()> {
    use alexnet_cuda::checkpoint;
    if checkpoint::is_checkpoint_file(out) {
        bail!(
            "{flag} {}: a training checkpoint, which this command would replace (a run resumes from it); write elsewhere",
            out.display()
        );
    }
    let folder = fsutil::folder_of(out);
    // A meta.json of ours, not any tool's file of that name.
    if read_meta(folder).is_ok() {
        bail!(
            "{flag} {}: inside the image store {}, whose files train and eval read and prepare replaces; write elsewhere",
            out.display(),
            folder.display()
        );
    }
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    // A folder that is not there, or is a file: the write's own check
    // (`check_target`) says which.
    if !alexnet_cuda::train::is_run_file(name) || !folder.is_dir() {
        return Ok(());
    }
    let holds_run = ["steps.csv", "steps.jsonl"]
        .iter()
        .any(|f| folder.join(f).exists())
        || !checkpoint::list(folder)?.is_empty();
    if !holds_run {
        if folder.join(".lock").exists() {
            bail!(
                "{flag} {}: a name train gives its own files, in a folder that train or prepare holds locked (its .lock); write elsewhere, or under another name",
                out.display()
            );
        }
        return Ok(());
    }
    if name.ends_with(".safetensors") {
        bail!(
            "{flag} {}: a name train gives its checkpoints, in a run's folder, where --resume, eval and the run itself would take the file for one; write elsewhere, or under another name",
            out.display()
        );
    }
    bail!(
        "{flag} {}: a name train gives its own files, in a run's folder, where the run writes and reads it; write elsewhere, or under another name",
        out.display()
    )
}

/// Refuse a picture (`flag` `out`) inside a class folder of the image tree
/// `data`: every later scan of the tree (train, eval, features) would take
/// it for an image of that class. A store's folders are not scanned, nor
/// hidden ones. Checked through links as the OS resolves them and as
/// written, since a class folder may be a link the scan follows.
pub fn not_among_images(flag: &str, out: &Path, data: &Path) -> Result<()> {
    if is_store_or_prepared(data) {
        return Ok(());
    }
    let written = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let forms = [
        (fsutil::resolved(out), fsutil::resolved(data)),
        (written(out), written(data)),
    ];
    for (out_at, data_at) in forms {
        let Some(folder) = out_at.strip_prefix(&data_at).ok().and_then(Path::parent) else {
            continue;
        };
        // A file at the tree's root belongs to no class; `..` as written
        // may lead out of it (the resolved form has the answer).
        let Some(class) = folder.components().next().map(|c| c.as_os_str().to_owned()) else {
            continue;
        };
        let mut walked = data_at.clone();
        let unscanned = folder.components().any(|c| {
            walked.push(c);
            c == std::path::Component::ParentDir || is_hidden(&walked)
        });
        if !unscanned {
            bail!(
                "{flag} {}: inside the class folder {} of {}, where every later scan (train, eval, features) would read the picture as one of its images; write it outside the image tree",
                out.display(),
                class.to_string_lossy(),
                data.display()
            );
        }
    }
    Ok(())
}

/// A flag's path as the OS passed it, not only UTF-8 (a file name from
/// another system's encoding is still a file), checked by `check`.
pub fn path_parser(
    check: fn(PathBuf) -> std::result::Result<PathBuf, String>,
) -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    use clap::builder::TypedValueParser;
    clap::builder::PathBufValueParser::new().try_map(check)
}

/// Flag check for a file the command reads (an image, a .npy, a names
/// list, weights): refused at once, with the flag named by clap, when it is
/// missing or a folder, rather than after minutes of loading.
pub fn existing_file(path: PathBuf) -> std::result::Result<PathBuf, String> {
    if fsutil::file_with_slash(&path).is_some() {
        return Err("a file, not a folder; drop the trailing /".into());
    }
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => Err("a folder, not a file; pass a file in it".into()),
        Ok(_) => Ok(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::read_link(&path) {
            Ok(to) => Err(format!(
                "a link to {}, which does not exist (a drive or share not mounted?); mount it, or pass another file",
                to.display()
            )),
            Err(_) => Err(not_found(&path.to_string_lossy())),
        },
        Err(e) => Err(e.to_string()),
    }
}

/// "no such file", with the likely cause when the name shows one: a URL
/// (read from disk only) or a shell pattern that matched nothing (the
/// shell then passes it on as it was written).
fn not_found(s: &str) -> String {
    if s.contains("://") {
        return "no such file: a URL; download it first (curl -O URL) and pass the file".into();
    }
    if s.contains(['*', '?', '[']) {
        return "no such file: a pattern the shell matched to no file; check the folder and the extension's case (ImageNet's is .JPEG)".into();
    }
    "no such file".into()
}

/// Flag check for images: an image file ([`existing_file`]) or a folder
/// of them, which [`image_files`] expands.
pub fn image_or_folder(path: PathBuf) -> std::result::Result<PathBuf, String> {
    match path.is_dir() {
        true => Ok(path),
        false => existing_file(path),
    }
}

/// `paths` with each folder in place of the images under it, at any depth
/// and sorted (`data::images_under`).
pub fn image_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::with_capacity(paths.len());
    for p in paths {
        if is_store_or_prepared(p) {
            bail!(
                "{} is a packed store from `prepare`, which holds no image files; score its images with: alexnet-cuda eval --data {}, or pass image files or a folder of them",
                p.display(),
                alexnet_cuda::shell::word(p)
            );
        }
        match p.is_dir() {
            true => files.extend(images_under(p)?),
            false => files.push(p.clone()),
        }
    }
    Ok(files)
}

/// [`existing_file`] for weights: a run folder means its best.safetensors,
/// as for --checkpoint.
pub fn existing_weights(path: PathBuf) -> std::result::Result<PathBuf, String> {
    if !path.is_dir() {
        return existing_file(path);
    }
    let best = path.join("best.safetensors");
    match best.is_file() {
        true => Ok(best),
        false => Err(alexnet_cuda::checkpoint::without_best(&path)),
    }
}

/// [`positive`] for a flag held as a `usize`.
pub fn at_least_one(s: &str) -> std::result::Result<usize, String> {
    positive(s).and_then(|v| usize::try_from(v).map_err(|e| e.to_string()))
}

/// An enumerated flag's value as written on the command line.
pub fn flag_value<T: ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

/// A count of threads (--workers, --threads), at most 4 per core or 64:
/// decoding and compute are bound by the cores, so more threads only add
/// switching and memory, and thousands of them exhaust the process's
/// memory for stacks.
pub fn thread_count(s: &str) -> std::result::Result<usize, String> {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let most = (4 * cores).max(64);
    let n: usize = s
        .parse()
        .map_err(|_| format!("'{s}' is not a count: a whole number from 0 to {most}"))?;
    if n > most {
        return Err(format!(
            "{n} threads on a machine of {cores} cores: pass at most {most} (about one per core is fastest)"
        ));
    }
    Ok(n)
}

/// Start the global compute thread pool: --threads of them, or (`None`)
/// rayon's default of one per core. Started here, not at the first
/// parallel loop, so that threads the system refuses (a process limit,
/// `ulimit -u`, or an address-space limit too small for their stacks) are
/// an error that says so, not a panic inside rayon.
pub fn set_threads(threads: Option<usize>) -> Result<()> {
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(n) = threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        pool = pool.num_threads(n);
    }
    match pool.build_global() {
        Ok(()) => Ok(()),
        // A pool already started (by an earlier command in this process)
        // is the one to use, unless --threads asked for another size.
        Err(e) if threads.is_none() && std::error::Error::source(&e).is_none() => Ok(()),
        Err(e) => {
            let size = threads.map_or("one a core".to_string(), |n| n.to_string());
            bail!("could not start the compute threads ({size}): {e}; pass fewer with --threads, or raise the limit on processes (ulimit -u) or address space (ulimit -v)")
        }
    }
}

/// Network rows per image: ten for the paper's 10 crops, else one.
pub fn crop_rows(ten_crop: bool) -> usize {
    if ten_crop {
        10
    } else {
        1
    }
}

/// A temporary folder holding one of the demo's synthetic sets, `what`
/// (training or test), written by `write`; it is removed with the guard.
/// Its name holds the process id, so the folders of demo runs that were
/// killed (SIGKILL runs no cleanup) are found and removed first.
pub fn demo_folder(
    what: &str,
    write: impl FnOnce(&Path) -> alexnet_cuda::error::Result<()>,
) -> Result<TempDir> {
    remove_abandoned_demos(&std::env::temp_dir(), own_uid());
    let dir = tempfile::Builder::new()
        .prefix(&format!("{DEMO_PREFIX}{}-", std::process::id()))
        .tempdir()
        .context("--demo: could not create a temporary folder")?;
    info!(
        "demo: writing the synthetic {what} set of 10 visible classes to {}",
        dir.path().display()
    );
    write(dir.path())?;
    Ok(dir)
}

const DEMO_PREFIX: &str = "alexnet-demo-";

/// Remove the demo folders in `tmp` whose process has ended
/// (`alexnet-demo-<pid>-*`) and that belong to `uid` (another user's
/// could not be removed, and its pid may be another machine's or
/// namespace's); a failure only warns.
fn remove_abandoned_demos(tmp: &Path, uid: Option<u32>) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(DEMO_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok());
        let mine = e.metadata().is_ok_and(|m| Some(m.uid()) == uid);
        if !mine || !pid.is_some_and(alexnet_cuda::fsutil::process_gone) {
            continue;
        }
        match std::fs::remove_dir_all(e.path()) {
            Ok(()) => info!(
                "removed {}, left by a demo run that was killed",
                e.path().display()
            ),
            Err(err) => tracing::warn!("{}: {err}", e.path().display()),
        }
    }
}

/// This process's user id: the owner of `/proc/self`.
fn own_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// --time-limit's forms, each worked out by hand; Slurm's as its
    /// sbatch manual defines them (fields of days, hours, minutes, seconds).
    #[test]
    fn time_limits_are_read_in_seconds_units_and_slurms_formats() {
        let ok = |s: &str| {
            length_of_time(s)
                .unwrap_or_else(|e| panic!("{s}: {e}"))
                .as_secs_f64()
        };
        assert_eq!(ok("4800"), 4800.0);
        assert_eq!(ok("0.5"), 0.5);
        assert_eq!(ok("4800s"), 4800.0);
        assert_eq!(ok("80m"), 4800.0);
        assert_eq!(ok("1.5h"), 5400.0);
        assert_eq!(ok("2d"), 172800.0);
        assert_eq!(ok("90:30"), 5430.0); // minutes:seconds
        assert_eq!(ok("01:20:00"), 4800.0); // hours:minutes:seconds
        assert_eq!(ok("2-12"), 216000.0); // days-hours
        assert_eq!(ok("2-12:30"), 217800.0); // days-hours:minutes
        assert_eq!(ok("1-00:00:05"), 86405.0); // days-hours:minutes:seconds
        let bad = |s: &str| length_of_time(s).expect_err(s);
        assert_eq!(ok("1e-3"), 0.001); // an exponent, not Slurm's days
        assert!(bad("-5").contains("positive length of time"));
        // Positive but below the clock's nanosecond: refused, not a limit
        // of 0 that the printed continue command would then pass.
        assert!(bad("1e-10").contains("shorter than a nanosecond"));
        assert_eq!(ok("1e-9"), 1e-9);
        // A form not taken names the ones that are.
        for s in ["1h30m", "90min", "5S", "1e-3x"] {
            assert!(bad(s).contains("a number and a unit (80m"), "{s}");
        }
        assert!(bad("0:00").contains("positive length of time"));
        for s in [
            "", "é-1", "1:2:3:4", "1h30", "5x", "1-", "-1:00", "1:-2", "1.5:00", ":30", "1-2-3",
        ] {
            assert!(!bad(s).is_empty(), "{s}");
        }
        assert!(bad("1e300").contains("longer than a clock can count"));
        // Fields whose product wraps a u64 (5124095576030431 hours is
        // 2^64 / 3600 and a bit): too long, not 17 seconds.
        assert!(bad("5124095576030431:00:17").contains("longer than a clock can count"));
        assert!(bad("99999999999999999-00").contains("longer than a clock can count"));
    }

    /// A killed demo's folder is removed only when it is this user's.
    #[test]
    fn abandoned_demo_folders_of_this_user_only_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let dead = tmp.path().join(format!("{DEMO_PREFIX}{gone}-abc"));
        let live = tmp
            .path()
            .join(format!("{DEMO_PREFIX}{}-abc", std::process::id()));
        let other = tmp.path().join("unrelated");
        for d in [&dead, &live, &other] {
            std::fs::create_dir(d).unwrap();
        }
        let me = own_uid().unwrap();
        remove_abandoned_demos(tmp.path(), Some(me + 1));
        assert!(dead.exists(), "another user's folder was removed");
        remove_abandoned_demos(tmp.path(), None);
        assert!(dead.exists(), "removed with no user id known");
        remove_abandoned_demos(tmp.path(), Some(me));
        assert!(!dead.exists() && live.exists() && other.exists());
    }
}
