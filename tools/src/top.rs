//! `fastedge top`: a live terminal view of a running serve (its metrics endpoint) or split (its
//! control socket). The figures come from `fastedge_tls::scrape` and
//! `fastedge_rings::top`; this file parses flags and draws.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::anyhow;
use clap::{ArgGroup, Args};
use fastedge_rings::top::{SplitRates, SplitSnapshot};
use fastedge_tls::scrape::{Endpoint, ServeRates, ServeSnapshot};
use ratatui::{
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{
        Constraint::{self, Length, Min, Percentage},
        Layout, Rect,
    },
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Paragraph, Row, Table},
    Frame,
};

use crate::Failure;

/// Watch a running `fastedge serve` or `fastedge split` live.
///
/// With `--metrics`, reads serve's metrics endpoint (the `metrics_listen` address of its
/// configuration) and shows, per core, new connections, TLS handshakes and bytes per second
/// and open connections; connections closed by reason; and each backend's health (how many
/// cores see it alive) and failed connects. With `--split NAME` or `--control PATH`, asks the
/// split's control socket and shows each input's rate, each way's delivered and dropped
/// frames per second and its consumer, every drop by cause, and the pre-filter rules' hits.
///
/// Rates are differences between two readings `--interval` apart. Keys: `q`, Esc or Ctrl-C
/// quit. `--once` prints one plain-text frame (after two readings) and exits, for scripts.
/// Exit code 2 when the endpoint or socket cannot be reached at start.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["metrics", "split", "control"])))]
pub struct TopArgs {
    /// serve's metrics endpoint: HOST:PORT or http://HOST:PORT/metrics.
    #[arg(long, value_name = "URL")]
    metrics: Option<Endpoint>,

    /// Name of a running split (its control socket /run/fastedge/split-NAME.sock).
    #[arg(long, value_name = "NAME")]
    split: Option<String>,

    /// A split's control socket.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,

    /// Time between readings: 250ms, 1s, 5s…
    #[arg(long, short = 'i', value_name = "DURATION", default_value = "1s", value_parser = interval)]
    interval: Duration,

    /// Print one frame as plain text and exit.
    #[arg(long)]
    once: bool,
}

fn interval(text: &str) -> Result<Duration, String> {
    let d = fastedge_tls::config::parse_duration("--interval", text).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) {
        return Err("at least 100ms".into());
    }
    Ok(d)
}

/// Where the figures come from.
enum Source {
    Serve(Endpoint),
    Split(PathBuf),
}

enum Snapshot {
    Serve(ServeSnapshot),
    Split(SplitSnapshot),
}

enum Rates {
    Serve(ServeRates),
    Split(SplitRates),
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Serve(endpoint) => format!("serve {endpoint}"),
            Source::Split(path) => format!("split {}", path.display()),
        }
    }

    fn read(&self, timeout: Duration) -> anyhow::Result<Snapshot> {
        Ok(match self {
            Source::Serve(endpoint) => Snapshot::Serve(ServeSnapshot::fetch(endpoint, timeout)?),
            Source::Split(path) => Snapshot::Split(SplitSnapshot::fetch(path)?),
        })
    }
}

/// Rates from `before` to `after`; a source gives snapshots of one kind only, so a mixed
/// pair (which cannot happen) shows `before` against itself.
fn rates(before: &Snapshot, after: &Snapshot, elapsed: Duration) -> Rates {
    match (before, after) {
        (Snapshot::Serve(b), Snapshot::Serve(a)) => {
            Rates::Serve(ServeRates::between(b, a, elapsed))
        }
        (Snapshot::Split(b), Snapshot::Split(a)) => {
            Rates::Split(SplitRates::between(b, a, elapsed))
        }
        (Snapshot::Serve(b), _) => Rates::Serve(ServeRates::between(b, b, Duration::ZERO)),
        (Snapshot::Split(b), _) => Rates::Split(SplitRates::between(b, b, Duration::ZERO)),
    }
}

/// What one frame shows.
struct Screen {
    source: String,
    interval: Duration,
    rates: Rates,
    /// The last reading's failure, if it failed (the figures are then the last good ones).
    error: Option<String>,
}

