//! `clawnode presence --watch`: the table kept live from the gateway's
//! `presence` events (no polling). On a terminal it is redrawn in place on
//! the alternate screen every change and every second (ages and statuses
//! move with time), and on resize; when the gateway goes away it says
//! "connection lost, retrying…" over the last known list and reconnects
//! with jittered backoff. Without a terminal each change is printed once
//! (`--json`: one JSON line per change).

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::Value;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{sleep_until, Instant};

use super::{Filter, Listed};
use crate::agent::backoff::Backoff;
use crate::cli::PresenceArgs;
use crate::client::{ConnectError, Session};
use crate::clock::now_ms;
use crate::config::Secret;
use crate::protocol::{event, scope, ErrorDetailCode};
use crate::tls::ClientTls;

/// Ticks the gateway promises by default; silence for this many ticks
/// means the link is dead even without a FIN (a partition).
const SILENT_TICKS: u32 = 3;
const DEFAULT_TICK: Duration = Duration::from_secs(30);

/// Where the connection stands, for the header.
enum Link {
    Connecting,
    Live,
    Retrying { why: String, at: Instant },
}

pub async fn run(
    url: &str,
    tls: &ClientTls,
    token: Option<&Secret>,
    args: &PresenceArgs,
    filter: &Filter,
) -> Result<()> {
    let mut out = Output::new(url, args, filter);
    let mut stop = Stop::new()?;
    let mut backoff = Backoff::reconnect_default();
    let mut redraw = tokio::time::interval(Duration::from_secs(1));
    redraw.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut resized = signal(SignalKind::window_change())?;
    out.draw(&Link::Connecting);

    loop {
        let connected = tokio::select! {
            r = Session::connect(url, tls, token, &[scope::OPERATOR_READ]) => r,
            _ = stop.wait() => return Ok(()),
        };
        let why = match connected {
            Ok((mut session, hello)) => {
                backoff.reset();
                let tick = hello
                    .pointer("/policy/tickIntervalMs")
                    .and_then(Value::as_u64)
                    .map_or(DEFAULT_TICK, Duration::from_millis);
                let silence = tick * SILENT_TICKS;
                // Any frame pushes this on; reaching it means a dead link.
                let mut deadline = Instant::now() + silence;
                let mut presence = hello.pointer("/snapshot/presence").cloned();
                loop {
                    if let Some(list) = presence.take() {
                        if let Err(e) = out.update(Some(list)) {
                            break format!("{e:#}");
                        }
                        out.changed(&Link::Live);
                    }
                    tokio::select! {
                        ev = session.next_event() => match ev {
                            Ok(ev) => {
                                deadline = Instant::now() + silence;
                                if ev.event == event::PRESENCE {
                                    presence = Some(ev.payload.get("presence").cloned().unwrap_or(Value::Null));
                                } else if ev.event == event::TICK {
                                    if let (Some(list), Some(ts)) = (&mut out.list, ev.payload.get("ts").and_then(Value::as_u64)) {
                                        list.touch_self(ts);
                                    }
                                }
                            }
                            Err(e) => break format!("{e:#}"),
                        },
                        _ = sleep_until(deadline) => {
                            break format!("no word from the gateway for {}s", silence.as_secs());
                        }
                        _ = redraw.tick() => out.draw(&Link::Live),
                        _ = resized.recv() => out.draw(&Link::Live),
                        _ = stop.wait() => {
                            session.close().await;
                            return Ok(());
                        }
                    }
                }
            }
            Err(ConnectError::Refused(e)) if !retryable(&e) => {
                drop(out);
                bail!("gateway refused the connection: {e}");
            }
            Err(e) => format!("{e:#}"),
        };
        let at = Instant::now() + backoff.next_delay();
        // The reason may quote the gateway (an error message, a close reason).
        let why = crate::safe_text::escape(&why).into_owned();
        let link = Link::Retrying { why, at };
        out.changed(&link);
        loop {
            tokio::select! {
                _ = sleep_until(at) => break,
                _ = redraw.tick() => out.draw(&link),
                _ = resized.recv() => out.draw(&link),
                _ = stop.wait() => return Ok(()),
            }
        }
    }
}

/// A refusal worth retrying: rate limits and a gateway that says so.
fn retryable(e: &crate::protocol::ErrorShape) -> bool {
    e.retryable == Some(true)
        || e.detail_code_str() == Some(ErrorDetailCode::AuthRateLimited.as_str())
        || e.code == crate::protocol::ErrorCode::Unavailable
}

