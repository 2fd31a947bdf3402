//! Access events: each download of a person's data from their own page.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Store, rows::stored_enum};
use crate::{
    domain::{Channel, SubjectId},
    error::Result,
};

/// One download of the person's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessEvent {
    pub access_id: Uuid,
    pub channel: Channel,
    /// The campaign of the letter whose link was followed; empty for none.
    pub campaign: String,
    pub accessed_at: DateTime<Utc>,
}

impl Store {
    #[tracing::instrument(name = "store.record_access", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "record_access"))]
    pub async fn record_access(
        &self,
        subject_id: &SubjectId,
        channel: Channel,
        campaign: &str,
    ) -> Result<AccessEvent> {
        let client = self.client().await?;
        let access_id = Uuid::now_v7();
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "INSERT INTO access_events (access_id, subject_id, channel, campaign)
                 VALUES ($1, $2, $3, $4) RETURNING accessed_at",
                    )
                    .await?,
                &[
                    &access_id,
                    &subject_id.as_str(),
                    &channel.as_str(),
                    &campaign,
                ],
            )
            .await?;
        Ok(AccessEvent {
            access_id,
            channel,
            campaign: campaign.to_string(),
            accessed_at: row.get(0),
        })
    }

    /// The subject's access events, oldest first.
    #[tracing::instrument(name = "store.access_events_of", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "access_events_of"))]
    pub async fn access_events_of(&self, subject_id: &SubjectId) -> Result<Vec<AccessEvent>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT access_id, channel, campaign, accessed_at FROM access_events
                  WHERE subject_id = $1 ORDER BY accessed_at, access_id",
                    )
                    .await?,
                &[&subject_id.as_str()],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(AccessEvent {
                    access_id: row.get(0),
                    channel: stored_enum(Channel::from_stored(row.get(1)), "channel")?,
                    campaign: row.get(2),
                    accessed_at: row.get(3),
                })
            })
            .collect()
    }
}
