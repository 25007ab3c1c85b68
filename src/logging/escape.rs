//! Client values reach the log escaped, in every format. Rather than trust
//! every call site to wrap what a client sent, [`Escaping`] wraps each
//! output layer (text, JSON, journald) and escapes the text of every field
//! of every event and span — messages included — before that layer sees
//! it with [`crate::safe_text::escape`]: control characters (C0, DEL, C1 — among
//! them the 8-bit CSI U+009B) and the bidi embeddings, overrides and
//! isolates (U+202A–U+202E, U+2066–U+2069) become `\n`, `\u{1b}`, ... So a
//! hostile `role` cannot colour a terminal, forge a log line, or reorder
//! what a reader sees, whatever field it ends up in.
//!
//! An event with nothing to escape (every event but a hostile one) is
//! passed on as it is; checking costs one formatting pass into a scanner,
//! no allocation. Only an event with something to escape is rebuilt, with
//! the same metadata and the same value types (numbers stay numbers).

use std::fmt::{self, Write as _};

use tracing::field::{DisplayValue, Field, FieldSet, Value, ValueSet, Visit};
use tracing::span::{self, Attributes, Record};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::safe_text::{escape, is_unsafe};

/// Wraps an output layer so that it only ever sees escaped field values.
/// See the module docs. (`downcast_raw` is not forwarded — it is an
/// `unsafe fn` — so the wrapped layer cannot be found by downcasting; none
/// of our layers is looked for that way.)
#[derive(Debug)]
pub struct Escaping<L>(pub L);

impl<S, L> Layer<S> for Escaping<L>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    L: Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.0.on_register_dispatch(subscriber)
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.0.on_layer(subscriber)
    }

    fn register_callsite(
        &self,
        metadata: &'static Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        self.0.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.0.enabled(metadata, ctx)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        self.0.max_level_hint()
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if !needs_escaping(|v| attrs.record(v)) {
            return self.0.on_new_span(attrs, id, ctx);
        }
        let metadata = attrs.metadata();
        let values = Escaped::collect(metadata.fields(), |v| attrs.record(v));
        values.with_value_set(metadata.fields(), |set| {
            let escaped = match attrs.parent() {
                Some(parent) => Attributes::child_of(parent.clone(), metadata, set),
                None if attrs.is_root() => Attributes::new_root(metadata, set),
                None => Attributes::new(metadata, set),
            };
            self.0.on_new_span(&escaped, id, ctx)
        })
    }

    fn on_record(&self, id: &span::Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let metadata = match ctx.metadata(id) {
            Some(m) if needs_escaping(|v| values.record(v)) => m,
            _ => return self.0.on_record(id, values, ctx),
        };
        let escaped = Escaped::collect(metadata.fields(), |v| values.record(v));
        escaped.with_value_set(metadata.fields(), |set| {
            self.0.on_record(id, &Record::new(set), ctx)
        })
    }

    fn on_follows_from(&self, span: &span::Id, follows: &span::Id, ctx: Context<'_, S>) {
        self.0.on_follows_from(span, follows, ctx)
    }

    fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, S>) -> bool {
        self.0.event_enabled(event, ctx)
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if !needs_escaping(|v| event.record(v)) {
            return self.0.on_event(event, ctx);
        }
        let metadata = event.metadata();
        let values = Escaped::collect(metadata.fields(), |v| event.record(v));
        values.with_value_set(metadata.fields(), |set| {
            let escaped = if event.is_contextual() {
                Event::new(metadata, set)
            } else {
                Event::new_child_of(event.parent().cloned(), metadata, set)
            };
            self.0.on_event(&escaped, ctx)
        })
    }

    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.0.on_enter(id, ctx)
    }

    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.0.on_exit(id, ctx)
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        self.0.on_close(id, ctx)
    }

    fn on_id_change(&self, old: &span::Id, new: &span::Id, ctx: Context<'_, S>) {
        self.0.on_id_change(old, new, ctx)
    }
}

/// Whether any value `record` visits has text to escape.
fn needs_escaping(record: impl FnOnce(&mut dyn Visit)) -> bool {
    let mut scan = Scan::default();
    record(&mut scan);
    scan.found
}

/// Formats values into nothing, noting whether any of their text needs
/// escaping (and stopping the formatting there).
#[derive(Default)]
struct Scan {
    found: bool,
}

impl fmt::Write for Scan {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if s.chars().any(is_unsafe) {
            self.found = true;
            return Err(fmt::Error);
        }
        Ok(())
    }
}

impl Visit for Scan {
    fn record_str(&mut self, _: &Field, value: &str) {
        self.found |= value.chars().any(is_unsafe);
    }

    fn record_error(&mut self, _: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut next = Some(value);
        while let (false, Some(error)) = (self.found, next) {
            let _ = write!(self, "{error}");
            next = error.source();
        }
    }

    fn record_debug(&mut self, _: &Field, value: &dyn fmt::Debug) {
        if !self.found {
            let _ = write!(self, "{value:?}");
        }
    }
}

/// One field's value, its text escaped; numbers and booleans as they were.
enum Escaped {
    I64(i64),
    U64(u64),
    I128(i128),
    U128(u128),
    F64(f64),
    Bool(bool),
    /// Recorded as a string: stays one (the text format quotes it).
    Str(String),
    /// Recorded through `Debug` or `Display` (`?x`, `%x`, the message):
    /// its text, recorded the same way.
    Text(DisplayValue<String>),
}