pub fn run(args: TopArgs) -> Result<(), Failure> {
    let source = match (args.metrics, args.split, args.control) {
        (Some(endpoint), _, _) => Source::Serve(endpoint),
        (_, Some(name), _) => Source::Split(fastedge_rings::control::default_socket(&name)),
        (_, _, Some(path)) => Source::Split(path),
        _ => {
            return Err(Failure::config(anyhow!(
                "give --metrics, --split or --control"
            )))
        }
    };
    let timeout = args.interval.max(Duration::from_secs(2));
    let unreachable =
        |e: anyhow::Error| Failure::config(anyhow!("{}: cannot read it: {e}", source.describe()));
    let mut last = source.read(timeout).map_err(unreachable)?;
    let mut last_at = Instant::now();
    let mut screen = Screen {
        source: source.describe(),
        interval: args.interval,
        // Rates need two readings: zeros until the next one.
        rates: rates(&last, &last, Duration::ZERO),
        error: None,
    };
    let mut refresh = |screen: &mut Screen| match source.read(timeout) {
        Ok(now) => {
            let at = Instant::now();
            screen.rates = rates(&last, &now, at - last_at);
            (last, last_at, screen.error) = (now, at, None);
        }
        Err(e) => screen.error = Some(format!("{e}")),
    };
    if args.once {
        std::thread::sleep(args.interval);
        refresh(&mut screen);
        if let Some(error) = &screen.error {
            return Err(Failure::runtime(anyhow!("{error}")));
        }
        print!("{}", plain_text(&screen, 120));
        return Ok(());
    }
    let mut terminal = ratatui::try_init()
        .map_err(|e| Failure::runtime(anyhow!("setting up the terminal: {e}")))?;
    let _restore = RestoreTerminal;
    let mut next = Instant::now() + args.interval;
    loop {
        terminal
            .draw(|frame| draw(frame, &screen))
            .map_err(|e| Failure::runtime(anyhow!("drawing: {e}")))?;
        let left = next.saturating_duration_since(Instant::now());
        if event::poll(left).map_err(|e| Failure::runtime(anyhow!("reading keys: {e}")))? {
            match event::read().map_err(|e| Failure::runtime(anyhow!("reading keys: {e}")))? {
                Event::Key(key) if key.kind != KeyEventKind::Release => {
                    let ctrl_c = key.modifiers.contains(KeyModifiers::CONTROL)
                        && key.code == KeyCode::Char('c');
                    if ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
                        return Ok(());
                    }
                }
                _ => {}
            }
            continue;
        }
        refresh(&mut screen);
        next = Instant::now() + args.interval;
    }
}

/// Leaves the alternate screen and raw mode however `run` ends.
struct RestoreTerminal;

