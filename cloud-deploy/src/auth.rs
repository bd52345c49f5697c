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

/// Things an operator may do, each named for the console and the CLI, with a call that stands
/// for it: the role it needs is whatever [`required_role`] says for that call.
const CAPABILITIES: [(&str, &str, &str); 6] = [
    ("upload_version", "POST", "/tasks/t/versions"),
    ("preview_release", "POST", "/releases/preview"),
    ("create_release", "POST", "/releases"),
    ("act_release", "POST", "/releases/r/pause"),
    ("manage_groups", "POST", "/groups"),
    ("admin", "GET", "/tokens"),
];

/// The capabilities a role has (see [`CAPABILITIES`]).
pub fn capabilities(role: Role) -> Vec<&'static str> {
    CAPABILITIES
        .iter()
        .filter(|(_, method, path)| {
            let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::POST);
            role >= required_role(&method, path)
        })
        .map(|(name, _, _)| *name)
        .collect()
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

    #[test]
    fn capabilities_follow_the_route_rules() {
        assert!(capabilities(Role::Viewer).is_empty());
        assert_eq!(
            capabilities(Role::Developer),
            ["upload_version", "preview_release"]
        );
        assert_eq!(
            capabilities(Role::ReleaseManager),
            [
                "upload_version",
                "preview_release",
                "create_release",
                "act_release",
                "manage_groups"
            ]
        );
        assert_eq!(capabilities(Role::Admin).len(), CAPABILITIES.len());
    }
}
