//! The `auth0-rudderstack` command line (being written).
use std::io::{BufWriter, Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    // Placeholder until the CLI lands: `transform [FILE]` reads entries and prints events.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("transform") {
        let stdout = std::io::stdout();
        let out = BufWriter::with_capacity(1 << 20, stdout.lock());
        let input: Box<dyn Read> = match args.get(2) {
            Some(f) => Box::new(std::fs::File::open(f).unwrap()),
            None => Box::new(std::io::stdin().lock()),
        };
        let mut warn = |s: &auth0_rudderstack::input::SetAside| eprintln!("warning: {s}");
        match auth0_rudderstack::input::transform_stream("", input, out, &mut warn) {
            Ok(_) => return ExitCode::SUCCESS,
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "error: {e}");
                return ExitCode::from(4);
            }
        }
    }
    ExitCode::from(2)
}
