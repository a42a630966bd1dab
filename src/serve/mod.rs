//! `billflow serve`: the batches over the Postgres wire protocol, so psql, DBeaver,
//! Metabase, Grafana or any Postgres driver can query them. The same catalog as
//! `billflow query` ([`crate::query`]), read-only, with each user seeing what `--as ORG`
//! sees. The protocol is the `pgwire` library (through `datafusion-postgres`, which also
//! supplies `pg_catalog` for clients' introspection); billflow keeps the parts that
//! decide what a client may do and see: authentication ([`users`]), which statements
//! run ([`session`]) and how money is encoded ([`numeric`]).

pub mod numeric;
pub mod session;
pub mod users;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::prelude::SessionContext;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::pgwire::api::auth::DefaultServerParameterProvider;
use datafusion_postgres::pgwire::api::auth::StartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::SASLAuthStartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::scram::ScramAuth;
use datafusion_postgres::pgwire::api::cancel::CancelHandler;
use datafusion_postgres::pgwire::api::cancel::DefaultCancelHandler;
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::{
    ClientInfo, ConnectionManager, ErrorHandler, METADATA_USER, PgWireServerHandlers,
};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use datafusion_postgres::pgwire::tokio::process_socket;
use datafusion_postgres::pgwire::tokio::tokio_rustls::TlsAcceptor;
use datafusion_postgres::pgwire::tokio::tokio_rustls::rustls::{self, ServerConfig};
use futures::Sink;
use std::fmt::Debug;
use tokio::net::TcpListener;

use crate::query::Warehouse;
use session::Session;
use users::{Users, UsersSource};

/// Where and how the server listens.
pub struct ServeOptions {
    pub host: String,
    /// 0: any free port (the bound address is returned by [`Server::bind`]).
    pub port: u16,
    /// A PEM certificate chain and its private key: TLS, or no server at all.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("TLS: {path}: {reason} (the server does not start without the TLS it was asked for)")]
    Tls { path: String, reason: String },
    #[error("listening on {address}: {reason}")]
    Listen { address: String, reason: String },
    #[error(transparent)]
    Users(#[from] users::UsersError),
}

/// What every connection shares: the warehouse and the users.
pub struct Shared {
    warehouse: Warehouse,
    users: Arc<Users>,
}

impl Shared {
    /// A connection's session: billflow's engine settings and functions, plus the
    /// `pg_catalog` clients read to list and describe tables.
    fn session(&self) -> SessionContext {
        let ctx = self.warehouse.empty_session();
        if let Err(e) = setup_pg_catalog(&ctx, "datafusion", EmptyContextProvider) {
            // Queries still run; only clients' introspection is missing.
            tracing::warn!("pg_catalog: {e}");
        }
        ctx
    }
}

/// A bound server, ready to accept connections.
pub struct Server {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    connections: Arc<ConnectionManager>,
}

impl Server {
    /// Bind to the address and set TLS up; any TLS problem is an error, never plain text.
    pub async fn bind(warehouse: Warehouse, users: Users, options: &ServeOptions) -> Result<Server, ServeError> {
        let tls = match &options.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
            None => None,
        };
        let address = format!("{}:{}", options.host, options.port);
        let listener = TcpListener::bind(&address).await.map_err(|e| ServeError::Listen {
            address: address.clone(),
            reason: e.to_string(),
        })?;
        Ok(Server {
            listener,
            tls,
            shared: Arc::new(Shared {
                warehouse,
                users: Arc::new(users),
            }),
            connections: Arc::new(ConnectionManager::new()),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn users(&self) -> usize {
        self.shared.users.len()
    }

    /// Accept connections until the task is dropped; a connection's failure is logged
    /// and never stops the server.
    pub async fn run(self) {
        loop {
            let (socket, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("accepting a connection: {e}");
                    continue;
                }
            };
            let handlers = Connection::new(self.shared.clone(), self.connections.clone(), self.tls.is_some());
            let tls = self.tls.clone();
            tokio::spawn(async move {
                if let Err(e) = process_socket(socket, tls, handlers).await {
                    tracing::info!("connection from {peer}: {e}");
                }
            });
        }
    }
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, ServeError> {
    let fail = |path: &Path, reason: String| ServeError::Tls {
        path: path.display().to_string(),
        reason,
    };
    let read = |path: &Path| std::fs::read(path).map_err(|e| fail(path, e.to_string()));
    let chain = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(cert, format!("not a PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(fail(cert, "no certificate in the file".into()));
    }
    let private = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|e| fail(key, format!("not a PEM private key: {e}")))?
        .ok_or_else(|| fail(key, "no private key in the file".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
        .map_err(|e| {
            fail(
                key,
                format!("the certificate and key do not make a TLS configuration: {e}"),
            )
        })?;
    // What Postgres 17 clients ask for with direct TLS.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The handlers of one connection: its own authentication state and session.
struct Connection {
    startup: Arc<RequireTls>,
    session: Arc<Session>,
    cancel: Arc<DefaultCancelHandler>,
}

impl Connection {
    fn new(shared: Arc<Shared>, connections: Arc<ConnectionManager>, tls: bool) -> Connection {
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = format!("16.6-billflow-{}", env!("CARGO_PKG_VERSION"));
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        parameters.scram_iterations = users::ITERATIONS;
        let mut scram = ScramAuth::new(Arc::new(UsersSource(shared.users.clone())));
        scram.set_iterations(users::ITERATIONS);
        let startup = SASLAuthStartupHandler::new(Arc::new(parameters))
            .with_scram(scram)
            .with_connection_manager(connections.clone());
        Connection {
            startup: Arc::new(RequireTls {
                required: tls,
                authentication: startup,
            }),
            session: Arc::new(Session::new(shared)),
            cancel: Arc::new(DefaultCancelHandler::new(connections)),
        }
    }
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.session.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.session.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(LogErrors)
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancel.clone()
    }
}

/// With a certificate given, a connection without TLS is refused before it
/// authenticates: a password never crosses the wire in plain text by mistake.
struct RequireTls {
    required: bool,
    authentication: SASLAuthStartupHandler<DefaultServerParameterProvider>,
}

#[async_trait::async_trait]
impl StartupHandler for RequireTls {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if self.required && !client.is_secure() {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "28000".into(),
                "this server accepts only TLS connections: connect with sslmode=require".into(),
            ))));
        }
        self.authentication.on_startup(client, message).await
    }
}

struct LogErrors;

impl ErrorHandler for LogErrors {
    fn on_error<C: ClientInfo>(&self, client: &C, error: &mut PgWireError) {
        // SCRAM's own user name is empty (libpq sends it so); name the one who connected.
        if let PgWireError::InvalidPassword(user) = error
            && user.is_empty()
        {
            user.clone_from(client.metadata().get(METADATA_USER).unwrap_or(&String::new()));
        }
        tracing::info!("to {}: {error}", client.socket_addr());
    }
}
