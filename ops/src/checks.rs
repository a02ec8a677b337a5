//! Post-recovery verification: the checks of `lifeline verify-recovery` and of a drill, each a
//! `[PASS]`/`[FAIL]` line, then totals and `RESULT:`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::http::{Request, send};

const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// `[verify]` in the configuration file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct VerifyConfig {
    /// How many percent fewer rows than the backup recorded a table may hold and still pass;
    /// more rows always pass (writes after the backup are normal).
    pub row_count_tolerance_percent: Option<f64>,
    pub http: Vec<HttpCheck>,
    pub worker: Vec<WorkerCheck>,
    pub login: Option<LoginFlow>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HttpCheck {
    pub name: String,
    pub url: String,
    /// The URL to check instead with `--target staging`.
    pub staging_url: Option<String>,
    #[serde(default = "ok_status")]
    pub expect_status: u16,
    /// Text the body must contain.
    pub contains: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct WorkerCheck {
    pub name: String,
    /// A shell command that exits 0 while the worker is alive.
    pub command: String,
}

/// A login and one authenticated request with the session it returned (smoke tests).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LoginFlow {
    pub url: String,
    /// The request body; `${NAME}` is replaced by the environment variable NAME, so the
    /// password stays out of the file.
    pub body: String,
    #[serde(default = "json_type")]
    pub content_type: String,
    #[serde(default = "ok_status")]
    pub expect_status: u16,
    /// Requested with the cookies the login set.
    pub then_url: Option<String>,
    #[serde(default = "ok_status")]
    pub then_status: u16,
}

fn ok_status() -> u16 {
    200
}

fn json_type() -> String {
    "application/json".into()
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

impl Check {
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            passed: true,
            detail: detail.into(),
        }
    }

    pub fn fail(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            passed: false,
            detail: detail.into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: String,
    pub target: String,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn new(mode: &str, target: &str) -> Self {
        Self {
            mode: mode.into(),
            target: target.into(),
            checks: Vec::new(),
        }
    }

    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    pub fn failures(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| !c.passed).collect()
    }

    /// `2 of 5 checks failed (full production)`: the notification's summary.
    pub fn failure_summary(&self) -> String {
        format!(
            "{} of {} checks failed ({} {})",
            self.failures().len(),
            self.checks.len(),
            self.mode,
            self.target
        )
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let mark = if c.passed { "[PASS]" } else { "[FAIL]" };
            let _ = writeln!(out, "{mark} {}: {}", c.name, c.detail);
        }
        let failed = self.failures().len();
        // The seed's scripts' closing lines, which operators and their tooling grep for.
        let _ = writeln!(out, "Total Checks: {}", self.checks.len());
        let _ = writeln!(out, "Passed: {}", self.checks.len() - failed);
        let _ = writeln!(out, "Failed: {failed}");
        let verdict = if failed == 0 {
            "ALL CHECKS PASSED"
        } else {
            "SOME CHECKS FAILED"
        };
        let _ = writeln!(out, "RESULT: {verdict}");
        out
    }

    pub fn json(&self) -> serde_json::Value {
        let failed = self.failures().len();
        serde_json::json!({
            "mode": self.mode,
            "target": self.target,
            "checks": self.checks,
            "total": self.checks.len(),
            "passed": self.checks.len() - failed,
            "failed": failed,
            "result": if failed == 0 { "PASS" } else { "FAIL" },
        })
    }
}

/// What the restored backup recorded about its database, to compare the server with.
#[derive(Debug, Clone, Default)]
pub struct RecordedRows {
    pub backup_id: String,
    pub exact: BTreeMap<String, i64>,
    pub estimated: BTreeMap<String, i64>,
}

