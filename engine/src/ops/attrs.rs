//! Reading a node's attributes with the node and attribute named in every error.

use crate::LoadError;
use crate::onnx::pb::{AttributeProto, NodeProto};

/// The attributes of one node.
pub struct Attrs<'a> {
    node: &'a NodeProto,
    name: &'a str,
}

impl<'a> Attrs<'a> {
    pub fn new(node: &'a NodeProto, name: &'a str) -> Attrs<'a> {
        Attrs { node, name }
    }

    /// The node's name, for errors.
    pub fn node_name(&self) -> &'a str {
        self.name
    }

    fn get(&self, attribute: &str) -> Option<&'a AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == attribute)
    }

    /// An error about one attribute of this node.
    pub fn bad(&self, attribute: &str, reason: impl Into<String>) -> LoadError {
        LoadError::BadAttribute {
            node: self.name.to_owned(),
            attribute: attribute.to_owned(),
            reason: reason.into(),
        }
    }

    /// Whether the node sets the attribute.
    pub fn has(&self, attribute: &str) -> bool {
        self.get(attribute).is_some()
    }

    pub fn floats(&self, attribute: &str) -> Option<&'a [f32]> {
        self.get(attribute).map(|a| a.floats.as_slice())
    }

    pub fn int(&self, attribute: &str, default: i64) -> i64 {
        self.get(attribute).map_or(default, |a| a.i)
    }

    pub fn float(&self, attribute: &str, default: f32) -> f32 {
        self.get(attribute).map_or(default, |a| a.f)
    }

    pub fn ints(&self, attribute: &str) -> Option<&'a [i64]> {
        self.get(attribute).map(|a| a.ints.as_slice())
    }

    pub fn string(&self, attribute: &str) -> Option<String> {
        self.get(attribute)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }

    pub fn tensor(&self, attribute: &str) -> Option<&'a crate::onnx::pb::TensorProto> {
        self.get(attribute).and_then(|a| a.t.as_ref())
    }
}
