//! Least privilege, proven by the calls made: each function's recorded AWS calls
//! ([`crate::aws_proxy`]) checked against the role the template gives it, as CloudFormation
//! resolved it (read back from the stack's IAM roles). A call no statement allows is a
//! permission AWS would refuse (LocalStack enforces none); a grant no call used is a permission
//! to remove, unless the Lambda platform uses it on the function's behalf (logs, X-Ray).
//!
//! The evaluation covers what the template's policies use: `Allow` statements, actions and
//! resources with `*` and `?` wildcards, and the condition `ForAllValues:StringLike` on
//! `dynamodb:LeadingKeys`. A policy using anything else is refused, so that nothing it says is
//! silently ignored.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::aws_proxy::AwsCall;

/// The role of each function, by its logical id in the template.
pub const ROLES: [(&str, &str); 4] = [
    ("intake", "IntakeRole"),
    ("processor", "ProcessorRole"),
    ("dlq-consumer", "DlqConsumerRole"),
    ("completer", "CompleterRole"),
];

/// Services a function's role grants for the Lambda platform to use on its behalf (log delivery,
/// the X-Ray daemon): no SDK call of the function ever shows them.
const PLATFORM_SERVICES: [&str; 2] = ["logs:", "xray:"];

/// One `Allow` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Action patterns (`dynamodb:GetItem`, `sqs:*`).
    pub actions: Vec<String>,
    /// Resource patterns (ARNs, possibly with wildcards).
    pub resources: Vec<String>,
    /// Partition key patterns a DynamoDB call must match (`dynamodb:LeadingKeys`), when
    /// restricted.
    pub leading_keys: Option<Vec<String>>,
}

/// Why a policy could not be read or judged.
#[derive(Debug, thiserror::Error)]
pub enum IamError {
    /// A policy element this checker does not evaluate.
    #[error(
        "policy {0}: not evaluated by this checker (only Allow, Action, Resource and ForAllValues:StringLike on dynamodb:LeadingKeys are)"
    )]
    Unsupported(String),
    /// Reading the roles.
    #[error("reading the roles: {0}")]
    Api(String),
}

/// The `Allow` statements of a policy document (JSON).
pub fn grants(document: &str) -> Result<Vec<Grant>, IamError> {
    let policy: Value = serde_json::from_str(document).map_err(|e| IamError::Unsupported(format!("not JSON: {e}")))?;
    let statements = match &policy["Statement"] {
        Value::Array(list) => list.clone(),
        one @ Value::Object(_) => vec![one.clone()],
        other => return Err(IamError::Unsupported(format!("Statement {other}"))),
    };
    statements.iter().map(grant).collect()
}

fn strings(value: &Value, what: &str) -> Result<Vec<String>, IamError> {
    match value {
        Value::String(one) => Ok(vec![one.clone()]),
        Value::Array(list) => list
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| IamError::Unsupported(format!("{what} {v}"))))
            .collect(),
        other => Err(IamError::Unsupported(format!("{what} {other}"))),
    }
}

fn grant(statement: &Value) -> Result<Grant, IamError> {
    let object = statement.as_object().ok_or_else(|| IamError::Unsupported(statement.to_string()))?;
    for key in object.keys() {
        if !["Sid", "Effect", "Action", "Resource", "Condition"].contains(&key.as_str()) {
            return Err(IamError::Unsupported(format!("statement element {key}")));
        }
    }
    if object.get("Effect").and_then(Value::as_str) != Some("Allow") {
        return Err(IamError::Unsupported(format!("Effect {}", object.get("Effect").unwrap_or(&Value::Null))));
    }
    let leading_keys = match object.get("Condition") {
        None => None,
        Some(condition) => Some(leading_keys(condition)?),
    };
    Ok(Grant {
        actions: strings(&object["Action"], "Action")?,
        resources: strings(&object["Resource"], "Resource")?,
        leading_keys,
    })
}

