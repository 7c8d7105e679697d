//! `deploy/cloudformation/edgeauth-tables.json` makes exactly the tables `origin create-tables`
//! makes: dynoxide runs in-process (as in the embedded mode), `create_tables` runs with a prefix,
//! and every table it made is compared with the template's, prefix substituted: key schema,
//! attribute definitions, global secondary indexes (name, key schema, projection), billing mode
//! and TTL. A table, key, index or TTL that differs fails, and so does a table only one side has.
//! Also: the template's retention settings, and that its IAM policy allows every DynamoDB
//! operation the origin's source calls (scripts/test also runs cfn-lint on the template, which
//! knows CloudFormation's and IAM's own schemas).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use aws_sdk_dynamodb::{types::TimeToLiveStatus, Client};
use edgeauth_origin::store::dynamo::{client_for_endpoint, create_tables, TableNames};
use serde_json::Value;

const PREFIX: &str = "cfn-check.";

fn repo_path(path: &str) -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test"))
        .join("..")
        .join(path)
}

fn template() -> Value {
    let path = repo_path("deploy/cloudformation/edgeauth-tables.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("the template is JSON")
}

/// `(attribute, HASH | RANGE)` in order.
type KeySchema = Vec<(String, String)>;

/// A global secondary index: key schema, projection type, non-key attributes.
type Index = (KeySchema, String, Vec<String>);

/// What must agree between the template and a described table.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    key_schema: KeySchema,
    /// `(attribute, S | N | B)`.
    attributes: BTreeSet<(String, String)>,
    /// By index name.
    indexes: BTreeMap<String, Index>,
    billing_mode: String,
    /// The TTL attribute, when TTL is on.
    ttl: Option<String>,
}

fn str_of(v: &Value, what: &str) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
        .to_string()
}

fn template_keys(v: &Value) -> KeySchema {
    v.as_array()
        .expect("KeySchema is an array")
        .iter()
        .map(|k| {
            (
                str_of(&k["AttributeName"], "AttributeName"),
                str_of(&k["KeyType"], "KeyType"),
            )
        })
        .collect()
}

/// `{"Fn::Sub": "${TablePrefix}Name"}` with the prefix put in.
fn table_name(properties: &Value, prefix: &str) -> String {
    let sub = str_of(&properties["TableName"]["Fn::Sub"], "TableName's Fn::Sub");
    let rest = sub
        .strip_prefix("${TablePrefix}")
        .unwrap_or_else(|| panic!("TableName `{sub}` does not start with the prefix"));
    format!("{prefix}{rest}")
}

