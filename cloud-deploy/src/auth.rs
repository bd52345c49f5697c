//! Operator authentication and authorization for the control plane.
//!
//! Operators present `Authorization: Bearer <token>`: either the bootstrap admin token kept in
//! the data dir, or an API token created through `/v1/tokens` with one of four roles. Each role
//! can do what the ones below it can:
//!
//! | role | may |
//! |---|---|
//! | viewer | read everything except tokens and the audit log |
//! | developer | also create tasks, upload versions, preview releases |
//! | release-manager | also create releases and pause/resume/advance/abort/roll them back, and manage device groups |
//! | admin | also manage API tokens and apps, and read the audit log |

use axum::http::Method;
use serde::{Deserialize, Serialize};

/// An operator's role; later variants include the earlier ones' rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Viewer,
    Developer,
    ReleaseManager,
    Admin,
}

impl Role {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Developer => "developer",
            Role::ReleaseManager => "release-manager",
            Role::Admin => "admin",
        }
    }

    /// Parses a stored role name.
    pub fn parse(text: &str) -> Option<Role> {
        [
            Role::Viewer,
            Role::Developer,
            Role::ReleaseManager,
            Role::Admin,
        ]
        .into_iter()
        .find(|r| r.as_str() == text)
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Operator {
    /// Token id, or `bootstrap-admin`.
    pub id: String,
    pub name: String,
    pub role: Role,
}

/// The least role a call needs, from its method and path below `/v1`.
pub fn required_role(method: &Method, path: &str) -> Role {
    let admin_only = ["/tokens", "/apps", "/audit"]
        .iter()
        .any(|p| path.starts_with(p));
    if admin_only {
        return Role::Admin;
    }
    if method == Method::GET || method == Method::HEAD {
        return Role::Viewer;
    }
    if path.starts_with("/tasks") || path == "/releases/preview" {
        return Role::Developer;
    }
    Role::ReleaseManager
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_by_route() {
        assert_eq!(required_role(&Method::GET, "/releases"), Role::Viewer);
        assert_eq!(
            required_role(&Method::POST, "/tasks/t/versions"),
            Role::Developer
        );
        assert_eq!(
            required_role(&Method::POST, "/releases/preview"),
            Role::Developer
        );
        assert_eq!(
            required_role(&Method::POST, "/releases"),
            Role::ReleaseManager
        );
        assert_eq!(
            required_role(&Method::POST, "/releases/r/abort"),
            Role::ReleaseManager
        );
        assert_eq!(
            required_role(&Method::POST, "/groups/qa/members"),
            Role::ReleaseManager
        );
        assert_eq!(
            required_role(&Method::DELETE, "/groups/qa"),
            Role::ReleaseManager
        );
        assert_eq!(required_role(&Method::GET, "/audit"), Role::Admin);
        assert_eq!(required_role(&Method::GET, "/tokens"), Role::Admin);
        assert!(Role::Admin > Role::ReleaseManager && Role::Developer > Role::Viewer);
        assert_eq!(Role::parse("release-manager"), Some(Role::ReleaseManager));
    }
}
