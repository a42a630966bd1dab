//! One client connection's statements. Each statement is classified first: a query
//! (`SELECT`, `EXPLAIN` of one, `DECLARE ... CURSOR FOR` one) is planned here against
//! the catalog as it is now, for the connection's organisation, checked to only read,
//! run, and encoded with exact money; session statements (`SET`, `SHOW`, transactions,
//! `FETCH`, `CLOSE`) go to the library's handlers; anything else is refused before it is
//! planned.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{DeclareType, Statement};
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters_with_server_types;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::pgwire::api::portal::{Format, Portal};
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::{FieldInfo, Response, Tag};
use datafusion_postgres::pgwire::api::stmt::{QueryParser, StoredStatement};
use datafusion_postgres::pgwire::api::store::{MemPortalStore, PortalStore};
use datafusion_postgres::pgwire::api::{ClientInfo, ClientPortalStore, METADATA_USER, Type};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::PgWireBackendMessage;
use datafusion_postgres::pgwire::types::format::FormatOptions;
use datafusion_postgres::{DfSessionService, Parser};
use futures::Sink;

use super::Shared;
use super::numeric::encode_dataframe;
use crate::query::{QueryError, read_only};

/// What a statement is allowed to be.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// Reads batches: planned, checked and run here.
    Read,
    /// Reads the catalog's names (`SHOW TABLES`): the library's handlers run it once the
    /// catalog is current.
    Describe,
    /// `DECLARE name CURSOR FOR` a reading query: planned, checked and run here, its rows
    /// encoded here (exact money) and kept for `FETCH`, which the library serves.
    Cursor,
    /// Changes only this connection's settings or transaction state.
    Session,
    /// Would define, change or write something.
    Refused(String),
}

fn kind(statement: &Statement) -> Kind {
    match statement {
        Statement::Query(_) => Kind::Read,
        Statement::Explain { statement: inner, .. } => match kind(inner) {
            Kind::Read => Kind::Read,
            _ => Kind::Refused(what(statement)),
        },
        Statement::Declare { stmts } => {
            let reads = stmts.iter().all(|d| {
                d.declare_type == Some(DeclareType::Cursor)
                    && d.for_query
                        .as_ref()
                        .is_some_and(|q| kind(&Statement::Query(q.clone())) == Kind::Read)
            });
            if reads {
                Kind::Cursor
            } else {
                Kind::Refused(what(statement))
            }
        }
        Statement::ShowTables { .. } | Statement::ShowColumns { .. } => Kind::Describe,
        Statement::Set(_)
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Discard { .. } => Kind::Session,
        other => Kind::Refused(what(other)),
    }
}

/// The statement as the user wrote it, shortened for a message.
fn what(statement: &Statement) -> String {
    let text = statement.to_string();
    let short: String = text.chars().take(60).collect();
    if short.len() < text.len() {
        format!("`{short}...`")
    } else {
        format!("`{short}`")
    }
}

/// A statement's error as the client shows it, with the SQLSTATE a Postgres client
/// expects for it.
pub fn client_error(e: QueryError) -> PgWireError {
    let code = match &e {
        QueryError::UnknownTable { .. } => "42P01",
        QueryError::ReadOnly { .. } => "25006",
        QueryError::At { .. } => "42601",
        QueryError::Warehouse(_) | QueryError::Lifecycle(_) | QueryError::Storage(_) => "58030",
        QueryError::Sql(_) | QueryError::Internal(_) => "XX000",
    };
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), e.to_string())))
}

/// Plans statements for one connection: the catalog made current for its user first.
pub struct StatementParser {
    shared: Arc<Shared>,
    ctx: Arc<SessionContext>,
    sql: PostgresCompatibilityParser,
    library: Arc<Parser>,
}

impl StatementParser {
    /// Register what the connection's user may see now, so a new batch or status is
    /// visible to the next statement.
    async fn refresh<C: ClientInfo + ?Sized>(&self, client: &C) -> PgWireResult<()> {
        let user = client.metadata().get(METADATA_USER).map(String::as_str).unwrap_or("");
        // Authentication let the user in, so the user exists; a users file reloaded
        // without them would see nothing rather than everything.
        let Some(organization) = self.shared.users.organization_of(user) else {
            return Err(client_error(QueryError::Internal(format!(
                "user `{user}` is not in the users file"
            ))));
        };
        let warehouse = self.shared.warehouse.as_organization(organization.map(str::to_string));
        warehouse.register(&self.ctx).await.map_err(client_error)
    }

    fn parse(&self, sql: &str) -> PgWireResult<Vec<Statement>> {
        self.sql.parse(sql).map_err(|e| {
            // The compatibility parser's errors carry no position; sqlparser's own,
            // on the same text, does, so the client sees a caret under the place.
            let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
            let located = datafusion::sql::sqlparser::parser::Parser::parse_sql(&dialect, sql).err();
            let e = datafusion::error::DataFusionError::SQL(Box::new(located.unwrap_or(e)), None);
            client_error(QueryError::from_datafusion(&self.ctx, sql, e))
        })
    }

