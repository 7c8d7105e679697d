//! `edge-verify`: see the crate docs.

use std::{
    io::Write,
    process::ExitCode,
    time::{SystemTime, UNIX_EPOCH},
};

use edgeauth_cli::{judge, load, parse_args, read_token, EXIT_USAGE, USAGE};

fn fail(message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "edge-verify: {message}\n{USAGE}");
    println!(
        "{}",
        serde_json::json!({ "verdict": "error", "error": message })
    );
    ExitCode::from(EXIT_USAGE as u8)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => return fail(&format!("{e:#}")),
    };
    let loaded = match load(&args) {
        Ok(l) => l,
        Err(e) => return fail(&format!("{e:#}")),
    };
    for warning in &loaded.warnings {
        let _ = writeln!(std::io::stderr(), "edge-verify: {warning}");
    }
    let token = match read_token(&mut std::io::stdin().lock()) {
        Ok(t) => t,
        Err(e) => return fail(&format!("{e:#}")),
    };
    let now = args.now.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    });
    let (verdict, code) = judge(&token, &loaded, now, args.signature_only);
    println!("{verdict}");
    ExitCode::from(code as u8)
}
