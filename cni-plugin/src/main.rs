//! The `aws-cni` binary: reads `CNI_*` and stdin, runs the verb, and prints the result or the
//! spec's error JSON on stdout (logs never go there).

use std::io::Write;
use std::process::ExitCode;

use aws_cni::cni::config::read_request;
use aws_cni::plugin::run;
use aws_cni::timing;

fn main() -> ExitCode {
    timing::start();
    let stdin = read_request(std::io::stdin().lock());
    timing::mark("stdin");
    let outcome = run(|k| std::env::var(k).ok(), stdin);
    let ok = outcome.result.is_ok();
    let (body, code) = match outcome.result {
        Ok(None) => (String::new(), ExitCode::SUCCESS),
        Ok(Some(json)) => (json.to_string(), ExitCode::SUCCESS),
        Err(e) => {
            let reply = e.to_reply(outcome.version);
            let body = serde_json::to_string(&reply).unwrap_or_else(|_| {
                format!(
                    r#"{{"cniVersion":"{}","code":{},"msg":"error","details":""}}"#,
                    reply.cni_version, reply.code
                )
            });
            (body, ExitCode::FAILURE)
        }
    };
    let code = if body.is_empty() {
        code
    } else {
        let mut out = std::io::stdout().lock();
        if out
            .write_all(body.as_bytes())
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush())
            .is_err()
        {
            ExitCode::FAILURE
        } else {
            code
        }
    };
    timing::mark("print");
    if let Some(path) = std::env::var_os(timing::TIMING_ENV) {
        let line = timing::to_json(
            &timing::snapshot(),
            &std::env::var("CNI_COMMAND").unwrap_or_default(),
            &std::env::var("CNI_CONTAINERID").unwrap_or_default(),
            ok,
            timing::vm_hwm_kib(),
        );
        // Timing is diagnostics: it never changes the outcome of the CNI operation.
        if let Err(e) = timing::append(std::path::Path::new(&path), &line) {
            tracing::warn!(error = %e, "cannot write the phase timing line");
        }
    }
    code
}
