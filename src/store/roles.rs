//! The two PostgreSQL roles: the owner, which is the user of
//! `--database-url`, owns every table and runs the migrations; and the
//! serving role, which the server connects as to serve. The serving role
//! owns nothing, so it can neither ALTER (DISABLE TRIGGER) nor TRUNCATE a
//! table, and its privileges (set by `consentd_grant_serving`, V9) let it
//! append to and read the histories but never change them.
//!
//! The server connects *as* the serving role rather than `SET ROLE` on the
//! owner's connection: a session can always `RESET ROLE`, so the owner's
//! connection would still be one statement away from everything.
//!
//! Roles belong to the whole PostgreSQL cluster while privileges belong to
//! each database, so one serving role can serve many consentd databases on
//! one cluster (the tests make one database per test): each database grants
//! it exactly its own privileges.

use std::path::Path;

use anyhow::{Context as _, bail};
use tokio_postgres::error::SqlState;

use super::{Database, Store};

/// The longest name PostgreSQL keeps whole.
const MAX_ROLE_NAME: usize = 63;

/// The role the server serves as, and its password if the server asks for one.
#[derive(Clone)]
pub struct ServingRole {
    pub name: String,
    password: Option<String>,
}

impl std::fmt::Debug for ServingRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingRole")
            .field("name", &self.name)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl ServingRole {
    /// The password, if the server asks for one.
    pub(super) fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// `--serving-role` and the password in `--serving-password-file`.
    pub fn from_settings(name: &str, password_file: Option<&Path>) -> anyhow::Result<Self> {
        let password = password_file
            .map(|path| {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!(
                        "cannot read the serving role's password file {}",
                        path.display()
                    )
                })?;
                let password = text.trim_end_matches(['\r', '\n']).to_string();
                if password.is_empty() {
                    bail!(
                        "the serving role's password file {} is empty",
                        path.display()
                    );
                }
                Ok(password)
            })
            .transpose()?;
        Ok(Self {
            name: parse_role_name(name).map_err(anyhow::Error::msg)?,
            password,
        })
    }
}

/// A role name consentd will create and grant to: lower-case letters,
/// digits and `_`, starting with a letter or `_`, so that it never needs
/// quoting to mean what it says.
pub fn parse_role_name(name: &str) -> Result<String, String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !first_ok || !rest_ok || name.len() > MAX_ROLE_NAME || name.starts_with("pg_") {
        return Err(format!(
            "`{name}` is not a usable role name: 1-{MAX_ROLE_NAME} characters of a-z, 0-9 and _, \
             not starting with a digit or pg_"
        ));
    }
    Ok(name.to_string())
}

impl Database {
    /// Turns an open database, connected as its owner, into one the server
    /// serves from: makes sure the serving role exists, sets its privileges,
    /// checks that it can do no more than they allow, and connects again as
    /// it. The owner's connections close. Refuses, saying why, when the
    /// serving role would be able to rewrite the history.
    pub async fn serve_as(self, role: &ServingRole) -> anyhow::Result<Self> {
        let owner = self
            .store
            .pool
            .get()
            .await
            .context("cannot connect to set up the serving role")?;
        let owner_name: String = owner
            .query_one("SELECT current_user::text", &[])
            .await?
            .get(0);
        if owner_name == role.name {
            bail!(
                "--database-url connects as `{owner_name}`, the serving role itself: give \
                 --database-url the user that owns consentd's tables, and --serving-role another"
            );
        }
        ensure_role(&owner, &owner_name, role).await?;
        owner
            .execute("SELECT consentd_grant_serving($1)", &[&role.name])
            .await
            .with_context(|| {
                format!(
                    "cannot set the privileges of the serving role `{}`: the --database-url user \
                     `{owner_name}` must own consentd's tables (it is the user that migrated them)",
                    role.name
                )
            })?;
        refuse_unsafe_role(&owner, &role.name).await?;
        drop(owner);

        let store = self.store.as_role(&role.name, role.password.as_deref())?;
        let client = store.pool.get().await.with_context(|| {
            format!(
                "cannot connect as the serving role `{}` (give its password with \
                 --serving-password-file if the server asks for one)",
                role.name
            )
        })?;
        let connected: String = client
            .query_one("SELECT current_user::text", &[])
            .await?
            .get(0);
        if connected != role.name {
            bail!(
                "connected as `{connected}` where the serving role `{}` was asked for",
                role.name
            );
        }
        drop(client);
        tracing::info!(
            role = %role.name,
            owner = %owner_name,
            "serving as the PostgreSQL role `{}`, which may append to the history but not change it",
            role.name
        );
        Ok(Self { store, ..self })
    }
}