/// PostgreSQL reachable, the database present, and (with `recorded`) every table the backup
/// recorded present with no more than `tolerance_percent` fewer rows than recorded.
pub async fn postgres(
    server: &crate::pg::Server,
    node: &str,
    recorded: Option<&RecordedRows>,
    tolerance_percent: f64,
) -> Vec<Check> {
    let dbname = server.config.get_dbname().unwrap_or("postgres").to_string();
    let client = match crate::pg::connect(server, node, CHECK_TIMEOUT).await {
        Ok(c) => c,
        // invalid_catalog_name: the server answered, the database is not there. (A missing
        // role also "does not exist", so the SQLSTATE decides, not the words.)
        Err(e) if e.to_string().contains("(SQLSTATE 3D000)") => {
            return vec![
                Check::pass("PostgreSQL reachable", format!("{node} answers")),
                Check::fail(
                    "database present",
                    format!("database {dbname:?} does not exist on {node}"),
                ),
            ];
        }
        Err(e) => return vec![Check::fail("PostgreSQL reachable", e.to_string())],
    };
    let mut checks = Vec::new();
    match client
        .query_one(
            "SELECT current_setting('server_version'), pg_is_in_recovery()",
            &[],
        )
        .await
    {
        Ok(row) => {
            let version: String = row.get(0);
            let recovering: bool = row.get(1);
            checks.push(Check::pass(
                "PostgreSQL reachable",
                format!(
                    "{node}, PostgreSQL {version}, {}",
                    if recovering {
                        "in recovery (read-only)"
                    } else {
                        "accepting writes"
                    }
                ),
            ));
            checks.push(Check::pass("database present", format!("{dbname:?}")));
        }
        Err(e) => {
            checks.push(Check::fail("PostgreSQL reachable", format!("{node}: {e}")));
            return checks;
        }
    }
    if let Some(recorded) = recorded {
        checks.extend(tables(&client, recorded, tolerance_percent).await);
    }
    checks
}

async fn tables(
    client: &tokio_postgres::Client,
    recorded: &RecordedRows,
    tolerance_percent: f64,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let all = recorded
        .exact
        .iter()
        .map(|(t, n)| (t, *n, true))
        .chain(recorded.estimated.iter().map(|(t, n)| (t, *n, false)));
    for (table, want, exact) in all {
        let name = format!("table {table}");
        let Some((schema, relation)) = table.split_once('.') else {
            continue;
        };
        let sql = if exact {
            format!(
                "SELECT count(*) FROM {}.{}",
                quote_ident(schema),
                quote_ident(relation)
            )
        } else {
            format!(
                "SELECT reltuples::bigint FROM pg_class WHERE oid = '{}.{}'::regclass",
                quote_ident(schema).replace('\'', "''"),
                quote_ident(relation).replace('\'', "''")
            )
        };
        let have: i64 = match client.query_one(&sql, &[]).await {
            Ok(row) => row.get(0),
            Err(e) => {
                checks.push(Check::fail(
                    name,
                    format!("cannot be read: {}", db_message(&e)),
                ));
                continue;
            }
        };
        let how = if exact { "rows" } else { "rows (estimated)" };
        let detail = format!(
            "{have} {how}, backup {} recorded {want}",
            recorded.backup_id
        );
        // Rows written since the backup are expected (a restore replays WAL past it); rows
        // missing beyond the tolerance are what data loss looks like.
        let missing = want.saturating_sub(have).max(0);
        let lost = if want == 0 {
            0.0
        } else {
            missing as f64 * 100.0 / want as f64
        };
        let allowed = if exact {
            tolerance_percent
        } else {
            tolerance_percent.max(10.0)
        };
        if lost <= allowed {
            checks.push(Check::pass(name, detail));
        } else {
            checks.push(Check::fail(
                name,
                format!("{detail}: {lost:.1}% fewer, more than the {allowed}% allowed"),
            ));
        }
    }
    if checks.is_empty() {
        checks.push(Check::pass(
            "tables",
            format!("backup {} recorded no tables", recorded.backup_id),
        ));
    }
    checks
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_string())
}

/// One configured HTTP check.
pub async fn http(check: &HttpCheck, staging: bool) -> Check {
    let url = match (&check.staging_url, staging) {
        (Some(url), true) => url,
        _ => &check.url,
    };
    let name = format!("HTTP {}", check.name);
    match send(Request::get(url, CHECK_TIMEOUT)).await {
        Err(e) => Check::fail(name, e),
        Ok(r) if r.status != check.expect_status => Check::fail(
            name,
            format!("HTTP {} (expected {})", r.status, check.expect_status),
        ),
        Ok(r) => match &check.contains {
            Some(text) if !r.body.contains(text.as_str()) => Check::fail(
                name,
                format!("HTTP {} but the body lacks {text:?}", r.status),
            ),
            _ => Check::pass(name, format!("HTTP {}", r.status)),
        },
    }
}

