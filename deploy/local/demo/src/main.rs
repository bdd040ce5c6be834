//! `realtime-demo`: the backend of the local cluster's demo page (`make up`).
//!
//! It plays the application's part (Oikion's own server) so that the realtime
//! layer can be watched end to end in a browser: it serves the page, lists the
//! demo organizations and users, mints an Auth.js *database session* for the
//! chosen user, and inserts, updates and deletes properties. It never talks to
//! Redis or the gateways: the page's live events come from the gateways'
//! `/api/realtime/stream`, fed by the ingestor from the very rows written here.
//!
//! nginx serves this process and the gateways on one origin (see
//! `deploy/local/up.sh`), so the session cookie this process sets
//! (`authjs.session-token`, `HttpOnly`, `SameSite=Lax`, `Path=/`) is the
//! cookie the browser's `EventSource` then sends to the gateways, which look
//! it up in the `sessions` table exactly as they would an Auth.js session.
//!
//! # API (JSON; every error is `{"error": "<one line>"}` with a 4xx/5xx status)
//!
//! | request | answer |
//! |---|---|
//! | `GET /` , `GET /demo.js` | the page and its script (no build step) |
//! | `GET /healthz` | `ok` while the process runs |
//! | `GET /api/demo/organizations` | `[{id, name, plan, members: [{userId, name, role}]}]` |
//! | `GET /api/demo/users` | `[{id, name, email, organizations: [{id, name, role}]}]` |
//! | `POST /api/demo/session` `{"userId"}` | `{userId, name, expires}` + `Set-Cookie`; 404 for an unknown user |
//! | `GET /api/demo/session` | `{userId, name}` of the cookie's session; 401 without one |
//! | `DELETE /api/demo/session` | deletes the session row and clears the cookie |
//! | `GET /api/demo/organizations/{org}/properties` | `[property]`, newest first |
//! | `POST /api/demo/organizations/{org}/properties` | 201 `property` (a new random listing) |
//! | `PATCH /api/demo/organizations/{org}/properties/{id}` | `property` (price +1,000, next status) |
//! | `DELETE /api/demo/organizations/{org}/properties/{id}` | `{id}`; 404 when it is not there |
//!
//! The property routes need a session whose user is a member of `{org}`
//! (401/403 otherwise), and run with `app.current_organization` set in
//! their transaction, as the app does for the table's row-level security.
//!
//! This is a development tool: it has no CSRF protection and mints sessions
//! for anyone who asks. Never expose it beyond loopback.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use axum::{Json, Router};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use realtime_shared::config::{parse_args, parse_positive_duration, runtime};
use realtime_shared::shutdown;
use serde::Deserialize;
use serde_json::{Value, json};

/// The Auth.js v5 session cookie the gateways read first (plain `http`, so
/// not the `__Secure-` variant).
const SESSION_COOKIE: &str = "authjs.session-token";
/// The page and its script, compiled in so the binary serves them from any
/// working directory (`make up` rebuilds it when they change).
const INDEX_HTML: &str = include_str!("../index.html");
const DEMO_JS: &str = include_str!("../demo.js");
/// Longest wait for a pooled Postgres connection, so a request fails with
/// 503 instead of hanging while Postgres is down.
const DB_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings: each is an environment variable and the same-named flag.
#[derive(clap::Parser, Debug)]
#[command(
    name = "realtime-demo",
    version,
    about = "The local cluster's demo page and its small JSON API over the demo database."
)]
struct Config {
    /// Postgres URL of the demo database (the one the ingestor streams).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Address of the page and the API; nginx proxies to it.
    #[arg(long, env = "REALTIME_DEMO_LISTEN", default_value = "127.0.0.1:8090")]
    realtime_demo_listen: SocketAddr,
    /// Lifetime of a minted session (e.g. 1d, 2h).
    #[arg(
        long,
        env = "REALTIME_DEMO_SESSION_TTL",
        default_value = "1d",
        value_parser = parse_positive_duration
    )]
    realtime_demo_session_ttl: Duration,
}

struct App {
    pool: Pool,
    session_ttl: Duration,
}

type Shared = State<Arc<App>>;

