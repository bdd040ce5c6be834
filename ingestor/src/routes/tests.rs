//! The routing config's parsing and validation.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use super::*;

fn problem(toml: &str) -> Problem {
    match Routes::from_toml_str(toml) {
        Err(RoutesError::Invalid { problem, .. }) => *problem,
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn oikion_default_routes_the_oikion_tables() {
    let routes = Routes::oikion_default();
    let names: Vec<_> = routes
        .tables()
        .iter()
        .map(|t| (t.table(), t.kind().name(), t.org_column()))
        .collect();
    assert_eq!(
        names,
        [
            ("properties", "property", Some("organizationId")),
            ("listings", "property", None),
            ("addresses", "property", None),
            ("media_assets", "property", None),
            ("organization_members", "membership", Some("organizationId")),
            ("organizations", "organization", Some("id")),
            ("activities", "activity", Some("organizationId")),
            ("clients", "sync", Some("organizationId")),
            ("tasks", "sync", Some("organizationId")),
            ("notes", "sync", None),
            ("interactions", "sync", None),
        ]
    );
    assert!(routes.tables().iter().all(|t| t.schema() == "public"));
    let listings = routes.find("public", "listings").unwrap();
    assert_eq!(
        listings.required_columns(),
        ["propertyId", "marketingStatus"]
    );
    assert_eq!(
        listings.parents(),
        [Parent {
            schema: "public".into(),
            table: "properties".into(),
            column: "propertyId".into()
        }]
    );
    let notes = routes.find("public", "notes").unwrap();
    assert_eq!(notes.required_columns(), ["clientId", "propertyId", "id"]);
    assert_eq!(notes.field_name("created_at"), "createdAt");
    assert_eq!(notes.field_name("content"), "content");
    let members = routes.find("public", "organization_members").unwrap();
    assert_eq!(
        members.required_columns(),
        ["organizationId", "userId", "role"]
    );
    let activities = routes.find("public", "activities").unwrap();
    assert_eq!(
        activities.required_columns(),
        [
            "organizationId",
            "actorId",
            "actionType",
            "entityType",
            "entityId",
            "payload"
        ]
    );
    assert_eq!(
        routes
            .find("public", "properties")
            .unwrap()
            .required_columns(),
        ["organizationId", "id"]
    );
    assert_eq!(
        routes
            .find("public", "organizations")
            .unwrap()
            .required_columns(),
        ["id"]
    );
    assert!(routes.find("other", "properties").is_none());
    assert!(routes.find("public", "sessions").is_none());
}

#[test]
fn defaults_fill_omitted_options() {
    let routes = Routes::from_toml_str(
        r#"
        [[tables]]
        table = "notifications"
        kind = "notification"
        org_column = "orgId"
        user_column = "recipient"

        [[tables]]
        schema = "crm"
        table = "events"
        kind = "activity"
        org_column = "orgId"

        [[tables]]
        table = "orgs"
        kind = "organization"
        org_column = "id"

        [[tables]]
        table = "listings"
        kind = "property"
        org_column = "orgId"
        updated_by_column = "editor"
        "#,
    )
    .unwrap();
    let n = routes.find("public", "notifications").unwrap();
    assert_eq!(
        n.kind(),
        &RouteKind::Notification(NotificationRoute {
            user_column: "recipient".into(),
            title_column: "title".into(),
            message_column: "message".into(),
            priority_column: "priority".into(),
            category_column: "category".into(),
            metadata_column: "metadata".into(),
        })
    );
    assert_eq!(
        n.required_columns(),
        [
            "orgId",
            "recipient",
            "title",
            "message",
            "priority",
            "category",
            "metadata"
        ]
    );
    let a = routes.find("crm", "events").unwrap();
    assert_eq!(
        a.kind(),
        &RouteKind::Activity(ActivityRoute {
            actor_column: "actorId".into(),
            action_column: "actionType".into(),
            resource_column: "entityType".into(),
            resource_id_column: "entityId".into(),
            metadata_column: "payload".into(),
        })
    );
    assert_eq!(
        routes.find("public", "orgs").unwrap().kind(),
        &RouteKind::Organization(OrganizationRoute {
            change_types: BTreeMap::from([
                ("name".into(), "name".into()),
                ("plan".into(), "billing".into())
            ]),
            default_change_type: "settings".into(),
        })
    );
    let p = routes.find("public", "listings").unwrap();
    assert_eq!(p.required_columns(), ["orgId", "id", "editor"]);
}

#[test]
fn required_columns_are_deduplicated() {
    let routes = Routes::from_toml_str(
        r#"
        [[tables]]
        table = "p"
        kind = "property"
        org_column = "id"
        "#,
    )
    .unwrap();
    assert_eq!(routes.tables()[0].required_columns(), ["id"]);
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let err = Routes::from_toml_str(
        "[[tables]]\ntable = \"p\"\nkind = \"property\"\norg_column = \"o\"\norg_colum = \"x\"\n",
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RoutesError::Parse { .. }), "{msg}");
    assert!(msg.contains("org_colum"), "{msg}");
    assert!(msg.contains("line 5, column 1"), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");

    let err = Routes::from_toml_str("table = \"p\"\n").unwrap_err();
    assert!(err.to_string().contains("unknown field `table`"), "{err}");
}

#[test]
fn toml_syntax_errors_keep_line_and_column() {
    let err = Routes::from_toml_str("[[tables]]\ntable = \"p\nkind = 1\n").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("routing config <inline> line 2, column"),
        "{msg}"
    );
}

#[test]
fn missing_table_or_kind_key_is_a_parse_error() {
    let err =
        Routes::from_toml_str("[[tables]]\nkind = \"property\"\norg_column = \"o\"\n").unwrap_err();
    assert!(err.to_string().contains("missing field `table`"), "{err}");
    let err = Routes::from_toml_str("[[tables]]\ntable = \"p\"\norg_column = \"o\"\n").unwrap_err();
    assert!(err.to_string().contains("missing field `kind`"), "{err}");
}

#[test]
fn no_tables_is_refused() {
    assert_eq!(problem(""), Problem::NoTables);
    assert_eq!(problem("tables = []"), Problem::NoTables);
}

#[test]
fn unknown_kind_is_refused() {
    let p = problem("[[tables]]\ntable = \"p\"\nkind = \"properties\"\norg_column = \"o\"\n");
    assert_eq!(
        p,
        Problem::UnknownKind {
            entry: Entry::new(1, "public", "p"),
            kind: "properties".into()
        }
    );
    assert!(
        p.to_string()
            .contains("expected one of property, membership")
    );
}

#[test]
fn empty_and_quoted_names_are_refused() {
    let p = problem("[[tables]]\ntable = \"\"\nkind = \"property\"\norg_column = \"o\"\n");
    assert!(
        matches!(
            p,
            Problem::BadName {
                key: "table",
                reason: "must not be empty",
                ..
            }
        ),
        "{p}"
    );
    assert_eq!(p.to_string(), "[[tables]] #1: `table` must not be empty");
    let p = problem(
        "[[tables]]\ntable = \"p\"\nkind = \"property\"\norg_column = \"o\"\nid_column = \"\"\n",
    );
    assert!(
        matches!(
            p,
            Problem::BadName {
                key: "id_column",
                ..
            }
        ),
        "{p}"
    );
    let p = problem(
        "[[tables]]\nschema = \"\"\ntable = \"p\"\nkind = \"property\"\norg_column = \"o\"\n",
    );
    assert!(matches!(p, Problem::BadName { key: "schema", .. }), "{p}");
    let p = problem(
        "[[tables]]\ntable = \"p\"\nkind = \"property\"\norg_column = '\"organizationId\"'\n",
    );
    assert!(
        matches!(
            p,
            Problem::BadName {
                key: "org_column",
                ..
            }
        ),
        "{p}"
    );
    let long = "x".repeat(64);
    let p = problem(&format!(
        "[[tables]]\ntable = \"{long}\"\nkind = \"property\"\norg_column = \"o\"\n"
    ));
    assert!(matches!(p, Problem::BadName { key: "table", .. }), "{p}");
    let p = problem(
        "[[tables]]\ntable = \"o\"\nkind = \"organization\"\norg_column = \"id\"\nchange_types = { \"\" = \"name\" }\n",
    );
    assert!(
        matches!(
            p,
            Problem::BadName {
                key: "change_types",
                ..
            }
        ),
        "{p}"
    );
}

#[test]
fn duplicate_tables_are_refused() {
    let err = Routes::from_toml_str(
        r#"
[[tables]]
table = "p"
kind = "property"
org_column = "o"

[[tables]]
schema = "public"
table = "p"
kind = "activity"
org_column = "o"
"#,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "routing config <inline> line 7, column 1: [[tables]] #2 (public.p): \
         the same table as entry #1; route a table once"
    );
    // The same name in another schema is another table.
    Routes::from_toml_str(
        "[[tables]]\ntable = \"p\"\nkind = \"property\"\norg_column = \"o\"\n\
         [[tables]]\nschema = \"s\"\ntable = \"p\"\nkind = \"property\"\norg_column = \"o\"\n",
    )
    .unwrap();
}

#[test]
fn missing_required_options_are_refused() {
    let p = problem("[[tables]]\ntable = \"p\"\nkind = \"property\"\n");
    assert_eq!(
        p.to_string(),
        "[[tables]] #1 (public.p): set exactly one of `org_column` and `parent`"
    );
    let p = problem("[[tables]]\ntable = \"a\"\nkind = \"activity\"\n");
    assert_eq!(
        p,
        Problem::Missing {
            entry: Entry::new(1, "public", "a"),
            kind: "activity",
            key: "org_column"
        }
    );
    let p = problem("[[tables]]\ntable = \"m\"\nkind = \"membership\"\norg_column = \"o\"\n");
    assert_eq!(
        p.to_string(),
        "[[tables]] #1 (public.m): kind membership requires `user_column`"
    );
    let p = problem("[[tables]]\ntable = \"n\"\nkind = \"notification\"\norg_column = \"o\"\n");
    assert!(
        matches!(
            p,
            Problem::Missing {
                key: "user_column",
                ..
            }
        ),
        "{p}"
    );
}

const PARENT: &str =
    "[[tables]]\ntable = \"properties\"\nkind = \"property\"\norg_column = \"org\"\n";

#[test]
fn parents_must_be_routed_tables_with_their_own_organization() {
    let ok = format!(
        "{PARENT}[[tables]]\ntable = \"listings\"\nkind = \"property\"\nfield = \"listing\"\n\
         parent = {{ table = \"properties\", column = \"propertyId\" }}\n"
    );
    let routes = Routes::from_toml_str(&ok).unwrap();
    assert_eq!(
        routes.find("public", "listings").unwrap().org_column(),
        None
    );

    let missing = "[[tables]]\ntable = \"listings\"\nkind = \"sync\"\n\
         parent = { table = \"properties\", column = \"propertyId\" }\n";
    assert_eq!(
        problem(missing).to_string(),
        "[[tables]] #1 (public.listings): parent public.properties is not a routed table of this file"
    );
    let chained = format!(
        "{ok}[[tables]]\ntable = \"notes\"\nkind = \"sync\"\n\
         parent = [{{ table = \"listings\", column = \"listingId\" }}]\n"
    );
    assert!(
        matches!(problem(&chained), Problem::BadParent { reason, .. } if reason.contains("has a parent itself")),
        "{}",
        problem(&chained)
    );
    let not_keyed = "[[tables]]\ntable = \"orgs\"\nkind = \"organization\"\norg_column = \"id\"\n\
         [[tables]]\ntable = \"x\"\nkind = \"sync\"\nparent = { table = \"orgs\", column = \"orgId\" }\n";
    assert!(matches!(problem(not_keyed), Problem::BadParent { .. }));
    let both = format!(
        "{PARENT}[[tables]]\ntable = \"l\"\nkind = \"sync\"\norg_column = \"o\"\n\
         parent = {{ table = \"properties\", column = \"p\" }}\n"
    );
    assert!(matches!(problem(&both), Problem::OrgSource { .. }));
    let no_field = format!(
        "{PARENT}[[tables]]\ntable = \"l\"\nkind = \"property\"\n\
         parent = {{ table = \"properties\", column = \"p\" }}\n"
    );
    assert!(matches!(
        problem(&no_field),
        Problem::Missing { key: "field", .. }
    ));
    let stray_field =
        "[[tables]]\ntable = \"p\"\nkind = \"property\"\norg_column = \"o\"\nfield = \"f\"\n";
    assert!(matches!(
        problem(stray_field),
        Problem::NotApplicable { key: "field", .. }
    ));
    let membership_parent = format!(
        "{PARENT}[[tables]]\ntable = \"m\"\nkind = \"membership\"\nuser_column = \"u\"\n\
         parent = {{ table = \"properties\", column = \"p\" }}\n"
    );
    assert!(matches!(
        problem(&membership_parent),
        Problem::NotApplicable { key: "parent", .. }
    ));
}

#[test]
fn renames_merge_and_must_not_clash() {
    let routes = Routes::from_toml_str(
        "[rename]\ncreated_at = \"createdAt\"\n\
         [[tables]]\ntable = \"p\"\nkind = \"property\"\norg_column = \"o\"\n\
         rename = { updated_at = \"updatedAt\" }\n\
         [[tables]]\ntable = \"q\"\nkind = \"sync\"\norg_column = \"o\"\n",
    )
    .unwrap();
    let p = routes.find("public", "p").unwrap();
    assert_eq!(p.field_name("created_at"), "createdAt");
    assert_eq!(p.field_name("updated_at"), "updatedAt");
    let q = routes.find("public", "q").unwrap();
    assert_eq!(q.field_name("updated_at"), "updated_at");
    assert_eq!(q.field_name("created_at"), "createdAt");
    let clash = "[rename]\na = \"x\"\n[[tables]]\ntable = \"p\"\nkind = \"sync\"\norg_column = \"o\"\n\
         rename = { b = \"x\" }\n";
    assert!(
        matches!(problem(clash), Problem::RenameClash { .. }),
        "{}",
        problem(clash)
    );
}

#[test]
fn keys_of_another_kind_are_refused() {
    let p = problem(
        "[[tables]]\ntable = \"p\"\nkind = \"property\"\norg_column = \"o\"\nuser_column = \"u\"\n",
    );
    assert_eq!(
        p.to_string(),
        "[[tables]] #1 (public.p): `user_column` does not apply to kind property"
    );
    let p = problem(
        "[[tables]]\ntable = \"a\"\nkind = \"activity\"\norg_column = \"o\"\ntitle_column = \"t\"\n",
    );
    assert!(
        matches!(
            p,
            Problem::NotApplicable {
                key: "title_column",
                ..
            }
        ),
        "{p}"
    );
    let p = problem(
        "[[tables]]\ntable = \"o\"\nkind = \"organization\"\norg_column = \"id\"\nid_column = \"id\"\n",
    );
    assert!(
        matches!(
            p,
            Problem::NotApplicable {
                key: "id_column",
                ..
            }
        ),
        "{p}"
    );
    let p = problem(
        "[[tables]]\ntable = \"n\"\nkind = \"notification\"\norg_column = \"o\"\nuser_column = \"u\"\nrole_column = \"r\"\n",
    );
    assert!(
        matches!(
            p,
            Problem::NotApplicable {
                key: "role_column",
                ..
            }
        ),
        "{p}"
    );
}

#[test]
fn load_names_the_file() {
    let dir = std::env::temp_dir().join(format!("routes-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("routes.toml");
    std::fs::write(
        &path,
        "[[tables]]\ntable = \"p\"\nkind = \"nope\"\norg_column = \"o\"\n",
    )
    .unwrap();
    let msg = Routes::load(&path).unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!(
            "routing config {} line 1, column 1:",
            path.display()
        )),
        "{msg}"
    );
    std::fs::write(&path, OIKION_TOML).unwrap();
    assert_eq!(Routes::load(&path).unwrap(), Routes::oikion_default());
    std::fs::remove_dir_all(&dir).unwrap();

    let err = Routes::load(&dir.join("missing.toml")).unwrap_err();
    assert!(matches!(err, RoutesError::Read { .. }));
    assert!(err.to_string().contains("missing.toml"), "{err}");
}
