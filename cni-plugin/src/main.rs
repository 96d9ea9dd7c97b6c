//! The `aws-cni` binary: reads `CNI_*` and stdin, runs the verb, and prints the result or the
//! spec's error JSON on stdout (logs never go there).

use std::io::Write;
use std::process::ExitCode;

use aws_cni::cni::config::read_request;
use aws_cni::plugin::run;

fn main() -> ExitCode {
    let stdin = read_request(std::io::stdin().lock());
    let outcome = run(|k| std::env::var(k).ok(), stdin);
    let (body, code) = match outcome.result {
        Ok(None) => return ExitCode::SUCCESS,
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
    let mut out = std::io::stdout().lock();
    if out
        .write_all(body.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    code
}
