//! The template's invariants as policy-as-code (`infra/policy/template.guard`, AWS CloudFormation
//! Guard): the real template passes every rule, and breaking it once per rule — the way a later
//! change could — makes Guard refuse it, naming that rule and no other.

use std::path::PathBuf;
use std::process::Command;

/// The `cfn-guard` that `infra/tools.sh` installs into the project cache.
fn guard() -> PathBuf {
    let binary = localenv::cache_dir().join("tools/guard/bin/cfn-guard");
    assert!(binary.exists(), "{} is missing: run infra/tools.sh (./dev test does)", binary.display());
    binary
}

/// The rules Guard reports failed for `template`.
fn failed_rules(template: &str) -> Vec<String> {
    let dir = std::env::temp_dir().join(format!("template-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("template-{}.yaml", template.len()));
    std::fs::write(&path, template).unwrap();
    let rules = localenv::repo_root().join("infra/policy/template.guard");
    let out = Command::new(guard())
        .args(["validate", "--show-summary", "fail", "-r"])
        .arg(&rules)
        .arg("-d")
        .arg(&path)
        .output()
        .expect("cfn-guard runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let failed: Vec<String> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("template.guard/"))
        .filter(|rest| rest.trim_end().ends_with("FAIL"))
        .map(|rest| rest.split_whitespace().next().unwrap_or_default().to_owned())
        .collect();
    // Guard exits 19 when a rule fails, 0 when all pass: anything else is Guard failing.
    match out.status.code() {
        Some(0) => assert!(failed.is_empty(), "{text}"),
        Some(19) => assert!(!failed.is_empty(), "{text}"),
        other => panic!("cfn-guard ended {other:?}: {text}\n{}", String::from_utf8_lossy(&out.stderr)),
    }
    failed
}

/// One breakage per rule: (rule, text found in the template, what replaces it).
const BREAKAGES: [(&str, &str, &str); 13] = [
    (
        "retained_tables_have_generated_names",
        "  IdempotencyTable:\n    Type: AWS::DynamoDB::Table\n    DeletionPolicy: Retain\n    UpdateReplacePolicy: Retain\n    Properties:\n",
        "  IdempotencyTable:\n    Type: AWS::DynamoDB::Table\n    DeletionPolicy: Retain\n    UpdateReplacePolicy: Retain\n    Properties:\n      TableName: payments-idempotency\n",
    ),
    (
        "secrets_have_generated_names",
        "      Description: API key of the payment provider, sent as a bearer token.\n",
        "      Name: payments/provider-api-key\n      Description: API key of the payment provider, sent as a bearer token.\n",
    ),
    (
        "no_reserved_concurrency_unless_asked",
        "ReservedConcurrentExecutions: !If [ReservesCompleter, 1, !Ref \"AWS::NoValue\"]",
        "ReservedConcurrentExecutions: 1",
    ),
    (
        "provider_url_is_required",
        "  ProviderBaseUrl:\n    Type: String\n",
        "  ProviderBaseUrl:\n    Type: String\n    Default: https://api.payment-provider.example\n",
    ),
    ("processor_timeout_fits_a_provider_call", "  ProcessorTimeout10FitsAProviderCall:", "  SomeOtherRule:"),
    ("large_batches_need_a_window", "  LargeBatchesNeedABatchingWindow:", "  SomeOtherRule:"),
    (
        "no_wildcard_actions",
        "Action: [sqs:ReceiveMessage, sqs:DeleteMessage, sqs:GetQueueAttributes, sqs:GetQueueUrl, sqs:ChangeMessageVisibility]\n                Resource: !GetAtt PaymentsQueue.Arn",
        "Action: [\"sqs:*\"]\n                Resource: !GetAtt PaymentsQueue.Arn",
    ),
    ("only_xray_takes_any_resource", "Resource: !Sub \"${IdempotencyTable.Arn}/index/recovery\"", "Resource: \"*\""),
    (
        "idempotency_items_are_restricted_by_prefix",
        "                Condition: { \"ForAllValues:StringLike\": { \"dynamodb:LeadingKeys\": [\"process#*\"] } }\n              - Effect: Allow # the circuit breaker's item",
        "              - Effect: Allow # the circuit breaker's item",
    ),
    ("only_the_processor_touches_the_breaker", "[\"intake#*\"] } }", "[\"intake#*\", \"breaker#*\"] } }"),
    ("redrives_are_allowed_by_queue", "redrivePermission: byQueue", "redrivePermission: allowAll"),
    (
        "the_scheduler_role_is_bound_to_its_schedule",
        "                aws:SourceArn:",
        "                aws:SourceVpce:",
    ),
    ("problem_types_resolve", "          PROBLEM_TYPE_BASE: !If", "          PROBLEM_TYPE_BASE_UNUSED: !If"),
];

#[test]
fn the_template_keeps_every_invariant_and_breaking_one_is_refused_by_its_rule() {
    let template = std::fs::read_to_string(localenv::repo_root().join("template.yaml")).unwrap();
    assert_eq!(failed_rules(&template), Vec::<String>::new(), "the template as it is passes every rule");
    let rules = std::fs::read_to_string(localenv::repo_root().join("infra/policy/template.guard")).unwrap();
    assert_eq!(rules.matches("\nrule ").count(), BREAKAGES.len(), "one breakage per rule");
    for (rule, found, replaced) in BREAKAGES {
        assert_eq!(template.matches(found).count(), 1, "{rule}: the template holds {found:?} once");
        let broken = template.replacen(found, replaced, 1);
        assert_eq!(failed_rules(&broken), vec![rule.to_owned()], "breaking {rule} is refused by it alone");
    }
}

/// The template as CloudFormation reads it (JSON), through cfn-lint's loader (which knows the
/// short-form tags), from the SAM CLI that `infra/tools.sh` installs.
fn template_json() -> serde_json::Value {
    let python = localenv::cache_dir().join("tools/sam/bin/python");
    let out = Command::new(&python)
        .args(["-c", "import json, sys; from cfnlint.decode import cfn_yaml; print(json.dumps(cfn_yaml.loads(sys.stdin.read())))"])
        .stdin(std::fs::File::open(localenv::repo_root().join("template.yaml")).unwrap())
        .output()
        .expect("the SAM CLI's Python runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A rule function's value, as CloudFormation evaluates `Rules` (the functions the template
/// uses; any other is refused rather than guessed at).
fn evaluate(expression: &serde_json::Value, parameters: &std::collections::HashMap<&str, &str>) -> serde_json::Value {
    use serde_json::Value;
    let Value::Object(call) = expression else {
        return match expression {
            Value::Array(items) => Value::Array(items.iter().map(|i| evaluate(i, parameters)).collect()),
            other => other.clone(),
        };
    };
    let (function, arguments) = call.iter().next().expect("a function");
    let args = |i: usize| evaluate(&arguments[i], parameters);
    match function.as_str() {
        "Ref" => Value::from(parameters[arguments.as_str().unwrap()]),
        "Fn::Equals" => Value::Bool(args(0) == args(1)),
        "Fn::Contains" => Value::Bool(args(0).as_array().unwrap().contains(&args(1))),
        "Fn::Not" => Value::Bool(!args(0).as_bool().unwrap()),
        other => panic!("the template's Rules use {other}, which this evaluator does not know"),
    }
}

/// Whether CloudFormation would accept a stack with `parameters` (the template's defaults for
/// the rest): every parameter's constraints, then every rule whose condition holds.
fn deployable(template: &serde_json::Value, overrides: &[(&str, &str)]) -> bool {
    let mut parameters = std::collections::HashMap::new();
    for (name, spec) in template["Parameters"].as_object().unwrap() {
        if let Some(default) = spec["Default"].as_str() {
            parameters.insert(name.as_str(), default);
        }
    }
    parameters.extend(overrides.iter().copied());
    for (name, spec) in template["Parameters"].as_object().unwrap() {
        let Some(value) = parameters.get(name.as_str()) else { return false };
        if let Some(pattern) = spec["AllowedPattern"].as_str()
            && !regex::Regex::new(pattern).unwrap().is_match(value)
        {
            return false;
        }
        if let Some(allowed) = spec["AllowedValues"].as_array()
            && !allowed.contains(&serde_json::Value::from(*value))
        {
            return false;
        }
        let number = value.parse::<f64>().ok();
        let within = |bound: &str, ok: fn(f64, f64) -> bool| match (
            spec[bound].as_f64().or_else(|| spec[bound].as_str()?.parse().ok()),
            number,
        ) {
            (Some(limit), Some(n)) => ok(n, limit),
            _ => true,
        };
        if !within("MinValue", |n, l| n >= l) || !within("MaxValue", |n, l| n <= l) {
            return false;
        }
    }
    template["Rules"].as_object().unwrap().values().all(|rule| {
        let applies = rule.get("RuleCondition").is_none_or(|c| evaluate(c, &parameters) == true);
        !applies || rule["Assertions"].as_array().unwrap().iter().all(|a| evaluate(&a["Assert"], &parameters) == true)
    })
}

/// What CloudFormation refuses at deploy time, evaluated here from the template itself: LocalStack
/// evaluates neither `Rules` nor `AllowedPattern` (measured: a stack with a 10 s processor and a
/// 10 s provider timeout was created), so its deploys cannot show it.
#[test]
fn the_template_refuses_settings_that_cannot_work_before_anything_is_created() {
    let template = template_json();
    let provider = ("ProviderBaseUrl", "https://api.provider.example");
    assert!(deployable(&template, &[provider]), "the defaults and a provider deploy");
    assert!(!deployable(&template, &[]), "no provider: refused");
    for url in ["http://api.provider.example", "ftp://x", "https://", "https://a b"] {
        assert!(!deployable(&template, &[("ProviderBaseUrl", url)]), "{url}");
    }
    assert!(deployable(&template, &[("ProviderBaseUrl", "http://127.0.0.1:9100")]), "a local simulator");
    // Every processor timeout against every provider timeout: deployable exactly when a record
    // fits (the provider timeout + the 2 s lease margin + 3 s for its claim and settlement).
    let timeouts = template["Parameters"]["ProcessorTimeoutSeconds"]["AllowedValues"].as_array().unwrap().clone();
    let providers = template["Parameters"]["ProviderTimeoutMillis"]["AllowedValues"].as_array().unwrap().clone();
    for timeout in &timeouts {
        for provider_ms in &providers {
            let (t, p) = (timeout.as_str().unwrap(), provider_ms.as_str().unwrap());
            let fits = t.parse::<u64>().unwrap() * 1000 >= p.parse::<u64>().unwrap() + 5000;
            let overrides = [provider, ("ProcessorTimeoutSeconds", t), ("ProviderTimeoutMillis", p)];
            assert_eq!(deployable(&template, &overrides), fits, "processor {t} s, provider {p} ms");
        }
    }
    let batch = |size, window| {
        deployable(&template, &[provider, ("BatchSize", size), ("MaximumBatchingWindowInSeconds", window)])
    };
    assert!(batch("10", "0") && batch("100", "1") && !batch("11", "0"), "over 10 only with a window");
    for base in ["https://docs.example.com/problems/", "https://docs.example.com/problems.md#"] {
        assert!(deployable(&template, &[provider, ("ProblemTypeBaseUrl", base)]), "{base}");
    }
    for base in ["https://docs.example.com/problems", "http://docs.example.com/"] {
        assert!(!deployable(&template, &[provider, ("ProblemTypeBaseUrl", base)]), "{base}");
    }
    assert!(!deployable(&template, &[provider, ("CompleterReservedConcurrency", "2")]));
}
