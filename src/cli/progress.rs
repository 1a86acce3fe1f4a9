//! Progress on stderr for steps that take more than a moment. indicatif draws nothing when stderr is
//! not a terminal (CI logs, pipes), so results on stdout and logs stay clean; `--no-color` (or
//! `NO_COLOR`) drops the colours.

use std::borrow::Cow;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::output::color_allowed as color;

/// A spinner with `msg` and the elapsed time, ticking on its own; `finish_and_clear` it when done.
pub fn spinner(msg: impl Into<Cow<'static, str>>) -> ProgressBar {
    let template = if color() {
        "{spinner:.cyan} {msg} ({elapsed})"
    } else {
        "{spinner} {msg} ({elapsed})"
    };
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    pb.set_style(ProgressStyle::with_template(template).expect("valid template"));
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// A bar of `len` steps counting `what` (e.g. "requests").
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let template = if color() {
        format!("{{bar:30.cyan/blue}} {{pos}}/{{len}} {what} ({{elapsed}}, {{eta}} left) {{msg}}")
    } else {
        format!("{{bar:30}} {{pos}}/{{len}} {what} ({{elapsed}}, {{eta}} left) {{msg}}")
    };
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    pb.set_style(ProgressStyle::with_template(&template).expect("valid template"));
    pb
}