/// One configured worker liveness command.
pub async fn worker(check: &WorkerCheck) -> Check {
    let name = format!("worker {}", check.name);
    match crate::process::run_shell(&check.command, CHECK_TIMEOUT).await {
        Ok(_) => Check::pass(name, "alive (command exited 0)"),
        Err(e) => Check::fail(name, e.to_string()),
    }
}

/// The smoke test's login flow: log in, then use the session.
pub async fn login(flow: &LoginFlow) -> Check {
    let name = "login flow";
    let body = expand_env(&flow.body);
    let request = Request {
        method: "POST",
        url: flow.url.clone(),
        body: Some((flow.content_type.clone(), body)),
        cookies: Vec::new(),
        timeout: CHECK_TIMEOUT,
    };
    let response = match send(request).await {
        Ok(r) => r,
        Err(e) => return Check::fail(name, format!("login: {e}")),
    };
    if response.status != flow.expect_status {
        return Check::fail(
            name,
            format!(
                "login answered HTTP {} (expected {})",
                response.status, flow.expect_status
            ),
        );
    }
    let Some(then_url) = &flow.then_url else {
        return Check::pass(name, format!("login HTTP {}", response.status));
    };
    let mut next = Request::get(then_url, CHECK_TIMEOUT);
    next.cookies = response.cookies;
    match send(next).await {
        Ok(r) if r.status == flow.then_status => Check::pass(
            name,
            format!(
                "login HTTP {}, then HTTP {} with the session",
                response.status, r.status
            ),
        ),
        Ok(r) => Check::fail(
            name,
            format!(
                "logged in, but the session request answered HTTP {} (expected {})",
                r.status, flow.then_status
            ),
        ),
        Err(e) => Check::fail(name, format!("after login: {e}")),
    }
}

/// `${NAME}` → the environment variable NAME (empty when unset).
fn expand_env(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        out.push_str(&std::env::var(&after[..end]).unwrap_or_default());
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_ends_with_totals_and_the_result() {
        let mut report = Report::new("full", "production");
        report
            .checks
            .push(Check::pass("PostgreSQL reachable", "ok"));
        assert!(
            report
                .text()
                .ends_with("Total Checks: 1\nPassed: 1\nFailed: 0\nRESULT: ALL CHECKS PASSED\n")
        );
        report
            .checks
            .push(Check::fail("HTTP api", "HTTP 500 (expected 200)"));
        let text = report.text();
        assert!(
            text.contains("[FAIL] HTTP api: HTTP 500 (expected 200)\n"),
            "{text}"
        );
        assert!(
            text.ends_with("Failed: 1\nRESULT: SOME CHECKS FAILED\n"),
            "{text}"
        );
        assert_eq!(report.json()["failed"], 1);
        assert_eq!(report.json()["result"], "FAIL");
    }

    #[test]
    fn the_failure_summary_counts_and_names_the_run() {
        let mut report = Report::new("smoke-test", "staging");
        report
            .checks
            .push(Check::pass("PostgreSQL reachable", "ok"));
        report.checks.push(Check::fail("login flow", "HTTP 401"));
        assert_eq!(
            report.failure_summary(),
            "1 of 2 checks failed (smoke-test staging)"
        );
    }

    #[test]
    fn env_references_are_expanded() {
        let key = "LIFELINE_TEST_EXPAND_ENV_VALUE";
        let home = std::env::var("PATH").unwrap_or_default();
        assert_eq!(
            expand_env("{\"p\":\"${PATH}\"}"),
            format!("{{\"p\":\"{home}\"}}")
        );
        assert_eq!(expand_env(&format!("a ${{{key}}} b")), "a  b");
        assert_eq!(expand_env("no ${ end"), "no ${ end");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
