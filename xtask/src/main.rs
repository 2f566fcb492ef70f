//! `cargo xtask …`: the local pipeline (the main job), the operators' failure tools, and the
//! benchmark. See `cargo xtask --help`.

mod bench;
mod ops;
mod pipeline;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Safe asynchronous payments on AWS Lambda: project commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole pipeline locally, end to end, under faults; prints a reconciliation and exits
    /// non-zero if any payment was charged twice or lost.
    Demo(pipeline::DemoArgs),
    /// Brings the pipeline up (LocalStack, functions, pollers, simulator) and keeps it running
    /// for manual use (curl) until Ctrl-C.
    Up(pipeline::UpArgs),
    /// Operators' tools over a deployed stack: failure records, redrive, stuck intakes, the
    /// provider's circuit breaker.
    Ops(ops::Ops),
    /// The processor's cost per message against Powertools for AWS Lambda (Python).
    Bench(bench::BenchArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => pipeline::demo(args).await,
        Command::Up(args) => pipeline::up(args).await,
        Command::Ops(command) => ops::run(command).await,
        Command::Bench(args) => bench::bench(args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// The README's command lines must work exactly as written: every `./dev demo|up|ops|bench …`
/// line it shows parses with this CLI (placeholders such as `<url>` filled in), and every other
/// `./dev` command it shows is one the script knows.
#[cfg(test)]
mod readme_commands {
    use super::Cli;
    use clap::Parser;
    use clap::error::ErrorKind;

    const README: &str = include_str!("../../README.md");
    const DEV: &str = include_str!("../../dev");

    /// The words after `./dev` of every command line in the README.
    fn command_lines() -> Vec<Vec<String>> {
        let mut lines = Vec::new();
        for line in README.lines() {
            for (at, _) in line.match_indices("./dev ") {
                let rest = &line[at + "./dev ".len()..];
                // Up to the end of an inline code span, a shell comment or the next command.
                let end = ["`", " #", ";"].iter().filter_map(|stop| rest.find(stop)).min().unwrap_or(rest.len());
                let command = rest[..end].trim();
                if command.contains('…') {
                    continue; // "./dev ops …": a mention, not a command line.
                }
                lines.push(words(command));
            }
        }
        lines
    }

    /// Shell words (single and double quotes), with the README's placeholders filled in.
    fn words(command: &str) -> Vec<String> {
        let filled = command
            .replace("<url>", "http://127.0.0.1:9")
            .replace("<message-id>", "6f1c1b7e-3e59-4c43-9a53-1f0e2b8d7c10")
            .replace("$seed", "1")
            .replace(['[', ']'], "");
        let (mut words, mut word, mut quote) = (Vec::new(), String::new(), None);
        for c in filled.chars() {
            match (quote, c) {
                (None, '\'' | '"') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, c) if c.is_whitespace() => {
                    if !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                }
                (_, c) => word.push(c),
            }
        }
        if !word.is_empty() {
            words.push(word);
        }
        words
    }

    #[test]
    fn every_command_line_in_the_readme_works_as_written() {
        let lines = command_lines();
        assert!(lines.len() > 20, "the README shows its commands: {lines:?}");
        for words in lines {
            match words[0].as_str() {
                "demo" | "up" | "ops" | "bench" => {
                    let parsed = Cli::try_parse_from(std::iter::once("xtask".to_owned()).chain(words.clone()));
                    if let Err(e) = parsed {
                        assert_eq!(e.kind(), ErrorKind::DisplayHelp, "`./dev {}`: {e}", words.join(" "));
                    }
                }
                "localstack" => {
                    for action in words[1].split('|') {
                        assert!(["setup", "start", "stop", "status"].contains(&action), "./dev localstack {action}");
                    }
                    assert!(DEV.contains("\n  localstack)\n"));
                }
                script @ ("test" | "build" | "deploy" | "aws") => assert!(DEV.contains(&format!("\n  {script})\n"))),
                other => panic!("the README shows `./dev {other}`, which the script does not know"),
            }
        }
    }
}
