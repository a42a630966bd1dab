//! Who may connect to the server, which organisation each one sees, and how their
//! passwords are checked (SCRAM-SHA-256: the password never crosses the wire and is
//! never logged). The users file, YAML:
//!
//! ```yaml
//! users:
//!   eurodist-finance:
//!     organization: eurodist          # sees what `--as eurodist` sees
//!     password_env: EURODIST_PASSWORD # the password, from this environment variable
//!   auditor:
//!     organization: "*"               # every organisation's batches
//!     password: change-me             # or in the file itself
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion_postgres::pgwire::api::auth::sasl::scram::gen_salted_password;
use datafusion_postgres::pgwire::api::auth::{AuthSource, LoginInfo, Password};
use datafusion_postgres::pgwire::error::{PgWireError, PgWireResult};
use serde::Deserialize;

/// SCRAM's iteration count: the RFC's minimum, as Postgres uses by default.
pub const ITERATIONS: usize = 4096;

/// A users file that cannot be used, naming the file and the user.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: user `{user}`: {reason}")]
    User { path: String, user: String, reason: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    users: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    organization: String,
    password: Option<String>,
    password_env: Option<String>,
}

/// One user who may connect.
struct User {
    /// None: sees every organisation.
    organization: Option<String>,
    salt: Vec<u8>,
    salted_password: Vec<u8>,
}

/// The users, with their passwords already salted and hashed (once, at start).
pub struct Users {
    users: BTreeMap<String, User>,
    /// What an unknown user's proof is checked against, so that an unknown user and a
    /// wrong password fail the same way and a client cannot probe for names.
    decoy: (Vec<u8>, Vec<u8>),
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secrets.
        f.debug_struct("Users")
            .field("names", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Users {
    /// Read the users file; `env` looks up `password_env` variables.
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Users, UsersError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| UsersError::Read {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let file: File = marked_yaml::from_yaml(0, &text).map_err(|e| UsersError::Read {
            path: shown.clone(),
            reason: format!(
                "{e} (expected `users:` mapping each name to `organization` and `password` or `password_env`)"
            ),
        })?;
        if file.users.is_empty() {
            return Err(UsersError::Read {
                path: shown,
                reason: "no users: nobody could connect".into(),
            });
        }
        let mut users = BTreeMap::new();
        for (name, entry) in file.users {
            let fail = |reason: String| UsersError::User {
                path: shown.clone(),
                user: name.clone(),
                reason,
            };
            let password = match (entry.password, entry.password_env) {
                (Some(p), None) => p,
                (None, Some(var)) => env(&var)
                    .ok_or_else(|| fail(format!("the environment variable `{var}` (password_env) is not set")))?,
                (Some(_), Some(_)) => return Err(fail("give `password` or `password_env`, not both".into())),
                (None, None) => return Err(fail("no password: give `password` or `password_env`".into())),
            };
            if password.is_empty() {
                return Err(fail("the password is empty".into()));
            }
            let organization = (entry.organization != "*").then_some(entry.organization);
            let salt = random_salt();
            let salted_password = gen_salted_password(&password, &salt, ITERATIONS);
            users.insert(
                name,
                User {
                    organization,
                    salt,
                    salted_password,
                },
            );
        }
        let salt = random_salt();
        let decoy = (
            salt.clone(),
            gen_salted_password(&String::from_utf8_lossy(&random_salt()), &salt, ITERATIONS),
        );
        Ok(Users { users, decoy })
    }

    /// The organisation `user` sees (`None` inside: every one), or `None` for no such user.
    pub fn organization_of(&self, user: &str) -> Option<Option<&str>> {
        self.users.get(user).map(|u| u.organization.as_deref())
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// 18 random bytes (base64): SCRAM's salt needs to be unpredictable, not secret.
fn random_salt() -> Vec<u8> {
    datafusion_postgres::pgwire::api::auth::sasl::scram::random_nonce().into_bytes()
}

/// The users as the SCRAM exchange asks for them.
#[derive(Debug, Clone)]
pub struct UsersSource(pub Arc<Users>);

#[async_trait]
impl AuthSource for UsersSource {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let Some(name) = login.user() else {
            return Err(PgWireError::UserNameRequired);
        };
        let (salt, salted) = match self.0.users.get(name) {
            Some(user) => (&user.salt, &user.salted_password),
            None => (&self.0.decoy.0, &self.0.decoy.1),
        };
        Ok(Password::new(Some(salt.clone()), salted.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Users, UsersError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.yaml");
        std::fs::write(&path, text).unwrap();
        let env: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Users::load(&path, |k| env.get(k).cloned())
    }

    #[test]
    fn a_user_sees_one_organisation_or_with_a_star_all() {
        let users = load(
            "users:\n  eu:\n    organization: eurodist\n    password_env: EU_PW\n  audit:\n    organization: '*'\n    password: s3cret\n",
            &[("EU_PW", "pw")],
        )
        .unwrap();
        assert_eq!(users.organization_of("eu"), Some(Some("eurodist")));
        assert_eq!(users.organization_of("audit"), Some(None));
        assert_eq!(users.organization_of("nobody"), None);
        assert!(!format!("{users:?}").contains("s3cret"));
    }

    #[test]
    fn a_missing_password_names_the_user_and_never_the_secret() {
        let e = load(
            "users:\n  eu:\n    organization: eurodist\n    password_env: EU_PW\n",
            &[],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("user `eu`: the environment variable `EU_PW`"),
            "{e}"
        );
        let e = load("users:\n  eu:\n    organization: eurodist\n", &[]).unwrap_err();
        assert!(e.to_string().contains("no password"), "{e}");
        let e = load("users:\n  eu:\n    organisation: eurodist\n    password: x\n", &[]).unwrap_err();
        assert!(e.to_string().contains("organisation"), "{e}");
        let e = load("users: {}\n", &[]).unwrap_err();
        assert!(e.to_string().contains("nobody could connect"), "{e}");
    }
}