/// Table name → shape, for every `AWS::DynamoDB::Table` in the template.
fn template_tables(template: &Value, prefix: &str) -> BTreeMap<String, Shape> {
    let mut tables = BTreeMap::new();
    for (logical, resource) in template["Resources"]
        .as_object()
        .expect("Resources is an object")
    {
        if resource["Type"] != "AWS::DynamoDB::Table" {
            continue;
        }
        let p = &resource["Properties"];
        let indexes = p["GlobalSecondaryIndexes"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|index| {
                        let projection = &index["Projection"];
                        let non_key = projection["NonKeyAttributes"]
                            .as_array()
                            .map(|a| a.iter().map(|n| str_of(n, "NonKeyAttributes")).collect())
                            .unwrap_or_default();
                        (
                            str_of(&index["IndexName"], "IndexName"),
                            (
                                template_keys(&index["KeySchema"]),
                                str_of(&projection["ProjectionType"], "ProjectionType"),
                                non_key,
                            ),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ttl = (p["TimeToLiveSpecification"]["Enabled"] == true).then(|| {
            str_of(
                &p["TimeToLiveSpecification"]["AttributeName"],
                "TTL AttributeName",
            )
        });
        let shape = Shape {
            key_schema: template_keys(&p["KeySchema"]),
            attributes: p["AttributeDefinitions"]
                .as_array()
                .expect("AttributeDefinitions is an array")
                .iter()
                .map(|a| {
                    (
                        str_of(&a["AttributeName"], "AttributeName"),
                        str_of(&a["AttributeType"], "AttributeType"),
                    )
                })
                .collect(),
            indexes,
            billing_mode: str_of(&p["BillingMode"], "BillingMode"),
            ttl,
        };
        let name = table_name(p, prefix);
        assert!(
            tables.insert(name.clone(), shape).is_none(),
            "{logical}: a second table named {name}"
        );
    }
    tables
}

async fn described(client: &Client, name: &str) -> Shape {
    let table = client
        .describe_table()
        .table_name(name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("DescribeTable {name}: {e:?}"))
        .table
        .unwrap_or_else(|| panic!("DescribeTable {name}: no table"));
    let keys = |schema: &[aws_sdk_dynamodb::types::KeySchemaElement]| {
        schema
            .iter()
            .map(|k| {
                (
                    k.attribute_name().to_string(),
                    k.key_type().as_str().to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    let indexes = table
        .global_secondary_indexes()
        .iter()
        .map(|index| {
            let projection = index.projection();
            (
                index.index_name().unwrap_or_default().to_string(),
                (
                    keys(index.key_schema()),
                    projection
                        .and_then(|p| p.projection_type())
                        .map(|t| t.as_str().to_string())
                        .unwrap_or_default(),
                    projection
                        .map(|p| p.non_key_attributes().to_vec())
                        .unwrap_or_default(),
                ),
            )
        })
        .collect();
    let ttl = client
        .describe_time_to_live()
        .table_name(name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("DescribeTimeToLive {name}: {e:?}"))
        .time_to_live_description
        .filter(|d| d.time_to_live_status() == Some(&TimeToLiveStatus::Enabled))
        .and_then(|d| d.attribute_name().map(str::to_string));
    Shape {
        key_schema: keys(table.key_schema()),
        attributes: table
            .attribute_definitions()
            .iter()
            .map(|a| {
                (
                    a.attribute_name().to_string(),
                    a.attribute_type().as_str().to_string(),
                )
            })
            .collect(),
        indexes,
        billing_mode: table
            .billing_mode_summary()
            .and_then(|b| b.billing_mode())
            .map(|m| m.as_str().to_string())
            .unwrap_or_else(|| "PROVISIONED".to_string()),
        ttl,
    }
}

#[tokio::test]
async fn the_template_makes_the_tables_create_tables_makes() {
    let db = dynoxide::Database::memory().expect("an in-memory dynoxide");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("a loopback port");
    let endpoint = format!("http://{}", listener.local_addr().expect("its address"));
    tokio::spawn(dynoxide::server::serve_on(listener, db));
    let client = client_for_endpoint(&endpoint, "us-east-1").await;
    create_tables(&client, &TableNames::new(PREFIX))
        .await
        .expect("create_tables");

    // The database is new: every table in it is one create_tables made.
    let made: BTreeSet<String> = client
        .list_tables()
        .send()
        .await
        .expect("ListTables")
        .table_names()
        .iter()
        .filter(|n| n.starts_with(PREFIX))
        .cloned()
        .collect();
    let expected = template_tables(&template(), PREFIX);
    assert_eq!(
        made,
        expected.keys().cloned().collect::<BTreeSet<_>>(),
        "the tables create_tables made, and the template's"
    );
    assert_eq!(
        made.len(),
        5,
        "Users, RefreshTokens, RevocationFeed, AuditEvents, SigningKeys"
    );
    for (name, want) in &expected {
        assert_eq!(&described(&client, name).await, want, "table {name}");
    }
}

#[test]
fn the_prefix_parameter_defaults_to_the_origins() {
    let template = template();
    let parameter = &template["Parameters"]["TablePrefix"];
    assert_eq!(parameter["Type"], "String");
    // The origin's `table_prefix` default (origin/src/config.rs, README).
    assert_eq!(parameter["Default"], "edgeauth-");
    assert_eq!(
        TableNames::new("edgeauth-").users,
        "edgeauth-Users",
        "table names are prefix + name"
    );
}

#[test]
fn every_table_is_retained_recoverable_and_on_demand() {
    let template = template();
    let tables: Vec<(&String, &Value)> = template["Resources"]
        .as_object()
        .expect("Resources")
        .iter()
        .filter(|(_, r)| r["Type"] == "AWS::DynamoDB::Table")
        .collect();
    assert!(!tables.is_empty());
    for (logical, r) in tables {
        assert_eq!(r["DeletionPolicy"], "Retain", "{logical}");
        assert_eq!(r["UpdateReplacePolicy"], "Retain", "{logical}");
        let p = &r["Properties"];
        assert_eq!(p["BillingMode"], "PAY_PER_REQUEST", "{logical}");
        assert_eq!(
            p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"], true,
            "{logical}"
        );
        assert_eq!(p["DeletionProtectionEnabled"], true, "{logical}");
    }
}

/// The IAM actions the origin's source (`origin/src`) needs: one per SDK operation it calls
/// (`.get_item()`), and for `TransactWriteItems`, which IAM checks item by item, one per kind of
/// item it builds (`Put::builder()`).
fn actions_needed() -> BTreeSet<String> {
    const CALLS: &[(&str, &str)] = &[
        (".batch_get_item()", "BatchGetItem"),
        (".batch_write_item()", "BatchWriteItem"),
        (".delete_item()", "DeleteItem"),
        (".describe_table()", "DescribeTable"),
        (".describe_time_to_live()", "DescribeTimeToLive"),
        (".get_item()", "GetItem"),
        (".put_item()", "PutItem"),
        (".query()", "Query"),
        (".scan()", "Scan"),
        (".transact_get_items()", "GetItem"),
        (".update_item()", "UpdateItem"),
        // Items of a transaction; a word of their own (not `GlobalSecondaryIndexUpdate::`).
        ("Put::builder()", "PutItem"),
        ("Update::builder()", "UpdateItem"),
        ("Delete::builder()", "DeleteItem"),
        ("ConditionCheck::builder()", "ConditionCheckItem"),
    ];
    let mut needed = BTreeSet::new();
    let mut dirs = vec![repo_path("origin/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("origin/src") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("a source file");
            for (call, action) in CALLS {
                let found = text.match_indices(call).any(|(at, _)| {
                    call.starts_with('.')
                        || !text[..at]
                            .chars()
                            .next_back()
                            .is_some_and(|c| c.is_alphanumeric() || c == '_')
                });
                if found {
                    needed.insert(format!("dynamodb:{action}"));
                }
            }
        }
    }
    needed
}

#[test]
fn the_origin_policy_allows_what_the_store_calls() {
    let template = template();
    let statement =
        &template["Resources"]["OriginPolicy"]["Properties"]["PolicyDocument"]["Statement"][0];
    let allowed: BTreeSet<String> = statement["Action"]
        .as_array()
        .expect("Action")
        .iter()
        .map(|a| str_of(a, "Action"))
        .collect();
    let needed = actions_needed();
    // The store's writes: transactions of puts and updates, batches, deletes.
    for action in ["PutItem", "UpdateItem", "Query", "BatchWriteItem"] {
        assert!(needed.contains(&format!("dynamodb:{action}")), "{needed:?}");
    }
    let missing: Vec<_> = needed.difference(&allowed).collect();
    assert!(
        missing.is_empty(),
        "the origin calls {missing:?}, which OriginPolicy does not allow"
    );
    // Each table, and its indexes (Query on a GSI needs the index ARN).
    let resources = statement["Resource"].as_array().expect("Resource");
    let tables = template_tables(&template, "").len();
    assert_eq!(resources.len(), 2 * tables);
}