/// Ctrl-C, SIGTERM or SIGHUP: leave cleanly (the terminal restored).
struct Stop {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Stop {
    fn new() -> Result<Stop> {
        Ok(Stop {
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

/// Where the table goes: a terminal (redrawn in place on the alternate
/// screen) or a pipe (each change appended).
struct Output<'a> {
    url: &'a str,
    args: &'a PresenceArgs,
    filter: &'a Filter,
    tty: bool,
    list: Option<Listed>,
    /// A pipe's last printed list, to print only changes.
    printed: Option<String>,
}

impl<'a> Output<'a> {
    fn new(url: &'a str, args: &'a PresenceArgs, filter: &'a Filter) -> Self {
        let tty = std::io::stdout().is_terminal() && !args.json;
        if tty {
            // Alternate screen, cursor hidden; undone on drop.
            print!("\x1b[?1049h\x1b[?25l");
        }
        Output {
            url,
            args,
            filter,
            tty,
            list: None,
            printed: None,
        }
    }

    /// A new list from the gateway (`None` or malformed: an error).
    fn update(&mut self, presence: Option<Value>) -> Result<()> {
        self.list = Some(Listed::parse(presence.unwrap_or(Value::Null))?);
        Ok(())
    }

    /// Something changed: a terminal redraws; a pipe prints the list (or
    /// says the link was lost, on stderr).
    fn changed(&mut self, link: &Link) {
        if self.tty {
            return self.draw(link);
        }
        match link {
            Link::Retrying { why, at } => eprintln!(
                "clawnode: connection lost, retrying in {}s: {why}",
                at.saturating_duration_since(Instant::now())
                    .as_secs_f32()
                    .ceil()
            ),
            _ => self.print_list(),
        }
    }

    /// Redraws a terminal (a pipe gets only changes, see [`Self::changed`]).
    fn draw(&mut self, link: &Link) {
        if !self.tty {
            return;
        }
        let now = now_ms();
        let (cols, rows) = super::terminal_size().unwrap_or((80, 24));
        let list = self
            .list
            .as_ref()
            .map(|l| l.clone_filtered(self.filter, now));
        let mut lines = vec![self.header(link, list.as_ref(), now, cols)];
        if let Link::Retrying { why, .. } = link {
            lines.push(fit_plain(&format!("  {why}"), cols));
        }
        lines.push(String::new());
        if let Some(list) = &list {
            let style = super::Style {
                width: Some(cols),
                ..super::style(self.args)
            };
            let table = list.table(now, style);
            let mut body: Vec<&str> = table.lines().collect();
            let room = rows.saturating_sub(lines.len() + 1);
            if body.len() > room && room > 1 {
                let hidden = body.len() - (room - 1);
                body.truncate(room - 1);
                lines.extend(body.iter().map(|l| l.to_string()));
                lines.push(format!(
                    "… {hidden} more rows (a taller terminal, or --filter/--status)"
                ));
            } else {
                lines.extend(body.iter().map(|l| l.to_string()));
            }
            if list.is_empty() {
                lines.push("(no rows match)".into());
            }
        }
        let mut screen = String::from("\x1b[H");
        for l in lines {
            screen.push_str(&l);
            screen.push_str("\x1b[K\n");
        }
        screen.push_str("\x1b[J");
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(screen.as_bytes());
        let _ = stdout.flush();
    }

    /// `clawnode presence  ws://gw:18789  ● live  3 active · 1 idle · 0 stale · 1 left  12:01:07`
    fn header(&self, link: &Link, list: Option<&Listed>, now: u64, cols: usize) -> String {
        let (state, colour) = match link {
            Link::Connecting => ("connecting…".to_string(), "33"),
            Link::Live => ("live".to_string(), "32"),
            Link::Retrying { at, .. } => (
                format!(
                    "connection lost, retrying in {}s…",
                    at.saturating_duration_since(Instant::now())
                        .as_secs_f32()
                        .ceil()
                ),
                "31",
            ),
        };
        let counts = list
            .map(|l| l.counts(now))
            .map(|[a, i, s, l]| format!("  {a} active · {i} idle · {s} stale · {l} left"));
        let clock = clock(now);
        let plain = format!(
            "clawnode presence  {}  {state}{}  {clock}  (Ctrl-C quits)",
            self.url,
            counts.as_deref().unwrap_or_default()
        );
        let color = super::style(self.args).color;
        if plain.chars().count() > cols || !color {
            return fit_plain(&plain, cols);
        }
        format!(
            "\x1b[1mclawnode presence\x1b[0m  {}  \x1b[{colour}m{state}\x1b[0m{}  {clock}  \x1b[2m(Ctrl-C quits)\x1b[0m",
            self.url,
            counts.as_deref().unwrap_or_default()
        )
    }

    /// A pipe gets each changed list: a table with a time line, or with
    /// `--json` one line of JSON.
    fn print_list(&mut self) {
        let Some(list) = &self.list else { return };
        let now = now_ms();
        let list = list.clone_filtered(self.filter, now);
        let json = serde_json::to_string(&list.raw).unwrap_or_default();
        if self.printed.as_deref() == Some(json.as_str()) {
            return;
        }
        let text = if self.args.json {
            format!("{json}\n")
        } else {
            let style = super::Style {
                wide: self.args.wide,
                ..super::Style::PLAIN
            };
            format!(
                "# {} · {} rows\n{}\n",
                clock(now),
                list.entries.len(),
                list.table(now, style)
            )
        };
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
        self.printed = Some(json);
    }
}

impl Drop for Output<'_> {
    fn drop(&mut self) {
        if self.tty {
            print!("\x1b[?25h\x1b[?1049l");
            let _ = std::io::stdout().flush();
        }
    }
}

/// `s` cut to `cols` characters.
fn fit_plain(s: &str, cols: usize) -> String {
    s.chars().take(cols).collect()
}

/// "12:01:07" (UTC).
fn clock(now_ms: u64) -> String {
    let secs = now_ms / 1000 % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}