fn main() -> ExitCode {
    let config: Config = match parse_args() {
        Ok(config) => config,
        Err(code) => return code,
    };
    init_logs();
    let runtime = match runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async {
        match run(config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`). Plain
/// `tracing-subscriber`: a local tool needs no trace export.
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Checks the database, binds, serves until SIGTERM/SIGINT.
async fn run(config: Config) -> Result<(), String> {
    // The same sslmode/sslrootcert handling as the ingestor and gateway.
    let (pg, tls) = realtime_shared::postgres_tls::parse(&config.database_url)
        .map_err(|e| format!("DATABASE_URL: {e}"))?;
    let connector = tls.connector().map_err(|e| format!("DATABASE_URL: {e}"))?;
    let manager = Manager::from_config(
        pg,
        connector,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(4)
        .wait_timeout(Some(DB_TIMEOUT))
        .create_timeout(Some(DB_TIMEOUT))
        .recycle_timeout(Some(DB_TIMEOUT))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| format!("DATABASE_URL: {e}"))?;
    // Fail at start, with one line, when the database is not the demo one.
    let client = pool
        .get()
        .await
        .map_err(|e| format!("DATABASE_URL: cannot connect: {e}"))?;
    client
        .query_one("SELECT count(*) FROM organizations", &[])
        .await
        .map_err(|e| format!("DATABASE_URL: not the demo database (Oikion schema): {e}"))?;
    drop(client);

    let app = Arc::new(App {
        pool,
        session_ttl: config.realtime_demo_session_ttl,
    });
    let listener = tokio::net::TcpListener::bind(config.realtime_demo_listen)
        .await
        .map_err(|e| {
            format!(
                "REALTIME_DEMO_LISTEN: cannot bind {}: {e}",
                config.realtime_demo_listen
            )
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("REALTIME_DEMO_LISTEN: {e}"))?;
    tracing::info!(listen = %addr, "demo page and API listening");
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown::signal())
        .await
        .map_err(|e| format!("serving: {e}"))
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/demo.js", get(script))
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/demo/organizations", get(organizations))
        .route("/api/demo/users", get(users))
        .route(
            "/api/demo/session",
            get(current_session)
                .post(create_session)
                .delete(delete_session),
        )
        .route(
            "/api/demo/organizations/{org}/properties",
            get(list_properties).post(create_property),
        )
        .route(
            "/api/demo/organizations/{org}/properties/{id}",
            patch(update_property).delete(delete_property),
        )
        .with_state(app)
}

// --- errors -------------------------------------------------------------------

/// A refusal or failure, answered as `{"error": message}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The error's text names the statement's problem, never row values.
        tracing::warn!(error = %e, "database error");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database error: {e}"),
        )
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        tracing::warn!(error = %e, "database unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unavailable: {e}"),
        )
    }
}

type ApiResult<T> = Result<T, ApiError>;

// --- static files -------------------------------------------------------------

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The page changes with the binary: never serve a stale copy.
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    static_file("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> Response {
    static_file("text/javascript; charset=utf-8", DEMO_JS)
}

// --- directory ----------------------------------------------------------------

/// Runs a query whose single row holds one `json` column and returns it.
async fn json_query(
    app: &App,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> ApiResult<Value> {
    let client = app.pool.get().await?;
    let row = client.query_one(sql, params).await?;
    Ok(row.get(0))
}

async fn organizations(State(app): Shared) -> ApiResult<Json<Value>> {
    let sql = r#"
        SELECT coalesce(json_agg(json_build_object(
                 'id', o.id, 'name', o.name, 'plan', o.plan,
                 'members', (SELECT coalesce(json_agg(json_build_object(
                                 'userId', u.id, 'name', coalesce(u.name, u.id), 'role', m.role)
                               ORDER BY u.name, u.id), '[]'::json)
                             FROM organization_members m JOIN users u ON u.id = m."userId"
                             WHERE m."organizationId" = o.id))
               ORDER BY o.name, o.id), '[]'::json)
        FROM organizations o"#;
    Ok(Json(json_query(&app, sql, &[]).await?))
}

async fn users(State(app): Shared) -> ApiResult<Json<Value>> {
    let sql = r#"
        SELECT coalesce(json_agg(json_build_object(
                 'id', u.id, 'name', coalesce(u.name, u.id), 'email', u.email,
                 'organizations', (SELECT coalesce(json_agg(json_build_object(
                                       'id', o.id, 'name', o.name, 'role', m.role)
                                     ORDER BY o.name, o.id), '[]'::json)
                                   FROM organization_members m
                                   JOIN organizations o ON o.id = m."organizationId"
                                   WHERE m."userId" = u.id))
               ORDER BY u.name, u.id), '[]'::json)
        FROM users u"#;
    Ok(Json(json_query(&app, sql, &[]).await?))
}

// --- sessions -----------------------------------------------------------------

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

/// The signed-in user: `(id, display name)` of the cookie's unexpired session.
async fn session_user(app: &App, headers: &HeaderMap) -> ApiResult<(String, String)> {
    let token = cookie(headers, SESSION_COOKIE)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "no session: pick a user first"))?;
    let client = app.pool.get().await?;
    // `expires` is a UTC `timestamp(3)`, as Prisma writes it and the gateways read it.
    let row = client
        .query_opt(
            r#"SELECT u.id, coalesce(u.name, u.id)
               FROM sessions s JOIN users u ON u.id = s."userId"
               WHERE s."sessionToken" = $1 AND s.expires > (now() AT TIME ZONE 'UTC')"#,
            &[&token],
        )
        .await?;
    row.map(|r| (r.get(0), r.get(1))).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the session is unknown or expired: pick a user again",
        )
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionRequest {
    user_id: String,
}