impl Drop for RestoreTerminal {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// The frame as text, `width` columns wide and as tall as its content.
fn plain_text(screen: &Screen, width: u16) -> String {
    let height = sections(screen).iter().sum::<u16>();
    let area = Rect::new(0, 0, width, height);
    let mut buffer = ratatui::buffer::Buffer::empty(area);
    let mut terminal =
        match ratatui::Terminal::new(ratatui::backend::TestBackend::new(width, height)) {
            Ok(terminal) => terminal,
            Err(_) => return String::new(),
        };
    if terminal.draw(|frame| draw(frame, screen)).is_ok() {
        buffer = terminal.backend().buffer().clone();
    }
    let mut out = String::new();
    for y in 0..height {
        let line: String = (0..width).map(|x| buffer[(x, y)].symbol()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Heights of the frame's sections: header, main table, the two side-by-side tables, status.
fn sections(screen: &Screen) -> [u16; 4] {
    let rows = |n: usize| u16::try_from(n).unwrap_or(u16::MAX).saturating_add(3);
    match &screen.rates {
        Rates::Serve(r) => [
            2,
            rows(r.cores.len()),
            rows(r.closes.len().max(r.backends.len())),
            1,
        ],
        Rates::Split(r) => [
            2 + u16::try_from(r.inputs.len()).unwrap_or(u16::MAX),
            rows(r.ways.len()),
            rows(
                r.drops
                    .len()
                    .max(r.rules.as_ref().map_or(1, Vec::len))
                    .max(1),
            ),
            1,
        ],
    }
}

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

/// A bordered table titled `title`, with bold `headers` over `rows`, columns `widths` wide.
fn table<'a>(
    title: &'static str,
    headers: &[&'static str],
    rows: impl IntoIterator<Item = Row<'a>>,
    widths: &[Constraint],
) -> Table<'a> {
    Table::new(rows, widths.to_vec())
        .header(Row::new(headers.to_vec()).style(bold()))
        .block(Block::bordered().title(title))
}

fn rate(v: f64) -> String {
    format!("{v:.1}")
}

fn bytes_rate(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.1} GB/s", v / 1e9),
        v if v >= 1e6 => format!("{:.1} MB/s", v / 1e6),
        v if v >= 1e3 => format!("{:.1} kB/s", v / 1e3),
        v => format!("{v:.0} B/s"),
    }
}

fn draw(frame: &mut Frame<'_>, screen: &Screen) {
    let [h0, h1, h2, h3] = sections(screen);
    let [top, main, lower, status, _] =
        Layout::vertical([Length(h0), Length(h1), Length(h2), Length(h3), Min(0)])
            .areas(frame.area());
    let title = Line::from(format!(
        "fastedge top — {}   every {:?}   q quits",
        screen.source, screen.interval
    ))
    .style(bold());
    let status_line = match &screen.error {
        Some(error) => format!("last reading failed: {error} (figures are from the one before)"),
        None => "ok".to_owned(),
    };
    frame.render_widget(Paragraph::new(status_line), status);
    match &screen.rates {
        Rates::Serve(r) => draw_serve(frame, r, title, [top, main, lower]),
        Rates::Split(r) => draw_split(frame, r, title, [top, main, lower]),
    }
}

fn draw_serve(
    frame: &mut Frame<'_>,
    r: &ServeRates,
    title: Line<'_>,
    [top, main, lower]: [Rect; 3],
) {
    let totals = format!(
        "cores {}   open {}   connections/s {}   handshakes/s {} (resumed {})   requests/s {}   in {}   out {}",
        r.core_count,
        r.active,
        rate(r.connections_per_s),
        rate(r.handshakes_per_s),
        r.resumed_ratio
            .map_or_else(|| "-".to_owned(), |ratio| format!("{:.0}%", ratio * 100.0)),
        rate(r.requests_per_s),
        bytes_rate(r.upstream_bytes_per_s),
        bytes_rate(r.downstream_bytes_per_s),
    );
    frame.render_widget(Paragraph::new(vec![title, Line::from(totals)]), top);
    let cores = r.cores.iter().map(|c| {
        Row::new(vec![
            c.core.to_string(),
            rate(c.connections_per_s),
            rate(c.handshakes_per_s),
            rate(c.requests_per_s),
            bytes_rate(c.bytes_per_s),
            c.active.to_string(),
            c.accepted.to_string(),
        ])
    });
    let headers = [
        "core",
        "connections/s",
        "handshakes/s",
        "requests/s",
        "bytes/s",
        "open",
        "accepted",
    ];
    let widths = [5, 14, 14, 12, 12, 8, 12].map(Length);
    frame.render_widget(table("Cores", &headers, cores, &widths), main);
    let [left, right] = Layout::horizontal([Percentage(45), Percentage(55)]).areas(lower);
    let closes = r
        .closes
        .iter()
        .map(|c| Row::new(vec![c.reason.clone(), c.total.to_string(), rate(c.per_s)]));
    let headers = ["reason", "total", "/s"];
    let widths = [20, 10, 8].map(Length);
    frame.render_widget(table("Closed connections", &headers, closes, &widths), left);
    let backends = r.backends.iter().map(|b| {
        Row::new(vec![
            b.name.clone(),
            b.state(r.core_count).to_owned(),
            format!("{}/{}", b.alive_cores, r.core_count),
            b.connect_failures.to_string(),
            rate(b.connect_failures_per_s),
        ])
    });
    let headers = ["backend", "health", "alive", "failures", "/s"];
    let widths = [Min(16), Length(8), Length(6), Length(9), Length(6)];
    frame.render_widget(table("Backends", &headers, backends, &widths), right);
}

fn draw_split(
    frame: &mut Frame<'_>,
    r: &SplitRates,
    title: Line<'_>,
    [top, main, lower]: [Rect; 3],
) {
    let mut lines = vec![
        title,
        Line::from(format!(
            "split {}   pid {}   up {}s   ways {}   consumers {}",
            r.name,
            r.pid,
            r.uptime_s,
            r.ways.len(),
            r.consumers
        )),
    ];
    for input in &r.inputs {
        lines.push(Line::from(format!(
            "input {} ({})   {} frames/s   {} received",
            input.name,
            input.mode,
            rate(input.received_per_s),
            input.received
        )));
    }
    frame.render_widget(Paragraph::new(lines), top);
    let ways = r.ways.iter().map(|w| {
        Row::new(vec![
            w.way.to_string(),
            rate(w.delivered_per_s),
            rate(w.dropped_per_s),
            w.delivered.to_string(),
            w.dropped_full.to_string(),
            w.consumer.map_or("-".to_owned(), |p| format!("pid {p}")),
        ])
    });
    let headers = [
        "way",
        "delivered/s",
        "dropped/s",
        "delivered",
        "dropped",
        "consumer",
    ];
    let widths = [4, 13, 11, 12, 12, 12].map(Length);
    frame.render_widget(table("Ways", &headers, ways, &widths), main);
    let [left, right] = Layout::horizontal([Percentage(55), Percentage(45)]).areas(lower);
    let drops = r
        .drops
        .iter()
        .map(|d| Row::new(vec![d.cause.to_owned(), d.total.to_string(), rate(d.per_s)]));
    let widths = [Min(36), Length(10), Length(8)];
    frame.render_widget(
        table("Drops", &["cause", "total", "/s"], drops, &widths),
        left,
    );
    let rules: Vec<Row<'_>> = match &r.rules {
        Some(rules) => rules
            .iter()
            .map(|rule| {
                Row::new(vec![
                    rule.id.to_string(),
                    rule.rule.clone(),
                    rule.hits.to_string(),
                    rate(rule.hits_per_s),
                ])
            })
            .collect(),
        None => vec![Row::new(vec![
            "-".to_owned(),
            "(no XDP pre-filter)".to_owned(),
        ])],
    };
    let headers = ["id", "rule", "hits", "/s"];
    let widths = [Length(4), Min(20), Length(10), Length(8)];
    frame.render_widget(table("Pre-filter rules", &headers, rules, &widths), right);
}