    /// A reading statement's plan against the current catalog, checked to only read.
    async fn plan(&self, statement: &Statement) -> PgWireResult<LogicalPlan> {
        let sql = statement.to_string();
        let wrap = |e| client_error(QueryError::from_datafusion(&self.ctx, &sql, e));
        let plan = self
            .ctx
            .state()
            .statement_to_plan(DfStatement::Statement(Box::new(statement.clone())))
            .await
            .map_err(wrap)?;
        read_only().verify_plan(&plan).map_err(wrap)?;
        Ok(plan)
    }

    async fn run(
        &self,
        plan: LogicalPlan,
        statement: &Statement,
        format: &Format,
        options: Arc<FormatOptions>,
    ) -> PgWireResult<Response> {
        let sql = statement.to_string();
        let df = self
            .ctx
            .execute_logical_plan(plan)
            .await
            .map_err(|e| client_error(QueryError::from_datafusion(&self.ctx, &sql, e)))?;
        Ok(Response::Query(encode_dataframe(df, format, Some(options)).await?))
    }
}

impl StatementParser {
    /// `DECLARE name CURSOR FOR query`: the query is planned and checked as any read, run,
    /// and its rows encoded here (the library's encoder cannot write money past 28
    /// digits), then kept in the connection's portals, where `FETCH` finds them.
    async fn declare<C: ClientInfo + ?Sized>(
        &self,
        client: &C,
        statement: &Statement,
        portals: &dyn PortalStore<Statement = Prepared>,
    ) -> PgWireResult<Response> {
        let Statement::Declare { stmts } = statement else {
            return Err(client_error(QueryError::Internal("not a DECLARE".into())));
        };
        self.refresh(client).await?;
        for declare in stmts {
            let (Some(name), Some(query)) = (declare.names.first(), &declare.for_query) else {
                return Err(client_error(QueryError::Sql(
                    "DECLARE needs a cursor name and a FOR query".into(),
                )));
            };
            let read = Statement::Query(query.clone());
            let plan = self.plan(&read).await?;
            let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
            let Response::Query(rows) = self.run(plan, &read, &Format::UnifiedText, options).await? else {
                return Err(client_error(QueryError::Internal("a query gave no rows".into())));
            };
            let stored = Arc::new(StoredStatement::new(
                name.value.clone(),
                (read.to_string(), None),
                vec![],
            ));
            let portal = Portal::new_cursor(name.value.clone(), stored);
            portal.start(rows).await;
            portals.put_portal(Arc::new(portal));
        }
        Ok(Response::Execution(Tag::new("DECLARE CURSOR")))
    }
}

/// The connection's portals as the library keeps them (where its `FETCH` looks).
fn portals_of<C: ClientPortalStore>(client: &C) -> PgWireResult<&MemPortalStore<Prepared>>
where
    C::PortalStore: PortalStore,
{
    client
        .portal_store()
        .as_any()
        .downcast_ref::<MemPortalStore<Prepared>>()
        .ok_or_else(|| client_error(QueryError::Internal("the connection keeps no cursors".into())))
}

type Prepared = (String, Option<(Statement, LogicalPlan)>);

#[async_trait]
impl QueryParser for StatementParser {
    type Statement = Prepared;

    async fn parse_sql<C>(&self, client: &C, sql: &str, types: &[Option<Type>]) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let Some(first) = self.parse(sql)?.into_iter().next() else {
            return Ok(None);
        };
        match kind(&first) {
            Kind::Refused(what) => Err(client_error(QueryError::ReadOnly { what })),
            Kind::Read => {
                self.refresh(client).await?;
                let plan = self.plan(&first).await?;
                Ok(Some((first.to_string(), Some((first, plan)))))
            }
            Kind::Describe => {
                self.refresh(client).await?;
                self.library.parse_sql(client, sql, types).await
            }
            // Planned when executed, as the library plans its own cursors.
            Kind::Cursor => Ok(Some((
                first.to_string(),
                Some((
                    first,
                    LogicalPlan::EmptyRelation(datafusion::logical_expr::EmptyRelation {
                        produce_one_row: false,
                        schema: Arc::new(datafusion::common::DFSchema::empty()),
                    }),
                )),
            ))),
            Kind::Session => self.library.parse_sql(client, sql, types).await,
        }
    }

    fn get_parameter_types(&self, statement: &Prepared) -> PgWireResult<Vec<Type>> {
        self.library.get_parameter_types(statement)
    }

    fn get_result_schema(&self, statement: &Prepared, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        self.library.get_result_schema(statement, format)
    }
}

/// The query handlers of one connection.
pub struct Session {
    parser: Arc<StatementParser>,
    library: Arc<DfSessionService>,
}

