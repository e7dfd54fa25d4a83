//! Logs on stderr, through a subscriber built on first use.
//!
//! Warnings by default, `-v`/`-q` move the level, `CONCURIO_LOG` (an env-filter directive)
//! applies when neither is given. No colour unless stderr is a terminal and `NO_COLOR` is
//! unset.
//!
//! Why built on first use: tracing-subscriber's registry zeroes ~28 KiB when it is created
//! (seven page faults), and its formatter's code is more first touches, in every process;
//! a `concurio run` cache hit logs nothing at the default level. So the global subscriber
//! is [`Lazy`]: it knows the level, which is all a callsite's interest needs, and builds the
//! formatter when the first event or span at that level comes. `CONCURIO_LOG` asks for
//! logs: its filter is built at once.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::{Interest, Subscriber};
use tracing::{Dispatch, Event, Metadata};
use tracing_core::span::Current;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::{DefaultFields, Format, Full};
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::Verbosity;

/// Installs the global subscriber (and, through it, the bridge from the `log` crate).
pub fn init(Verbosity { verbose, quiet }: Verbosity) {
    let level = match (quiet, verbose) {
        (2.., _) => LevelFilter::OFF,
        (1, _) => LevelFilter::ERROR,
        (_, 0) => LevelFilter::WARN,
        (_, 1) => LevelFilter::INFO,
        (_, 2) => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let from_env = (verbose == 0 && quiet == 0)
        .then(|| std::env::var_os("CONCURIO_LOG"))
        .flatten()
        .filter(|v| !v.is_empty())
        .and_then(|_| tracing_subscriber::EnvFilter::try_from_env("CONCURIO_LOG").ok());
    // Fails only if a subscriber is already installed: then that one logs.
    let _ = match from_env {
        Some(filter) => formatter().with_env_filter(filter).finish().try_init(),
        None => Lazy {
            level,
            real: OnceLock::new(),
        }
        .try_init(),
    };
}

/// The formatter's builder, as configured here.
type Formatter = tracing_subscriber::fmt::SubscriberBuilder<
    DefaultFields,
    Format<Full, ()>,
    LevelFilter,
    fn() -> std::io::Stderr,
>;

/// The formatter every subscriber here uses.
fn formatter() -> Formatter {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr as fn() -> std::io::Stderr)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .with_target(false)
        .without_time()
}

/// A level filter that builds the formatter the first time it lets something through,
/// then hands everything to it.
struct Lazy {
    level: LevelFilter,
    real: OnceLock<Dispatch>,
}

impl Lazy {
    fn real(&self) -> &Dispatch {
        self.real
            .get_or_init(|| Dispatch::new(formatter().with_max_level(self.level).finish()))
    }
}

impl Subscriber for Lazy {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if self.enabled(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.level
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.level)
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.real().new_span(span)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        self.real().record(span, values);
    }

    fn record_follows_from(&self, span: &Id, follows: &Id) {
        self.real().record_follows_from(span, follows);
    }

    fn event(&self, event: &Event<'_>) {
        self.real().event(event);
    }

    fn enter(&self, span: &Id) {
        self.real().enter(span);
    }

    fn exit(&self, span: &Id) {
        self.real().exit(span);
    }

    fn clone_span(&self, id: &Id) -> Id {
        self.real().clone_span(id)
    }

    fn try_close(&self, id: Id) -> bool {
        self.real().try_close(id)
    }

    fn current_span(&self) -> Current {
        // Before anything is built, no span can have been entered.
        self.real
            .get()
            .map_or_else(Current::none, Dispatch::current_span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_formatter_is_built_by_the_first_event_at_the_level_only() {
        let dispatch = Dispatch::new(Lazy {
            level: LevelFilter::WARN,
            real: OnceLock::new(),
        });
        let built = |d: &Dispatch| {
            d.downcast_ref::<Lazy>()
                .is_some_and(|lazy| lazy.real.get().is_some())
        };
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::debug!("below the level");
            tracing::info!("below the level");
        });
        assert!(!built(&dispatch), "built for events it does not log");
        tracing::dispatcher::with_default(&dispatch, || tracing::warn!("at the level"));
        assert!(built(&dispatch), "not built for a warning");
    }
}
