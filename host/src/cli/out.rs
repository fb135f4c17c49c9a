//! Standard output for the command line. A reader that goes away (`skiff run | head`) ends the
//! process quietly with the status a shell gives a command stopped by SIGPIPE (141), instead
//! of the panic `println!` gives.

use std::io::Write as _;

/// Writes one line to standard output.
pub fn line(args: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        closed(e);
    }
}

fn closed(e: std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(141);
    }
    eprintln!("skiff: writing to standard output failed: {e}");
    std::process::exit(74);
}

/// `println!` that ends the process quietly when standard output is closed.
#[macro_export]
macro_rules! outln {
    () => { $crate::cli::out::line(format_args!("")) };
    ($($t:tt)*) => { $crate::cli::out::line(format_args!($($t)*)) };
}

/// Text that came from a component or a registry (a step's description, an annotation), made
/// inert before the terminal shows it: no escape sequences, no control characters.
pub fn inert(text: &str) -> std::borrow::Cow<'_, str> {
    skiff_pipeline::inert::terminal_text(text, false)
}