impl Session {
    pub fn new(shared: Arc<Shared>) -> Session {
        let ctx = Arc::new(shared.session());
        let library = Arc::new(DfSessionService::new(ctx.clone()));
        let parser = Arc::new(StatementParser {
            shared,
            ctx,
            sql: PostgresCompatibilityParser::new(),
            library: library.query_parser(),
        });
        Session { parser, library }
    }
}

#[async_trait]
impl SimpleQueryHandler for Session {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = self.parser.parse(query)?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        // Every statement is checked before any runs: a refused one stops the lot.
        let mut checked = Vec::with_capacity(statements.len());
        for statement in statements {
            match kind(&statement) {
                Kind::Refused(what) => return Err(client_error(QueryError::ReadOnly { what })),
                allowed => checked.push((statement, allowed)),
            }
        }
        let mut responses = Vec::with_capacity(checked.len());
        for (statement, allowed) in checked {
            if allowed == Kind::Cursor {
                let portals = portals_of(client)?;
                responses.push(self.parser.declare(client, &statement, portals).await?);
                continue;
            }
            if allowed != Kind::Session {
                self.parser.refresh(client).await?;
            }
            if allowed == Kind::Read {
                let plan = self.parser.plan(&statement).await?;
                let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
                responses.push(self.parser.run(plan, &statement, &Format::UnifiedText, options).await?);
            } else {
                let sql = statement.to_string();
                responses.extend(SimpleQueryHandler::do_query(&*self.library, client, &sql).await?);
            }
        }
        Ok(responses)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Session {
    type Statement = Prepared;
    type QueryParser = StatementParser;

    fn query_parser(&self) -> Arc<StatementParser> {
        self.parser.clone()
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<Prepared>, max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (_, Some((statement, prepared))) = &portal.statement.statement else {
            return Ok(Response::EmptyQuery);
        };
        if kind(statement) == Kind::Cursor {
            return self.parser.declare(client, statement, client.portal_store()).await;
        }
        if kind(statement) != Kind::Read {
            // Parse refused the rest; `Describe` statements were made current there.
            return ExtendedQueryHandler::do_query(&*self.library, client, portal, max_rows).await;
        }
        let params = parameters(&self.parser, portal, prepared)?;
        // Planned again, so a statement prepared once sees the batches of now.
        self.parser.refresh(client).await?;
        let plan = self
            .parser
            .plan(statement)
            .await?
            .replace_params_with_values(&params)
            .map_err(|e| client_error(QueryError::from_datafusion(&self.parser.ctx, &statement.to_string(), e)))?;
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        self.parser
            .run(plan, statement, &portal.result_column_format, options)
            .await
    }
}

/// The portal's parameter values, decoded with the types described to the client.
fn parameters(parser: &StatementParser, portal: &Portal<Prepared>, plan: &LogicalPlan) -> PgWireResult<ParamValues> {
    let wire = parser.get_parameter_types(&portal.statement.statement)?;
    let mut inferred: Vec<(String, Option<DataType>)> = plan
        .get_parameter_types()
        .map_err(|e| PgWireError::ApiError(Box::new(e)))?
        .into_iter()
        .collect();
    inferred.sort_by_key(|(id, _)| id.trim_start_matches('$').parse::<u32>().unwrap_or(u32::MAX));
    let inferred: Vec<Option<&DataType>> = inferred.iter().map(|(_, t)| t.as_ref()).collect();
    let wire: Vec<Option<&Type>> = wire.iter().map(Some).collect();
    deserialize_parameters_with_server_types(portal, &inferred, &wire)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<Kind> {
        PostgresCompatibilityParser::new()
            .parse(sql)
            .unwrap()
            .iter()
            .map(kind)
            .collect()
    }

    #[test]
    fn only_reading_statements_run_and_the_rest_is_refused() {
        assert_eq!(
            kinds("SELECT 1; EXPLAIN SELECT 1; EXPLAIN ANALYZE SELECT 1"),
            vec![Kind::Read, Kind::Read, Kind::Read]
        );
        assert_eq!(
            kinds("SET extra_float_digits = 3; SHOW search_path; BEGIN; COMMIT"),
            vec![Kind::Session; 4]
        );
        assert_eq!(
            kinds("DECLARE c CURSOR FOR SELECT 1; FETCH ALL FROM c; CLOSE c"),
            vec![Kind::Cursor, Kind::Session, Kind::Session]
        );
        for write in [
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET a = 1",
            "DELETE FROM t",
            "CREATE TABLE t (a int)",
            "CREATE VIEW v AS SELECT 1",
            "DROP TABLE t",
            "COPY t TO '/tmp/out.csv'",
            "EXPLAIN INSERT INTO t VALUES (1)",
            "PREPARE p AS SELECT 1",
        ] {
            assert!(
                matches!(kinds(write)[..], [Kind::Refused(_)]),
                "{write} was not refused"
            );
        }
    }
}
