//! The routing config (`REALTIME_ROUTES`): any text parses to routes or a
//! `RoutesError`, and accepted routes are consistent (every table is found
//! under its own name, its required columns listed).

use realtime_ingestor::routes::Routes;

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(routes) = Routes::from_toml_str(text) else {
        return;
    };
    for table in routes.tables() {
        let found = routes.find(table.schema(), table.table());
        assert!(
            found.is_some(),
            "{}.{} not found",
            table.schema(),
            table.table()
        );
        let required = table.required_columns();
        let first = table
            .org_column()
            .or_else(|| table.parents().first().map(|p| p.column.as_str()));
        assert_eq!(required.first().copied(), first);
        for parent in table.parents() {
            let target = routes.find(&parent.schema, &parent.table);
            assert!(
                target.is_some_and(|t| t.org_column().is_some() && t.key_column().is_some()),
                "parent {}.{} is not a routed table with its own organization",
                parent.schema,
                parent.table
            );
        }
        for (i, column) in required.iter().enumerate() {
            assert!(!required[..i].contains(column), "{column} listed twice");
        }
    }
}