/// Mints a database session for the chosen user (a new random token, as
/// Auth.js's database strategy does at sign-in) and sets it as the cookie.
async fn create_session(
    State(app): Shared,
    Json(request): Json<SessionRequest>,
) -> ApiResult<Response> {
    let token = random_hex::<32>();
    let id = format!("sess_demo_{}", random_hex::<8>());
    let ttl_ms = i64::try_from(app.session_ttl.as_millis()).unwrap_or(i64::MAX);
    let client = app.pool.get().await?;
    let row = client
        .query_opt(
            r#"INSERT INTO sessions (id, "sessionToken", "userId", expires)
               SELECT $1, $2, u.id,
                      (now() AT TIME ZONE 'UTC') + make_interval(secs => $4::bigint / 1000.0)
               FROM users u WHERE u.id = $3
               RETURNING (SELECT coalesce(name, id) FROM users WHERE id = $3),
                         to_char(expires, 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"#,
            &[&id, &token, &request.user_id, &ttl_ms],
        )
        .await?;
    let Some(row) = row else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no user {:?}", request.user_id),
        ));
    };
    let name: String = row.get(0);
    let expires: String = row.get(1);
    tracing::info!(user = %request.user_id, session = %id, "session minted");
    let cookie = format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}",
        app.session_ttl.as_secs()
    );
    let mut response = Json(json!({
        "userId": request.user_id,
        "name": name,
        "expires": expires,
    }))
    .into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cookie: {e}"))
        })?,
    );
    Ok(response)
}

async fn current_session(State(app): Shared, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let (user_id, name) = session_user(&app, &headers).await?;
    Ok(Json(json!({ "userId": user_id, "name": name })))
}

/// Signs out: the session row goes (the gateways then refuse the cookie) and
/// the cookie is cleared.
async fn delete_session(State(app): Shared, headers: HeaderMap) -> ApiResult<Response> {
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        let client = app.pool.get().await?;
        client
            .execute(
                r#"DELETE FROM sessions WHERE "sessionToken" = $1"#,
                &[&token],
            )
            .await?;
    }
    Ok((
        [(
            header::SET_COOKIE,
            format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"),
        )],
        Json(json!({ "signedOut": true })),
    )
        .into_response())
}

fn random_hex<const N: usize>() -> String {
    let bytes: [u8; N] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// --- properties ---------------------------------------------------------------

/// The columns a property is answered with, as one `json` value of row `p`.
const PROPERTY_JSON: &str = r#"json_build_object(
    'id', p.id, 'organizationId', p."organizationId", 'createdBy', p."createdBy",
    'propertyType', p."propertyType", 'status', p.status,
    'transactionType', p."transactionType", 'price', p.price::text,
    'bedrooms', p.bedrooms, 'size', p.size::text, 'description', p.description,
    'updatedAt', to_char(p.updated_at, 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))"#;

/// The signed-in user's id and a pooled connection, once the user is known
/// to be a member of `org` (401 without a session, 403 for a non-member).
async fn member_of(
    app: &App,
    headers: &HeaderMap,
    org: &str,
) -> ApiResult<(String, deadpool_postgres::Object)> {
    let (user_id, _) = session_user(app, headers).await?;
    let client = app.pool.get().await?;
    let member = client
        .query_opt(
            r#"SELECT 1 FROM organization_members WHERE "userId" = $1 AND "organizationId" = $2"#,
            &[&user_id, &org],
        )
        .await?;
    if member.is_none() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{user_id} is not a member of {org}"),
        ));
    }
    Ok((user_id, client))
}

