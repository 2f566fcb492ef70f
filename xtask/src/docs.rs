//! The docs stay true. Every `./dev` command line in the README and `docs/` works as written,
//! every relative link between the pages (and its `#anchor`) leads somewhere, and the figures
//! that the code decides — the demo's fault mix, the bill's prices, the benchmark's targets —
//! are the ones the pages state: change the code and this test names the page to change.

use std::path::{Path, PathBuf};

use clap::Parser;
use clap::error::ErrorKind;

use super::Cli;

const DEV: &str = include_str!("../../dev");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the repository").to_owned()
}

/// The pages a reader follows: the README, `docs/`, and the crates' and example's READMEs.
fn pages() -> Vec<(PathBuf, String)> {
    let root = repo();
    let mut paths = vec![root.join("README.md")];
    for dir in ["docs", "shared", "examples"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("the folder exists").flatten() {
            let path = entry.path();
            if dir == "docs" && path.extension().is_some_and(|e| e == "md") {
                paths.push(path);
            } else if path.join("README.md").is_file() {
                paths.push(path.join("README.md"));
            }
        }
    }
    paths.sort();
    paths.into_iter().map(|p| (p.clone(), std::fs::read_to_string(&p).expect("a readable page"))).collect()
}

fn page(name: &str) -> String {
    let text = std::fs::read_to_string(repo().join(name)).expect("the page exists");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The words after `./dev` of every command line in `text`.
fn command_lines(text: &str) -> Vec<Vec<String>> {
    let mut lines = Vec::new();
    for line in text.lines() {
        for (at, _) in line.match_indices("./dev ") {
            let rest = &line[at + "./dev ".len()..];
            // Up to the end of an inline code span, a shell comment or the next command.
            let end = ["`", " #", ";", "|"].iter().filter_map(|stop| rest.find(stop)).min().unwrap_or(rest.len());
            let command = rest[..end].trim();
            if command.contains('…') || command.is_empty() {
                continue; // "./dev ops …": a mention, not a command line.
            }
            lines.push(words(command));
        }
    }
    lines
}

/// Shell words (single and double quotes), with the pages' placeholders filled in.
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

fn check_command(words: &[String], page: &Path) {
    let shown = format!("{}: `./dev {}`", page.display(), words.join(" "));
    match words[0].as_str() {
        "demo" | "up" | "ops" | "bench" => {
            let parsed = Cli::try_parse_from(std::iter::once("xtask".to_owned()).chain(words.iter().cloned()));
            if let Err(e) = parsed {
                assert_eq!(e.kind(), ErrorKind::DisplayHelp, "{shown}: {e}");
            }
        }
        "localstack" => {
            for action in words[1].split('|') {
                assert!(["setup", "start", "stop", "status"].contains(&action), "{shown}");
            }
            assert!(DEV.contains("\n  localstack)\n"));
        }
        script @ ("test" | "build" | "deploy" | "aws") => {
            assert!(DEV.contains(&format!("\n  {script})\n")), "{shown}");
        }
        other => panic!("{shown}: the script knows no `{other}`"),
    }
}

#[test]
fn every_command_line_in_the_readme_and_docs_works_as_written() {
    let mut checked = 0;
    for (path, text) in pages() {
        for words in command_lines(&text) {
            check_command(&words, &path);
            checked += 1;
        }
    }
    assert!(checked > 40, "the pages show their commands ({checked} found)");
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || [' ', '-', '_'].contains(c))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// A Markdown page's lines outside its code blocks.
fn prose(text: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    text.lines().filter(move |line| {
        if line.starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// The anchors of a Markdown page's headings.
fn anchors(text: &str) -> Vec<String> {
    prose(text).filter(|line| line.starts_with('#')).map(|line| anchor(line.trim_start_matches('#'))).collect()
}

/// The targets of a page's Markdown links, as written.
fn links(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in prose(text) {
        for (at, _) in line.match_indices("](") {
            let rest = &line[at + 2..];
            if let Some(end) = rest.find(')') {
                found.push(rest[..end].to_owned());
            }
        }
    }
    found
}

#[test]
fn every_relative_link_between_the_pages_leads_somewhere() {
    let mut checked = 0;
    for (path, text) in pages() {
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (file, fragment) = link.split_once('#').map_or((link.as_str(), None), |(f, a)| (f, Some(a)));
            let target = if file.is_empty() { path.clone() } else { path.parent().unwrap().join(file) };
            assert!(target.exists(), "{}: the link `{link}` leads nowhere", path.display());
            if let Some(fragment) = fragment.filter(|_| target.extension().is_some_and(|e| e == "md")) {
                let headings = anchors(&std::fs::read_to_string(&target).unwrap());
                assert!(
                    headings.iter().any(|a| a == fragment),
                    "{}: no heading `#{fragment}` in {}",
                    path.display(),
                    target.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 30, "the pages link to each other ({checked} links found)");
}

/// A share as the pages write it: whole percent from 10 % up, one decimal below.
fn percent(share: f64) -> String {
    let p = share * 100.0;
    if p >= 10.0 { format!("{p:.0} %") } else { format!("{p:.1} %") }
}

#[test]
fn the_fault_mix_is_the_one_the_pages_describe() {
    let mix = |rate: Option<f64>| crate::pipeline::provider_fault_mix(rate, false);
    let default = mix(None);
    let failing = |r: &provider_simulator::FaultRates| r.total() - r.latency;
    let design = page("docs/design.md");
    let stated =
        format!("{} of provider calls failing and {:.0} % slow", percent(failing(&default)), default.latency * 100.0);
    assert!(design.contains(&stated), "docs/design.md should say the default mix is \"{stated}\"");
    let harsh = mix(Some(0.5));
    let stated = format!(
        "`--fault-rate 0.5` scales the default mix: about {} of provider calls fail ({} commit and then time out) and {} answer slowly but succeed",
        percent(failing(&harsh)),
        percent(harsh.commit_then_timeout),
        percent(harsh.latency)
    );
    assert!(design.contains(&stated), "docs/design.md should say \"{stated}\"");
}

#[test]
fn the_bill_uses_the_prices_the_benchmark_page_names() {
    let prices = crate::bench::cost::US_EAST_1;
    let bench = page("docs/benchmark.md");
    for stated in [
        format!("${} per GB-s", prices.lambda_gb_second),
        format!("${:.2} per million requests", prices.lambda_request * 1e6),
        format!("${:.3} per million write", prices.dynamodb_write * 1e6),
        format!("${:.3} per million read", prices.dynamodb_read * 1e6),
        format!("SQS ${:.2} per million requests", prices.sqs_request * 1e6),
        format!("CloudWatch Logs ${:.2} per GB", prices.logs_gb),
    ] {
        assert!(bench.contains(&stated), "docs/benchmark.md should name the price \"{stated}\"");
    }
    // The completer's idle sweep: one query per shard and operation, every minute, a month long.
    let reads = 2.0 * f64::from(lambda_idempotency::dynamodb::attributes::RECOVERY_SHARDS) * 60.0 * 24.0 * 30.0;
    let stated = format!(
        "an idle sweep is {} queries a minute, about {:.2} million read request units a month (~${:.2} at ${:.3} per million)",
        2 * lambda_idempotency::dynamodb::attributes::RECOVERY_SHARDS,
        reads / 1e6,
        reads * prices.dynamodb_read,
        prices.dynamodb_read * 1e6
    );
    assert!(page("docs/design.md").contains(&stated), "docs/design.md should say \"{stated}\"");
}

#[test]
fn the_benchmark_page_states_every_target_the_benchmark_checks() {
    let bench = page("docs/benchmark.md");
    for target in crate::bench::report::TARGETS {
        assert!(bench.contains(target), "docs/benchmark.md should state the target \"{target}\"");
    }
}

/// The configuration table's documented default, as each function's configuration reads it:
/// setting a variable to the default the table names must leave the configuration as if it were
/// unset. (Variables with no default, or a default that is a sentence, are left out.)
#[test]
fn every_default_in_the_configuration_table_is_the_code_s() {
    use std::collections::HashMap;
    let required: HashMap<&str, &str> = [
        ("IDEMPOTENCY_TABLE", "t"),
        ("FAILURES_TABLE", "f"),
        ("PAYMENTS_QUEUE_URL", "https://sqs.example/q"),
        ("DEAD_LETTER_QUEUE_URL", "https://sqs.example/dlq"),
        ("PROVIDER_BASE_URL", "https://provider.example"),
    ]
    .into();
    type Read = fn(&HashMap<String, String>) -> String;
    fn env(vars: &HashMap<String, String>) -> lambda_support::env::Env<impl Fn(&str) -> Option<String> + '_> {
        lambda_support::env::Env::from_lookup(|name| vars.get(name).cloned())
    }
    let functions: [(&str, Read); 4] = [
        ("processor", |v| format!("{:?}", processor::ProcessorConfig::from_env(&env(v)))),
        ("intake", |v| format!("{:?}", intake::IntakeConfig::from_env(&env(v)))),
        ("dlq-consumer", |v| format!("{:?}", dlq_consumer::DlqConsumerConfig::from_env(&env(v)))),
        ("completer", |v| format!("{:?}", completer::CompleterConfig::from_env(&env(v)))),
    ];
    let text = std::fs::read_to_string(repo().join("docs/deploying.md")).unwrap();
    let mut checked = 0;
    for row in text.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
        let names: Vec<&str> = cells[0].split(", ").map(|n| n.trim_matches('`')).collect();
        let defaults: Vec<&str> = cells[2].split(", ").collect();
        if names.len() != defaults.len() {
            continue;
        }
        for (name, default) in names.iter().zip(defaults) {
            let value = default.trim_matches('`');
            let plain = value.chars().all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c));
            if default == "—" || !plain || value.is_empty() {
                continue;
            }
            for (function, read) in &functions {
                if !(cells[1] == "all" || cells[1].split(", ").any(|f| f == *function)) {
                    continue;
                }
                let base: HashMap<String, String> =
                    required.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
                let mut set = base.clone();
                set.insert((*name).to_owned(), value.to_owned());
                let (unset, with_default) = (read(&base), read(&set));
                assert!(unset.starts_with("Ok"), "{function} needs more than the test gives it: {unset}");
                assert_eq!(with_default, unset, "docs/deploying.md: {name}'s default for {function} is not {value}");
                checked += 1;
            }
        }
    }
    assert!(checked > 30, "the table's defaults are checked ({checked})");
}
