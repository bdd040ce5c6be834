//! The router on the built-in routes and a few extra tables: every kind's
//! payloads, moves, child routes and errors.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use super::*;

impl Router {
    /// The drafts of a change as routed (children unaddressed, no actor).
    fn route_drafts(&self, c: &RowChange<'_>) -> Result<Vec<Draft>, RouteError> {
        Ok(self.route_change(c)?.into_iter().map(|r| r.draft).collect())
    }
}

fn router() -> Router {
    let mut toml = include_str!("../../routes/oikion.toml").to_owned();
    toml.push_str(
        r#"
[[tables]]
table = "notifications"
kind = "notification"
org_column = "organizationId"
user_column = "userId"

[[tables]]
schema = "app"
table = "listings"
kind = "property"
org_column = "orgId"
updated_by_column = "updatedBy"
"#,
    );
    Router::new(Routes::from_toml_str(&toml).unwrap())
}

fn row(v: Value) -> Row {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

fn change<'a>(
    table: &'a str,
    operation: Operation,
    old: Option<Value>,
    new: Option<Value>,
) -> RowChange<'a> {
    RowChange {
        schema: "public",
        table,
        operation,
        old: old.map(row),
        new: new.map(row),
    }
}

fn one(r: &Router, c: &RowChange<'_>) -> Draft {
    let mut drafts = r.route_drafts(c).unwrap();
    assert_eq!(drafts.len(), 1, "{drafts:?}");
    drafts.remove(0)
}

fn property_row() -> Value {
    json!({
        "id": "p1", "organizationId": "org1", "createdBy": "u1", "price": "100.00",
        "bedrooms": 2, "features": {"pool": true, "rooms": [1, 2]}, "description": null,
    })
}

// --- child routes, sync, actor ---

fn listing_row() -> Value {
    json!({"id": "l1", "propertyId": "p1", "listPrice": "10.00",
           "marketingStatus": "ACTIVE", "archivedAt": null})
}

fn routed(r: &Router, c: &RowChange<'_>) -> Vec<Routed> {
    r.route_change(c).unwrap()
}

#[test]
fn a_listing_archive_is_an_archive_of_its_property_addressed_by_the_parent() {
    let r = router();
    let properties = r.index_of("public", "properties").unwrap();
    assert!(r.is_parent(properties));
    assert!(!r.is_parent(r.index_of("public", "listings").unwrap()));
    let mut new = listing_row();
    new["marketingStatus"] = json!("ARCHIVED");
    new["archivedAt"] = json!("2026-01-01T00:00:00.000");
    let mut out = routed(
        &r,
        &change(
            "listings",
            Operation::Update,
            Some(listing_row()),
            Some(new),
        ),
    );
    assert_eq!(out.len(), 1);
    let mut e = out.remove(0);
    assert_eq!(
        e.parent,
        Some(ParentKey {
            table: properties,
            id: "p1".into()
        })
    );
    // Unaddressed until the session resolves the parent.
    assert_eq!(e.draft.organization_id, None);
    assert_eq!(
        e.draft.payload,
        json!({"propertyId": "p1", "organizationId": null, "operation": "archive",
               "updatedFields": ["listing.archivedAt", "listing.marketingStatus"],
               "changes": {"listing": {"marketingStatus": "ARCHIVED",
                                       "archivedAt": "2026-01-01T00:00:00.000"}},
               "updatedBy": null})
    );
    e.address("org9");
    e.set_actor("u7");
    assert_eq!(e.draft.organization_id.as_deref(), Some("org9"));
    assert_eq!(e.draft.payload["organizationId"], "org9");
    assert_eq!(e.draft.payload["updatedBy"], "u7");

    // Any other listing change is an update; an insert nests the whole row.
    let mut new = listing_row();
    new["listPrice"] = json!("11.00");
    let e = &routed(
        &r,
        &change(
            "listings",
            Operation::Update,
            Some(listing_row()),
            Some(new),
        ),
    )[0];
    assert_eq!(e.draft.payload["operation"], "update");
    let e = &routed(
        &r,
        &change("listings", Operation::Insert, None, Some(listing_row())),
    )[0];
    assert_eq!(e.draft.payload["operation"], "update");
    assert_eq!(e.draft.payload["updatedFields"], json!(["listing"]));
    assert_eq!(e.draft.payload["changes"]["listing"]["listPrice"], "10.00");
    let e = &routed(
        &r,
        &change("listings", Operation::Delete, Some(listing_row()), None),
    )[0];
    assert_eq!(e.draft.payload["changes"], json!({"listing": null}));
}

