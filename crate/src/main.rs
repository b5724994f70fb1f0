//! The `webdiffusion` command line. Every failure prints one message naming the file, key
//! or parameter at fault and exits with status 2; so does a panic (a bug, or the GPU
//! driver failing), as one line without a backtrace.

mod cli;

use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{CommandFactory, FromArgMatches};

const FAILED: u8 = 2;

fn main() -> ExitCode {
    panic::set_hook(Box::new(report_panic));
    quiet_headless_vulkan();
    // The matches are kept: which --controlnet an option belongs to is its position.
    let matches = cli::Cli::command().get_matches();
    let args = match cli::Cli::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    // A panic on this thread unwinds to here (the hook has printed it), dropping what
    // `run` held: temporary output files and folders are removed on the way.
    match panic::catch_unwind(AssertUnwindSafe(|| cli::run(args, &matches))) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(FAILED)
        }
        Err(_) => ExitCode::from(FAILED),
    }
}

/// Without a desktop session (no `XDG_RUNTIME_DIR`), Mesa's Vulkan device-selection layer
/// tries to reach a Wayland display and prints four error lines on stderr; it only orders
/// GPUs, which wgpu does itself, so it is turned off there.
fn quiet_headless_vulkan() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none()
        && std::env::var_os("NODEVICE_SELECT").is_none()
    {
        // SAFETY: called first thing in `main`, before any other thread exists.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

/// Prints the first panic as one `error:` line. A panic on another thread (a backend's
/// worker) may never reach the main thread, so the process exits from here.
fn report_panic(info: &panic::PanicHookInfo) {
    static REPORTED: AtomicBool = AtomicBool::new(false);
    if !REPORTED.swap(true, Ordering::SeqCst) {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown failure".into());
        let mut line = message.split_whitespace().collect::<Vec<_>>().join(" ");
        if line.chars().count() > 300 {
            line = line.chars().take(300).collect::<String>() + "…";
        }
        let place = info.location().map_or(String::new(), |l| {
            format!(" (at {}:{})", l.file(), l.line())
        });
        eprintln!("error: internal failure: {line}{place}");
    }
    if std::thread::current().name() != Some("main") {
        std::process::exit(FAILED.into());
    }
}
