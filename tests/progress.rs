//! Progress bars and log lines share one terminal: on a simulated terminal
//! (a grid of lines with a cursor, moved as the escape sequences indicatif
//! sends would move it), log lines written while a bar is drawn end up whole,
//! above the bar, and the bar is redrawn below them.
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use alexnet_cuda::progress::{Sink, Terminal};
use indicatif::{ProgressDrawTarget, TermLike};
use tracing_subscriber::fmt::MakeWriter;

/// What a terminal shows: its lines and the cursor's row and column.
#[derive(Debug, Default)]
struct Screen {
    lines: Vec<Vec<char>>,
    row: usize,
    col: usize,
}

impl Screen {
    fn put(&mut self, s: &str) {
        for ch in s.chars() {
            while self.lines.len() <= self.row {
                self.lines.push(Vec::new());
            }
            if ch == '\n' {
                self.row += 1;
                self.col = 0;
                continue;
            }
            let line = &mut self.lines[self.row];
            if self.col < line.len() {
                line[self.col] = ch;
            } else {
                line.resize(self.col, ' ');
                line.push(ch);
            }
            self.col += 1;
        }
    }

    fn text(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .lines
            .iter()
            .map(|l| l.iter().collect::<String>().trim_end().to_string())
            .collect();
        while out.last().is_some_and(|l| l.is_empty()) {
            out.pop();
        }
        out
    }
}

/// The simulated terminal: indicatif draws on it, log lines are written to it.
#[derive(Clone, Debug, Default)]
struct Term(Arc<Mutex<Screen>>);

impl Term {
    fn with<R>(&self, f: impl FnOnce(&mut Screen) -> R) -> io::Result<R> {
        let mut s = self.0.lock().map_err(|_| io::Error::other("poisoned"))?;
        Ok(f(&mut s))
    }
}