fn leading_keys(condition: &Value) -> Result<Vec<String>, IamError> {
    let only = condition.as_object().filter(|c| c.len() == 1).and_then(|c| c.get("ForAllValues:StringLike"));
    let keys = only.and_then(Value::as_object).filter(|o| o.len() == 1).and_then(|o| o.get("dynamodb:LeadingKeys"));
    let keys = keys.ok_or_else(|| IamError::Unsupported(format!("Condition {condition}")))?;
    strings(keys, "dynamodb:LeadingKeys")
}

/// IAM's wildcard match: `*` any run, `?` one character.
pub fn matches(pattern: &str, value: &str) -> bool {
    fn go(p: &[u8], v: &[u8]) -> bool {
        match (p.first(), v.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], v) || (!v.is_empty() && go(p, &v[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &v[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &v[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), value.as_bytes())
}

impl Grant {
    /// Whether this statement allows `call`.
    pub fn allows(&self, call: &AwsCall) -> bool {
        let action = self.actions.iter().any(|a| matches(&a.to_ascii_lowercase(), &call.action.to_ascii_lowercase()));
        let resource = self.resources.iter().any(|r| matches(r, &call.resource));
        let key = match (&self.leading_keys, &call.leading_key) {
            (None, _) => true,
            (Some(patterns), Some(key)) => patterns.iter().any(|p| matches(p, key)),
            // ForAllValues over no value is true: a call without a partition key (none of this
            // project's item calls) would pass, as IAM evaluates it.
            (Some(_), None) => true,
        };
        action && resource && key
    }
}

/// What a run's calls say about the roles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// Calls no statement of the function's role allows: AWS would refuse them.
    pub denied: BTreeSet<(String, AwsCall)>,
    /// (function, action pattern, resource pattern) granted, and used by no call, nor by the
    /// platform.
    pub unused: BTreeSet<(String, String, String)>,
}

impl Findings {
    /// One line per finding, for a report.
    pub fn lines(&self) -> Vec<String> {
        let denied = self.denied.iter().map(|(f, c)| {
            let key = c.leading_key.as_deref().map(|k| format!(" (key {k})")).unwrap_or_default();
            format!("{f}: {} on {}{key} is not granted by its role", c.action, c.resource)
        });
        let unused = self.unused.iter().map(|(f, a, r)| format!("{f}: {a} on {r} is granted and never used"));
        denied.chain(unused).collect()
    }
}

/// Judges `calls` (by function) against `roles` (each function's grants).
pub fn check(roles: &BTreeMap<String, Vec<Grant>>, calls: &BTreeSet<(String, AwsCall)>) -> Findings {
    let mut findings = Findings::default();
    for (function, call) in calls {
        let grants = roles.get(function).map(Vec::as_slice).unwrap_or_default();
        if !grants.iter().any(|g| g.allows(call)) {
            findings.denied.insert((function.clone(), call.clone()));
        }
    }
    for (function, grants) in roles {
        for grant in grants {
            for action in &grant.actions {
                if PLATFORM_SERVICES.iter().any(|s| action.starts_with(s)) {
                    continue;
                }
                for resource in &grant.resources {
                    let used = calls.iter().any(|(f, call)| {
                        f == function
                            && matches(&action.to_ascii_lowercase(), &call.action.to_ascii_lowercase())
                            && matches(resource, &call.resource)
                            && grant.allows(call)
                    });
                    if !used {
                        findings.unused.insert((function.clone(), action.clone(), resource.clone()));
                    }
                }
            }
        }
    }
    findings
}

/// Each function's grants, as the stack `stack_name`'s roles hold them (CloudFormation resolved
/// every name and ARN).
pub async fn role_grants(
    sdk: &aws_config::SdkConfig,
    stack_name: &str,
) -> Result<BTreeMap<String, Vec<Grant>>, IamError> {
    let cfn = aws_sdk_cloudformation::Client::new(sdk);
    let iam = aws_sdk_iam::Client::new(sdk);
    let api = |e: &dyn std::fmt::Debug| IamError::Api(format!("{e:?}"));
    let mut roles = BTreeMap::new();
    for (function, logical_id) in ROLES {
        let resource = cfn
            .describe_stack_resource()
            .stack_name(stack_name)
            .logical_resource_id(logical_id)
            .send()
            .await
            .map_err(|e| api(&e))?;
        let role = resource
            .stack_resource_detail()
            .and_then(|d| d.physical_resource_id())
            .ok_or_else(|| IamError::Api(format!("{logical_id} has no physical id")))?
            .to_owned();
        let names = iam.list_role_policies().role_name(&role).send().await.map_err(|e| api(&e))?;
        let mut grants_of_role = Vec::new();
        for name in names.policy_names() {
            let policy = iam.get_role_policy().role_name(&role).policy_name(name).send().await.map_err(|e| api(&e))?;
            let document = percent_encoding::percent_decode_str(policy.policy_document()).decode_utf8_lossy();
            grants_of_role.extend(grants(&document)?);
        }
        roles.insert(function.to_owned(), grants_of_role);
    }
    Ok(roles)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(action: &str, resource: &str, key: Option<&str>) -> AwsCall {
        AwsCall { action: action.into(), resource: resource.into(), leading_key: key.map(str::to_owned) }
    }

    const TABLE: &str = "arn:aws:dynamodb:us-east-1:000000000000:table/t";

    fn policy() -> Vec<Grant> {
        grants(
            &json!({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": ["logs:PutLogEvents"], "Resource": "arn:aws:logs:*"},
                {"Effect": "Allow", "Action": ["dynamodb:GetItem", "dynamodb:UpdateItem"], "Resource": TABLE,
                 "Condition": {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["intake#*"]}}},
                {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "arn:aws:sqs:us-east-1:000000000000:q"}
            ]})
            .to_string(),
        )
        .unwrap()
    }

    #[test]
    fn wildcards_match_as_iam_matches_them() {
        assert!(matches("intake#*", "intake#acme#k"));
        assert!(matches("arn:aws:secretsmanager:*:secret:k-??????", "arn:aws:secretsmanager:r:a:secret:k-AbCdEf"));
        assert!(!matches("intake#*", "process#acme#k"));
        assert!(!matches("k-??????", "k-AbC"));
    }

    #[test]
    fn a_call_outside_the_role_is_denied_and_an_unused_grant_is_listed() {
        let roles = BTreeMap::from([("intake".to_owned(), policy())]);
        let calls = BTreeSet::from([
            ("intake".to_owned(), call("dynamodb:GetItem", TABLE, Some("intake#acme#k"))),
            ("intake".to_owned(), call("dynamodb:UpdateItem", TABLE, Some("process#acme#k"))),
            ("intake".to_owned(), call("dynamodb:PutItem", TABLE, Some("intake#acme#k"))),
        ]);
        let findings = check(&roles, &calls);
        let denied: Vec<_> = findings.denied.iter().map(|(_, c)| c.action.as_str()).collect();
        assert_eq!(denied, ["dynamodb:PutItem", "dynamodb:UpdateItem"], "another prefix, an action not granted");
        let unused: Vec<_> = findings.unused.iter().map(|(_, a, _)| a.as_str()).collect();
        assert_eq!(unused, ["dynamodb:UpdateItem", "sqs:SendMessage"], "logs are the platform's");
    }

    #[test]
    fn a_removed_grant_fails_the_check() {
        let mut roles = BTreeMap::from([("dlq-consumer".to_owned(), policy())]);
        let calls = BTreeSet::from([(
            "dlq-consumer".to_owned(),
            call("sqs:SendMessage", "arn:aws:sqs:us-east-1:000000000000:q", None),
        )]);
        assert!(check(&roles, &calls).denied.is_empty());
        roles.get_mut("dlq-consumer").unwrap().retain(|g| !g.actions.contains(&"sqs:SendMessage".to_owned()));
        assert_eq!(check(&roles, &calls).denied.len(), 1);
    }

    #[test]
    fn what_the_checker_cannot_evaluate_is_refused_not_ignored() {
        let deny = json!({"Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*"}]});
        assert!(grants(&deny.to_string()).is_err());
        let other = json!({"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*",
                                          "Condition": {"StringEquals": {"aws:SourceVpc": "v"}}}]});
        assert!(grants(&other.to_string()).is_err());
        let not_action = json!({"Statement": [{"Effect": "Allow", "NotAction": "s3:*", "Resource": "*"}]});
        assert!(grants(&not_action.to_string()).is_err());
    }
}
