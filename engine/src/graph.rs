//! The engine's graph IR: inputs, constants and nodes in execution order.

use std::collections::HashMap;

use crate::Value;
use crate::ops::Op;

/// One dimension of a graph input as the model declares it.
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    Fixed(usize),
    /// Symbolic (e.g. `batch`) or unknown: any size is accepted.
    Named(String),
}

/// A graph input: its name and declared dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct IoSpec {
    pub name: String,
    pub dims: Vec<Dim>,
}

impl IoSpec {
    /// Whether a concrete shape fits the declaration.
    pub fn accepts(&self, shape: &[usize]) -> bool {
        self.dims.is_empty()
            || (self.dims.len() == shape.len()
                && self.dims.iter().zip(shape).all(|(d, &s)| match d {
                    Dim::Fixed(n) => *n == s,
                    Dim::Named(_) => true,
                }))
    }
}

/// One operation: its op (with parsed attributes) and the names of the values it reads and
/// writes (an empty input name is an omitted optional input).
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

/// A loaded model.
#[derive(Debug, Clone)]
pub struct Graph {
    /// Version of the default operator set.
    pub opset: i64,
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<String>,
    /// Initializers by name.
    pub constants: HashMap<String, Value>,
    /// In an order where every value is produced before it is read.
    pub nodes: Vec<Node>,
}