impl TermLike for Term {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, n: usize) -> io::Result<()> {
        self.with(|s| s.row = s.row.saturating_sub(n))
    }
    fn move_cursor_down(&self, n: usize) -> io::Result<()> {
        self.with(|s| s.row += n)
    }
    fn move_cursor_right(&self, n: usize) -> io::Result<()> {
        self.with(|s| s.col += n)
    }
    fn move_cursor_left(&self, n: usize) -> io::Result<()> {
        self.with(|s| s.col = s.col.saturating_sub(n))
    }
    fn write_line(&self, line: &str) -> io::Result<()> {
        self.with(|s| s.put(&format!("{line}\n")))
    }
    fn write_str(&self, text: &str) -> io::Result<()> {
        self.with(|s| s.put(text))
    }
    fn clear_line(&self) -> io::Result<()> {
        self.with(|s| {
            if let Some(l) = s.lines.get_mut(s.row) {
                l.clear();
            }
            s.col = 0;
        })
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for Term {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf).into_owned();
        self.with(|s| s.put(&text))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes one log event the way `tracing_subscriber::fmt` does: several
/// fragments into one writer, then the writer is dropped.
fn log(w: &alexnet_cuda::progress::LogWriter, line: &str) {
    let mut out = w.make_writer();
    let (head, tail) = line.split_at(line.len() / 2);
    out.write_all(head.as_bytes()).expect("write");
    out.write_all(tail.as_bytes()).expect("write");
    out.write_all(b"\n").expect("write");
}

#[test]
fn log_lines_land_whole_above_the_bars() {
    let term = Term::default();
    let sink: Sink = Arc::new(Mutex::new(term.clone()));
    let t = Terminal::new(ProgressDrawTarget::term_like(Box::new(term.clone())), sink);
    let logs = t.log_writer();

    let pb = t.bar(10, "epoch 1", true);
    pb.set_position(3);
    log(&logs, "INFO first line of the log");
    pb.set_position(5);
    log(&logs, "WARN second line of the log");
    pb.set_position(7);

    let screen = term.with(|s| s.text()).expect("screen");
    assert_eq!(
        screen.len(),
        3,
        "two log lines and one bar line: {screen:#?}"
    );
    assert_eq!(screen[0], "INFO first line of the log");
    assert_eq!(screen[1], "WARN second line of the log");
    assert!(
        screen[2].starts_with("epoch 1 [") && screen[2].contains("/10"),
        "the bar is drawn below the log lines: {screen:#?}"
    );
}

/// What a rate should read, from std's exponent form of `r` to three
/// figures (`9.996` -> `1.00e1`): that value, and its decimals
/// (2 - exponent, none from 100 up).
fn three_figures(r: f64) -> (f64, usize) {
    let e = format!("{r:.2e}");
    let exponent: i32 = e
        .split_once('e')
        .expect("exponent form")
        .1
        .parse()
        .expect("exponent");
    (e.parse().expect("a number"), (2 - exponent).max(0) as usize)
}

fn decimals(text: &str) -> usize {
    text.split_once('.').map_or(0, |(_, d)| d.len())
}

/// The rate on a bar is a short number to three figures (indicatif's own
/// `{per_sec}` printed four decimals).
#[test]
fn a_bar_shows_its_rate_to_a_few_figures() {
    let term = Term::default();
    let sink: Sink = Arc::new(Mutex::new(term.clone()));
    let t = Terminal::new(ProgressDrawTarget::term_like(Box::new(term.clone())), sink);
    let pb = t.bar(1000, "epoch 1", true);
    for _ in 0..30 {
        pb.inc(1);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    pb.tick();
    let screen = term.with(|s| s.text()).expect("screen");
    let line = screen.last().expect("a bar line");
    let rate = line
        .split_whitespace()
        .find_map(|w| w.strip_suffix("/s"))
        .unwrap_or_else(|| panic!("no rate in {line:?}"));
    let value: f64 = rate
        .parse()
        .unwrap_or_else(|_| panic!("{rate:?} in {line:?}"));
    let (_, want) = three_figures(value);
    assert!(value > 0.0 && decimals(rate) == want, "{line:?}");
}

/// Rates where rounding to three figures carries into the next power of
/// ten read with the decimals of the rounded value (`100`, not `100.0`),
/// and slow rates keep three figures rather than reading 0.00.
#[test]
fn rates_read_to_three_figures_after_rounding() {
    for r in [
        99.96, 9.996, 0.9996, 999.6, 35.34, 3.534, 0.04123, 0.004, 1.0,
    ] {
        let text = alexnet_cuda::progress::rate_text(r);
        let (value, want) = three_figures(r);
        let shown: f64 = text.parse().unwrap_or_else(|_| panic!("{text:?}"));
        assert!(
            (shown - value).abs() <= value * 1e-9 && decimals(&text) == want,
            "{r} reads {text:?}, want {value} with {want} decimals"
        );
    }
    // From 1000 up, the whole number: more figures, no exponent.
    assert_eq!(alexnet_cuda::progress::rate_text(1324.2366), "1324");
    assert_eq!(alexnet_cuda::progress::rate_text(0.0), "0.00");
    // Below 0.001, three figures in exponent form, down to subnormals.
    assert_eq!(alexnet_cuda::progress::rate_text(4.123e-4), "4.12e-4");
    assert_eq!(alexnet_cuda::progress::rate_text(1e-310), "1.00e-310");
}

#[test]
fn hidden_bars_leave_log_lines_alone() {
    let term = Term::default();
    let sink: Sink = Arc::new(Mutex::new(term.clone()));
    let t = Terminal::new(ProgressDrawTarget::hidden(), sink);
    let pb = t.bar(10, "prepare", false);
    pb.set_position(4);
    log(&t.log_writer(), "INFO only this line");
    let screen = term.with(|s| s.text()).expect("screen");
    assert_eq!(screen, vec!["INFO only this line".to_string()]);
}

/// A bar started at a resumed count: its rate counts only what is done
/// after, not the jump to the count. 5,000 items resumed, then 10 items in
/// 0.2 s: about 50 per second, where the jump taken as done would read
/// thousands.
#[test]
fn a_resumed_bar_rates_only_what_is_done_after() {
    let pb = indicatif::ProgressBar::new(10_000);
    alexnet_cuda::progress::start_at(&pb, 5_000);
    for _ in 0..10 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        pb.inc(1);
    }
    assert_eq!(pb.position(), 5_010);
    let rate = pb.per_sec();
    // Under 200 (not the jump), and not 0 (a rate that never updated).
    assert!(rate < 200.0 && rate > 1.0, "{rate} items/s");
}
