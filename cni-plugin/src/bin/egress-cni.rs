//! The `egress-cni` binary: reads `CNI_*` and stdin, runs the verb, and prints the result or the
//! spec's error JSON on stdout (logs never go there).

use std::io::Write;
use std::process::ExitCode;

use aws_cni::cni::config::read_request;
use aws_cni::egress::run;

fn main() -> ExitCode {
    let stdin = read_request(std::io::stdin().lock());
    let outcome = run(|k| std::env::var(k).ok(), stdin);
    let (body, code) = match outcome.result {
        Ok(None) => (String::new(), ExitCode::SUCCESS),
        Ok(Some(json)) => (json.to_string(), ExitCode::SUCCESS),
        Err(e) => (e.to_reply(outcome.version).to_string(), ExitCode::FAILURE),
    };
    if body.is_empty() {
        return code;
    }
    let mut out = std::io::stdout().lock();
    match out
        .write_all(body.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
    {
        Ok(()) => code,
        Err(_) => ExitCode::FAILURE,
    }
}
