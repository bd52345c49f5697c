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

impl Graph {
    /// Evaluates, at load time, every node whose inputs are all constants (e.g. the weights a
    /// `ConstantOfShape` produces, shape arithmetic), then drops nodes whose outputs nothing
    /// reads. Returns how many nodes were folded and removed.
    pub fn fold_constants(&mut self) -> Result<(usize, usize), crate::LoadError> {
        let ctx = crate::ops::Ctx { threads: 1 };
        let before = self.nodes.len();
        let mut kept = Vec::with_capacity(self.nodes.len());
        let mut folded = 0;
        for node in std::mem::take(&mut self.nodes) {
            let constant_inputs = node
                .inputs
                .iter()
                .all(|i| i.is_empty() || self.constants.contains_key(i));
            if !constant_inputs {
                kept.push(node);
                continue;
            }
            let args: Vec<Option<&Value>> =
                node.inputs.iter().map(|i| self.constants.get(i)).collect();
            let results = node
                .op
                .eval(&ctx, &node.name, &args)
                .map_err(|e| crate::LoadError::Fold(e.to_string()))?;
            for (name, value) in node.outputs.iter().zip(results) {
                self.constants.insert(name.clone(), value);
            }
            folded += 1;
        }
        self.nodes = kept;
        self.remove_dead_nodes();
        Ok((folded, before - folded - self.nodes.len()))
    }

    /// Drops nodes none of whose outputs is read by a later node or is a graph output, and
    /// constants nothing reads.
    fn remove_dead_nodes(&mut self) {
        let mut needed: std::collections::HashSet<String> = self.outputs.iter().cloned().collect();
        let mut kept: Vec<Node> = Vec::with_capacity(self.nodes.len());
        for node in std::mem::take(&mut self.nodes).into_iter().rev() {
            if node.outputs.iter().any(|o| needed.contains(o)) {
                needed.extend(node.inputs.iter().cloned());
                kept.push(node);
            }
        }
        kept.reverse();
        self.nodes = kept;
        self.constants.retain(|name, _| needed.contains(name));
    }
}
