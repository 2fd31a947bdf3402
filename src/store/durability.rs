//! Whether the database keeps a commit once it has acknowledged it. consentd
//! answers a write only after COMMIT, and callers rely on that answer; with
//! `synchronous_commit = off` a crash loses commits already acknowledged,
//! and with `fsync = off` an OS crash can corrupt the cluster.

use super::Store;
use crate::error::Result;

/// The server settings that decide whether an acknowledged commit survives
/// a crash, as this database's sessions see them (`synchronous_commit` can
/// be set per database or role, so it is read through the pool).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurabilitySettings {
    pub fsync: String,
    pub synchronous_commit: String,
}

impl DurabilitySettings {
    /// Why acknowledged writes could be lost; empty when they cannot.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.fsync != "on" {
            problems.push(format!(
                "fsync is {}: an OS crash can lose or corrupt committed data",
                self.fsync
            ));
        }
        if self.synchronous_commit == "off" {
            problems.push(
                "synchronous_commit is off: a database crash loses commits already \
                 acknowledged to callers"
                    .to_string(),
            );
        }
        problems
    }
}

impl Store {
    #[tracing::instrument(name = "store.durability_settings", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "durability_settings"))]
    pub async fn durability_settings(&self) -> Result<DurabilitySettings> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT current_setting('fsync'), current_setting('synchronous_commit')",
                &[],
            )
            .await?;
        Ok(DurabilitySettings {
            fsync: row.get(0),
            synchronous_commit: row.get(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(fsync: &str, synchronous_commit: &str) -> DurabilitySettings {
        DurabilitySettings {
            fsync: fsync.into(),
            synchronous_commit: synchronous_commit.into(),
        }
    }

    #[test]
    fn the_postgresql_defaults_are_durable() {
        assert!(settings("on", "on").problems().is_empty());
    }

    #[test]
    fn every_synchronous_commit_level_but_off_keeps_acknowledged_commits() {
        for level in ["local", "remote_write", "remote_apply", "on"] {
            assert!(settings("on", level).problems().is_empty(), "{level}");
        }
        let problems = settings("on", "off").problems();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("synchronous_commit is off"));
    }

    #[test]
    fn fsync_off_is_a_problem_even_with_synchronous_commit_on() {
        let problems = settings("off", "on").problems();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("fsync is off"));
        assert_eq!(settings("off", "off").problems().len(), 2);
    }
}
