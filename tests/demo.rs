//! `hearthlink demo` runs to completion with `--duration`, and what it
//! prints shows the assistant never got a name or an email address, and
//! nothing after its revocation.
#![cfg(feature = "demo")]

use std::process::Command;

#[test]
fn demo_walkthrough_runs_and_the_assistant_gets_no_personal_data() {
    let out = Command::new(env!("CARGO_BIN_EXE_hearthlink"))
        .args(["demo", "--duration", "14", "--seed", "3"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run hearthlink demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stderr}\n{stdout}");
    for step in [
        "== 1.", "== 2.", "== 3.", "== 4.", "== 5.", "== 6.", "== done",
    ] {
        assert!(stdout.contains(step), "step {step} missing:\n{stdout}");
    }
    assert!(
        stdout.contains("cloud   ack l-1 ok"),
        "link not acked:\n{stdout}"
    );
    assert!(
        stdout.contains("cloud   ack c-3 rejected revoked"),
        "{stdout}"
    );
    assert!(
        stdout.contains("frames for the assistant after its revocation: 0"),
        "{stdout}"
    );
    // The app sees the owner; the assistant's frames (the line after each
    // ASSISTANT header) never carry a name or an address.
    assert!(
        stdout.contains("Anna Kowalska"),
        "app view lost the owner:\n{stdout}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let mut seen = 0;
    for pair in lines.windows(2) {
        if pair[0].trim_start().starts_with("ASSISTANT") {
            seen += 1;
            let payload = pair[1];
            for bad in [
                "Anna",
                "Kowalska",
                "\"name\"",
                "\"email\"",
                "\"owner\"",
                "@",
            ] {
                assert!(!payload.contains(bad), "assistant got {bad}: {payload}");
            }
        }
    }
    assert!(
        seen >= 4,
        "expected assistant frames in the output:\n{stdout}"
    );
    // Every line fits an 80-column terminal.
    assert!(
        stdout.lines().all(|l| l.chars().count() <= 80),
        "a line is wider than 80 columns:\n{stdout}"
    );
}

#[test]
fn demo_output_is_the_same_for_the_same_seed() {
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_hearthlink"))
            .args(["demo", "--duration", "10", "--seed", "11"])
            .env_remove("RUST_LOG")
            .output()
            .expect("run hearthlink demo");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // Ports differ between runs; the story must not.
        text.lines()
            .filter(|l| !l.starts_with("broker 127.0.0.1:"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}
