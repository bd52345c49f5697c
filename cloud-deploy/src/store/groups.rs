//! `device_groups` and `device_group_members`: named lists of device ids for targeting.

use serde::Serialize;
use sqlx::Row;

use super::{Db, db_err, is_unique_violation, now_ms, text_column};
use crate::CloudError;

/// A device group as listed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GroupRow {
    pub name: String,
    pub description: String,
    pub members: i64,
    pub created_at_ms: i64,
}

impl Db {
    /// Creates an empty group; a name already taken is a conflict.
    pub async fn create_group(
        &self,
        name: &str,
        description: &str,
    ) -> Result<GroupRow, CloudError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO device_groups (name, description, created_at_ms) VALUES ($1, $2, $3)",
        )
        .bind(name)
        .bind(description)
        .bind(now)
        .execute(self.pool())
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                CloudError::Conflict(format!("group {name:?} already exists"))
            } else {
                db_err("creating group")(e)
            }
        })?;
        Ok(GroupRow {
            name: name.to_owned(),
            description: description.to_owned(),
            members: 0,
            created_at_ms: now,
        })
    }

    /// Every group with its member count, by name.
    pub async fn list_groups(&self) -> Result<Vec<GroupRow>, CloudError> {
        self.groups_where("", None).await
    }

    /// One group with its member count.
    pub async fn get_group(&self, name: &str) -> Result<Option<GroupRow>, CloudError> {
        Ok(self
            .groups_where("WHERE g.name = $1", Some(name))
            .await?
            .pop())
    }

    async fn groups_where(
        &self,
        filter: &'static str,
        name: Option<&str>,
    ) -> Result<Vec<GroupRow>, CloudError> {
        // `filter` is one of the constant clauses above; the name is bound.
        let sql = format!(
            "SELECT g.name, g.description, g.created_at_ms, \
             (SELECT COUNT(*) FROM device_group_members m WHERE m.group_name = g.name) AS members \
             FROM device_groups g {filter} ORDER BY g.name"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some(name) = name {
            query = query.bind(name.to_owned());
        }
        let rows = query
            .fetch_all(self.pool())
            .await
            .map_err(db_err("listing groups"))?;
        rows.iter()
            .map(|row| {
                Ok(GroupRow {
                    name: row.try_get("name")?,
                    description: row.try_get("description")?,
                    members: row.try_get("members")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db_err("decoding groups"))
    }

    /// Whether a group exists.
    pub async fn group_exists(&self, name: &str) -> Result<bool, CloudError> {
        Ok(sqlx::query("SELECT 1 FROM device_groups WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err("reading group"))?
            .is_some())
    }

    /// The member device ids of a group, sorted.
    pub async fn group_members(&self, name: &str) -> Result<Vec<String>, CloudError> {
        let query = sqlx::query(
            "SELECT device_id FROM device_group_members WHERE group_name = $1 ORDER BY device_id",
        )
        .bind(name);
        text_column(self, query, "listing group members").await
    }

    /// Adds and removes members in one transaction.
    pub async fn change_group_members(
        &self,
        name: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<(), CloudError> {
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(db_err("changing group members"))?;
        for device in add {
            sqlx::query(
                "INSERT INTO device_group_members (group_name, device_id) VALUES ($1, $2) \
                 ON CONFLICT (group_name, device_id) DO NOTHING",
            )
            .bind(name)
            .bind(device)
            .execute(&mut *tx)
            .await
            .map_err(db_err("adding group member"))?;
        }
        for device in remove {
            sqlx::query(
                "DELETE FROM device_group_members WHERE group_name = $1 AND device_id = $2",
            )
            .bind(name)
            .bind(device)
            .execute(&mut *tx)
            .await
            .map_err(db_err("removing group member"))?;
        }
        // The in-memory fleet re-reads devices by this stamp (`crate::release::fleet`).
        let now = now_ms();
        for device in add.iter().chain(remove) {
            sqlx::query("UPDATE devices SET changed_at_ms = $1 WHERE id = $2")
                .bind(now)
                .bind(device)
                .execute(&mut *tx)
                .await
                .map_err(db_err("stamping group member"))?;
        }
        tx.commit().await.map_err(db_err("changing group members"))
    }

    /// Deletes a group and its memberships.
    pub async fn delete_group(&self, name: &str) -> Result<(), CloudError> {
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(db_err("deleting group"))?;
        sqlx::query(
            "UPDATE devices SET changed_at_ms = $1 WHERE id IN \
             (SELECT device_id FROM device_group_members WHERE group_name = $2)",
        )
        .bind(now_ms())
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(db_err("stamping group members"))?;
        sqlx::query("DELETE FROM device_group_members WHERE group_name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err("deleting group members"))?;
        sqlx::query("DELETE FROM device_groups WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err("deleting group"))?;
        tx.commit().await.map_err(db_err("deleting group"))
    }

    /// The groups one device is a member of.
    pub async fn groups_of(&self, device_id: &str) -> Result<Vec<String>, CloudError> {
        let query = sqlx::query("SELECT group_name FROM device_group_members WHERE device_id = $1")
            .bind(device_id);
        text_column(self, query, "reading device groups").await
    }
}
