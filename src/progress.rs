//! Progress bars and log lines on one terminal. Every bar of every command
//! comes from `bar` (one style) and is drawn by one `MultiProgress`; the
//! command line's log lines go through `LogWriter`, which hides the bars,
//! prints the whole line and redraws them, so a line lands above the bars
//! instead of through one. Off a terminal, indicatif draws no bars and the
//! lines are written as they are. `init_logs` sets up the process's log.
use std::io::{self, Write};
use std::sync::{Arc, Mutex, OnceLock};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where log lines are written: the terminal the bars are drawn on.
pub type Sink = Arc<Mutex<dyn Write + Send>>;

/// The bars and the log lines of one terminal.
#[derive(Clone)]
pub struct Terminal {
    bars: MultiProgress,
    out: Sink,
}

impl Terminal {
    /// Bars drawn on `target`, log lines written to `out`: the same terminal
    /// (stderr for both, for the process).
    pub fn new(target: ProgressDrawTarget, out: Sink) -> Self {
        Terminal {
            bars: MultiProgress::with_draw_target(target),
            out,
        }
    }

    /// A bar counting `len` items, its line starting with `prefix`; hidden
    /// when `show` is false (`--no-progress`).
    pub fn bar(&self, len: u64, prefix: &str, show: bool) -> ProgressBar {
        if !show {
            return ProgressBar::hidden();
        }
        let pb = self.bars.add(ProgressBar::new(len));
        if let Ok(style) = ProgressStyle::with_template(STYLE) {
            pb.set_style(style.progress_chars("=> ").with_key("rate", rate));
        }
        pb.set_prefix(prefix.to_string());
        pb
    }

    /// The `tracing` writer whose lines are printed above this terminal's bars.
    pub fn log_writer(&self) -> LogWriter {
        LogWriter {
            bars: self.bars.clone(),
            out: self.out.clone(),
        }
    }
}

/// Every bar's line: what it counts, the bar, the count, the rate, the time
/// left, then what the command adds (a training step's loss, ...).
const STYLE: &str = "{prefix} [{bar:30}] {pos}/{len} {rate} eta {eta} {msg}";

/// The `{rate}` key: items per second to three significant figures
/// (`1324/s`, `35.3/s`, `3.53/s`, `0.0412/s`), where indicatif's
/// `{per_sec}` prints four decimals whatever the size (`1,324.2366/s`).
fn rate(state: &ProgressState, w: &mut dyn std::fmt::Write) {
    let _ = write!(w, "{}/s", rate_text(state.per_sec()));
}

/// `r` to three significant figures, in exponent form only below 0.001;
/// from 1000 up, the whole number. The decimals follow `r` rounded, so
/// 99.96 reads `100`, not `100.0`.
pub fn rate_text(r: f64) -> String {
    if !r.is_finite() || r <= 0.0 {
        return format!("{:.2}", r.max(0.0));
    }
    if r >= 999.5 {
        return format!("{r:.0}");
    }
    // Under one item in 1000 s (a subnormal rate too): exponent form.
    if r < 1e-3 {
        return format!("{r:.2e}");
    }
    // Round to three figures first: the carry can move r up a power of ten.
    let magnitude = |x: f64| x.log10().floor() as i32;
    let scale = 10f64.powi(2 - magnitude(r));
    let rounded = (r * scale).round() / scale;
    let digits = (2 - magnitude(rounded)).max(0) as usize;
    format!("{rounded:.digits$}")
}

/// The process's terminal: stderr, where the logs go too.
pub fn terminal() -> &'static Terminal {
    static TERMINAL: OnceLock<Terminal> = OnceLock::new();
    TERMINAL.get_or_init(|| {
        Terminal::new(
            ProgressDrawTarget::stderr(),
            Arc::new(Mutex::new(io::stderr())),
        )
    })
}

/// `terminal().bar(...)`: a bar on stderr in the one style.
pub fn bar(len: usize, prefix: &str, show: bool) -> ProgressBar {
    terminal().bar(len as u64, prefix, show)
}

/// Put a new bar at `first` (the items a resumed task had done) so that its
/// rate and time left count only what is done from now on: indicatif's
/// estimator would take the jump as `first` items done in no time.
pub fn start_at(pb: &ProgressBar, first: u64) {
    pb.set_position(first);
    pb.tick();
    pb.reset_eta();
}

/// Makes one `Line` per log event (`tracing_subscriber::fmt().with_writer`).
#[derive(Clone)]
pub struct LogWriter {
    bars: MultiProgress,
    out: Sink,
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Line {
            bars: self.bars.clone(),
            out: self.out.clone(),
            text: Vec::new(),
        }
    }
}

/// One log event, collected whole and printed when dropped: the bars are
/// hidden once per line, not once per fragment the formatter writes.
pub struct Line {
    bars: MultiProgress,
    out: Sink,
    text: Vec<u8>,
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.text.is_empty() {
            return;
        }
        let text = std::mem::take(&mut self.text);
        // A log line that cannot be written (stderr closed) has nowhere to
        // be reported; dropping it is all that is left.
        self.bars.suspend(|| {
            if let Ok(mut out) = self.out.lock() {
                let _ = out.write_all(&text);
                let _ = out.flush();
            }
        });
    }
}

/// The process's log: to stderr through `LogWriter` (above any bars),
/// RUST_LOG's filter (default info), colour only on a terminal.
pub fn init_logs() {
    let (filter, bad) = log_filter(std::env::var("RUST_LOG").ok());
    // The builder's own filter would stop at info; RUST_LOG's decides.
    tracing_subscriber::fmt()
        .with_max_level(LevelFilter::TRACE)
        .with_target(false)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .with_writer(terminal().log_writer())
        .finish()
        .with(filter)
        .init();
    if let Some(why) = bad {
        tracing::warn!("{why}");
    }
}

/// RUST_LOG as comma-separated `target=level` directives or a bare level
/// (`warn`, `alexnet_cuda=debug`), default info. tracing-subscriber's
/// `Targets` reads them without the regex crates its `EnvFilter` is built
/// with (about 23 s of compile on 2 cores); span and field filters are not
/// read. A value it cannot read is named, and info is used.
fn log_filter(var: Option<String>) -> (Targets, Option<String>) {
    let info = Targets::new().with_default(LevelFilter::INFO);
    let Some(var) = var.filter(|v| !v.trim().is_empty()) else {
        return (info, None);
    };
    match var.parse::<Targets>() {
        Ok(t) => (t, None),
        Err(e) => (
            info,
            Some(format!(
                "RUST_LOG={var:?} ignored ({e}): it takes a level (error, warn, info, debug, trace) or target=level directives, e.g. RUST_LOG=warn"
            )),
        ),
    }
}
