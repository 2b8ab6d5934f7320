//! Logging: `tracing` events as text lines on stderr, one line per event whatever the
//! values hold.
//!
//! Field values and messages carry strings producers choose (an `app_id`, an
//! `instance_id`): every control character in them (new lines, carriage returns, ANSI
//! escapes, C1 codes) and the Unicode line separators and bidirectional overrides are written
//! escaped (`\n`, `\u{1b}`), so a record cannot forge a log line or drive a terminal.
//! tracing-subscriber 0.3 escapes ESC and a few others itself, but not new lines in `%`
//! fields or messages. Colours are used only when stderr is a terminal. Panics are logged
//! through the same path.

use std::any::Any;
use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::util::SubscriberInitExt;

/// The filter when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,tokio_postgres=warn";

/// Installs the process's logger (stderr, `RUST_LOG` or [`DEFAULT_FILTER`]) and a panic hook
/// that logs panics through it.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    subscriber(std::io::stderr, filter, std::io::stderr().is_terminal()).init();
    std::panic::set_hook(Box::new(log_panic));
}

/// The subscriber [`init`] installs, writing to `writer`; `ansi` colours levels.
pub fn subscriber<W>(writer: W, filter: EnvFilter, ansi: bool) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .fmt_fields(EscapedFields)
        .finish()
}

/// `s` with control characters escaped, for text bound for a log or a terminal.
pub fn escape_control(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    Escaping(&mut out).write_str(s).expect("writing to a String does not fail");
    Cow::Owned(out)
}

/// The message of a panic's payload (`panic!` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic without a message)")
}

fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let thread = std::thread::current();
    let thread = thread.name().unwrap_or("unnamed");
    let location = info.location().map(ToString::to_string).unwrap_or_default();
    let message = panic_message(info.payload());
    let backtrace = std::backtrace::Backtrace::capture();
    if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
        tracing::error!(thread, %location, panic = message, %backtrace, "thread panicked");
    } else {
        tracing::error!(thread, %location, panic = message, "thread panicked");
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Passes text on with [`needs_escape`] characters written as escapes.
struct Escaping<'a>(&'a mut dyn fmt::Write);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, c) in s.char_indices().filter(|(_, c)| needs_escape(*c)) {
            self.0.write_str(&s[plain..i])?;
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{{{:x}}}", c as u32)?,
            }
            plain = i + c.len_utf8();
        }
        self.0.write_str(&s[plain..])
    }
}

/// Formats an event's or a span's fields as `name=value`, the message bare, everything
/// escaped.
pub struct EscapedFields;

impl<'w> MakeVisitor<Writer<'w>> for EscapedFields {
    type Visitor = EscapingVisitor<'w>;

    fn make_visitor(&self, writer: Writer<'w>) -> Self::Visitor {
        EscapingVisitor { writer, first: true, result: Ok(()) }
    }
}

pub struct EscapingVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl EscapingVisitor<'_> {
    fn write_field(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `log.*` fields come from the `log` bridge and are shown as the line's target.
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        self.result = self.try_write_field(field, value);
    }

    fn try_write_field(&mut self, field: &Field, value: &dyn fmt::Debug) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.writer.write_char(' ')?;
        }
        let name = field.name();
        if name != "message" {
            write!(self.writer, "{}=", name.strip_prefix("r#").unwrap_or(name))?;
        }
        write!(Escaping(&mut self.writer), "{value:?}")
    }
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write_field(field, &format_args!("{value}"));
        } else {
            self.write_field(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.write_field(field, &format_args!("{}", ErrorChain(value)));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write_field(field, value);
    }
}

impl VisitOutput<fmt::Result> for EscapingVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for EscapingVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// An error and its sources, `outer: inner: root`.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    const FORGED: &str = "x\n2030-01-01T00:00:00Z ERROR forged \x1b[31m";

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Buffer {
            self.clone()
        }
    }

    fn logged(event: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let subscriber = subscriber(buffer.clone(), EnvFilter::new("trace"), false);
        tracing::subscriber::with_default(subscriber, event);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_forged_value_stays_on_one_line_without_escapes() {
        let out = logged(|| {
            let span = tracing::info_span!("partition", app = %FORGED);
            let _entered = span.enter();
            tracing::warn!(
                app_id = %FORGED,
                instance_id = FORGED,
                debug = ?FORGED,
                "beat from {FORGED}\r"
            );
        });
        assert_eq!(out.matches('\n').count(), 1, "{out:?}");
        assert!(out.ends_with('\n'), "{out:?}");
        assert!(!out.contains('\x1b') && !out.contains('\r'), "{out:?}");
        assert!(out.contains(r"app_id=x\n2030-01-01T00:00:00Z ERROR forged \u{1b}[31m"), "{out:?}");
        assert!(out.contains("WARN"), "{out:?}");
    }

    #[test]
    fn an_error_is_logged_with_its_sources_on_one_line() {
        let inner = std::io::Error::other(FORGED);
        let out = logged(|| tracing::error!(error = &inner as &(dyn std::error::Error + 'static), "failed"));
        assert_eq!(out.matches('\n').count(), 1, "{out:?}");
        assert!(!out.contains('\x1b'), "{out:?}");
    }

    #[test]
    fn plain_text_is_left_alone() {
        let out = logged(|| tracing::info!(stage = "sink", partitions = 3, "sink started"));
        assert!(out.contains(r#"sink started stage="sink" partitions=3"#), "{out:?}");
    }

    #[test]
    fn escapes_line_separators_and_bidi_overrides() {
        assert_eq!(escape_control("a\u{2028}b\u{202e}c\td"), r"a\u{2028}b\u{202e}c\td");
        assert!(matches!(escape_control("plain"), Cow::Borrowed("plain")));
    }
}