/// Runs `sql` (one row of one `json` column, or none) in a transaction with
/// `app.current_organization` set to `org`, as the app sets it for the
/// table's row-level security.
async fn in_org(
    client: &mut deadpool_postgres::Object,
    org: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> ApiResult<Option<Value>> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT set_config('app.current_organization', $1, true)",
        &[&org],
    )
    .await?;
    let row = tx.query_opt(sql, params).await?;
    tx.commit().await?;
    Ok(row.map(|r| r.get(0)))
}

async fn list_properties(
    State(app): Shared,
    Path(org): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let sql = format!(
        r#"SELECT coalesce(json_agg({PROPERTY_JSON} ORDER BY p.updated_at DESC, p.id), '[]'::json)
           FROM properties p WHERE p."organizationId" = $1"#
    );
    let (_, mut client) = member_of(&app, &headers, &org).await?;
    let list = in_org(&mut client, &org, &sql, &[&org]).await?;
    Ok(Json(list.unwrap_or_else(|| json!([]))))
}

/// Inserts a new listing with random figures, created by the signed-in user.
async fn create_property(
    State(app): Shared,
    Path(org): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (user_id, mut client) = member_of(&app, &headers, &org).await?;
    let id = format!("prop_demo_{}", random_hex::<4>());
    let seed = i32::from(rand::random::<u8>());
    let sql = format!(
        r#"WITH p AS (
             INSERT INTO properties (id, "organizationId", "createdBy", "propertyType", status,
                                     "transactionType", price, bedrooms, bathrooms, size, description)
             VALUES ($1, $2, $3,
                     (ARRAY['APARTMENT','HOUSE','LAND','COMMERCIAL']::"PropertyType"[])[1 + $4 % 4],
                     'AVAILABLE', 'SALE', 100000 + $4 * 1000, 1 + $4 % 5, 1 + $4 % 3,
                     40 + $4, 'Demo listing created from the demo page.')
             RETURNING *)
           SELECT {PROPERTY_JSON} FROM p"#
    );
    let property = in_org(&mut client, &org, &sql, &[&id, &org, &user_id, &seed]).await?;
    tracing::info!(organization = %org, property = %id, "property created");
    Ok((StatusCode::CREATED, Json(property.unwrap_or(Value::Null))).into_response())
}

/// Raises the price by 1,000 and moves the status on (AVAILABLE → UNDER_OFFER
/// → SOLD → AVAILABLE), so the event shows two changed fields.
async fn update_property(
    State(app): Shared,
    Path((org, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let sql = format!(
        r#"WITH p AS (
             UPDATE properties SET
               price = price + 1000,
               status = CASE status WHEN 'AVAILABLE' THEN 'UNDER_OFFER'::"PropertyStatus"
                                    WHEN 'UNDER_OFFER' THEN 'SOLD'::"PropertyStatus"
                                    ELSE 'AVAILABLE'::"PropertyStatus" END,
               updated_at = now()
             WHERE id = $1 AND "organizationId" = $2
             RETURNING *)
           SELECT {PROPERTY_JSON} FROM p"#
    );
    let (_, mut client) = member_of(&app, &headers, &org).await?;
    let property = in_org(&mut client, &org, &sql, &[&id, &org]).await?;
    let property = property.ok_or_else(|| not_found(&org, &id))?;
    tracing::info!(organization = %org, property = %id, "property updated");
    Ok(Json(property))
}

async fn delete_property(
    State(app): Shared,
    Path((org, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let sql = r#"DELETE FROM properties WHERE id = $1 AND "organizationId" = $2
                 RETURNING json_build_object('id', id)"#;
    let (_, mut client) = member_of(&app, &headers, &org).await?;
    let deleted = in_org(&mut client, &org, sql, &[&id, &org]).await?;
    let deleted = deleted.ok_or_else(|| not_found(&org, &id))?;
    tracing::info!(organization = %org, property = %id, "property deleted");
    Ok(Json(deleted))
}

fn not_found(org: &str, id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no property {id:?} in {org}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_session_cookie_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; authjs.session-token=abc ; b=2"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("c=3"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "c"), Some("3"));
        assert_eq!(cookie(&headers, "missing"), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("authjs.session-token="),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), None);
    }

    #[test]
    fn random_tokens_are_hex_of_the_asked_length() {
        let token = random_hex::<32>();
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(token, random_hex::<32>());
    }
}