/// Every field's value, by the field's index.
struct EscapedValues(Vec<Option<Escaped>>);

impl Escaped {
    fn collect(fields: &FieldSet, record: impl FnOnce(&mut dyn Visit)) -> EscapedValues {
        let mut values = EscapedValues((0..fields.len()).map(|_| None).collect());
        record(&mut values);
        values
    }

    fn as_value(&self) -> &dyn Value {
        match self {
            Escaped::I64(v) => v,
            Escaped::U64(v) => v,
            Escaped::I128(v) => v,
            Escaped::U128(v) => v,
            Escaped::F64(v) => v,
            Escaped::Bool(v) => v,
            Escaped::Str(v) => v,
            Escaped::Text(v) => v,
        }
    }

    fn text(text: &str) -> Escaped {
        Escaped::Text(tracing::field::display(escape(text).into_owned()))
    }
}

impl EscapedValues {
    fn set(&mut self, field: &Field, value: Escaped) {
        if let Some(slot) = self.0.get_mut(field.index()) {
            *slot = Some(value);
        }
    }

    /// Runs `f` with these values as a value set of `fields`. (The set is
    /// built the way tracing's own macros build it, one entry a field.)
    fn with_value_set<R>(&self, fields: &FieldSet, f: impl FnOnce(&ValueSet<'_>) -> R) -> R {
        let values: Vec<Option<&dyn Value>> = self
            .0
            .iter()
            .map(|v| v.as_ref().map(Escaped::as_value))
            .collect();
        f(&fields.value_set_all(&values))
    }
}

impl Visit for EscapedValues {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field, Escaped::F64(value))
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field, Escaped::I64(value))
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field, Escaped::U64(value))
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.set(field, Escaped::I128(value))
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.set(field, Escaped::U128(value))
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field, Escaped::Bool(value))
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, Escaped::Str(escape(value).into_owned()))
    }

    /// The error and its sources, `: `-separated (a rebuilt value is text).
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut text = value.to_string();
        let mut next = value.source();
        while let Some(error) = next {
            let _ = write!(text, ": {error}");
            next = error.source();
        }
        self.set(field, Escaped::text(&text))
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.set(field, Escaped::text(&format!("{value:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt as _;

    /// A writer collecting what a layer writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn hostile_events() {
        let role = "\u{1b}[31mred\n2099-01-01 INFO forged \u{9b}2J \u{202e}x";
        let span = tracing::info_span!("conn", peer = role);
        let _g = span.enter();
        tracing::info!(reason = %role, as_str = role, debug = ?role, n = 7u64, ok = true, "rejected {role}");
        tracing::info!(count = 3u64, "nothing to escape");
        // Only the error's source holds the escape.
        let source = std::io::Error::other("peer said \u{1b}]0;title\u{7}");
        let error = Wrapped(source);
        tracing::warn!(
            error = &error as &(dyn std::error::Error + 'static),
            "failed"
        );
    }

    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("handshake failed")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn text_and_json_layers_see_escaped_values_and_typed_numbers() {
        let text = Sink::default();
        let json = Sink::default();
        let (t, j) = (text.clone(), json.clone());
        let subscriber = tracing_subscriber::registry()
            .with(Escaping(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || t.clone()),
            ))
            .with(Escaping(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(move || j.clone()),
            ));
        tracing::subscriber::with_default(subscriber, hostile_events);

        let text = text.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(!text.chars().any(|c| is_unsafe(c) && c != '\n'), "{text:?}");
        let line = lines[0];
        assert!(line.contains("conn{peer=\"\\\\u{1b}[31mred"), "{line}");
        assert!(
            line.contains("rejected \\u{1b}[31mred\\n2099-01-01 INFO forged \\u{9b}2J \\u{202e}x"),
            "{line}"
        );
        assert!(line.contains(" reason=\\u{1b}[31mred"), "{line}");
        assert!(line.contains(" n=7 ok=true"), "{line}");
        assert!(
            lines[1].ends_with("nothing to escape count=3"),
            "{}",
            lines[1]
        );
        let chain = "failed error=handshake failed: peer said \\u{1b}]0;title\\u{7}";
        assert!(lines[2].ends_with(chain), "{}", lines[2]);

        let json = json.text();
        assert!(!json.chars().any(|c| is_unsafe(c) && c != '\n'), "{json:?}");
        let events: Vec<serde_json::Value> = json
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(events.len(), 3, "{json}");
        let e = &events[0];
        assert_eq!(
            e["reason"],
            "\\u{1b}[31mred\\n2099-01-01 INFO forged \\u{9b}2J \\u{202e}x"
        );
        assert_eq!(e["as_str"], e["reason"]);
        assert_eq!(e["n"], 7, "{e}");
        assert_eq!(e["ok"], true, "{e}");
        assert_eq!(e["span"]["peer"], e["reason"], "{e}");
        assert_eq!(events[1]["count"], 3);
        assert_eq!(
            events[2]["error"],
            "handshake failed: peer said \\u{1b}]0;title\\u{7}"
        );
    }
}