/// Creates the serving role when it is missing (LOGIN and nothing else),
/// and refuses one whose attributes reach past any privilege.
async fn ensure_role(
    owner: &tokio_postgres::Client,
    owner_name: &str,
    role: &ServingRole,
) -> anyhow::Result<()> {
    const ATTRIBUTES: &str = "SELECT rolsuper, rolcreaterole, rolbypassrls, rolcanlogin FROM pg_roles WHERE rolname = $1";
    let mut found = owner.query_opt(ATTRIBUTES, &[&role.name]).await?;
    if found.is_none() {
        let mut create = format!(
            "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS",
            super::quote_ident(&role.name)
        );
        if let Some(password) = &role.password {
            create.push_str(&format!(" PASSWORD {}", quote_literal(password)));
        }
        match owner.batch_execute(&create).await {
            Ok(()) => tracing::info!(role = %role.name, "created the serving role `{}`", role.name),
            // Another server (or test) on this cluster created it first.
            Err(e)
                if e.code() == Some(&SqlState::DUPLICATE_OBJECT)
                    || e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "the serving role `{}` does not exist and `{owner_name}` may not create \
                         it: create it once with `CREATE ROLE {} LOGIN PASSWORD '...'`",
                        role.name, role.name
                    )
                });
            }
        }
        found = owner.query_opt(ATTRIBUTES, &[&role.name]).await?;
    }
    let row = found.with_context(|| format!("the serving role `{}` vanished", role.name))?;
    let (superuser, createrole, bypassrls, login): (bool, bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let why = if superuser {
        Some("is a superuser")
    } else if createrole {
        Some("has CREATEROLE, so it could make itself a member of the owner")
    } else if bypassrls {
        Some("has BYPASSRLS")
    } else if !login {
        Some("cannot log in (NOLOGIN)")
    } else {
        None
    };
    if let Some(why) = why {
        bail!(
            "refusing to serve as `{}`: it {why}; the serving role must be a plain LOGIN role",
            role.name
        );
    }
    Ok(())
}

/// Refuses a serving role that owns (or may act as the owner of) a table or
/// the schema, or that may write every table.
async fn refuse_unsafe_role(owner: &tokio_postgres::Client, role: &str) -> anyhow::Result<()> {
    let row = owner
        .query_one(
            "SELECT (SELECT string_agg(c.relname, ', ' ORDER BY c.relname)
                       FROM pg_class c
                      WHERE c.relnamespace = 'public'::regnamespace
                        AND pg_has_role($1, c.relowner, 'MEMBER')),
                    pg_has_role($1, (SELECT nspowner FROM pg_namespace WHERE nspname = 'public'), 'MEMBER'),
                    pg_has_role($1, current_user, 'MEMBER'),
                    pg_has_role($1, 'pg_write_all_data', 'MEMBER')",
            &[&role],
        )
        .await?;
    let (owned, schema, owner, write_all): (Option<String>, bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let why = if let Some(owned) = owned {
        format!("owns, or is a member of the owner of, {owned}")
    } else if schema {
        "owns, or is a member of the owner of, the schema public (so it could drop tables)".into()
    } else if owner {
        "is a member of the owner role, so it could SET ROLE to it".into()
    } else if write_all {
        "is a member of pg_write_all_data".into()
    } else {
        return Ok(());
    };
    bail!("refusing to serve as `{role}`: it {why}; the serving role must own nothing")
}

/// An SQL string literal (CREATE ROLE takes no parameters).
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl Store {
    /// A new pool on the same server and database, connected as `user`.
    pub(super) fn as_role(&self, user: &str, password: Option<&str>) -> anyhow::Result<Self> {
        let mut config = self.config.clone();
        config.user(user);
        config.password(password.unwrap_or_default());
        Store::with_config(config, self.tls.clone(), self.settings.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_need_no_quoting() {
        for good in ["consentd_serving", "_x", "a1"] {
            assert_eq!(parse_role_name(good).as_deref(), Ok(good));
        }
        for bad in [
            "",
            "1a",
            "Consentd",
            "a-b",
            "a b",
            "a\"b",
            "pg_monitor",
            &"a".repeat(64),
        ] {
            assert!(parse_role_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_are_quoted_as_literals() {
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