#[test]
fn a_child_moved_to_another_parent_updates_both() {
    let r = router();
    let mut new = listing_row();
    new["propertyId"] = json!("p2");
    let out = routed(
        &r,
        &change(
            "listings",
            Operation::Update,
            Some(listing_row()),
            Some(new),
        ),
    );
    let parents: Vec<_> = out
        .iter()
        .map(|e| e.parent.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(parents, ["p1", "p2"]);
    assert_eq!(out[0].draft.payload["changes"], json!({"listing": null}));
    assert_eq!(
        out[1].draft.payload["changes"]["listing"]["propertyId"],
        "p2"
    );
}

#[test]
fn a_note_takes_its_first_non_null_parent() {
    let r = router();
    let clients = r.index_of("public", "clients").unwrap();
    let properties = r.index_of("public", "properties").unwrap();
    let note = |client: Value, property: Value| {
        json!({"id": "n1", "clientId": client, "propertyId": property, "content": "hi",
               "created_at": "2026-01-01T00:00:00.000"})
    };
    let e = &routed(
        &r,
        &change(
            "notes",
            Operation::Insert,
            None,
            Some(note(json!("c1"), json!("p1"))),
        ),
    )[0];
    assert_eq!(
        e.parent,
        Some(ParentKey {
            table: clients,
            id: "c1".into()
        })
    );
    assert_eq!(e.draft.event_type, EventType::DataSync);
    assert_eq!(
        e.draft.payload,
        json!({"entityType": "note", "entityId": "n1", "operation": "create",
               "data": {"id": "n1", "clientId": "c1", "propertyId": "p1", "content": "hi",
                        "createdAt": "2026-01-01T00:00:00.000"}})
    );
    let e = &routed(
        &r,
        &change(
            "notes",
            Operation::Insert,
            None,
            Some(note(Value::Null, json!("p1"))),
        ),
    )[0];
    assert_eq!(
        e.parent,
        Some(ParentKey {
            table: properties,
            id: "p1".into()
        })
    );
    let err = r
        .route_change(&change(
            "notes",
            Operation::Insert,
            None,
            Some(note(Value::Null, Value::Null)),
        ))
        .unwrap_err();
    assert!(matches!(err, RouteError::NoParent { .. }), "{err}");
}

#[test]
fn clients_and_tasks_are_data_sync_in_the_apps_shape() {
    let r = router();
    let client = json!({"id": "c1", "organizationId": "org1", "name": "Ann",
                        "created_at": "2026-01-01T00:00:00.000", "updated_at": "2026-01-01T00:00:00.000"});
    let d = one(
        &r,
        &change("clients", Operation::Insert, None, Some(client.clone())),
    );
    assert_eq!(d.organization_id.as_deref(), Some("org1"));
    assert_eq!(
        d.payload,
        json!({"entityType": "client", "entityId": "c1", "operation": "create",
               "data": {"id": "c1", "organizationId": "org1", "name": "Ann",
                        "createdAt": "2026-01-01T00:00:00.000",
                        "updatedAt": "2026-01-01T00:00:00.000"}})
    );
    let mut renamed = client.clone();
    renamed["name"] = json!("Anna");
    let d = one(
        &r,
        &change(
            "clients",
            Operation::Update,
            Some(client.clone()),
            Some(renamed),
        ),
    );
    assert_eq!(d.payload["operation"], "update");
    assert_eq!(d.payload["data"]["name"], "Anna");
    let d = one(
        &r,
        &change("clients", Operation::Delete, Some(client.clone()), None),
    );
    assert_eq!(d.payload["operation"], "delete");
    assert_eq!(d.payload["data"]["name"], "Ann");
    // Moved between organizations: gone from one, new in the other.
    let mut moved = client.clone();
    moved["organizationId"] = json!("org2");
    let out = r
        .route_drafts(&change(
            "clients",
            Operation::Update,
            Some(client),
            Some(moved),
        ))
        .unwrap();
    let seen: Vec<_> = out
        .iter()
        .map(|d| {
            (
                d.organization_id.as_deref().unwrap(),
                d.payload["operation"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [("org1", "delete"), ("org2", "create")]);
    let task = json!({"id": "t1", "organizationId": "org1", "status": "PENDING"});
    let d = one(&r, &change("tasks", Operation::Insert, None, Some(task)));
    assert_eq!(d.payload["entityType"], "task");
}

#[test]
fn only_actor_fields_take_the_actor() {
    let r = router();
    let mut e = routed(
        &r,
        &change("properties", Operation::Insert, None, Some(property_row())),
    )
    .remove(0);
    assert_eq!(e.actor, Some("updatedBy"));
    e.set_actor("u9");
    assert_eq!(e.draft.payload["updatedBy"], "u9");
    let mut e = routed(
        &r,
        &change(
            "organization_members",
            Operation::Insert,
            None,
            Some(json!({"id": "m1", "userId": "u1", "organizationId": "org1", "role": "AGENT"})),
        ),
    )
    .remove(0);
    e.set_actor("u9");
    assert_eq!(e.draft.payload["invitedBy"], "u9");
    let mut e = routed(
        &r,
        &change(
            "clients",
            Operation::Insert,
            None,
            Some(json!({"id": "c1", "organizationId": "o"})),
        ),
    )
    .remove(0);
    assert_eq!(e.actor, None);
    e.set_actor("u9");
    assert!(e.draft.payload.get("updatedBy").is_none());
}

// --- property ---

#[test]
fn property_insert_is_a_create_with_the_whole_row() {
    let d = one(
        &router(),
        &change("properties", Operation::Insert, None, Some(property_row())),
    );
    assert_eq!(d.event_type, EventType::PropertyUpdate);
    assert_eq!(d.source, Source::Postgres);
    assert_eq!(d.organization_id.as_deref(), Some("org1"));
    assert_eq!(d.user_id, None);
    assert_eq!(
        d.payload,
        json!({"propertyId": "p1", "organizationId": "org1", "operation": "create",
               "changes": property_row(), "updatedBy": null})
    );
}

#[test]
fn property_update_lists_only_changed_columns() {
    let old = property_row();
    let mut new = property_row();
    new["price"] = json!("120.00");
    new["description"] = json!("sunny"); // NULL → value
    // jsonb equal by value, built in another key order.
    new["features"] = json!({"rooms": [1, 2], "pool": true});
    let d = one(
        &router(),
        &change("properties", Operation::Update, Some(old), Some(new)),
    );
    assert_eq!(d.organization_id.as_deref(), Some("org1"));
    assert_eq!(
        d.payload,
        json!({"propertyId": "p1", "organizationId": "org1", "operation": "update",
               "updatedFields": ["description", "price"],
               "changes": {"description": "sunny", "price": "120.00"}, "updatedBy": null})
    );
}

#[test]
fn value_to_null_and_jsonb_changes_are_changes() {
    let old = property_row();
    let mut new = property_row();
    new["bedrooms"] = Value::Null;
    new["features"] = json!({"pool": false, "rooms": [1, 2]});
    let d = one(
        &router(),
        &change("properties", Operation::Update, Some(old), Some(new)),
    );
    assert_eq!(d.payload["updatedFields"], json!(["bedrooms", "features"]));
    assert_eq!(
        d.payload["changes"],
        json!({"bedrooms": null, "features": {"pool": false, "rooms": [1, 2]}})
    );
}

#[test]
fn toast_absent_column_is_unchanged() {
    let old = property_row();
    let mut new = row(property_row());
    new.remove("description");
    new.remove("features");
    new.insert("bedrooms".into(), json!(3));
    let c = RowChange {
        schema: "public",
        table: "properties",
        operation: Operation::Update,
        old: Some(row(old)),
        new: Some(new),
    };
    let d = one(&router(), &c);
    assert_eq!(d.payload["updatedFields"], json!(["bedrooms"]));
    assert_eq!(d.payload["changes"], json!({"bedrooms": 3}));
}

#[test]
fn update_without_changes_still_produces_an_event() {
    let d = one(
        &router(),
        &change(
            "properties",
            Operation::Update,
            Some(property_row()),
            Some(property_row()),
        ),
    );
    assert_eq!(d.payload["operation"], "update");
    assert_eq!(d.payload["updatedFields"], json!([]));
    assert_eq!(d.payload["changes"], json!({}));
}

#[test]
fn property_delete_carries_the_old_row() {
    let d = one(
        &router(),
        &change("properties", Operation::Delete, Some(property_row()), None),
    );
    assert_eq!(d.organization_id.as_deref(), Some("org1"));
    assert_eq!(
        d.payload,
        json!({"propertyId": "p1", "organizationId": "org1", "operation": "delete",
               "changes": property_row(), "updatedBy": null})
    );
}

#[test]
fn property_moved_to_another_org_leaves_the_old_and_enters_the_new() {
    let old = property_row();
    let mut new = property_row();
    new["organizationId"] = json!("org2");
    let drafts = router()
        .route_drafts(&change(
            "properties",
            Operation::Update,
            Some(old.clone()),
            Some(new.clone()),
        ))
        .unwrap();
    assert_eq!(drafts.len(), 2);
    assert_eq!(drafts[0].organization_id.as_deref(), Some("org1"));
    assert_eq!(
        drafts[0].payload,
        json!({"propertyId": "p1", "organizationId": "org1", "operation": "delete", "changes": old,
               "updatedBy": null})
    );
    assert_eq!(drafts[1].organization_id.as_deref(), Some("org2"));
    assert_eq!(
        drafts[1].payload,
        json!({"propertyId": "p1", "organizationId": "org2", "operation": "create", "changes": new,
               "updatedBy": null})
    );
}

#[test]
fn updated_by_column_on_create_and_update_null_on_delete() {
    let r = router();
    let base = json!({"id": 7, "orgId": 42, "title": "a", "updatedBy": "u1"});
    let c = |op, old: Option<Value>, new: Option<Value>| RowChange {
        schema: "app",
        table: "listings",
        operation: op,
        old: old.map(row),
        new: new.map(row),
    };
    let d = one(&r, &c(Operation::Insert, None, Some(base.clone())));
    // An integer org id becomes its decimal string; propertyId stays as stored.
    assert_eq!(d.organization_id.as_deref(), Some("42"));
    assert_eq!(d.payload["organizationId"], "42");
    assert_eq!(d.payload["propertyId"], 7);
    assert_eq!(d.payload["updatedBy"], "u1");
    let mut new = base.clone();
    new["title"] = json!("b");
    new["updatedBy"] = json!("u2");
    let d = one(&r, &c(Operation::Update, Some(base.clone()), Some(new)));
    assert_eq!(d.payload["updatedBy"], "u2");
    assert_eq!(d.payload["updatedFields"], json!(["title", "updatedBy"]));
    // A delete's column names the row's last editor, not who deleted it.
    let d = one(&r, &c(Operation::Delete, Some(base.clone()), None));
    assert_eq!(d.payload["updatedBy"], Value::Null);
    let mut anonymous = base;
    anonymous["updatedBy"] = Value::Null;
    let d = one(&r, &c(Operation::Insert, None, Some(anonymous)));
    assert_eq!(d.payload["updatedBy"], Value::Null);
}

// --- organization id errors ---

#[test]
fn missing_or_null_org_is_an_error_not_a_broadcast() {
    let r = router();
    let mut no_org = row(property_row());
    no_org.remove("organizationId");
    let c = RowChange {
        schema: "public",
        table: "properties",
        operation: Operation::Insert,
        old: None,
        new: Some(no_org),
    };
    let err = r.route_drafts(&c).unwrap_err();
    assert_eq!(
        err,
        RouteError::MissingColumn {
            table: "public.properties".into(),
            column: "organizationId".into(),
            side: Side::New
        }
    );
    let mut null_org = property_row();
    null_org["organizationId"] = Value::Null;
    assert!(matches!(
        r.route_drafts(&change(
            "properties",
            Operation::Delete,
            Some(null_org),
            None
        )),
        Err(RouteError::MissingColumn {
            side: Side::Old,
            ..
        })
    ));
    for (bad, found) in [
        (json!(""), "an empty string"),
        (json!(1.5), "a non-integer number"),
        (json!({"a": 1}), "an object"),
        (
            crate::event_size::oversize(&[b'o'; 100]),
            "a value larger than REALTIME_MAX_EVENT_BYTES",
        ),
    ] {
        let mut r0 = property_row();
        r0["organizationId"] = bad;
        let err = r
            .route_drafts(&change("properties", Operation::Insert, None, Some(r0)))
            .unwrap_err();
        assert!(
            matches!(err, RouteError::BadId { found: f, .. } if f == found),
            "{err}"
        );
    }
}

#[test]
fn errors_never_quote_values() {
    let mut secret = property_row();
    secret["organizationId"] = json!({"secret": "s3cr3t"});
    let err = router()
        .route_drafts(&change("properties", Operation::Insert, None, Some(secret)))
        .unwrap_err();
    assert!(!err.to_string().contains("s3cr3t"), "{err}");
}

#[test]
fn update_without_old_row_is_an_error() {
    let err = router()
        .route_drafts(&change(
            "properties",
            Operation::Update,
            None,
            Some(property_row()),
        ))
        .unwrap_err();
    assert!(
        matches!(
            err,
            RouteError::MissingRow {
                side: Side::Old,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("REPLICA IDENTITY FULL"), "{err}");
}

#[test]
fn unrouted_tables_produce_nothing() {
    let r = router();
    assert!(
        r.route_drafts(&change(
            "sessions",
            Operation::Insert,
            None,
            Some(json!({"id": "s"}))
        ))
        .unwrap()
        .is_empty()
    );
    let other_schema = RowChange {
        schema: "audit",
        table: "properties",
        operation: Operation::Insert,
        old: None,
        new: Some(row(property_row())),
    };
    assert!(r.route_drafts(&other_schema).unwrap().is_empty());
}

// --- membership ---

fn member_row() -> Value {
    json!({"id": "m1", "userId": "u1", "organizationId": "org1", "role": "AGENT", "joined_at": "2024-01-01T00:00:00.000"})
}

#[test]
fn membership_insert_update_delete() {
    let r = router();
    let d = one(
        &r,
        &change(
            "organization_members",
            Operation::Insert,
            None,
            Some(member_row()),
        ),
    );
    assert_eq!(d.event_type, EventType::MemberJoin);
    assert_eq!(d.organization_id.as_deref(), Some("org1"));
    assert_eq!(
        d.payload,
        json!({"memberId": "u1", "organizationId": "org1", "role": "AGENT", "invitedBy": null})
    );

    let mut new = member_row();
    new["role"] = json!("ADMIN");
    let d = one(
        &r,
        &change(
            "organization_members",
            Operation::Update,
            Some(member_row()),
            Some(new),
        ),
    );
    assert_eq!(d.event_type, EventType::MemberJoin);
    assert_eq!(
        d.payload,
        json!({"memberId": "u1", "organizationId": "org1", "role": "ADMIN", "invitedBy": null})
    );

    let d = one(
        &r,
        &change(
            "organization_members",
            Operation::Delete,
            Some(member_row()),
            None,
        ),
    );
    assert_eq!(d.event_type, EventType::MemberLeave);
    assert_eq!(d.organization_id.as_deref(), Some("org1"));
    assert_eq!(
        d.payload,
        json!({"memberId": "u1", "organizationId": "org1"})
    );
}

#[test]
fn membership_moved_to_another_org_or_user_leaves_then_joins() {
    let r = router();
    for (column, value) in [("organizationId", "org2"), ("userId", "u2")] {
        let mut new = member_row();
        new[column] = json!(value);
        let drafts = r
            .route_drafts(&change(
                "organization_members",
                Operation::Update,
                Some(member_row()),
                Some(new),
            ))
            .unwrap();
        assert_eq!(drafts.len(), 2, "{column}");
        assert_eq!(drafts[0].event_type, EventType::MemberLeave);
        assert_eq!(
            drafts[0].payload,
            json!({"memberId": "u1", "organizationId": "org1"})
        );
        assert_eq!(drafts[1].event_type, EventType::MemberJoin);
        let org = if column == "organizationId" {
            "org2"
        } else {
            "org1"
        };
        let user = if column == "userId" { "u2" } else { "u1" };
        assert_eq!(drafts[1].organization_id.as_deref(), Some(org));
        assert_eq!(
            drafts[1].payload,
            json!({"memberId": user, "organizationId": org, "role": "AGENT", "invitedBy": null})
        );
    }
}

#[test]
fn membership_join_without_user_is_an_error() {
    let mut bad = member_row();
    bad["userId"] = Value::Null;
    let err = router()
        .route_drafts(&change(
            "organization_members",
            Operation::Insert,
            None,
            Some(bad),
        ))
        .unwrap_err();
    assert!(
        matches!(err, RouteError::MissingColumn { ref column, .. } if column == "userId"),
        "{err}"
    );
}

fn assert_unknown_leave(d: &Draft) {
    assert_eq!(d.event_type, EventType::MemberLeave);
    assert_eq!(d.source, Source::Postgres);
    assert_eq!(d.organization_id, None, "a broadcast");
    assert_eq!(d.user_id, None);
    assert_eq!(
        d.payload,
        json!({"memberId": null, "organizationId": null, "reason": "unknown"})
    );
    assert!(is_unknown_member_leave(d));
}

#[test]
fn membership_delete_without_its_old_row_is_a_broadcast_unknown_leave() {
    // REPLICA IDENTITY DEFAULT: the old row is the primary key only.
    let key_only = json!({"id": "m1"});
    let mut null_user = member_row();
    null_user["userId"] = Value::Null;
    let mut no_org = member_row();
    no_org.as_object_mut().unwrap().remove("organizationId");
    for old in [Some(key_only), Some(null_user), Some(no_org), None] {
        let d = one(
            &router(),
            &change("organization_members", Operation::Delete, old, None),
        );
        assert_unknown_leave(&d);
    }
}

#[test]
fn membership_update_without_its_old_row_leaves_unknown_then_joins() {
    let mut new = member_row();
    new["userId"] = json!("u2");
    let drafts = router()
        .route_drafts(&change(
            "organization_members",
            Operation::Update,
            None,
            Some(new),
        ))
        .unwrap();
    assert_eq!(drafts.len(), 2, "{drafts:?}");
    assert_unknown_leave(&drafts[0]);
    assert_eq!(drafts[1].event_type, EventType::MemberJoin);
    assert_eq!(drafts[1].payload["memberId"], "u2");
    // Even when the new row cannot be read, the leave still goes out.
    let mut bad_new = member_row();
    bad_new["userId"] = Value::Null;
    let drafts = router()
        .route_drafts(&change(
            "organization_members",
            Operation::Update,
            Some(json!({"id": "m1"})),
            Some(bad_new),
        ))
        .unwrap();
    assert_eq!(drafts.len(), 1, "{drafts:?}");
    assert_unknown_leave(&drafts[0]);
}

#[test]
fn a_routed_leave_is_not_an_unknown_leave() {
    let d = one(
        &router(),
        &change(
            "organization_members",
            Operation::Delete,
            Some(member_row()),
            None,
        ),
    );
    assert!(!is_unknown_member_leave(&d));
}

#[test]
fn property_delete_without_its_org_stays_an_error() {
    let err = router()
        .route_drafts(&change(
            "properties",
            Operation::Delete,
            Some(json!({"id": "p1"})),
            None,
        ))
        .unwrap_err();
    assert!(
        matches!(
            err,
            RouteError::MissingColumn {
                side: Side::Old,
                ..
            }
        ),
        "{err}"
    );
}

// --- organization ---

fn org_row() -> Value {
    json!({"id": "org1", "name": "Acme", "plan": "FREE", "isPersonal": false, "updated_at": "2024-01-01T00:00:00.000"})
}

#[test]
fn organization_update_and_change_type() {
    let r = router();
    let mut new = org_row();
    new["name"] = json!("Acme Realty");
    new["updated_at"] = json!("2024-01-02T00:00:00.000");
    let d = one(
        &r,
        &change(
            "organizations",
            Operation::Update,
            Some(org_row()),
            Some(new),
        ),
    );
    assert_eq!(d.event_type, EventType::OrganizationChange);
    assert_eq!(d.organization_id.as_deref(), Some("org1"));
    assert_eq!(
        d.payload,
        json!({"organizationId": "org1", "changeType": "name", "updatedBy": null,
               "changes": {"name": "Acme Realty", "updatedAt": "2024-01-02T00:00:00.000"}})
    );

    let mut new = org_row();
    new["name"] = json!("B");
    new["plan"] = json!("STARTER");
    let d = one(
        &r,
        &change(
            "organizations",
            Operation::Update,
            Some(org_row()),
            Some(new),
        ),
    );
    // Two change types at once: the default.
    assert_eq!(d.payload["changeType"], "settings");
    let mut new = org_row();
    new["plan"] = json!("STARTER");
    let d = one(
        &r,
        &change(
            "organizations",
            Operation::Update,
            Some(org_row()),
            Some(new),
        ),
    );
    assert_eq!(d.payload["changeType"], "billing");

    let mut new = org_row();
    new["isPersonal"] = json!(true);
    let d = one(
        &r,
        &change(
            "organizations",
            Operation::Update,
            Some(org_row()),
            Some(new),
        ),
    );
    assert_eq!(d.payload["changeType"], "settings");
    assert_eq!(d.payload["changes"], json!({"isPersonal": true}));
}

#[test]
fn organization_insert_and_delete_produce_nothing() {
    let r = router();
    assert!(
        r.route_drafts(&change(
            "organizations",
            Operation::Insert,
            None,
            Some(org_row())
        ))
        .unwrap()
        .is_empty()
    );
    assert!(
        r.route_drafts(&change(
            "organizations",
            Operation::Delete,
            Some(org_row()),
            None
        ))
        .unwrap()
        .is_empty()
    );
}

#[test]
fn organization_id_change_informs_both_ids() {
    let mut new = org_row();
    new["id"] = json!("org9");
    let drafts = router()
        .route_drafts(&change(
            "organizations",
            Operation::Update,
            Some(org_row()),
            Some(new),
        ))
        .unwrap();
    let orgs: Vec<_> = drafts
        .iter()
        .map(|d| d.organization_id.as_deref())
        .collect();
    assert_eq!(orgs, [Some("org1"), Some("org9")]);
    assert_eq!(drafts[0].payload["changes"], json!({"id": "org9"}));
    assert_eq!(drafts[0].payload["organizationId"], "org1");
}

// --- activity ---

fn activity_row() -> Value {
    json!({"id": "a1", "organizationId": "org1", "actorId": "u1", "actionType": "PROPERTY_CREATED",
           "entityType": "PROPERTY", "entityId": "p1", "payload": {"price": 1}, "created_at": "2024-01-01T00:00:00.000"})
}

#[test]
fn activity_insert() {
    let d = one(
        &router(),
        &change("activities", Operation::Insert, None, Some(activity_row())),
    );
    assert_eq!(d.event_type, EventType::UserActivity);
    assert_eq!(d.organization_id.as_deref(), Some("org1"));
    assert_eq!(d.user_id, None);
    assert_eq!(
        d.payload,
        json!({"userId": "u1", "action": "PROPERTY_CREATED", "resource": "PROPERTY",
               "resourceId": "p1", "metadata": {"price": 1}})
    );
    let mut sparse = activity_row();
    sparse["entityId"] = Value::Null;
    sparse["payload"] = Value::Null;
    sparse["actorId"] = Value::Null;
    let d = one(
        &router(),
        &change("activities", Operation::Insert, None, Some(sparse)),
    );
    assert_eq!(
        d.payload,
        json!({"userId": null, "action": "PROPERTY_CREATED", "resource": "PROPERTY", "metadata": null})
    );
}

#[test]
fn activity_update_and_delete_produce_nothing() {
    let r = router();
    let up = change(
        "activities",
        Operation::Update,
        Some(activity_row()),
        Some(activity_row()),
    );
    assert!(r.route_drafts(&up).unwrap().is_empty());
    let del = change("activities", Operation::Delete, Some(activity_row()), None);
    assert!(r.route_drafts(&del).unwrap().is_empty());
}

// --- notification ---

fn notification_row() -> Value {
    json!({"id": "n1", "organizationId": "org1", "userId": "u1", "title": "Hi", "message": "New lead",
           "priority": "high", "category": "lead", "metadata": {"leadId": "l1"}})
}

#[test]
fn notification_insert_goes_to_its_user_only() {
    let d = one(
        &router(),
        &change(
            "notifications",
            Operation::Insert,
            None,
            Some(notification_row()),
        ),
    );
    assert_eq!(d.event_type, EventType::NotificationNew);
    assert_eq!(d.organization_id.as_deref(), Some("org1"));
    assert_eq!(d.user_id.as_deref(), Some("u1"));
    assert_eq!(
        d.payload,
        json!({"userId": "u1", "title": "Hi", "message": "New lead", "priority": "high",
               "category": "lead", "metadata": {"leadId": "l1"}})
    );
    let mut plain = notification_row();
    plain["metadata"] = Value::Null;
    let d = one(
        &router(),
        &change("notifications", Operation::Insert, None, Some(plain)),
    );
    assert!(d.payload.get("metadata").is_none());
}

#[test]
fn notification_without_user_is_an_error_and_updates_produce_nothing() {
    let r = router();
    let mut no_user = notification_row();
    no_user["userId"] = Value::Null;
    assert!(matches!(
        r.route_drafts(&change(
            "notifications",
            Operation::Insert,
            None,
            Some(no_user)
        )),
        Err(RouteError::MissingColumn { .. })
    ));
    let up = change(
        "notifications",
        Operation::Update,
        Some(notification_row()),
        Some(notification_row()),
    );
    assert!(r.route_drafts(&up).unwrap().is_empty());
    let del = change(
        "notifications",
        Operation::Delete,
        Some(notification_row()),
        None,
    );
    assert!(r.route_drafts(&del).unwrap().is_empty());
}

// --- truncate ---

#[test]
fn truncate_of_a_routed_table_is_a_data_sync_to_everyone() {
    let r = router();
    let d = r.route_truncate("public", "properties").unwrap();
    assert_eq!(d.event_type, EventType::DataSync);
    assert_eq!(d.source, Source::Postgres);
    assert_eq!(d.organization_id, None);
    assert_eq!(d.user_id, None);
    assert_eq!(
        d.payload,
        json!({"entityType": "properties", "operation": "truncate"})
    );
    assert!(r.route_truncate("public", "sessions").is_none());
}

// --- messages ---

fn message(content: &str) -> Result<Option<Draft>, RouteError> {
    router().route_message("realtime", content.as_bytes())
}

fn message_error(content: &str) -> MessageError {
    match message(content) {
        Err(RouteError::Message(e)) => e,
        other => panic!("expected a message error, got {other:?}"),
    }
}

#[test]
fn message_to_an_organization() {
    let d = message(r#"{"type":"user.activity","organizationId":"org1","payload":{"action":"x"}}"#)
        .unwrap()
        .unwrap();
    assert_eq!(
        d,
        Draft {
            event_type: EventType::UserActivity,
            source: Source::Api,
            organization_id: Some("org1".into()),
            user_id: None,
            payload: json!({"action": "x"}),
        }
    );
}

#[test]
fn message_broadcast_and_user_targeted() {
    let d = message(r#"{"type":"system.alert","payload":{"message":"maintenance"}}"#)
        .unwrap()
        .unwrap();
    assert_eq!((d.organization_id, d.user_id), (None, None));
    assert_eq!(d.event_type, EventType::SystemAlert);

    let d = message(r#"{"type":"notification.new","organizationId":"org1","userId":"u1","payload":{"title":"t"}}"#)
        .unwrap()
        .unwrap();
    assert_eq!(d.organization_id.as_deref(), Some("org1"));
    assert_eq!(d.user_id.as_deref(), Some("u1"));

    let d = message(r#"{"type":"notification.new","userId":"u1","payload":{}}"#)
        .unwrap()
        .unwrap();
    assert_eq!(
        (d.organization_id, d.user_id.as_deref()),
        (None, Some("u1"))
    );
}

#[test]
fn other_prefixes_are_ignored() {
    let r = router();
    assert_eq!(r.route_message("realtime-heartbeat", b"").unwrap(), None);
    assert_eq!(r.route_message("other-app", b"not json").unwrap(), None);
    assert_eq!(r.route_message("Realtime", b"{}").unwrap(), None);
}

#[test]
fn bad_messages_are_refused() {
    assert!(matches!(message_error("{not json"), MessageError::Json(_)));
    assert!(matches!(message_error(""), MessageError::Json(_)));
    assert_eq!(message_error("[1]"), MessageError::NotObject);
    assert_eq!(
        message_error(r#"{"type":"nope","payload":{}}"#),
        MessageError::UnknownType("nope".into())
    );
    assert_eq!(
        message_error(r#"{"type":1,"payload":{}}"#),
        MessageError::NotString("type")
    );
    assert_eq!(
        message_error(r#"{"payload":{}}"#),
        MessageError::MissingField("type")
    );
    assert_eq!(
        message_error(r#"{"type":"system.alert"}"#),
        MessageError::MissingField("payload")
    );
    assert_eq!(
        message_error(r#"{"type":"system.alert","payload":"hi"}"#),
        MessageError::PayloadNotObject
    );
    assert_eq!(
        message_error(r#"{"type":"system.alert","payload":[1]}"#),
        MessageError::PayloadNotObject
    );
    // A misspelt organizationId must not become a broadcast.
    assert_eq!(
        message_error(r#"{"type":"system.alert","organizationID":"org1","payload":{}}"#),
        MessageError::UnknownField("organizationID".into())
    );
    assert_eq!(
        message_error(r#"{"type":"system.alert","organizationId":null,"payload":{}}"#),
        MessageError::NotString("organizationId")
    );
    assert_eq!(
        message_error(r#"{"type":"system.alert","organizationId":5,"payload":{}}"#),
        MessageError::NotString("organizationId")
    );
    assert_eq!(
        message_error(r#"{"type":"system.alert","userId":"","payload":{}}"#),
        MessageError::Empty("userId")
    );
    assert_eq!(
        message_error(r#"{"type":"notification.new","organizationId":"org1","payload":{}}"#),
        MessageError::NotificationWithoutUser
    );
}

#[test]
fn message_errors_do_not_quote_values() {
    let e = message_error(
        r#"{"type":"system.alert","organizationId":{"secret":"s3cr3t"},"payload":{}}"#,
    );
    assert!(!e.to_string().contains("s3cr3t"), "{e}");
}
